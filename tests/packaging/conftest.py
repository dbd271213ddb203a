"""Fixtures of the packaging tests: the built packages and a Debian 12 root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.packaging.debroot import DebianRoot, prepared_tarball

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "packaging" / "out"


def require(*tools: str) -> None:
    """Fail (not skip) when a tool the packaging tests need is missing: `make
    test` installs them (Makefile SYSDEPS), so a missing one is a real gap."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing tools {missing}: run `make sysdeps`")


@pytest.fixture(scope="session")
def built_packages() -> dict[tuple[str, str], Path]:
    """Build the four packages once per session: {(name, 'deb'|'rpm'): path}."""
    require("rpm", "dpkg-deb")
    res = subprocess.run([sys.executable, str(ROOT / "packaging" / "build.py"), "--out", str(OUT)],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert res.returncode == 0, f"packaging/build.py failed:\n{res.stdout}\n{res.stderr}"
    paths = [Path(line) for line in res.stdout.split()]
    found: dict[tuple[str, str], Path] = {}
    for p in paths:
        name = "push-jobs-server" if p.name.startswith("push-jobs-server") else "push-jobs-client"
        found[(name, p.suffix.lstrip("."))] = p
    assert len(found) == 4, paths
    return found


@pytest.fixture(scope="session")
def bookworm_tarball() -> Path:
    require("debootstrap", "chroot", "tar", "mount")
    if os.geteuid() != 0:
        pytest.fail("the Debian root tests need root (debootstrap, chroot, mount)")
    return prepared_tarball()


@pytest.fixture
def debian_root(bookworm_tarball: Path, tmp_path: Path) -> Iterator[DebianRoot]:
    root = DebianRoot(bookworm_tarball, parent=Path("/var/tmp"))
    try:
        yield root
    finally:
        root.close()
