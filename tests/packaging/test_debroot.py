"""debroot.py cleans up after a test run that was killed: the processes it
started inside the root, the mounts and the directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.packaging.debroot import ROOT_PREFIX, _mounts_below, _running as running, cleanup_stale_roots

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import sys, time
from pathlib import Path
from tests.packaging.debroot import DebianRoot
root = DebianRoot(Path(sys.argv[1]), parent=Path(sys.argv[2]))
proc = root.start(["sleep", "300"], Path(sys.argv[2]) / "sleep.log")
print(root.base, proc.pid, flush=True)
time.sleep(600)
"""


def test_stale_root_of_a_killed_run_is_cleaned(bookworm_tarball: Path, tmp_path: Path) -> None:
    parent = tmp_path / "roots"
    parent.mkdir()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(bookworm_tarball), str(parent)],
                             stdout=subprocess.PIPE, text=True, cwd=REPO,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        line = child.stdout.readline().split()
        assert line, f"the child did not set up its root (rc {child.wait(30)})"
        base, sleeper = Path(line[0]), int(line[1])
        assert base.name.startswith(ROOT_PREFIX)
        assert _mounts_below(base)  # overlay (or tarball) root with /proc mounted
        os.kill(child.pid, signal.SIGKILL)  # the test run dies without cleaning up
        child.wait(10)
        assert os.readlink(f"/proc/{sleeper}/root").startswith(str(base))

        cleanup_stale_roots(parent)

        assert not _mounts_below(base), _mounts_below(base)
        assert not base.exists(), sorted(p.name for p in base.iterdir())
        deadline = time.monotonic() + 30
        while running(sleeper) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(sleeper), "the process started in the root survived"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        cleanup_stale_roots(parent)
