"""The CLI's job options as they arrive on a real push-jobs-client: what the command sees.

FakeNodes (test_cli_e2e.py) show what the server is asked; here a real agent
runs the command, so `--file`, `--with-env`, `--in-dir`, `--as-user`,
`--timeout` and `--capture` are checked by their effect on the node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

PUSHJOBS = str(Path(sys.executable).parent / "pushjobs")
SHOW = ('echo "A=$A B=$B dir=$(pwd) user=$(id -un) node=$CHEF_PUSH_NODE_NAME"; '
        'if [ -n "$CHEF_PUSH_JOB_FILE" ]; then od -An -tx1 "$CHEF_PUSH_JOB_FILE" | tr -d " \\n"; fi')


def test_job_options_reach_the_command(server: Any, agent_factory: Any, tmp_path: Path) -> None:
    server.create_org("acme")
    alice = server.create_user("alice", org="acme", admin=True)
    http = server.client(alice)
    agent = agent_factory(server, "acme", "n1", whitelist={"show": SHOW, "sleepy": "sleep 30"},
                          settings={"roles": ["web"], "tags": ["canary"]})
    agent.wait_available(http)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHJOBS_")}
    env.update(HOME=str(tmp_path), PUSHJOBS_SERVER_URL=f"{server.base_url}/organizations/acme",
               PUSHJOBS_USER="alice", PUSHJOBS_KEY=str(alice.key_path))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PUSHJOBS, *args], capture_output=True, text=True, env=env, timeout=60)

    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"\x00\x01\xfe\xff")
    workdir = tmp_path / "work"
    workdir.mkdir()
    os.chmod(tmp_path, 0o755)  # the job's user must reach its working directory
    cp = cli("job", "start", "--capture", "--with-env", '{"A": "1", "B": "two words"}',
             "--in-dir", str(workdir), "--as-user", "nobody", "-q", "100%", "show", "n1", "-F", "json")
    assert cp.returncode == 0, (cp.stdout, cp.stderr, agent.log_tail())
    job = json.loads(cp.stdout)
    out = cli("job", "output", job["id"], "n1")
    assert out.returncode == 0
    assert out.stdout == f"A=1 B=two words dir={workdir} user=nobody node=n1\n"  # exactly the captured bytes

    # the job file lives in the agent's file_dir, which pytest's 0700 tmp tree hides from
    # `nobody`: check the bytes as the agent's own user
    cp = cli("job", "start", "--capture", "--file", str(payload), "show", "n1", "-F", "json")
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    job = json.loads(cp.stdout)
    out = cli("job", "output", job["id"], "n1")
    err = cli("job", "output", job["id"], "n1", "--channel", "stderr").stdout
    lines = out.stdout.splitlines()
    assert len(lines) >= 2 and lines[1] == "0001feff", (out.stdout, err)  # the --file bytes, exactly

    # the agent reported its roles and tags: --search finds it
    from tests.helpers.server import wait_for

    wait_for(lambda: http.get("/organizations/acme/search/node", params={"q": "role:web"}).json()["total"] == 1,
             timeout=10, message="n1 in the node inventory")
    cp = cli("job", "start", "--search", "role:web AND tags:canary", "show", "-F", "json")
    assert cp.returncode == 0 and json.loads(cp.stdout)["nodes"] == {"succeeded": ["n1"]}, cp.stderr

    cp = cli("job", "start", "--timeout", "1", "sleepy", "n1", "-F", "json")
    assert cp.returncode == 1
    assert json.loads(cp.stdout)["status"] == "timed_out"
