"""The job coordinator in process (real Runtime, app, ZeroMQ, FakeNodes; SQLite and
PostgreSQL): persistence of every status/event/output, output truncation, abort,
crash recovery (§9.7, S12), several jobs on overlapping nodes, the job feed.

The end-to-end versions with the real server subprocess are test_e2e_jobs*.py.
"""

from __future__ import annotations

import json
import logging

import pytest

from pushjobs.server import store
from pushjobs.server.jobs import PHASES, phase_line, truncate_output
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


def test_a_jobs_milestones_are_recorded_in_order_and_logged(live, acme, nodes, http, caplog):
    """The fan-out benchmark's phase split (`--server-log-level info`) reads this line."""
    n = connect(live, acme, "web1")
    nodes.append(n)
    gwait(lambda: available(live, "web1"))
    with caplog.at_level(logging.INFO, logger="pushjobs.server.jobs"):
        jid = post_job(http, command="uptime", nodes=["web1"])
        lj = live.runtime.jobs.live[jid]
        wait_status(live, http, jid, "complete")
        gwait(lambda: "stored" in lj.marks, message="stored mark")
        line = gwait(lambda: next((r.getMessage() for r in caplog.records if f"job {jid}: phases: at " in r.getMessage()),
                                  None), message="phases line")
    assert [p for p in PHASES if p in lj.marks] == list(PHASES)  # one node: every milestone, in this order
    times = [lj.marks[p] for p in PHASES]
    assert times == sorted(times)
    marks, _, cpu = line.split("phases: at ", 1)[1].partition(";")
    words = marks.split()
    assert cpu.startswith(" loop thread CPU") and float(cpu.split()[-2]) >= 0
    assert float(words[0]) == pytest.approx(lj.marks["created"], abs=1e-5)
    assert words[1::2] == list(PHASES) and words[2] == "+0.000"
    assert phase_line({}) == "at 0.000000 "


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


# --- the database writer (issue #8: coalesced writes) -------------------------------------------------

JOB_A = "a" * 32


@pytest.fixture
def writer(store_db):
    from pushjobs.server.jobs import DbWriter

    org = store.Org.create(name="o", guid="0" * 32)
    now = store.utcnow()
    store.Job.create(id=JOB_A, org=org, command="x", status="new", run_timeout=10, quorum=1, requestor="alice",
                     created_at=now, updated_at=now)
    for n in ("a", "b", "c"):
        store.JobNode.create(job=JOB_A, node_name=n, status="new", created_at=now, updated_at=now)
    w = DbWriter()
    w.start()
    yield w
    w.stop()


def node_statuses(jid: str = JOB_A) -> dict[str, str]:
    return {jn.node_name: jn.status for jn in store.JobNode.select().where(store.JobNode.job == jid)}


def test_writer_coalesces_a_batch_and_a_nodes_last_status_wins(writer):
    from pushjobs.server.jobs import EventWrite, JobStatusWrite, NodeStatusWrite

    t = 1_800_000_000.0
    writes = [NodeStatusWrite(JOB_A, "a", "ready", t), NodeStatusWrite(JOB_A, "b", "ready", t + 1),
              JobStatusWrite(JOB_A, "voting", t + 1), EventWrite(JOB_A, 1, "start", '{"x":1}', t),
              NodeStatusWrite(JOB_A, "a", "running", t + 2), JobStatusWrite(JOB_A, "running", t + 3),
              NodeStatusWrite(JOB_A, "a", "succeeded", t + 4), EventWrite(JOB_A, 2, "run_start", "{}", t + 2)]
    for w in writes:  # submit never yields: one batch
        writer.submit(w)
    assert writer.flush(10)
    assert writer.batches == 1 and writer.written == len(writes) and writer.errors == 0
    assert node_statuses() == {"a": "succeeded", "b": "ready", "c": "new"}
    job = store.Job.get_by_id(JOB_A)
    assert job.status == "running" and job.updated_at == utc(t + 3)
    a = store.JobNode.get(store.JobNode.job == JOB_A, store.JobNode.node_name == "a")
    assert a.updated_at == utc(t + 4)
    rows = [(e.seq, e.name, e.data, e.created_at) for e in store.JobEvent.select().order_by(store.JobEvent.seq)]
    assert rows == [(1, "start", '{"x":1}', utc(t)), (2, "run_start", "{}", utc(t + 2))]


def utc(t: float):
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.timezone.utc).replace(tzinfo=None)


def test_writer_keeps_order_across_small_batches(writer):
    from pushjobs.server.jobs import NodeStatusWrite

    writer.batch_size = 1  # every write its own transaction at first (the size then adapts)
    seq = ["ready", "running", "failed", "ready", "succeeded", "crashed", "timed_out"]
    for i, st in enumerate(seq * 30):
        writer.submit(NodeStatusWrite(JOB_A, "b", st, 1_800_000_000.0 + i))
    assert writer.flush(10)
    assert writer.batches > 1
    assert node_statuses()["b"] == "timed_out"


def test_one_bad_write_does_not_lose_the_others(writer):
    from pushjobs.server.jobs import EventWrite, JobStatusWrite, NodeStatusWrite

    t = 1_800_000_000.0
    for w in (EventWrite(JOB_A, 1, "start", "{}", t), NodeStatusWrite(JOB_A, "c", "nacked", t),
              EventWrite(JOB_A, 1, "again", "{}", t),  # duplicate (job, seq): violates the unique index
              JobStatusWrite(JOB_A, "quorum_failed", t)):
        writer.submit(w)
    assert writer.flush(10)
    assert writer.errors == 1
    assert node_statuses()["c"] == "nacked" and store.Job.get_by_id(JOB_A).status == "quorum_failed"
    assert [e.name for e in store.JobEvent.select()] == ["start"]


def test_postgresql_batch_is_one_round_trip_and_all_or_nothing(writer, monkeypatch):
    """Statuses and events go to PostgreSQL in ONE execute (no BEGIN/COMMIT round trips,
    each a wait for the event loop); PostgreSQL runs it as one transaction. SQLite, and
    batches with outputs, take the `atomic()` path."""
    import peewee as pw

    from pushjobs.server.jobs import (EventWrite, JobStatusWrite, NodeStatusWrite, OutputWrite,
                                      apply_in_one_round_trip)

    t = 1_800_000_000.0
    assert writer.flush(10)
    ok = [NodeStatusWrite(JOB_A, "a", "ready", t), EventWrite(JOB_A, 1, "quorum_vote", "{}", t),
          NodeStatusWrite(JOB_A, "b", "ready", t), JobStatusWrite(JOB_A, "voting", t)]
    if isinstance(store.db.obj, pw.SqliteDatabase):
        assert not apply_in_one_round_trip(ok)
        return
    assert not apply_in_one_round_trip([OutputWrite(JOB_A, "a", b"x", b"", False)])
    calls = []
    real = store.db.obj.execute_sql
    monkeypatch.setattr(store.db.obj, "execute_sql", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    assert apply_in_one_round_trip(ok)
    assert len(calls) == 1 and "BEGIN" not in calls[0].upper()
    assert node_statuses() == {"a": "ready", "b": "ready", "c": "new"}
    assert store.Job.get_by_id(JOB_A).status == "voting"
    bad = [NodeStatusWrite(JOB_A, "c", "ready", t), EventWrite(JOB_A, 1, "again", "{}", t)]  # duplicate seq
    with pytest.raises(Exception):
        apply_in_one_round_trip(bad)
    assert node_statuses()["c"] == "new", "nothing of a failed batch is stored"
    assert [e.name for e in store.JobEvent.select()] == ["quorum_vote"]


def test_writer_outputs_second_output_of_a_node_is_ignored(writer):
    from pushjobs.server.jobs import OutputWrite

    store.JobOutput.create(job=JOB_A, node_name="b", stdout=b"first", stderr=b"", truncated=False)
    for w in (OutputWrite(JOB_A, "a", b"out-a", b"err-a", False), OutputWrite(JOB_A, "a", b"again", b"", False),
              OutputWrite(JOB_A, "b", b"second", b"", True), OutputWrite(JOB_A, "c", b"\x00\xff", b"", True)):
        writer.submit(w)
    assert writer.flush(10) and writer.errors == 0
    rows = {o.node_name: (bytes(o.stdout), bytes(o.stderr), o.truncated) for o in store.JobOutput.select()}
    assert rows == {"a": (b"out-a", b"err-a", False), "b": (b"first", b"", False), "c": (b"\x00\xff", b"", True)}


def test_a_callable_write_sees_everything_submitted_before_it(writer):
    from pushjobs.server.jobs import NodeStatusWrite

    seen = []
    writer.submit(NodeStatusWrite(JOB_A, "a", "ready", 1_800_000_000.0))
    writer.submit(lambda: seen.append(node_statuses()["a"]))
    writer.submit(NodeStatusWrite(JOB_A, "a", "running", 1_800_000_001.0))
    assert writer.flush(10)
    assert seen == ["ready"] and node_statuses()["a"] == "running"


def test_a_big_fan_out_is_written_in_bounded_batches_with_the_loop_running_between(writer):
    import gevent

    from pushjobs.server.jobs import MAX_BATCH, EventWrite, NodeStatusWrite, bulk_insert

    jid = "b" * 32
    now = store.utcnow()
    store.Job.create(id=jid, org=store.Org.get(), command="x", status="new", run_timeout=10, quorum=1,
                     requestor="alice", created_at=now, updated_at=now)
    names = [f"n{i:05d}" for i in range(3000)]
    with store.db.atomic():
        bulk_insert(store.JobNode, [store.JobNode.job, store.JobNode.node_name, store.JobNode.status,
                                    store.JobNode.created_at, store.JobNode.updated_at],
                    [(jid, n, "new", now, now) for n in names])
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.001)) for _ in iter(int, 1)])
    seq = 0
    for st in ("ready", "running", "succeeded"):
        for n in names:
            seq += 1
            writer.submit(NodeStatusWrite(jid, n, st, 1_800_000_000.0))
            writer.submit(EventWrite(jid, seq, "quorum_vote", "{}", 1_800_000_000.0))
    try:
        assert writer.flush(60)
    finally:
        ticker.kill()
    assert writer.errors == 0 and writer.written == 18_000
    assert writer.batches >= 18_000 // MAX_BATCH
    assert len(ticks) >= writer.batches // 2, "the loop ran between the writer's batches"
    assert set(node_statuses(jid).values()) == {"succeeded"}
    assert store.JobEvent.select().where(store.JobEvent.job == jid).count() == 9000


def test_get_answers_a_live_job_from_memory_and_its_end_once_stored(live, acme, nodes, http):
    import gevent.event

    n = connect(live, acme, "web1")
    nodes.append(n)
    n.run_result = ("succeeded", "hello\n", "")
    n.run_delay = 0.5
    gwait(lambda: available(live, "web1"))
    coord = live.runtime.jobs
    gate = gevent.event.Event()
    real_apply = coord.writer._apply

    def stalled(batch):  # the writer falls behind (as under load), without holding a transaction
        gate.wait()
        real_apply(batch)

    coord.writer._apply = stalled
    try:
        jid = post_job(http, command="uptime", nodes=["web1"], capture_output=True)
        j = gwait(lambda: (lambda d: d if d["status"] == "running" else None)(job(http, jid)), 5,
                  "GET shows running from memory")
        assert j["nodes"] in ({"ready": ["web1"]}, {"running": ["web1"]})
        assert store.Job.get_by_id(jid).status == "new", "the database is behind"
        gwait(lambda: coord.live[jid].fsm.finished, 5, "job finished in memory")
        v = coord.live_view(jid, wait=0.2)
        assert v.status == "running", "no final status before the writes are stored"
        assert v.nodes == {"succeeded": ["web1"]}
        listed = blocking(lambda: http.get("jobs")).json()
        assert [x["status"] for x in listed if x["id"] == jid] == ["running"]
    finally:
        gate.set()
        coord.writer._apply = real_apply
    j = job(http, jid)  # waits for the writer, then answers from memory
    assert j["status"] == "complete" and j["nodes"] == {"succeeded": ["web1"]}
    listed = blocking(lambda: http.get("jobs")).json()
    assert [(x["status"], x["updated_at"]) for x in listed if x["id"] == jid] == [("complete", j["updated_at"])]
    r = blocking(lambda: http.get(f"jobs/{jid}/output/web1/stdout", headers={"Accept": "application/octet-stream"}))
    assert r.status_code == 200 and r.content == b"hello\n", "the output is there once complete is shown"
    stored = store.Job.get_by_id(jid)
    assert stored.status == "complete"
    from pushjobs.server.api.jobs import http_time

    assert j["updated_at"] == http_time(stored.updated_at)


def test_actions_keep_fsm_order_when_the_coordinator_yields_between_them(live, acme, nodes, http, monkeypatch):
    from pushjobs.server import jobs as coordinator

    monkeypatch.setattr(coordinator, "YIELD_EVERY", 1)  # yield after every action
    names = ["n1", "n2", "n3"]
    for name in names:
        x = connect(live, acme, name)
        nodes.append(x)
    gwait(lambda: all(available(live, x) for x in names))
    jid = post_job(http, command="uptime", nodes=names)
    final = wait_status(live, http, jid, "complete")
    assert final["nodes"] == {"succeeded": names}
    live.runtime.flush()
    evs = events_of(jid)
    seqs = [r.seq for r in store.JobEvent.select().where(store.JobEvent.job == jid).order_by(store.JobEvent.seq)]
    assert seqs == list(range(1, len(evs) + 1))
    order = [name for name, _ in evs]
    assert order[0] == "start" and order[-1] == "job_complete"
    assert order.index("quorum_succeeded") == 4 and order[1:4] == ["quorum_vote"] * 3
    assert sorted(order[5:-1]) == ["run_complete"] * 3 + ["run_start"] * 3
    for x in names:  # each node: run_start before its run_complete
        mine = [name for name, data in evs if data.get("node") == x]
        assert mine == ["quorum_vote", "run_start", "run_complete"]


def test_post_of_a_big_job_on_nodes_that_are_not_connected(live, acme, http):
    names = [f"node-{i:04d}" for i in range(1201)]  # more than two 500-row INSERT chunks
    jid = post_job(http, command="uptime", nodes=names)
    final = wait_status(live, http, jid, "quorum_failed")
    assert final["nodes"] == {"unavailable": names}, "every job node stored, in the job's order"
    rows = store.JobNode.select().where(store.JobNode.job == jid).order_by(store.JobNode.id)
    assert [r.node_name for r in rows] == names and {r.status for r in rows} == {"unavailable"}
    evs = events_of(jid)
    assert [n for n, _ in evs].count("quorum_vote") == len(names) and evs[-1][0] == "job_complete"


def test_http_time_is_rfc1123_gmt_like_email_utils():
    import datetime as dt
    import email.utils
    import random

    from pushjobs.server.api.jobs import http_time

    rnd = random.Random(8)
    for _ in range(2000):
        v = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=rnd.random() * 4e9)
        want = email.utils.format_datetime(v.replace(tzinfo=dt.timezone.utc, microsecond=0), usegmt=True)
        assert http_time(v) == want
        aware = v.replace(tzinfo=dt.timezone.utc).astimezone(dt.timezone(dt.timedelta(hours=rnd.randint(-12, 12))))
        assert http_time(aware) == want


def test_job_list_documents_match_the_job_documents(live, acme, http):
    """The list reads its columns with one prepared statement; each entry is the job's
    own document without `nodes` (options included, finished and live jobs alike)."""
    a = post_job(http, command="uptime", nodes=["gone1", "gone2"], user="deploy", dir="/srv", env={"A": "1"},
                 capture_output=True, file="raw:hello", run_timeout=7)
    b = post_job(http, command="true", nodes=["gone3"])
    for jid in (a, b):
        wait_status(live, http, jid, "quorum_failed")
    r = blocking(lambda: http.get("jobs"))
    assert r.status_code == 200
    listed = {d["id"]: d for d in r.json()}
    assert list(listed) == [a, b]  # oldest first
    for jid in (a, b):
        detail = job(http, jid)
        nodes = detail.pop("nodes")
        assert nodes == ({"unavailable": ["gone1", "gone2"]} if jid == a else {"unavailable": ["gone3"]})
        assert listed[jid] == detail
    assert listed[a]["env"] == {"A": "1"} and listed[a]["capture_output"] is True
    assert listed[a]["file_specified"] is True and listed[a]["user"] == "deploy" and listed[a]["run_timeout"] == 7
