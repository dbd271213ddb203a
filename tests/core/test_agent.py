"""PROTOCOL.md §8: the agent's job runner FSM. One test per §8.2 row (with the
fixes C1, C2, C4, C6, C12), then the table itself, then the `await_kill` rows
(`aborted` only once the aborted job's process group is gone)."""

import pytest

from pushjobs.core.actions import KillProcess, ReleaseLock, Send, StartProcess
from pushjobs.core.agent import ABORTING, COMMITTED, IDLE, RUNNING, TRANSITIONS, AgentFSM, JobOptions

J1, J2 = "1" * 32, "2" * 32
OPTS1 = JobOptions(user="deploy", dir="/srv/app", env={"K": "V"}, file="raw:hello", capture=True)
OPTS2 = JobOptions(user="evil", dir="/tmp", env={"X": "Y"}, file="raw:bye", capture=False)


def send(type_, job_id, **extra):
    return Send("web01", type_, {"job_id": job_id, **extra})


def agent(state=IDLE, options=OPTS1, locked=False, await_kill=False) -> AgentFSM:
    a = AgentFSM("web01", await_kill=await_kill or state == ABORTING)
    if state in (COMMITTED, RUNNING, ABORTING):
        a.commit(J1, "chef-client", options, 0.0, locked=locked)
    if state in (RUNNING, ABORTING):
        a.run(J1, 1.0)
    if state == ABORTING:
        a.abort(2.0)
    assert a.state == state
    return a


def test_table_rows():
    assert set(TRANSITIONS) == {
        (IDLE, "commit_ok"),
        (IDLE, "commit_refused"),
        (COMMITTED, "commit_busy"),
        (RUNNING, "commit_busy"),
        (COMMITTED, "run"),
        (IDLE, "run_other"),
        (COMMITTED, "run_other"),
        (RUNNING, "run_other"),
        (RUNNING, "exit"),
        (RUNNING, "error"),
        (IDLE, "abort"),
        (COMMITTED, "abort"),
        (RUNNING, "abort"),
        (RUNNING, "abort_await_kill"),
        (ABORTING, "abort"),
        (ABORTING, "commit_busy"),
        (ABORTING, "run_other"),
        (ABORTING, "exit"),
        (ABORTING, "error"),
        (ABORTING, "kill_timeout"),
    }


# --- §8.2 row by row ----------------------------------------------------------------------


def test_row_idle_commit_checks_pass_acks_and_commits():
    a = agent()
    assert a.accepts_commit
    assert a.commit(J1, "chef-client", OPTS1, 0.0) == [send("ack_commit", J1)]
    assert a.state == COMMITTED and a.job_id == J1 and a.options == OPTS1
    assert a.heartbeat_fields() == {"job_state": "committed", "job_id": J1}
    assert not a.accepts_commit


def test_row_idle_commit_check_fails_nacks_and_stays_idle():
    a = agent()
    assert a.commit(J1, "rm -rf /", None, 0.0, refusal="not whitelisted") == [send("nack_commit", J1)]
    assert a.state == IDLE and a.job_id is None
    assert a.heartbeat_fields() == {"job_state": "idle", "job_id": None}


def test_row_idle_commit_lock_held_by_someone_else_nacks():
    a = agent()
    assert a.commit(J1, "chef-client", None, 0.0, refusal="lock held") == [send("nack_commit", J1)]
    assert a.state == IDLE


def test_row_idle_commit_lock_acquired_acks_C1():
    a = agent()
    assert a.commit(J1, "chef-client", OPTS1, 0.0, locked=True) == [send("ack_commit", J1)]
    assert a.state == COMMITTED


def test_C1_lock_is_released_once_when_the_job_starts_running():
    a = agent(COMMITTED, locked=True)
    assert a.run(J1, 1.0) == [ReleaseLock(J1), StartProcess(J1, "chef-client", OPTS1), send("ack_run", J1)]
    assert a.process_exited(J1, 0, "", "", 2.0) == [send("succeeded", J1, stdout="", stderr="")]  # no second release


def test_C1_lock_is_released_once_on_abort_while_committed():
    a = agent(COMMITTED, locked=True)
    assert a.abort(1.0) == [ReleaseLock(J1), send("aborted", J1)]
    assert a.abort(2.0) == [send("aborted", None)]


def test_C1_lock_taken_for_a_refused_commit_is_released_at_once():
    a = agent()
    assert a.commit(J1, "chef-client", None, 0.0, refusal="no such user", locked=True) == [
        ReleaseLock(J1),
        send("nack_commit", J1),
    ]


@pytest.mark.parametrize("state", [COMMITTED, RUNNING])
def test_row_busy_commit_nacks_the_new_job_and_keeps_options_C2(state):
    a = agent(state)
    assert a.commit(J2, "chef-client", OPTS2, 2.0) == [send("nack_commit", J2)]
    assert a.state == state and a.job_id == J1
    assert a.options == OPTS1  # C2: not overwritten by the refused commit


def test_C2_committed_job_runs_with_its_own_options_after_a_busy_commit():
    a = agent(COMMITTED)
    a.commit(J2, "other", OPTS2, 1.0)
    assert a.run(J1, 2.0)[0] == StartProcess(J1, "chef-client", OPTS1)


def test_busy_commit_with_a_lock_releases_only_the_new_lock():
    a = agent(COMMITTED, locked=True)
    assert a.commit(J2, "chef-client", None, 1.0, locked=True) == [ReleaseLock(J2), send("nack_commit", J2)]
    assert a.run(J1, 2.0)[0] == ReleaseLock(J1)


def test_row_committed_run_same_id_starts_the_process():
    a = agent(COMMITTED)
    assert a.run(J1, 1.0) == [StartProcess(J1, "chef-client", OPTS1), send("ack_run", J1)]
    assert a.state == RUNNING
    assert a.heartbeat_fields() == {"job_state": "running", "job_id": J1}


@pytest.mark.parametrize(
    "state,run_id",
    [(IDLE, J1), (COMMITTED, J2), (RUNNING, J1), (RUNNING, J2), (IDLE, None), (COMMITTED, None)],
)
def test_row_any_other_run_nacks_and_changes_nothing(state, run_id):
    a = agent(state)
    assert a.run(run_id, 2.0) == [send("nack_run", run_id)]
    assert a.state == state


@pytest.mark.parametrize("status,type_", [(0, "succeeded"), (1, "failed"), (2, "failed"), (-9, "failed")])
def test_row_running_process_exits(status, type_):
    a = agent(RUNNING)
    assert a.process_exited(J1, status, "out\n", None, 3.0) == [send(type_, J1, stdout="out\n", stderr="")]
    assert a.state == IDLE and a.job_id is None


def test_exit_without_capture_attaches_no_output():
    a = agent(RUNNING, options=JobOptions())
    assert a.process_exited(J1, 0, "out\n", "err", 3.0) == [send("succeeded", J1)]


def test_exit_of_another_or_a_killed_job_is_ignored():
    a = agent(RUNNING)
    assert a.process_exited(J2, 0, "", "", 3.0) == []
    assert a.state == RUNNING
    a.abort(4.0)
    assert a.process_exited(J1, -15, "", "", 5.0) == []  # the killed process reported late
    assert a.state == IDLE


@pytest.mark.parametrize(
    "state,expected",
    [
        (IDLE, [Send("web01", "aborted", {"job_id": None})]),
        (COMMITTED, [Send("web01", "aborted", {"job_id": J1})]),
        (RUNNING, [KillProcess(J1), Send("web01", "aborted", {"job_id": J1})]),  # C6
    ],
)
def test_row_any_abort_goes_idle_and_answers_aborted(state, expected):
    a = agent(state)
    assert a.abort(5.0) == expected
    assert a.state == IDLE and a.job_id is None and a.accepts_commit


def test_row_running_exception_reports_failed_and_goes_idle_C12():
    a = agent(RUNNING)
    assert a.process_error(J1, "timeout after 86400 s", 4.0) == [KillProcess(J1), send("failed", J1)]
    assert a.state == IDLE
    assert a.process_error(J1, "again", 5.0) == []


def test_spawn_failure_is_reported_after_ack_run():
    """The shell carries out StartProcess, then the ack_run; a spawn that raised is
    then reported through process_error -> failed (server: running -> failed)."""
    a = agent(COMMITTED)
    acts = a.run(J1, 1.0)
    assert [type(x).__name__ for x in acts] == ["StartProcess", "Send"]
    assert a.process_error(J1, "exec failed", 1.1)[-1] == send("failed", J1)


# --- await_kill: `aborted` once the aborted job's group is gone ------------------------------


def test_row_running_abort_await_kill_kills_and_defers_aborted():
    a = agent(RUNNING, await_kill=True)
    assert a.abort(2.0) == [KillProcess(J1)]  # no aborted yet: the group may still be dying
    assert a.state == ABORTING and a.job_id == J1 and not a.accepts_commit
    assert a.heartbeat_fields() == {"job_state": "running", "job_id": J1}  # not a wire state


@pytest.mark.parametrize("state", [IDLE, COMMITTED])
def test_await_kill_changes_nothing_when_no_process_runs(state):
    a = agent(state, locked=True, await_kill=True)
    expected = [send("aborted", None)] if state == IDLE else [ReleaseLock(J1), send("aborted", J1)]
    assert a.abort(2.0) == expected
    assert a.state == IDLE


def test_row_aborting_abort_is_counted_and_answered_later():
    a = agent(ABORTING)
    assert a.abort(3.0) == [] and a.abort(4.0) == []  # the server's rehab resends
    assert a.state == ABORTING
    # once gone: one aborted per abort, as if processed in turn (the first names the job)
    assert a.process_exited(J1, -9, None, None, 5.0) == [
        send("aborted", J1), send("aborted", None), send("aborted", None)]


def test_row_aborting_commit_is_nacked_and_a_new_lock_released():
    a = agent(ABORTING)
    assert a.commit(J2, "chef-client", OPTS2, 3.0, locked=True) == [ReleaseLock(J2), send("nack_commit", J2)]
    assert a.state == ABORTING and a.job_id == J1 and a.options == OPTS1


@pytest.mark.parametrize("run_id", [J1, J2, None])
def test_row_aborting_run_is_nacked(run_id):
    a = agent(ABORTING)
    assert a.run(run_id, 3.0) == [send("nack_run", run_id)]
    assert a.state == ABORTING


def test_row_aborting_exit_answers_aborted_and_goes_idle():
    a = agent(ABORTING)
    assert a.process_exited(J2, 0, "", "", 3.0) == []  # another job's exit: still waiting
    assert a.process_exited(J1, -15, "out", "err", 3.0) == [send("aborted", J1)]  # no succeeded/failed
    assert a.state == IDLE and a.job_id is None and a.accepts_commit
    assert a.process_exited(J1, -15, "", "", 4.0) == []


def test_row_aborting_error_answers_aborted_and_goes_idle():
    a = agent(ABORTING)
    assert a.process_error(J1, "waiter died", 3.0) == [send("aborted", J1)]
    assert a.state == IDLE


def test_row_aborting_kill_timeout_answers_aborted_so_the_agent_is_never_wedged():
    a = agent(ABORTING)
    a.abort(3.0)
    assert a.kill_timeout(J2, 9.0) == []  # a stale timer of another job
    assert a.kill_timeout(J1, 10.0) == [send("aborted", J1), send("aborted", None)]
    assert a.state == IDLE and a.accepts_commit
    assert a.kill_timeout(J1, 11.0) == [] and a.process_exited(J1, -9, "", "", 12.0) == []


def test_kill_timeout_outside_aborting_is_ignored():
    for state in (IDLE, COMMITTED, RUNNING):
        a = agent(state, await_kill=True)
        assert a.kill_timeout(J1, 5.0) == [] and a.state == state


# --- §5.4 malformed commits ----------------------------------------------------------------------


def test_commit_without_job_id_nacks_with_null():
    a = agent()
    assert a.commit(None, "chef-client", None, 0.0) == [send("nack_commit", None)]
    assert a.state == IDLE


def test_commit_without_command_nacks_with_the_commits_job_id_C4():
    a = agent()
    assert a.commit(J1, None, None, 0.0) == [send("nack_commit", J1)]
    assert a.state == IDLE


def test_busy_commit_without_command_also_carries_the_job_id():
    a = agent(RUNNING)
    assert a.commit(J2, None, None, 0.0) == [send("nack_commit", J2)]


# --- options --------------------------------------------------------------------------------------------


def test_options_from_commit_copy_truthy_values():
    body = {"job_id": J1, "command": "x", "user": "deploy", "dir": "", "env": {"A": "1"}, "file": None, "capture": True}
    assert JobOptions.from_commit(body) == JobOptions(user="deploy", dir=None, env={"A": "1"}, file=None, capture=True)
    assert JobOptions.from_commit({}) == JobOptions()


@pytest.mark.parametrize("body", [{"user": 5}, {"dir": ["x"]}, {"env": {"A": 1}}, {"env": "A=1"}, {"file": {"a": 1}}])
def test_options_from_commit_refuse_wrong_types(body):
    with pytest.raises(ValueError):
        JobOptions.from_commit(body)
