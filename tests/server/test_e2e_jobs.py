"""End to end: the real push-jobs-server subprocess driven by FakeNodes (real DEALER/SUB
sockets, CurveZMQ, HMAC), observed through the REST API and the SSE feeds, on SQLite and
PostgreSQL. The "Done when" list of issue 4; the restart case is test_e2e_jobs_restart.py.

One server per back end for the whole module (ctl calls are the slow part); every test
starts fresh FakeNodes (new client incarnations) for the pre-created clients.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Optional

import pytest

from pushjobs.protocol.timestamps import http_date
from tests.helpers.fakenode import FakeNode, SseReader
from tests.helpers.server import wait_for

pytestmark = pytest.mark.e2e

NODE_NAMES = ("n1", "n2", "n3", "n4")
SETTINGS = {
    "voting_timeout": 1,
    "rehab_timer": 200,
    "wait_complete_time": 3,
    "keep_alive_time": 1,
    "max_output_bytes": 100,
}


@dataclass
class E2E:
    server: Any
    http: Any
    clients: dict


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def e2e(request, module_server_factory) -> E2E:
    kwargs: dict = {}
    if request.param == "postgresql":
        kwargs["database_url"] = request.getfixturevalue("postgres_cluster").create_database()
    srv = module_server_factory(heartbeat_interval=150, settings=dict(SETTINGS), **kwargs)
    srv.create_org("acme")
    alice = srv.create_user("alice", org="acme", admin=True)
    clients = {n: srv.create_client(n, org="acme") for n in NODE_NAMES}
    return E2E(srv, srv.client(alice), clients)


@pytest.fixture
def fleet(e2e):
    """`fleet("n1", "n2", commit_reply="nack")` → started FakeNodes, available on the server."""
    started: list[FakeNode] = []

    def make(*names: str, wait: bool = True, **script: Any) -> list[FakeNode]:
        out = []
        for name in names:
            node = FakeNode(e2e.server, e2e.clients[name])
            for k, v in script.items():
                setattr(node, k, v)
            node.start()
            started.append(node)
            out.append(node)
        if wait:
            for node in out:
                node.wait_idle_on_server(e2e.http, 10)
        return out

    yield make
    for node in started:
        node.stop()
    # let the server notice (liveness) so that the next test starts from offline nodes
    wait_for(lambda: all(e2e.http.get(f"node_states/{n.name}").json()["status"] == "offline" for n in started),
             timeout=10, message="stopped fake nodes offline")


def feed_of(http, jid: str) -> list[dict]:
    """The finite job feed of a finished (lingering) job: [{event, id, data}]."""
    r = http.get(f"job_status_feed/{jid}", headers={"Accept": "text/event-stream"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/event-stream")
    text = r.text
    assert text.endswith("\n\n"), "every event, the last included, ends with a blank line (S2)"
    events = []
    for block in text.strip("\n").split("\n\n"):
        lines = [l for l in block.split("\n") if not l.startswith(":")]
        if not lines:
            continue
        f = dict(l.split(": ", 1) for l in lines)
        events.append({"event": f["event"], "id": f["id"], "data": json.loads(f["data"])})
    return events


def brief(events: list[dict]) -> list[str]:
    """event names, with the status where the event has one: "quorum_vote:success"."""
    return [e["event"] + (f":{e['data']['status']}" if "status" in e["data"] else "") for e in events]


def finish(e2e: E2E, jid: str, status: str, nodes: dict, trace: Optional[list[str]] = None,
           timeout: float = 15.0) -> list[dict]:
    job = e2e.http.wait_job(jid, timeout=timeout)
    assert job["status"] == status, job
    assert {k: sorted(v) for k, v in job["nodes"].items()} == {k: sorted(v) for k, v in nodes.items()}
    events = feed_of(e2e.http, jid)
    assert [e["id"] for e in events] == [f"job-{i}" for i in range(1, len(events) + 1)]
    if trace is not None:
        assert brief(events) == trace
    return events


# --- the worked traces of §9.8 -------------------------------------------------------


def test_trace_success_with_capture_live_feeds(e2e, fleet):
    (n1,) = fleet("n1")
    n1.run_result = ("succeeded", "hello\n", "")
    n1.run_delay = 0.3
    org = SseReader(e2e.http, "job_status_feed").start()
    wait_for(lambda: org.status == 200, message="org feed open")
    jid = e2e.http.create_job("uptime", ["n1"], capture_output=True, run_timeout=30)
    live = SseReader(e2e.http, f"jobs_status_feed/{jid}").start()
    live.wait(lambda s: s.done.is_set(), timeout=10)
    assert live.response_headers.get("X-Accel-Buffering") == "no"
    assert live.response_headers["Content-Type"].startswith("text/event-stream")
    assert live.names() == ["start", "quorum_vote", "quorum_succeeded", "run_start", "run_complete", "job_complete"]
    start = live.events[0].data
    assert start["command"] == "uptime" and start["user"] == "alice" and start["capture"] is True
    assert start["quorum"] == 1 and start["node_count"] == 1 and start["run_timeout"] == 30
    finish(e2e, jid, "complete", {"succeeded": ["n1"]},
           ["start", "quorum_vote:success", "quorum_succeeded", "run_start", "run_complete:success",
            "job_complete:complete"])
    r = e2e.http.get(f"jobs/{jid}/output/n1/stdout", headers={"Accept": "application/octet-stream"})
    assert r.status_code == 200 and r.content == b"hello\n"
    org.wait(lambda s: len(s.events) >= 2)
    assert [(e.event, e.data["job"]) for e in org.events] == [("start", jid), ("job_complete", jid)]
    assert org.events[1].data["status"] == "complete"
    org.close()


def test_trace_failure_and_truncated_output(e2e, fleet):
    (n1,) = fleet("n1")
    n1.run_result = ("failed", "x" * 500, "boom")
    jid = e2e.http.create_job("false", ["n1"], capture_output=True)
    finish(e2e, jid, "complete", {"failed": ["n1"]},
           ["start", "quorum_vote:success", "quorum_succeeded", "run_start", "run_complete:failure",
            "job_complete:complete"])
    r = e2e.http.get(f"jobs/{jid}/output/n1/stdout", headers={"Accept": "application/octet-stream"})
    assert r.status_code == 200
    assert r.content.startswith(b"x" * 100) and r.content.endswith(b"[pushjobs: output truncated at 100 bytes]\n")
    r = e2e.http.get(f"jobs/{jid}/output/n1/stderr", headers={"Accept": "application/octet-stream"})
    assert r.content == b"boom"


def test_trace_node_not_connected(e2e):
    jid = e2e.http.create_job("uptime", ["n4"])
    finish(e2e, jid, "quorum_failed", {"unavailable": ["n4"]},
           ["start", "quorum_vote:down", "rehab", "job_complete:quorum_failed"])


def test_trace_node_not_whitelisted(e2e, fleet):
    fleet("n1", commit_reply="nack")
    jid = e2e.http.create_job("rm -rf /", ["n1"])
    finish(e2e, jid, "quorum_failed", {"nacked": ["n1"]},
           ["start", "quorum_vote:failure", "job_complete:quorum_failed"])


def test_trace_node_never_answers_voting_timeout(e2e, fleet):
    fleet("n1", commit_reply=None)
    t0 = time.monotonic()
    jid = e2e.http.create_job("uptime", ["n1"])
    finish(e2e, jid, "quorum_failed", {"unavailable": ["n1"]},
           ["start", "quorum_vote:voting_timeout", "job_complete:quorum_failed"])
    assert time.monotonic() - t0 >= 0.9, "not before voting_timeout"


def test_trace_nack_run(e2e, fleet):
    fleet("n1", run_reply="nack")
    jid = e2e.http.create_job("uptime", ["n1"])
    finish(e2e, jid, "complete", {"failed": ["n1"]},
           ["start", "quorum_vote:success", "quorum_succeeded", "rehab", "run_complete:run_nacked",
            "job_complete:complete"])


def test_trace_run_timeout(e2e, fleet):
    (n1,) = fleet("n1", run_result=None)
    jid = e2e.http.create_job("sleep 1000", ["n1"], run_timeout=1)
    finish(e2e, jid, "timed_out", {"timed_out": ["n1"]},
           ["start", "quorum_vote:success", "quorum_succeeded", "run_start", "job_complete:timed_out"])
    wait_for(lambda: n1.count("abort") >= 2, message="the timed-out node is reset (abort)")


def test_trace_node_dies_mid_run(e2e, fleet):
    (n1,) = fleet("n1", run_result=None)
    jid = e2e.http.create_job("sleep 1000", ["n1"], run_timeout=60)
    n1.wait_for("run", 5)
    wait_for(lambda: e2e.http.job(jid)["nodes"] == {"running": ["n1"]}, message="node running")
    n1.stop()  # vanishes: no more heartbeats
    finish(e2e, jid, "complete", {"crashed": ["n1"]},
           ["start", "quorum_vote:success", "quorum_succeeded", "run_start", "rehab", "run_complete:crashed",
            "job_complete:complete"])


def test_three_nodes_one_busy_quorum_three_and_overlap(e2e, fleet):
    n1, n2, n3 = fleet("n1", "n2", "n3", run_result=None)
    first = e2e.http.create_job("long", ["n1"])
    n1.wait_for("run", 5)
    second = e2e.http.create_job("other", ["n1", "n2", "n3"], quorum=3)
    events = finish(e2e, second, "quorum_failed", {"nacked": ["n1"], "was_ready": ["n2", "n3"]})
    assert brief(events)[0] == "start" and brief(events)[-1] == "job_complete:quorum_failed"
    assert sorted(brief(events)[1:-1]) == ["quorum_vote:failure", "quorum_vote:success", "quorum_vote:success"]
    assert e2e.http.job(first)["status"] == "running", "the first job is untouched"
    r = e2e.http.post(f"jobs/{first}/abort")
    assert r.status_code in (200, 202), r.text
    finish(e2e, first, "aborted", {"aborted": ["n1"]})


def test_quorum_is_a_count(e2e, fleet):
    n1, n2 = fleet("n1", "n2")
    (n3,) = fleet("n3", commit_reply="nack")
    jid = e2e.http.create_job("uptime", ["n1", "n2", "n3"], quorum=2)
    events = finish(e2e, jid, "complete", {"succeeded": ["n1", "n2"], "nacked": ["n3"]})
    assert "quorum_succeeded" in brief(events)
    jid = e2e.http.create_job("uptime", ["n1", "n2", "n3"], quorum=3)
    finish(e2e, jid, "quorum_failed", {"was_ready": ["n1", "n2"], "nacked": ["n3"]})


def test_abort_through_the_api(e2e, fleet):
    (n1,) = fleet("n1", run_result=None)
    jid = e2e.http.create_job("sleep 1000", ["n1"])
    n1.wait_for("run", 5)
    wait_for(lambda: e2e.http.job(jid)["nodes"] == {"running": ["n1"]}, message="ack_run processed")
    aborts = n1.count("abort")
    r = e2e.http.post(f"jobs/{jid}/abort")
    assert r.status_code in (200, 202), r.text
    assert r.json()["status"] == "aborted", "the answer already shows the aborted job"
    finish(e2e, jid, "aborted", {"aborted": ["n1"]},
           ["start", "quorum_vote:success", "quorum_succeeded", "run_start", "job_complete:aborted"])
    wait_for(lambda: n1.count("abort") > aborts, message="abort sent to the node")
    n1.wait_idle_on_server(e2e.http)
    assert e2e.http.post(f"jobs/{jid}/abort").status_code == 409


# --- bad messages: dropped, logged, the server keeps serving ----------------------------


def test_bad_messages_are_dropped_and_the_server_keeps_serving(e2e, fleet):
    n1, n2 = fleet("n1", "n2")
    srv = e2e.server

    def forged(n: FakeNode) -> list:
        header, body = n.sign(n.body("ack_commit", job_id="f" * 32))
        return [header, body.replace(b"ack_commit", b"nack_commit")]  # body changed after signing

    cases = {
        "forged signature": forged,
        "wrong session key": lambda n: n.sign(n.body("heartbeat", job_state="idle"), key=b"k" * 32),
        "stale timestamp": lambda n: n.sign({**n.body("heartbeat", job_state="idle"),
                                             "timestamp": http_date(time.time() - 3600)}),
        "oversize frame": lambda n: n.sign({**n.body("heartbeat", job_state="idle"), "pad": "x" * 70000}),
        "garbage frame": lambda n: [b"\x00\xffgarbage"],
        "garbage body": lambda n: [n.sign(n.body("heartbeat"))[0], b"\x00\xff{{{"],
        "other node's message": lambda n: n2.sign(n2.body("heartbeat", job_state="idle")),
    }
    for name, make in cases.items():
        aborts = n1.count("abort")
        n1.call(lambda node, make=make: node._dealer.send_multipart(make(node)))
        # dropped: no reply, no state change; the server still answers and heartbeats
        seen = len(n1.server_heartbeats)
        wait_for(lambda: len(n1.server_heartbeats) >= seen + 2, message=f"heartbeats after {name}")
        assert n1.count("abort") == aborts, name
        assert srv.status()["node_fsm_count"] >= 2
        st = e2e.http.get("node_states/n1").json()
        assert st == {"node_name": "n1", "status": "online", "availability": "available"}, (name, st)
    for reason in ("bad_signature", "stale", "body_too_big", "frame_count", "bad_json", "node_mismatch"):
        srv.wait_log(f"reason={reason}", timeout=5)
    # and jobs still run on both nodes
    jid = e2e.http.create_job("uptime", ["n1", "n2"])
    finish(e2e, jid, "complete", {"succeeded": ["n1", "n2"]})


def test_feed_negotiation_and_summary(e2e, fleet):
    fleet("n1")
    jid = e2e.http.create_job("uptime", ["n1"])
    finish(e2e, jid, "complete", {"succeeded": ["n1"]})
    assert e2e.http.get(f"job_status_feed/{jid}", headers={"Accept": "application/json"}).status_code == 406
    assert e2e.http.get("job_status_feed/" + "0" * 32, headers={"Accept": "text/event-stream"}).status_code == 404
    wait_for(lambda: jid not in e2e.server.status()["job_processes"], timeout=10, message="linger over")
    events = feed_of(e2e.http, jid)
    assert [(e["event"], e["id"]) for e in events] == [("summary", "job-1")]
    assert events[0]["data"]["status"] == "complete" and events[0]["data"]["id"] == jid


def test_job_feed_many_readers_and_last_event_id(e2e, fleet):
    (n1,) = fleet("n1")
    n1.run_delay = 0.5
    jid = e2e.http.create_job("uptime", ["n1"])
    readers = [SseReader(e2e.http, f"job_status_feed/{jid}").start() for _ in range(3)]
    resumed = SseReader(e2e.http, f"jobs_status_feed/{jid}", last_event_id="job-2").start()
    for r in readers + [resumed]:
        r.wait(lambda s: s.done.is_set(), timeout=10)
    expected = ["start", "quorum_vote", "quorum_succeeded", "run_start", "run_complete", "job_complete"]
    for r in readers:
        assert r.names() == expected and r.error is None
        stamps = [e.data["timestamp"] for e in r.events]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert [e.id for e in resumed.events] == ["job-3", "job-4", "job-5", "job-6"]
    assert readers[0].raw == readers[1].raw == readers[2].raw
