"""`make demo` (python -m pushjobs.tools.demo) runs end to end and leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

DEMO = [sys.executable, "-m", "pushjobs.tools.demo"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PUSHJOBS_")}


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (the demo's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{entry.name}: {cmd}")
    return found


def demo_root(output: str) -> str:
    m = re.search(r"pushjobs demo in (\S+) ", output)
    assert m, output
    return m.group(1)


def test_demo_runs_the_job_and_cleans_up() -> None:
    started = time.monotonic()
    cp = subprocess.run(DEMO, capture_output=True, text=True, timeout=120, env=_env())
    elapsed = time.monotonic() - started
    out = cp.stdout
    assert cp.returncode == 0, out + cp.stderr
    assert elapsed < 60
    root = demo_root(out)
    assert "$ pushjobs job start --capture hello node1 node2 node3" in out
    assert "Started.  Job ID: " in out and "Complete." in out
    assert "status:         complete" in out
    assert "  succeeded:\n    node1\n    node2\n    node3\n" in out
    for node in ("node1", "node2", "node3"):
        assert f"{node}\tavailable" in out  # node status
        assert re.search(rf"hello from {node} \(job [0-9a-f]{{32}}\)", out)  # captured output
    assert "$ pushjobs node status role:web\nnode1\tavailable\nnode2\tavailable\n" in out
    assert "demo succeeded" in out
    assert not Path(root).exists()
    assert processes_mentioning(root) == []


def test_demo_ctrl_c_leaves_nothing_running() -> None:
    proc = subprocess.Popen(DEMO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    lines: list[str] = []
    root = None
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            lines.append(line)
            if root is None and "pushjobs demo in " in line:
                root = demo_root(line)
            if "all nodes are available" in line:
                break
            assert time.monotonic() < deadline, "".join(lines)
        assert root is not None, "".join(lines)
        assert processes_mentioning(root), "the demo should have servers and agents running now"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + rest
    assert proc.returncode == 130, out
    assert "stopping the agents and the server" in out
    assert processes_mentioning(root) == []
    assert not Path(root).exists()
