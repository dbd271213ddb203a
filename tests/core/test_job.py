"""PROTOCOL.md §9: the job FSM. Every §9.4 and §9.5 row is a test (written out
here independently of the tables in job.py), then the §9.3 start-up, quorum,
timers, the abort path, and invariants."""

import pytest

from pushjobs.core.actions import (
    ArmTimer,
    CancelTimer,
    Emit,
    Finished,
    Rehab,
    Send,
    SetJobStatus,
    SetNodeStatus,
    StoreOutput,
)
from pushjobs.core.job import RUNNING, VOTING, JobFSM, JobSpec

JOB = "aaaaaaaaaaaa25fd67fa8715fd547d3d"


def spec(nodes=("a", "b"), **kw) -> JobSpec:
    kw.setdefault("run_timeout", 300)
    kw.setdefault("requestor", "admin")
    return JobSpec(job_id=JOB, command="chef-client", nodes=tuple(nodes), **kw)


def started(nodes=("a", "b"), available=None, **kw) -> JobFSM:
    j = JobFSM(spec(nodes, **kw), voting_timeout=60, server_name="push.example.com")
    j.start(set(nodes) if available is None else available, 0.0)
    return j


# shorthands for the expected actions
def vote(n, s):
    return Emit("quorum_vote", {"node": n, "status": s})


def rehab(n):
    return [Rehab(n), Emit("rehab", {"node": n})]


def complete(n, s):
    return Emit("run_complete", {"node": n, "status": s})


def st(n, s):
    return SetNodeStatus(n, s)


# --- §9.4 voting: node "a" is put in the column's status, node "b" stays new ----------

VOTING_SETUP = {"new": [], "ready": ["ack_commit"], "terminal": ["nack_commit"]}
OTHER = ["ack_run", "nack_run", "succeeded", "failed", "aborted"]

VOTING_ROWS = [
    # (event, column, expected actions for node a, a's status afterwards)
    ("ack_commit", "new", [st("a", "ready"), vote("a", "success")], "ready"),
    ("ack_commit", "ready", [vote("a", "unexpected_commit")], "ready"),
    ("ack_commit", "terminal", [*rehab("a"), vote("a", "client_died_while_voting")], "nacked"),
    ("nack_commit", "new", [st("a", "nacked"), vote("a", "failure")], "nacked"),
    ("nack_commit", "ready", [st("a", "unavailable"), *rehab("a"), vote("a", "lost_availibility")], "unavailable"),
    ("nack_commit", "terminal", [*rehab("a"), vote("a", "client_died_while_voting")], "nacked"),
    ("down", "new", [vote("a", "down"), st("a", "unavailable"), *rehab("a")], "unavailable"),
    ("down", "ready", [vote("a", "down"), st("a", "unavailable"), *rehab("a")], "unavailable"),
    ("down", "terminal", [vote("a", "down"), *rehab("a")], "nacked"),
]
for _ev in OTHER:
    VOTING_ROWS += [
        (_ev, "new", [st("a", "unavailable"), *rehab("a")], "unavailable"),
        (_ev, "ready", [st("a", "unavailable"), *rehab("a")], "unavailable"),
        (_ev, "terminal", [*rehab("a")], "nacked"),
    ]


def test_voting_rows_cover_the_table():
    assert {(e, c) for e, c, _, _ in VOTING_ROWS} == set(VOTING)
    assert len(VOTING_ROWS) == 8 * 3


@pytest.mark.parametrize("event,column,expected,after", VOTING_ROWS, ids=[f"{r[0]}-{r[1]}" for r in VOTING_ROWS])
def test_voting_row(event, column, expected, after):
    j = started()
    for e in VOTING_SETUP[column]:
        j.message("a", e, {}, 1.0)
    if event == "down":
        out = j.down("a", 2.0)
    else:
        out = j.message("a", event, {"stdout": "x", "stderr": "y"}, 2.0)
    assert out == expected  # b is still new: no decision yet (no early start)
    assert j.nodes == {"a": after, "b": "new"}
    assert j.status == "voting"


# --- §9.5 running: nodes a, b, c committed; a is put in the column; b stays ready ------

RUN_SETUP = {"ready": [], "running": ["ack_run"], "terminal": ["ack_run", "failed"]}
BODY = {"stdout": "out\n", "stderr": ""}

RUNNING_ROWS = [
    ("ack_run", "ready", [st("a", "running"), Emit("run_start", {"node": "a"})], "running"),
    ("ack_run", "running", [], "running"),
    ("ack_run", "terminal", [complete("a", "client_died_while_running"), *rehab("a")], "failed"),
    ("nack_run", "ready", [st("a", "failed"), *rehab("a"), complete("a", "run_nacked")], "failed"),
    ("nack_run", "running", [st("a", "failed"), *rehab("a"), complete("a", "run_nacked_while_running")], "failed"),
    ("nack_run", "terminal", [*rehab("a"), complete("a", "client_died_while_running")], "failed"),
    ("succeeded", "ready", [StoreOutput("a", "out\n", ""), st("a", "crashed"), *rehab("a"), complete("a", "crashed")], "crashed"),
    ("succeeded", "running", [StoreOutput("a", "out\n", ""), st("a", "succeeded"), complete("a", "success")], "succeeded"),
    ("succeeded", "terminal", [StoreOutput("a", "out\n", ""), *rehab("a"), complete("a", "client_died_while_running")], "failed"),
    ("failed", "ready", [StoreOutput("a", "out\n", ""), st("a", "crashed"), *rehab("a"), complete("a", "crashed")], "crashed"),
    ("failed", "running", [StoreOutput("a", "out\n", ""), st("a", "failed"), complete("a", "failure")], "failed"),
    ("failed", "terminal", [StoreOutput("a", "out\n", ""), *rehab("a"), complete("a", "client_died_while_running")], "failed"),
]
for _ev in ("down", "ack_commit", "nack_commit", "aborted"):
    RUNNING_ROWS += [
        (_ev, "ready", [st("a", "crashed"), *rehab("a"), complete("a", "crashed")], "crashed"),
        (_ev, "running", [st("a", "crashed"), *rehab("a"), complete("a", "crashed")], "crashed"),
        # S13 kept: a terminal node going down (or chattering) adds a run_complete
        (_ev, "terminal", [*rehab("a"), complete("a", "client_died_while_running")], "failed"),
    ]


def running_job() -> JobFSM:
    j = started(("a", "b"))
    j.message("a", "ack_commit", {}, 1.0)
    j.message("b", "ack_commit", {}, 1.0)
    assert j.status == "running"
    return j


def test_running_rows_cover_the_table():
    assert {(e, c) for e, c, _, _ in RUNNING_ROWS} == set(RUNNING)
    assert len(RUNNING_ROWS) == 8 * 3


@pytest.mark.parametrize("event,column,expected,after", RUNNING_ROWS, ids=[f"{r[0]}-{r[1]}" for r in RUNNING_ROWS])
def test_running_row(event, column, expected, after):
    j = running_job()
    for e in RUN_SETUP[column]:
        j.message("a", e, {}, 2.0)
    out = j.down("a", 3.0) if event == "down" else j.message("a", event, BODY, 3.0)
    assert out == expected  # b is still ready: the job goes on
    assert j.nodes == {"a": after, "b": "ready"}
    assert j.status == "running"


def test_output_is_stored_only_when_present_and_partial_output_is_passed_on():
    j = running_job()
    j.message("a", "ack_run", {}, 2.0)
    assert not any(isinstance(a, StoreOutput) for a in j.message("a", "succeeded", {}, 3.0))
    j.message("b", "ack_run", {}, 2.0)
    assert j.message("b", "failed", {"stderr": "boom"}, 3.0)[0] == StoreOutput("b", None, "boom")


def test_voting_phase_never_stores_output():
    j = started()
    assert not any(isinstance(a, StoreOutput) for a in j.message("a", "succeeded", BODY, 1.0))


# --- §9.8 worked traces ---------------------------------------------------------------------


def names(actions):
    out = []
    for a in actions:
        if isinstance(a, Emit):
            status = a.data.get("status")
            out.append(f"{a.name}({status})" if status else a.name)
    return out


def run_trace(nodes, steps, available=None, quorum=None):
    j = JobFSM(spec(nodes, quorum=quorum), voting_timeout=60, server_name="s")
    acts = j.start(set(nodes) if available is None else available, 0.0)
    t = 0.0
    for step in steps:
        t += 1.0
        node, ev = step
        if node is None:
            acts += j.on_timer(ev, t)
        elif ev == "down":
            acts += j.down(node, t)
        else:
            acts += j.message(node, ev, {}, t)
    return j, acts


TRACES = [
    (
        "1 node, command exits 0",
        ["a"],
        [("a", "ack_commit"), ("a", "ack_run"), ("a", "succeeded")],
        None,
        None,
        ["start", "quorum_vote(success)", "quorum_succeeded", "run_start", "run_complete(success)", "job_complete(complete)"],
        "complete",
        {"a": "succeeded"},
    ),
    (
        "1 node, exits non-zero",
        ["a"],
        [("a", "ack_commit"), ("a", "ack_run"), ("a", "failed")],
        None,
        None,
        ["start", "quorum_vote(success)", "quorum_succeeded", "run_start", "run_complete(failure)", "job_complete(complete)"],
        "complete",
        {"a": "failed"},
    ),
    (
        "node not connected",
        ["a"],
        [],
        set(),
        None,
        ["start", "quorum_vote(down)", "rehab", "job_complete(quorum_failed)"],
        "quorum_failed",
        {"a": "unavailable"},
    ),
    (
        "node not whitelisted / busy",
        ["a"],
        [("a", "nack_commit")],
        None,
        None,
        ["start", "quorum_vote(failure)", "job_complete(quorum_failed)"],
        "quorum_failed",
        {"a": "nacked"},
    ),
    (
        "node never answers commit",
        ["a"],
        [(None, "voting")],
        None,
        None,
        ["start", "quorum_vote(voting_timeout)", "job_complete(quorum_failed)"],
        "quorum_failed",
        {"a": "unavailable"},
    ),
    (
        "node replies nack_run",
        ["a"],
        [("a", "ack_commit"), ("a", "nack_run")],
        None,
        None,
        ["start", "quorum_vote(success)", "quorum_succeeded", "rehab", "run_complete(run_nacked)", "job_complete(complete)"],
        "complete",
        {"a": "failed"},
    ),
    (
        "node never answers run, run_timeout hits",
        ["a"],
        [("a", "ack_commit"), (None, "run")],
        None,
        None,
        ["start", "quorum_vote(success)", "quorum_succeeded", "job_complete(timed_out)"],
        "timed_out",
        {"a": "timed_out"},
    ),
    (
        "3 nodes, 1 busy, quorum 3",
        ["a", "b", "c"],
        [("a", "ack_commit"), ("b", "nack_commit"), ("c", "ack_commit")],
        None,
        3,
        ["start", "quorum_vote(success)", "quorum_vote(failure)", "quorum_vote(success)", "job_complete(quorum_failed)"],
        "quorum_failed",
        {"a": "was_ready", "b": "nacked", "c": "was_ready"},
    ),
    (
        "node dies after ack_run",
        ["a"],
        [("a", "ack_commit"), ("a", "ack_run"), ("a", "down")],
        None,
        None,
        ["start", "quorum_vote(success)", "quorum_succeeded", "run_start", "rehab", "run_complete(crashed)", "job_complete(complete)"],
        "complete",
        {"a": "crashed"},
    ),
]


@pytest.mark.parametrize("title,nodes,steps,available,quorum,events,final,node_final", TRACES, ids=[t[0] for t in TRACES])
def test_worked_trace(title, nodes, steps, available, quorum, events, final, node_final):
    j, acts = run_trace(nodes, steps, available, quorum)
    assert names(acts) == events
    assert j.status == final and j.finished
    assert j.nodes == node_final
    assert acts[-1] == Finished(final)
    assert [a.status for a in acts if isinstance(a, SetJobStatus)][-1] == final
    # persisted job-node statuses agree with the FSM's view
    persisted = {}
    for a in acts:
        if isinstance(a, SetNodeStatus):
            persisted[a.node] = a.status
    for n, s in node_final.items():
        assert persisted.get(n, "new") == s


def test_trace_happy_path_full_action_list():
    j = JobFSM(spec(("a",)), voting_timeout=60, server_name="push.example.com")
    assert j.start({"a"}, 0.0) == [
        Emit("start", {"command": "chef-client", "run_timeout": 300, "quorum": 1, "node_count": 1, "user": "admin", "capture": False}),
        SetJobStatus("voting"),
        Send("a", "commit", {"job_id": JOB, "server": "push.example.com", "command": "chef-client", "capture": False}),
        ArmTimer("voting", 60),
    ]
    assert j.message("a", "ack_commit", {}, 1.0) == [
        SetNodeStatus("a", "ready"),
        vote("a", "success"),
        Emit("quorum_succeeded", {}),
        CancelTimer("voting"),
        SetJobStatus("running"),
        Send("a", "run", {"job_id": JOB}),
        ArmTimer("run", 300),
    ]
    assert j.message("a", "ack_run", {}, 2.0) == [SetNodeStatus("a", "running"), Emit("run_start", {"node": "a"})]
    assert j.message("a", "succeeded", {"stdout": "hi\n", "stderr": ""}, 3.0) == [
        StoreOutput("a", "hi\n", ""),
        SetNodeStatus("a", "succeeded"),
        complete("a", "success"),
        Emit("job_complete", {"status": "complete"}),
        SetJobStatus("complete"),
        CancelTimer("run"),
        Finished("complete"),
    ]


# --- §9.3 start-up ----------------------------------------------------------------------------


def test_start_event_and_commit_carry_the_options():
    j = JobFSM(
        spec(("a",), user="deploy", dir="/srv/app", env={"K": "V"}, file="base64:dGVzdA==", capture=True, quorum=1),
        server_name="push.example.com",
    )
    acts = j.start({"a"}, 0.0)
    assert acts[0] == Emit(
        "start",
        {
            "command": "chef-client",
            "run_timeout": 300,
            "quorum": 1,
            "node_count": 1,
            "user": "admin",
            "job_user": "deploy",
            "dir": "/srv/app",
            "env": {"K": "V"},
            "file_specified": True,
            "capture": True,
        },
    )
    assert list(acts[0].data) == ["command", "run_timeout", "quorum", "node_count", "user", "job_user", "dir", "env", "file_specified", "capture"]
    assert acts[2] == Send(
        "a",
        "commit",
        {
            "job_id": JOB,
            "server": "push.example.com",
            "command": "chef-client",
            "user": "deploy",
            "dir": "/srv/app",
            "env": {"K": "V"},
            "file": "base64:dGVzdA==",
            "capture": True,
        },
    )


def test_commit_goes_to_every_node_even_unavailable_ones_then_downs_are_processed():
    j = JobFSM(spec(("a", "b", "c")), voting_timeout=60)
    acts = j.start({"b"}, 0.0)
    sends = [a.node for a in acts if isinstance(a, Send)]
    assert sends == ["a", "b", "c"]
    i_timer = acts.index(ArmTimer("voting", 60))
    assert all(not isinstance(a, Send) for a in acts[i_timer:])
    assert acts[i_timer + 1 :] == [
        vote("a", "down"),
        st("a", "unavailable"),
        *rehab("a"),
        vote("c", "down"),
        st("c", "unavailable"),
        *rehab("c"),
    ]
    assert j.nodes == {"a": "unavailable", "b": "new", "c": "unavailable"}
    assert j.status == "voting"


def test_start_twice_does_nothing():
    j = started()
    assert j.start({"a", "b"}, 1.0) == []


def test_duplicate_nodes_are_refused():
    with pytest.raises(ValueError):
        JobFSM(spec(("a", "a")))


# --- quorum -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "quorum,answers,outcome",
    [
        (None, ["ack_commit", "ack_commit", "ack_commit"], "running"),
        (None, ["ack_commit", "ack_commit", "nack_commit"], "quorum_failed"),
        (2, ["ack_commit", "ack_commit", "nack_commit"], "running"),
        (2, ["ack_commit", "nack_commit", "nack_commit"], "quorum_failed"),
        (0, ["nack_commit", "nack_commit", "nack_commit"], "complete"),  # quorum 0 always succeeds
        (4, ["ack_commit", "ack_commit", "ack_commit"], "quorum_failed"),  # larger than the node count
    ],
)
def test_quorum_is_an_absolute_count_decided_when_no_node_is_new(quorum, answers, outcome):
    j = started(("a", "b", "c"), quorum=quorum)
    for n, ans in zip("abc", answers):
        assert j.status == "voting"  # no early start
        j.message(n, ans, {}, 1.0)
    assert j.status == outcome


def test_quorum_zero_with_no_ready_nodes_completes_immediately():
    j = started(("a",), quorum=0)
    acts = j.message("a", "nack_commit", {}, 1.0)
    assert names(acts) == ["quorum_vote(failure)", "quorum_succeeded", "job_complete(complete)"]
    assert not any(isinstance(a, Send) for a in acts)


def test_quorum_failure_makes_ready_nodes_was_ready_with_bulk_rehab():
    j = started(("a", "b"))
    j.message("a", "ack_commit", {}, 1.0)
    acts = j.message("b", "nack_commit", {}, 2.0)
    assert acts == [
        st("b", "nacked"),
        vote("b", "failure"),
        st("a", "was_ready"),
        Rehab("a", bulk=True),
        Emit("job_complete", {"status": "quorum_failed"}),
        SetJobStatus("quorum_failed"),
        CancelTimer("voting"),
        Finished("quorum_failed"),
    ]


# --- timers ---------------------------------------------------------------------------------------


def test_voting_timeout_votes_then_bulk_rehabs_every_new_node():
    j = started(("a", "b", "c"), quorum=1)
    j.message("b", "ack_commit", {}, 1.0)
    acts = j.on_timer("voting", 60.0)
    assert acts[:6] == [
        vote("a", "voting_timeout"),
        st("a", "unavailable"),
        Rehab("a", bulk=True),
        vote("c", "voting_timeout"),
        st("c", "unavailable"),
        Rehab("c", bulk=True),
    ]
    assert names(acts[6:]) == ["quorum_succeeded"]
    assert j.status == "running"


def test_late_voting_timer_is_ignored_while_running_and_after_finish():
    j = running_job()
    assert j.on_timer("voting", 60.0) == []
    j.on_timer("run", 300.0)
    assert j.finished
    assert j.on_timer("voting", 60.0) == [] and j.on_timer("run", 301.0) == []


def test_run_timer_times_out_ready_and_running_nodes_only():
    j = started(("a", "b", "c"), quorum=2)
    j.message("a", "ack_commit", {}, 1.0)
    j.message("b", "ack_commit", {}, 1.0)
    j.message("c", "nack_commit", {}, 1.0)
    j.message("a", "ack_run", {}, 2.0)
    assert j.on_timer("run", 300.0) == [
        st("a", "timed_out"),
        Rehab("a", bulk=True),
        st("b", "timed_out"),
        Rehab("b", bulk=True),
        Emit("job_complete", {"status": "timed_out"}),
        SetJobStatus("timed_out"),
        CancelTimer("run"),
        Finished("timed_out"),
    ]
    assert j.nodes == {"a": "timed_out", "b": "timed_out", "c": "nacked"}


def test_run_timeout_zero_arms_an_immediate_timer():
    j = started(("a",), run_timeout=0)
    acts = j.message("a", "ack_commit", {}, 1.0)
    assert ArmTimer("run", 0) in acts
    assert names(j.on_timer("run", 1.0)) == ["job_complete(timed_out)"]


def test_unknown_timer_is_ignored():
    assert started().on_timer("bogus", 1.0) == []


# --- abort (ours) ----------------------------------------------------------------------------------


def test_abort_while_voting():
    j = started(("a", "b", "c"))
    j.message("a", "ack_commit", {}, 1.0)
    j.message("b", "nack_commit", {}, 1.0)
    assert j.abort(2.0) == [
        Send("a", "abort", {}),
        st("a", "aborted"),
        Send("c", "abort", {}),
        st("c", "aborted"),
        Emit("job_complete", {"status": "aborted"}),
        SetJobStatus("aborted"),
        CancelTimer("voting"),
        Finished("aborted"),
    ]
    assert j.nodes == {"a": "aborted", "b": "nacked", "c": "aborted"}
    assert j.status == "aborted"


def test_abort_while_running():
    j = started(("a", "b", "c"), quorum=2)
    for n, e in (("a", "ack_commit"), ("b", "ack_commit"), ("c", "ack_commit")):
        j.message(n, e, {}, 1.0)
    j.message("a", "ack_run", {}, 2.0)
    j.message("c", "ack_run", {}, 2.0)
    j.message("c", "succeeded", {}, 3.0)
    acts = j.abort(4.0)
    assert acts == [
        Send("a", "abort", {}),
        st("a", "aborted"),
        Send("b", "abort", {}),
        st("b", "aborted"),
        Emit("job_complete", {"status": "aborted"}),
        SetJobStatus("aborted"),
        CancelTimer("run"),
        Finished("aborted"),
    ]
    assert j.nodes == {"a": "aborted", "b": "aborted", "c": "succeeded"}


def test_abort_after_finish_or_twice_does_nothing():
    j = started(("a",))
    j.message("a", "nack_commit", {}, 1.0)
    assert j.finished and j.abort(2.0) == []
    k = started(("a",))
    assert k.abort(1.0)
    assert k.abort(2.0) == []


def test_abort_before_start_sends_nothing():
    j = JobFSM(spec(("a",)))
    assert j.abort(0.0) == [
        st("a", "aborted"),
        Emit("job_complete", {"status": "aborted"}),
        SetJobStatus("aborted"),
        Finished("aborted"),
    ]
    assert j.start({"a"}, 1.0) == []


# --- finished jobs, strangers, invariants --------------------------------------------------------------


def test_finished_job_ignores_node_events():
    j, _ = run_trace(["a"], [("a", "nack_commit")])
    for ev in ("ack_commit", "ack_run", "succeeded", "aborted"):
        assert j.message("a", ev, BODY, 10.0) == []
    assert j.down("a", 10.0) == []


def test_messages_from_nodes_outside_the_job_or_unknown_types_are_ignored():
    j = started()
    assert j.message("zz", "ack_commit", {}, 1.0) == []
    assert j.message("a", "heartbeat", {}, 1.0) == []
    assert j.message("a", "bogus", {}, 1.0) == []
    r = running_job()
    assert r.message("a", "heartbeat", {}, 1.0) == []
    assert j.nodes == {"a": "new", "b": "new"}


def test_terminal_node_status_never_changes_in_random_runs():
    from hypothesis import given, settings
    from hypothesis import strategies as s

    from pushjobs.core.job import NODE_TERMINAL

    events = s.lists(
        s.tuples(
            s.sampled_from(["a", "b", "c", None]),
            s.sampled_from(
                ["ack_commit", "nack_commit", "ack_run", "nack_run", "succeeded", "failed", "aborted", "down", "voting", "run", "abort"]
            ),
        ),
        max_size=30,
    )

    @settings(max_examples=200, deadline=None)
    @given(events, s.sets(s.sampled_from(["a", "b", "c"])), s.sampled_from([None, 0, 1, 2, 3, 4]))
    def check(evs, available, quorum):
        j = JobFSM(spec(("a", "b", "c"), quorum=quorum))
        acts = j.start(available, 0.0)
        for node, ev in evs:
            before = dict(j.nodes)
            if ev == "abort":
                out = j.abort(1.0)
            elif node is None or ev in ("voting", "run"):
                out = j.on_timer(ev, 1.0)
            elif ev == "down":
                out = j.down(node, 1.0)
            else:
                out = j.message(node, ev, BODY, 1.0)
            for n, s_ in before.items():
                if s_ in NODE_TERMINAL:
                    assert j.nodes[n] == s_
            acts += out
        finished = [a for a in acts if isinstance(a, Finished)]
        assert len(finished) == (1 if j.finished else 0)
        if finished:
            assert acts[-1] == finished[0] or all(not isinstance(a, (Emit, Send)) for a in acts[acts.index(finished[0]) :])
            emits = [a for a in acts if isinstance(a, Emit)]
            assert emits[-1] == Emit("job_complete", {"status": j.status})
        assert sum(1 for a in acts if isinstance(a, Emit) and a.name == "start") == 1

    check()


# --- crash (§9.7) ----------------------------------------------------------------------------------------


def test_crash_while_running_rehabs_every_node_and_emits_nothing():
    j = started(("a", "b", "c"), quorum=2)
    j.message("a", "ack_commit", {}, 1.0)
    j.message("b", "ack_commit", {}, 1.0)
    j.message("c", "nack_commit", {}, 1.0)
    j.message("a", "ack_run", {}, 2.0)
    assert j.crash(3.0) == [
        SetJobStatus("crashed"),
        CancelTimer("run"),
        st("a", "crashed"),
        Rehab("a", bulk=True),
        st("b", "crashed"),
        Rehab("b", bulk=True),
        Rehab("c", bulk=True),
        Finished("crashed"),
    ]
    assert j.finished and j.nodes == {"a": "crashed", "b": "crashed", "c": "nacked"}
    assert j.crash(4.0) == [] and j.abort(4.0) == [] and j.message("a", "succeeded", BODY, 4.0) == []


def test_crash_while_voting_cancels_the_voting_timer():
    j = started(("a",))
    assert j.crash(1.0)[:2] == [SetJobStatus("crashed"), CancelTimer("voting")]


# --- per-status counts: every message O(1) (issue #8) -------------------------------------------------


def test_status_counts_match_a_recount_in_random_runs():
    from collections import Counter

    from hypothesis import given, settings
    from hypothesis import strategies as s

    events = s.lists(
        s.tuples(
            s.sampled_from(["a", "b", "c", "d", "zz", None]),
            s.sampled_from(
                ["ack_commit", "nack_commit", "ack_run", "nack_run", "succeeded", "failed", "aborted", "down",
                 "voting", "run", "abort", "crash"]
            ),
        ),
        max_size=40,
    )

    @settings(max_examples=200, deadline=None)
    @given(events, s.sets(s.sampled_from(["a", "b", "c", "d"])), s.sampled_from([None, 0, 1, 2, 3, 4, 5]),
           s.booleans())
    def check(evs, available, quorum, start):
        j = JobFSM(spec(("a", "b", "c", "d"), quorum=quorum))
        if start:
            j.start(available, 0.0)
        assert j.counts == dict(Counter(j.nodes.values()))
        for node, ev in evs:
            if ev == "abort":
                j.abort(1.0)
            elif ev == "crash":
                j.crash(1.0)
            elif node is None or ev in ("voting", "run"):
                j.on_timer(ev, 1.0)
            elif ev == "down":
                j.down(node, 1.0)
            else:
                j.message(node, ev, BODY, 1.0)
            recount = Counter(j.nodes.values())
            assert j.counts == dict(recount)
            for status in ("new", "ready", "running", "succeeded", "unavailable", "bogus"):
                assert j.count(status) == recount[status]
            assert sum(j.counts.values()) == 4

    check()


def test_nodes_is_a_read_only_view():
    j = started()
    with pytest.raises(TypeError):
        j.nodes["a"] = "succeeded"  # type: ignore[index]
    assert j.nodes == {"a": "new", "b": "new"} and j.counts == {"new": 2}


class _ScanCountingDict(dict):
    """A dict that counts whole-map scans (the FSM's node map, swapped in by a test)."""

    scans = 0

    def values(self):
        type(self).scans += 1
        return super().values()

    def items(self):
        type(self).scans += 1
        return super().items()

    def __iter__(self):
        type(self).scans += 1
        return super().__iter__()


def test_node_messages_never_scan_the_node_map():
    # O(1) per message: a whole lifecycle of 300 nodes scans the map a fixed
    # number of times (the one quorum decision), not once per message
    # (the old per-message scans made a 10,000-node job 10^8 steps).
    names = [f"n{i}" for i in range(300)]
    j = started(names)
    j._nodes = _ScanCountingDict(j._nodes)
    _ScanCountingDict.scans = 0
    for ev in ("ack_commit", "ack_run", "succeeded"):
        for x in names:
            j.message(x, ev, {}, 1.0)
    assert j.status == "complete" and j.counts == {"succeeded": 300}
    assert _ScanCountingDict.scans <= 2
