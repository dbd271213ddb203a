"""Fixtures for the protocol tests: the fixed test key committed under data/."""

from __future__ import annotations

from pathlib import Path

import pytest

from pushjobs.protocol import keys

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def test_key():
    """The fixed 2048-bit RSA key (PKCS#1 PEM) the openssl vectors were made with."""
    return keys.load_private_key((DATA / "test_key.pem").read_bytes())


@pytest.fixture(scope="session")
def test_pub(test_key):
    return test_key.public_key()
