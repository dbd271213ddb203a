"""Running the Ruby side of the compatibility tests (tests/compat/ruby/*.rb).

The Ruby programs load Debian's real Chef libraries (ruby-mixlib-authentication,
ruby-ffi-rzmq on libzmq5); `make sysdeps` installs them. When they are missing
the tests are skipped with the reason, never silently passed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

RUBY_DIR = Path(__file__).parent / "ruby"
CHEF_SIGNER = RUBY_DIR / "chef_signer.rb"
STOCK_CLIENT = RUBY_DIR / "stock_client.rb"

_PROBE = (
    'require "openssl"; require "mixlib/authentication/signedheaderauth"; '
    'require "mixlib/authentication/signatureverification"; require "ffi-rzmq"; '
    'ZMQ::Util.curve_keypair; puts LibZMQ.version.values.join(".")'
)


@lru_cache(maxsize=1)
def ruby_libraries() -> str:
    """The libzmq version the Ruby side loads, or "" when Ruby or a library is missing."""
    if shutil.which("ruby") is None:
        return ""
    r = subprocess.run(["ruby", "-e", _PROBE], capture_output=True, text=True, timeout=30)
    return r.stdout.strip() if r.returncode == 0 else ""


requires_ruby = pytest.mark.skipif(
    not ruby_libraries(),
    reason="ruby, ruby-mixlib-authentication or ruby-ffi-rzmq (with CURVE) missing: run `make sysdeps`",
)


def run_signer(mode: str, payload: dict[str, Any], timeout: float = 60.0) -> list[dict[str, Any]]:
    """Run chef_signer.rb MODE with `payload` as JSON on stdin; its per-item results."""
    r = subprocess.run(["ruby", str(CHEF_SIGNER), mode], input=json.dumps(payload),
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"chef_signer.rb {mode} failed (rc {r.returncode}):\n{r.stderr[-4000:]}"
    out = json.loads(r.stdout)
    assert out["mixlib_authentication"].startswith("3."), out["mixlib_authentication"]
    return out["results"]
