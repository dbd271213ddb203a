"""The job coordinator in process (real Runtime, app, ZeroMQ, FakeNodes; SQLite and
PostgreSQL): persistence of every status/event/output, output truncation, abort,
crash recovery (§9.7, S12), several jobs on overlapping nodes, the job feed.

The end-to-end versions with the real server subprocess are test_e2e_jobs*.py.
"""

from __future__ import annotations

import json

import pytest

from pushjobs.server import store
from pushjobs.server.jobs import truncate_output
from tests.helpers.fakenode import SseReader
from tests.server.test_broker import acme, available, blocking, connect, gwait, live, nodes  # noqa: F401


@pytest.fixture
def live_overrides(db_backend) -> dict:
    # keep_alive_time 1: gevent's in-process WSGI server sends the headers with the
    # first non-empty chunk (gunicorn sends them at once), i.e. the first keepalive
    return {"database_url": db_backend.url, "max_output_bytes": 64, "keep_alive_time": 1}


@pytest.fixture
def http(live, acme):
    alice = live.add_principal("user", "alice", acme)
    g = store.Group.create(org=acme, name="admins")
    store.GroupMember.create(group=g, kind="user", name="alice")
    c = live.client(alice)
    yield c
    c.close()


def post_job(http, **body) -> str:
    r = blocking(lambda: http.post("jobs", json=body))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def job(http, jid: str) -> dict:
    r = blocking(lambda: http.get(f"jobs/{jid}"))
    assert r.status_code == 200, r.text
    return r.json()


def wait_status(live, http, jid: str, status: str, timeout: float = 8.0) -> dict:
    live.runtime.flush()
    return gwait(lambda: (lambda j: j if j["status"] == status else None)(job(http, jid)), timeout,
                 f"job {jid} {status}")


def events_of(jid: str) -> list[tuple[str, dict]]:
    rows = store.JobEvent.select().where(store.JobEvent.job == jid).order_by(store.JobEvent.seq)
    return [(r.name, json.loads(r.data)) for r in rows]


def test_truncate_output_marks_and_keeps_the_head():
    assert truncate_output("abc", 10) == (b"abc", False)
    assert truncate_output(None, 10) == (b"", False)
    data, cut = truncate_output("x" * 20, 8)
    assert cut and data.startswith(b"x" * 8) and b"[pushjobs: output truncated at 8 bytes]" in data


def test_happy_path_persists_everything_and_streams(live, acme, nodes, http):
    n = connect(live, acme, "web1")
    nodes.append(n)
    n.run_result = ("succeeded", "hello\n" + "y" * 100, "")
    n.run_delay = 0.3
    gwait(lambda: available(live, "web1"))
    jid = post_job(http, command="uptime", nodes=["web1"], capture_output=True, env={"A": "1"}, dir="/tmp")
    commit = gwait(lambda: n.find("commit"), message="commit")
    assert commit["job_id"] == jid and commit["command"] == "uptime"
    assert commit["capture"] is True and commit["env"] == {"A": "1"} and commit["dir"] == "/tmp"
    assert "user" not in commit and "file" not in commit
    feed = SseReader(http, f"job_status_feed/{jid}").start()
    gwait(lambda: feed.done.is_set(), 8, "job feed ends after job_complete")
    assert feed.status == 200 and feed.response_headers["Content-Type"].startswith("text/event-stream")
    assert feed.response_headers.get("X-Accel-Buffering") == "no"
    assert feed.names() == ["start", "quorum_vote", "quorum_succeeded", "run_start", "run_complete", "job_complete"]
    assert [e.id for e in feed.events] == [f"job-{i}" for i in range(1, 7)]
    assert feed.raw.endswith("\n\n")
    j = wait_status(live, http, jid, "complete")
    assert j["nodes"] == {"succeeded": ["web1"]}
    live.runtime.flush()
    assert [name for name, _ in events_of(jid)] == feed.names()
    out = store.JobOutput.get(store.JobOutput.job == jid)
    assert out.truncated and bytes(out.stdout).startswith(b"hello\n")
    assert b"[pushjobs: output truncated at 64 bytes]" in bytes(out.stdout)
    r = blocking(lambda: http.get(f"jobs/{jid}/output/web1/stdout", headers={"Accept": "application/octet-stream"}))
    assert r.status_code == 200 and r.content == bytes(out.stdout)


def test_abort_running_job(live, acme, nodes, http):
    n = connect(live, acme, "web1")
    nodes.append(n)
    n.run_result = None  # the "process" never ends
    gwait(lambda: available(live, "web1"))
    jid = post_job(http, command="sleep", nodes=["web1"])
    gwait(lambda: n.find("run"), message="run")
    aborts = n.count("abort")
    assert live.runtime.abort_job(jid, "alice") is True
    j = wait_status(live, http, jid, "aborted")
    assert j["nodes"] == {"aborted": ["web1"]}
    gwait(lambda: n.count("abort") > aborts, message="abort sent to the node")
    gwait(lambda: available(live, "web1"), message="node back to idle after aborted")
    assert live.runtime.abort_job(jid, "alice") is False
    assert events_of(jid)[-1] == ("job_complete", {**events_of(jid)[-1][1], "status": "aborted"})


def test_two_overlapping_jobs_nacked_and_was_ready(live, acme, nodes, http):
    a = connect(live, acme, "a")
    b = connect(live, acme, "b")
    nodes += [a, b]
    for x in (a, b):
        x.run_result = None
    gwait(lambda: available(live, "a") and available(live, "b"))
    j1 = post_job(http, command="one", nodes=["a"])
    gwait(lambda: a.find("run"), message="run")
    j2 = post_job(http, command="two", nodes=["a", "b"], quorum=2)
    final = wait_status(live, http, j2, "quorum_failed")
    assert final["nodes"] == {"nacked": ["a"], "was_ready": ["b"]}
    assert job(http, j1)["status"] == "running"
    assert live.runtime.abort_job(j1, "alice")


def test_crash_recovery_marks_all_open_job_nodes_crashed_s12(live, acme):
    now = store.utcnow()
    for jid, status in (("a" * 32, "voting"), ("b" * 32, "running"), ("c" * 32, "complete"), ("d" * 32, "new")):
        store.Job.create(id=jid, org=acme, command="x", status=status, run_timeout=10, quorum=1,
                         requestor="alice", created_at=now, updated_at=now)
    for jid, node, st in (("a" * 32, "n1", "new"), ("a" * 32, "n2", "ready"), ("b" * 32, "n1", "running"),
                          ("b" * 32, "n2", "succeeded"), ("c" * 32, "n1", "succeeded"), ("d" * 32, "n1", "new")):
        store.JobNode.create(job=jid, node_name=node, status=st)
    crashed = live.runtime.jobs.recover()
    assert sorted(crashed) == ["a" * 32, "b" * 32, "d" * 32]
    status = {j.id: j.status for j in store.Job.select()}
    assert status == {"a" * 32: "crashed", "b" * 32: "crashed", "c" * 32: "complete", "d" * 32: "crashed"}
    nodes_ = {(jn.job_id, jn.node_name): jn.status for jn in store.JobNode.select()}
    assert nodes_ == {("a" * 32, "n1"): "crashed", ("a" * 32, "n2"): "crashed", ("b" * 32, "n1"): "crashed",
                      ("b" * 32, "n2"): "succeeded", ("c" * 32, "n1"): "succeeded", ("d" * 32, "n1"): "crashed"}


def test_feeds_406_404_summary_and_org_feed(live, acme, nodes, http):
    n = connect(live, acme, "web1")
    nodes.append(n)
    gwait(lambda: available(live, "web1"))
    r = blocking(lambda: http.get("job_status_feed", headers={"Accept": "application/json"}))
    assert r.status_code == 406
    r = blocking(lambda: http.get("job_status_feed/" + "f" * 32, headers={"Accept": "text/event-stream"}))
    assert r.status_code == 404
    org = SseReader(http, "jobs_status_feed").start()
    gwait(lambda: org.status == 200, message="org feed open")
    gwait(lambda: ":keepalive" in org.comments, 3, "a keepalive comment while idle")
    assert org.raw.startswith(":keepalive\n")
    jid = post_job(http, command="uptime", nodes=["web1"])
    wait_status(live, http, jid, "complete")
    gwait(lambda: org.names() == ["start", "job_complete"], message="org feed start + job_complete")
    assert [e.data["job"] for e in org.events] == [jid, jid]
    assert list(org.events[0].data)[:2] == ["timestamp", "job"]
    # resume: after org-1 → org-2 only; unknown id → start_of_history + all retained, oldest first
    again = SseReader(http, "job_status_feed", last_event_id="org-1").start()
    hist = SseReader(http, "job_status_feed", last_event_id="bogus").start()
    gwait(lambda: len(again.events) >= 1 and len(hist.events) >= 3, message="org feed replays")
    assert [e.id for e in again.events] == ["org-2"]
    assert [e.id for e in hist.events] == ["start_id", "org-1", "org-2"]
    for s in (org, again, hist):
        blocking(s.close)
    # after the linger, the job feed is a single summary
    gwait(lambda: jid not in live.runtime.live_job_ids(), 5, "linger over")
    summary = SseReader(http, f"job_status_feed/{jid}", last_event_id="job-2").start()
    gwait(lambda: summary.done.is_set(), message="summary stream ends")
    assert summary.names() == ["summary"] and summary.events[0].id == "job-1"
    assert summary.events[0].data["status"] == "complete" and summary.events[0].data["nodes"] == {"succeeded": ["web1"]}
    assert summary.raw.endswith("\n\n")
