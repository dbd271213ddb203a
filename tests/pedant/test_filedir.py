"""Port of oc-pushy-pedant spec/pushy/integration/filedir_spec.rb.

A real agent DONKEY started with `file_dir_expiry: 2` (the spec's 2-second expiration), the
'ruby-opts' whitelist entry (uid, euid, cwd, environment to a file; ours also copies the job
file while the job runs).

Deliberate difference (docs/compatibility.md, "Agent: job file"): the original left
`file_dir/pushy_file*` behind for the sweeper, so the spec found the file still there right
after the job. Ours writes it 0600 and removes it when the job ends; the sweeper (every
`file_dir_expiry`) only removes leftovers of a crashed agent. The spec's limit (gone within
10 s) is asserted for both: the job's own file and a leftover.
"""

from __future__ import annotations

import os
import stat
import time

import pytest

from tests.helpers.server import wait_for
from tests.pedant.e2e_support import PedantEnv, shared_env

pytestmark = pytest.mark.e2e

FILE_DIR_EXPIRY_LIMIT = 10  # the spec's file_dir_expiry_limit


@pytest.fixture(scope="module")
def env(request):
    """The shared pedant server and agents (e2e_support.shared_env)."""
    return shared_env(request)


def run_ruby_opts(env: PedantEnv, out_name: str) -> dict:
    """DONKEY runs with file_dir_expiry 2 (e2e_support.AGENT_SETTINGS).
    'ruby-opts' with file raw:test; returns the job's environment as the command saw it."""
    out = env.dir / out_name
    jid = env.start_job("ruby-opts", ["DONKEY"], file="raw:test", env={"OUT": str(out)})
    assert env.wait_job(jid, ("complete",))["nodes"] == {"succeeded": ["DONKEY"]}
    lines = out.read_text().splitlines()
    got = dict(line.split("=", 1) for line in lines[3:] if "=" in line)
    assert got["CHEF_PUSH_JOB_ID"] == jid and got["CHEF_PUSH_NODE_NAME"] == "DONKEY"
    return got


def test_within_the_expiry_limit_a_newly_created_job_file_is_cleaned_up(env):
    agent = env.ensure_agents("DONKEY")[0]
    job_env = run_ruby_opts(env, "opts-1")
    path = job_env["CHEF_PUSH_JOB_FILE"]
    assert job_env["PUSHY_JOB_FILE"] == path  # the seed's alias (§17.0, D5)
    # the file was in file_dir while the job ran, with the job's payload
    assert os.path.dirname(path) == str(agent.file_dir)
    assert os.path.basename(path).startswith("pushy_file")
    assert (env.dir / "opts-1.file").read_text() == "test"
    t0 = time.monotonic()
    wait_for(lambda: not os.path.exists(path), timeout=FILE_DIR_EXPIRY_LIMIT, message=f"{path} removed")
    assert time.monotonic() - t0 < FILE_DIR_EXPIRY_LIMIT
    # a job file left behind (an agent that crashed mid-job) is swept after file_dir_expiry
    leftover = agent.file_dir / "pushy_file_leftover"
    leftover.write_text("left by a crash")
    wait_for(lambda: not leftover.exists(), timeout=FILE_DIR_EXPIRY_LIMIT, message="leftover swept")


def test_non_pushy_files_are_not_touched(env):
    agent = env.ensure_agents("DONKEY")[0]
    keep = agent.file_dir / "not_a_pushy_file"
    keep.write_text("keep me")
    run_ruby_opts(env, "opts-2")
    # proof that the sweeper ran after the job: a fresh pushy_file goes away...
    sentinel = agent.file_dir / "pushy_file_sentinel"
    sentinel.write_text("x")
    wait_for(lambda: not sentinel.exists(), timeout=FILE_DIR_EXPIRY_LIMIT, message="sentinel swept")
    # ...and the other file is still there, unchanged
    assert keep.read_text() == "keep me"
    assert stat.S_IMODE(os.stat(agent.file_dir).st_mode) == 0o711  # created 0711 (compatibility.md)
