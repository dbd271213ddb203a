"""AgentJobs: the I/O shell around the agent FSM (real FSM, whitelist, runner, flock)."""
import fcntl
import os
import queue
import signal
import threading
import time

import pytest

from pushjobs.agent.jobs import AgentJobs, JobSettings, acquire_lock
from pushjobs.agent.runner import JobProcess, group_alive
from pushjobs.agent.whitelist import Whitelist

J1, J2 = "a" * 32, "b" * 32


class FakeLoop:
    """Stands in for the loop thread: callbacks queue up until the test runs them."""

    def __init__(self):
        self.q = queue.Queue()

    def call_soon_threadsafe(self, fn):
        self.q.put(fn)

    def call_later(self, delay, fn):
        """A timer that fires on the loop (the test's run_until) after `delay`."""
        timer = threading.Timer(delay, lambda: None if cancelled.is_set() else self.q.put(fn))
        cancelled = threading.Event()
        timer.cancel = cancelled.set  # type: ignore[method-assign]  # like loop.TimerHandle.cancel
        timer.daemon = True
        timer.start()
        return timer

    def clock(self):
        return time.monotonic()


class Session:
    def __init__(self):
        self.loop = FakeLoop()
        self.sent = []
        self.on_send = None  # called before recording a message (sees the world at send time)

    def send(self, msg_type, fields):
        if self.on_send is not None:
            self.on_send(msg_type, fields)
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


STUBBORN = "trap '' TERM; sleep 30 & sleep 30"  # shell and children ignore TERM


def start_stubborn(make, **kw):
    """A running job whose whole group ignores TERM (only the KILL after the
    grace ends it); returns (jobs, session, pgid) once the trap is in place."""
    jobs, s = make({"ok": "echo hello", "stubborn": STUBBORN}, **kw)
    commit(jobs, command="stubborn")
    jobs.handle("run", {"job_id": J1}, 0.0)
    pgid = jobs._process.pid
    deadline = time.monotonic() + 10
    while _sleepers(pgid) < 2:  # both sleeps started: the trap ran before them
        assert time.monotonic() < deadline, "job did not start"
        time.sleep(0.02)
    return jobs, s, pgid


def _sleepers(pgid):
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                data = open(f"/proc/{entry}/stat", "rb").read()
            except OSError:
                continue
            rest = data[data.rfind(b")") + 2:].split()
            if int(rest[2]) == pgid and rest[0] not in (b"Z", b"X") and b"(sleep)" in data:
                n += 1
    return n


def test_abort_answers_aborted_only_once_the_group_is_dead_then_a_commit_is_acked(make):
    """The pedant flake (1 in 5 under load): `aborted` went out at once, the
    server's next commit came while the killed group still died, and was
    nacked. Now `aborted` waits for the group, so the commit the server sends
    on receiving it is accepted."""
    jobs, s, pgid = start_stubborn(make)
    at_send = {}

    def on_send(msg_type, fields):
        if msg_type == "aborted":
            at_send["alive"] = group_alive(pgid)
            at_send["t"] = time.monotonic()
            # the server answers `aborted` with a commit: arrives "right after"
            commit(jobs, job_id=J2)

    s.on_send = on_send
    t0 = time.monotonic()
    jobs.handle("abort", {}, 0.0)
    assert s.types()[-1] == ("ack_run", J1)  # nothing yet: TERM is ignored
    assert jobs.heartbeat_fields() == {"job_state": "running", "job_id": J1}
    s.run_until(lambda: "alive" in at_send)
    assert at_send["alive"] is False  # the whole group was gone when aborted was sent
    assert at_send["t"] - t0 >= 0.3  # TERM ignored: only the KILL after the grace ended it
    assert s.types()[-2:] == [("ack_commit", J2), ("aborted", J1)]  # (recorded after the hook)
    assert jobs.fsm.state == "committed" and jobs.fsm.job_id == J2


def test_commits_and_aborts_while_the_group_dies(make):
    """The server does not commit to a node in rehab, but a commit can still
    arrive (commits go to unavailable nodes too): it is nacked, the job it
    belongs to counted the node out already. Every abort is answered once."""
    jobs, s, pgid = start_stubborn(make)
    jobs.handle("abort", {}, 0.0)
    commit(jobs, job_id=J2)
    assert s.types()[-1] == ("nack_commit", J2)
    jobs.handle("abort", {}, 0.0)  # the server's rehab resend
    s.run_until(lambda: s.sent[-1][0] == "aborted")
    assert not group_alive(pgid)
    assert s.types()[-2:] == [("aborted", J1), ("aborted", None)]
    assert jobs.heartbeat_fields() == {"job_state": "idle", "job_id": None}
    commit(jobs, job_id=J2)
    assert s.types()[-1] == ("ack_commit", J2)


def test_abort_of_a_job_that_dies_on_term_is_answered_quickly(make):
    jobs, s = make()
    commit(jobs, command="sleep")
    jobs.handle("run", {"job_id": J1}, 0.0)
    pid = jobs._process.pid
    t0 = time.monotonic()
    jobs.handle("abort", {}, 0.0)
    s.run_until(lambda: s.sent[-1][0] == "aborted")
    assert s.types()[-1] == ("aborted", J1) and not group_alive(pid)
    assert time.monotonic() - t0 < 2.0


class UnkillableProcess(JobProcess):
    """A real job whose kill does nothing, as when killpg fails (EPERM) or a
    process hangs in the kernel: cannot be produced for real as root."""

    def abort(self, reason="aborted"):
        with self._lock:
            self._kill_reason = reason


def test_a_group_that_will_not_die_cannot_wedge_the_agent(tmp_path):
    wl = Whitelist.from_mapping({"sleep": "sleep 30", "ok": "echo hello"})
    settings = JobSettings(whitelist=wl, file_dir=str(tmp_path / "files"), term_grace_period=0.2,
                           kill_timeout=0.5, lockfile=str(tmp_path / "cc.pid"))
    jobs = AgentJobs("n1", settings, process_factory=UnkillableProcess)
    s = Session()
    jobs.attach(s)
    commit(jobs, command="sleep")
    jobs.handle("run", {"job_id": J1}, 0.0)
    pgid = jobs._process.pid
    try:
        t0 = time.monotonic()
        jobs.handle("abort", {}, 0.0)
        assert s.types()[-1] == ("ack_run", J1)
        s.run_until(lambda: s.sent[-1][0] == "aborted")
        assert time.monotonic() - t0 >= 0.5 and group_alive(pgid)
        assert s.types()[-1] == ("aborted", J1) and jobs.fsm.state == "idle"  # as before the fix
        commit(jobs, job_id=J2)  # the old job still runs: the node never runs two at once
        assert s.types()[-1] == ("nack_commit", J2) and jobs.busy
    finally:
        os.killpg(pgid, signal.SIGKILL)
    s.run_until(lambda: not jobs.busy)
    commit(jobs, job_id=J2)
    assert s.types()[-1] == ("ack_commit", J2)
    assert [t for t in s.types() if t[0] in ("aborted", "succeeded", "failed")] == [("aborted", J1)]


def test_kill_timeout_defaults_to_grace_plus_kill_wait_plus_slack():
    wl = Whitelist.from_mapping({})
    assert JobSettings(whitelist=wl, term_grace_period=5.0).effective_kill_timeout == 12.0
    assert JobSettings(whitelist=wl, kill_timeout=3.0).effective_kill_timeout == 3.0


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
