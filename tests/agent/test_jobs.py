"""AgentJobs: the I/O shell around the agent FSM (real FSM, whitelist, runner, flock)."""
import fcntl
import os
import queue
import time

import pytest

from pushjobs.agent.jobs import AgentJobs, JobSettings, acquire_lock
from pushjobs.agent.whitelist import Whitelist

J1, J2 = "a" * 32, "b" * 32


class FakeLoop:
    """Stands in for the loop thread: callbacks queue up until the test runs them."""

    def __init__(self):
        self.q = queue.Queue()

    def call_soon_threadsafe(self, fn):
        self.q.put(fn)

    def clock(self):
        return time.monotonic()


class Session:
    def __init__(self):
        self.loop = FakeLoop()
        self.sent = []

    def send(self, msg_type, fields):
        self.sent.append((msg_type, fields))

    def run_until(self, cond, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.loop.q.get(timeout=0.05)()
            except queue.Empty:
                pass
            if cond():
                return
        raise AssertionError("timed out")

    def types(self):
        return [(t, f.get("job_id")) for t, f in self.sent]


@pytest.fixture
def make(tmp_path):
    def make(whitelist=None, **kw):
        wl = Whitelist.from_mapping(whitelist or {"ok": "echo hello", "fail": "sh -c 'exit 4'",
                                                  "sleep": "sleep 30"})
        settings = JobSettings(whitelist=wl, file_dir=str(tmp_path / "files"),
                               term_grace_period=0.3, lockfile=str(tmp_path / "cc.pid"), **kw)
        jobs = AgentJobs("n1", settings)
        session = Session()
        jobs.attach(session)
        return jobs, session
    return make


def commit(jobs, job_id=J1, command="ok", **fields):
    jobs.handle("commit", {"type": "commit", "job_id": job_id, "command": command, **fields}, 0.0)


def test_happy_path_with_capture(make):
    jobs, s = make()
    commit(jobs, capture=True)
    assert s.types() == [("ack_commit", J1)] and jobs.heartbeat_fields() == {"job_state": "committed", "job_id": J1}
    jobs.handle("run", {"job_id": J1}, 0.0)
    assert s.types()[-1] == ("ack_run", J1)
    s.run_until(lambda: s.sent[-1][0] == "succeeded")
    assert s.sent[-1][1] == {"job_id": J1, "stdout": "hello\n", "stderr": ""}
    assert jobs.heartbeat_fields() == {"job_state": "idle", "job_id": None}


def test_exit_code_nonzero_is_failed_without_output_when_not_captured(make):
    jobs, s = make()
    commit(jobs, command="fail")
    jobs.handle("run", {"job_id": J1}, 0.0)
    s.run_until(lambda: s.sent[-1][0] == "failed")
    assert s.sent[-1][1] == {"job_id": J1}


@pytest.mark.parametrize("command,fields,reason", [
    ("rm -rf /", {}, "not in the whitelist"),
    ("ok", {"user": "no-such-user-zz"}, "unknown user"),
    ("ok", {"dir": "/no/such/dir"}, "does not exist"),
    ("ok", {"file": "nope"}, "raw: or base64:"),
    ("ok", {"env": {"A": 1}}, "env"),
])
def test_commits_it_cannot_honour_are_nacked_with_the_reason_logged(make, caplog, command, fields, reason):
    jobs, s = make()
    commit(jobs, command=command, **fields)
    assert s.types() == [("nack_commit", J1)]
    assert reason in caplog.text
    assert jobs.fsm.state == "idle"


def test_commit_without_command_nacks_with_its_job_id(make):
    jobs, s = make()
    jobs.handle("commit", {"job_id": J1}, 0.0)
    assert s.types() == [("nack_commit", J1)]  # C4


def test_busy_commit_is_nacked_and_keeps_the_committed_options(make, tmp_path):
    jobs, s = make()
    commit(jobs, capture=True, env={"A": "1"})
    commit(jobs, job_id=J2, env={"A": "2"}, capture=False)
    assert s.types() == [("ack_commit", J1), ("nack_commit", J2)]
    assert jobs.fsm.options.env == {"A": "1"} and jobs.fsm.options.capture  # C2


def test_run_for_another_job_is_nacked(make):
    jobs, s = make()
    jobs.handle("run", {"job_id": J1}, 0.0)
    jobs.handle("run", {}, 0.0)
    assert s.types() == [("nack_run", J1), ("nack_run", None)]


def test_lock_acks_is_held_until_running_and_released_once(make, tmp_path):
    lock = str(tmp_path / "custom.lock")
    jobs, s = make({"cc": {"command_line": "echo locked", "lock": lock}})
    with open(lock, "w") as fh:
        fh.write("1234\n")  # chef-client's pid must survive (opened without truncation)
    commit(jobs, command="cc")
    assert s.types() == [("ack_commit", J1)]  # C1: the original never acked
    with pytest.raises(Exception):
        acquire_lock(lock)
    jobs.handle("run", {"job_id": J1}, 0.0)
    fd = acquire_lock(lock)  # released when the job started
    try:
        assert open(lock).read() == "1234\n"
        s.run_until(lambda: s.sent[-1][0] == "succeeded")
        commit(jobs, job_id=J2, command="cc")
        assert s.types()[-1] == ("nack_commit", J2)  # someone else holds it now
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def test_lock_true_uses_chef_lockfile_and_abort_releases_it(make, tmp_path):
    jobs, s = make({"cc": {"command_line": "echo x", "lock": True}})
    commit(jobs, command="cc")
    assert s.types() == [("ack_commit", J1)]
    assert os.path.exists(tmp_path / "cc.pid")
    jobs.handle("abort", {}, 0.0)
    assert s.types()[-1] == ("aborted", J1)
    os.close(acquire_lock(str(tmp_path / "cc.pid")))


def test_abort_kills_and_refuses_commits_until_the_group_is_gone(make):
    jobs, s = make()
    commit(jobs, command="sleep")
    jobs.handle("run", {"job_id": J1}, 0.0)
    pid = jobs._process.pid
    jobs.handle("abort", {}, 0.0)
    assert s.types()[-1] == ("aborted", J1)
    def group_gone() -> bool:
        return not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"

    commit(jobs, job_id=J2)
    if s.types()[-1] == ("ack_commit", J2):
        # the kill can finish before this commit arrives: then an ack is right
        assert group_gone()
        return
    assert s.types()[-1] == ("nack_commit", J2)
    s.run_until(lambda: not jobs.busy)
    assert group_gone()
    commit(jobs, job_id=J2)
    assert s.types()[-1] == ("ack_commit", J2)


def test_spawn_failure_reports_failed_and_goes_idle(make):
    jobs, s = make({"ghost": "/no/such/program"})
    commit(jobs, command="ghost", capture=True)
    jobs.handle("run", {"job_id": J1}, 0.0)
    s.run_until(lambda: s.sent[-1][0] == "failed")
    assert "cannot start" in s.sent[-1][1]["stderr"]
    assert jobs.fsm.state == "idle"  # C12


def test_whitelist_update_waits_until_idle(make):
    jobs, s = make()
    commit(jobs, command="sleep")
    new = JobSettings(whitelist=Whitelist.from_mapping({"new": "true"}))
    assert jobs.update(new) is False
    assert jobs.settings.whitelist.resolve("new") is None
    jobs.handle("run", {"job_id": J1}, 0.0)
    jobs.handle("abort", {}, 0.0)
    s.run_until(lambda: jobs.settings.whitelist.resolve("new") is not None)
    assert jobs.update(JobSettings(whitelist=Whitelist.from_mapping({"x": "true"}))) is True
