"""PROTOCOL.md §7: the server node FSM. One test per §7.3 row, then §7.2 routing."""

import pytest

from pushjobs.core.actions import ArmTimer, CancelTimer, ForwardToJob, Rebind, Send, SetAvailability, Terminate
from pushjobs.core.node import IDLE, POST_INIT, REHAB, TERMINATED, TRANSITIONS, NodeFSM, normalize_job_id

INC = "inc-1"
R1, R2 = b"\x00route1", b"\x00route2"
JOB = "a" * 32
ABORT = Send("web01", "abort", {})
ARM = ArmTimer("rehab", 1.0)


def msg(type_, job_id=None, incarnation=INC, **extra):
    return {"node": "web01", "org": "acme", "type": type_, "incarnation_id": incarnation, "job_id": job_id, **extra}


def fsm(state=POST_INIT, **kw) -> NodeFSM:
    f = NodeFSM("web01", INC, R1, rehab_timer=1.0, interval=10.0, **kw)
    if state in (REHAB, IDLE):
        f.start(0.0)
    if state == IDLE:
        f.message(msg("aborted"), R1, 0.1)
    assert f.state == state
    return f


def test_table_has_exactly_the_rows_of_section_7_3():
    assert set(TRANSITIONS) == {
        (POST_INIT, "start"),
        (REHAB, "aborted"),
        (REHAB, "timer"),
        (REHAB, "rehab"),
        (IDLE, "rehab"),
        (IDLE, "aborted"),
    }


# --- §7.3, row by row -------------------------------------------------------------


def test_row_post_init_start_sends_abort_and_arms_rehab_timer():
    f = fsm()
    assert not f.available
    assert f.start(0.0) == [ABORT, ARM]
    assert f.state == REHAB and not f.available


def test_row_post_init_first_message_is_reprocessed_in_rehab():
    f = fsm()
    # the first message: abort + timer, then the heartbeat is handled in rehab (nothing more)
    assert f.message(msg("heartbeat"), R1, 0.0) == [ABORT, ARM]
    assert f.state == REHAB
    # an `aborted` as the very first message goes straight through rehab to idle
    g = fsm()
    assert g.message(msg("aborted"), R1, 0.0) == [ABORT, ARM, CancelTimer("rehab"), SetAvailability("web01", True)]
    assert g.state == IDLE


def test_row_post_init_rehab_request_starts_the_fsm():
    f = fsm()
    assert f.rehab(0.0) == [ABORT, ARM]
    assert f.state == REHAB


def test_row_rehab_aborted_goes_idle_and_available():
    f = fsm(REHAB)
    assert f.message(msg("aborted"), R1, 0.5) == [CancelTimer("rehab"), SetAvailability("web01", True)]
    assert f.state == IDLE and f.available


def test_row_rehab_timer_resends_abort_and_rearms_with_backoff():
    f = fsm(REHAB)
    delays = []
    for t in range(1, 7):
        acts = f.on_timer("rehab", float(t))
        assert acts[0] == ABORT and len(acts) == 2 and acts[1].name == "rehab"
        delays.append(acts[1].delay)
    assert delays == [2.0, 4.0, 8.0, 8.0, 8.0, 8.0]  # 1 s first (on entry), then 2, 4, 8, capped
    assert f.state == REHAB
    # answered: idle; the next rehab starts again at rehab_timer
    f.message(msg("aborted"), R1, 7.0)
    assert f.state == IDLE
    assert f.rehab(8.0) == [SetAvailability("web01", False), ABORT, ARM]
    assert f.on_timer("rehab", 9.0) == [ABORT, ArmTimer("rehab", 2.0)]


def test_row_rehab_rehab_request_is_ignored():
    f = fsm(REHAB)
    assert f.rehab(0.5) == []
    assert f.state == REHAB


def test_row_idle_rehab_request_sends_abort_and_goes_rehab():
    f = fsm(IDLE)
    assert f.rehab(1.0) == [SetAvailability("web01", False), ABORT, ARM]
    assert f.state == REHAB and not f.available


def test_row_idle_aborted_does_nothing():
    f = fsm(IDLE)
    assert f.message(msg("aborted"), R1, 1.0) == []
    assert f.state == IDLE


@pytest.mark.parametrize("state", [REHAB, IDLE])
def test_row_any_heartbeat_with_other_incarnation_terminates(state):
    f = fsm(state)
    out = f.message(msg("heartbeat", incarnation="inc-2"), R1, 1.0)
    expected = ([CancelTimer("rehab")] if state == REHAB else []) + [Terminate("web01", "incarnation")]
    assert out == expected
    assert f.state == TERMINATED and not f.alive and not f.available


def test_row_any_liveness_dead_terminates_at_heartbeat():
    f = fsm(IDLE)
    assert f.message(msg("heartbeat"), R1, 0.0) == []  # creates the liveness record
    assert f.message(msg("heartbeat"), R1, 5.0) == []
    # 60 s of silence (6 intervals of 10 s): the next heartbeat is fatal
    assert f.message(msg("heartbeat"), R1, 65.0) == [Terminate("web01", "dead")]
    assert f.state == TERMINATED


def test_row_any_liveness_dead_terminates_at_scan():
    f = fsm(REHAB)
    assert f.check(0.0) == []  # no heartbeat yet: no record, kept
    f.message(msg("heartbeat"), R1, 0.0)
    assert f.check(30.0) == []  # 1.15, 0.86, 0.65
    assert f.check(40.0) == [CancelTimer("rehab"), Terminate("web01", "dead")]


def test_timer_in_idle_or_unknown_timer_is_ignored():
    f = fsm(IDLE)
    assert f.on_timer("rehab", 5.0) == []
    assert f.on_timer("other", 5.0) == []
    assert fsm(REHAB).on_timer("other", 5.0) == []


def test_terminated_fsm_ignores_everything():
    f = fsm(IDLE)
    f.message(msg("heartbeat", incarnation="x"), R1, 1.0)
    assert f.message(msg("aborted"), R2, 2.0) == []
    assert f.rehab(2.0) == []
    assert f.on_timer("rehab", 2.0) == []
    assert f.check(1000.0) == []


# --- §7.2 routing -----------------------------------------------------------------


def test_routing_id_change_rebinds_and_acks_before_processing():
    f = fsm(REHAB)
    out = f.message(msg("aborted"), R2, 1.0)
    assert out == [Rebind("web01", R2), Send("web01", "ack", {}), CancelTimer("rehab"), SetAvailability("web01", True)]
    assert f.routing_id == R2
    assert f.message(msg("heartbeat"), R2, 2.0) == []  # same route: no second ack


def test_heartbeat_naming_a_job_that_does_not_exist_requests_rehab():
    f = fsm(IDLE)
    assert f.message(msg("heartbeat", job_id=JOB), R1, 1.0, live_jobs=set()) == [
        SetAvailability("web01", False),
        ABORT,
        ARM,
    ]


def test_heartbeat_naming_a_live_job_or_none_is_fine():
    f = fsm(IDLE)
    assert f.message(msg("heartbeat", job_id=JOB), R1, 1.0, live_jobs={JOB}) == []
    assert f.message(msg("heartbeat", job_id=None), R1, 2.0) == []
    assert f.message(msg("heartbeat", job_id="null"), R1, 3.0) == []
    assert f.state == IDLE


def test_heartbeat_for_dead_job_and_new_incarnation_rehabs_then_terminates():
    f = fsm(IDLE)
    out = f.message(msg("heartbeat", job_id=JOB, incarnation="new"), R1, 1.0)
    assert out == [SetAvailability("web01", False), ABORT, ARM, CancelTimer("rehab"), Terminate("web01", "incarnation")]


def test_aborted_is_forwarded_to_a_live_job():
    f = fsm(REHAB)
    body = msg("aborted", job_id=JOB)
    out = f.message(body, R1, 1.0, live_jobs={JOB})
    assert out == [CancelTimer("rehab"), SetAvailability("web01", True), ForwardToJob(JOB, "web01", "aborted", body)]


def test_aborted_for_unknown_job_does_not_rehab():
    f = fsm(IDLE)
    assert f.message(msg("aborted", job_id="b" * 32), R1, 1.0, live_jobs={JOB}) == []
    assert f.state == IDLE


@pytest.mark.parametrize("type_", ["ack_commit", "nack_commit", "ack_run", "nack_run", "succeeded", "failed"])
def test_job_messages_are_forwarded_to_a_live_job(type_):
    f = fsm(IDLE)
    body = msg(type_, job_id=JOB, stdout="out")
    assert f.message(body, R1, 1.0, live_jobs={JOB}) == [ForwardToJob(JOB, "web01", type_, body)]
    assert f.state == IDLE  # the node FSM does not judge job messages (§7.2)


@pytest.mark.parametrize("job_id", [None, "null", "c" * 32, "d" * 65, 17])
def test_job_messages_for_no_or_unknown_job_request_rehab(job_id):
    f = fsm(IDLE)
    live = {"d" * 65, JOB}  # an over-long id never matches, even if "live"
    assert f.message(msg("ack_commit", job_id=job_id), R1, 1.0, live_jobs=live) == [
        SetAvailability("web01", False),
        ABORT,
        ARM,
    ]
    assert f.state == REHAB


@pytest.mark.parametrize("body", [{"node": "web01"}, msg("bogus"), msg(None), msg(["heartbeat"])])
def test_unknown_or_missing_type_is_ignored(body):
    f = fsm(IDLE)
    assert f.message(body, R1, 1.0) == []
    assert f.state == IDLE


def test_normalize_job_id():
    assert normalize_job_id(None) is None
    assert normalize_job_id("null") is None
    assert normalize_job_id(JOB) == JOB
    assert normalize_job_id("x" * 64) == "x" * 64
    assert normalize_job_id("x" * 65) == ""
    assert normalize_job_id("é" * 33) == ""  # 66 bytes
    assert normalize_job_id(12) == ""


def test_post_init_heartbeat_then_liveness_record_created():
    f = fsm()
    f.message(msg("heartbeat"), R1, 0.0)
    assert f.liveness is not None and f.liveness.heartbeats == 1
