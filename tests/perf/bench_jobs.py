"""The job fan-out path in one process: POST insert → coordinator → node registry → DB writer.

    .venv/bin/python -m tests.perf.bench_jobs --nodes 1000 10000 --db sqlite postgresql

What runs is the server's own code on one gevent loop, as in the worker:
the job rows are inserted the way `POST /jobs` does it, `JobCoordinator`
drives the `JobFSM`, the real `NodeRegistry` (node FSMs, HMAC signing,
routing) sends `commit`/`run`, the real `DbWriter` persists into a real
SQLite file or a throwaway PostgreSQL cluster (tests/helpers/postgres.py).
Only the sockets are replaced: the registry's `send_frames` records the
frames, and a "router" greenlet answers every `commit` with `ack_commit`
and every `run` with `ack_run` + `succeeded` (replies pre-signed before the
clock starts), feeding them to `NodeRegistry.on_frames` 128 at a time with a
full hub iteration in between, like the broker's receive loop.

Reported per run:

* FSM CPU: the pure `JobFSM` on the same lifecycle, no I/O (shows O(N) vs O(N²)).
* insert: the job + job-node rows (the POST's transaction).
* memory complete / DB complete: from the start of the POST insert until the
  coordinator finished the job, and until a separate connection polling the
  job row (every 10 ms) saw `complete`, i.e. what `GET /jobs/ID` reports.
* writer: time spent in the DB writer greenlet (greenlet switch tracing).
* longest stretch: the longest time any greenlet other than the hub ran
  without yielding (how long the heartbeat publisher could be held up), and
  which greenlet it was; "hb lag" is the worst lateness of a greenlet that
  wakes every 10 ms (a stand-in for the heartbeat publisher).

It works against any checkout (`cd /tmp/oldjobs && python -m tests.perf.bench_jobs`
runs the old code), so before/after numbers come from the same script.
Prints a table; never writes docs/performance.md (the lead does).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter, deque  # noqa: E402
from typing import Any, Optional  # noqa: E402

import gevent  # noqa: E402
import greenlet  # noqa: E402

from pushjobs.protocol import signing  # noqa: E402
from pushjobs.protocol.timestamps import http_date  # noqa: E402

ORG = "bench"


# --- greenlet accounting ------------------------------------------------------------------


class SwitchTracer:
    """Time per greenlet between switches, and the longest uninterrupted stretch."""

    def __init__(self, names: dict) -> None:
        self.names = names  # greenlet -> label
        self.total: Counter = Counter()
        self.longest: dict[str, float] = {}
        self.last = self.t0 = time.perf_counter()
        self.long: list = []  # (start, seconds, greenlet) of stretches over 50 ms

    def __call__(self, event: str, args: Any) -> None:
        if event not in ("switch", "throw"):
            return
        origin, _target = args
        now = time.perf_counter()
        dt = now - self.last
        self.last = now
        label = self.label(origin)
        self.total[label] += dt
        if dt > self.longest.get(label, 0.0):
            self.longest[label] = dt
        if dt > 0.05 and label != "hub":
            self.long.append((round(now - dt - self.t0, 3), round(dt, 3), label))

    def label(self, g: Any) -> str:
        if g is gevent.get_hub():
            return "hub"
        name = self.names.get(g)
        if name:
            return name
        return "other"

    def worst(self) -> tuple[float, str]:
        items = [(v, k) for k, v in self.longest.items() if k != "hub"]
        return max(items) if items else (0.0, "-")


# --- pure FSM ---------------------------------------------------------------------------------


def fsm_cpu(n: int) -> float:
    """CPU seconds of the pure job FSM for one commit→ack→run→succeeded lifecycle on n nodes."""
    from pushjobs.core.job import JobFSM, JobSpec

    names = [f"n{i}" for i in range(n)]
    spec = JobSpec(job_id="j" * 32, command="chef-client", nodes=names, run_timeout=3600, requestor="bench")
    c0 = time.process_time()
    j = JobFSM(spec, voting_timeout=60, server_name="bench")
    j.start(set(names), 0.0)
    for x in names:
        j.message(x, "ack_commit", {}, 1.0)
    for x in names:
        j.message(x, "ack_run", {}, 2.0)
    for x in names:
        j.message(x, "succeeded", {}, 3.0)
    cpu = time.process_time() - c0
    assert j.status == "complete", j.status
    return cpu


# --- the in-process server --------------------------------------------------------------------


def signed(key: bytes, node: str, inc: str, mtype: str, seq: int, job_id: Optional[str], **extra: Any) -> list[bytes]:
    body = {"node": node, "client": node, "protocol_version": "2.0", "org": ORG, "type": mtype, "sequence": seq,
            "timestamp": http_date(), "incarnation_id": inc, "job_id": job_id, **extra}
    if mtype == "heartbeat":
        body["job_state"] = "idle"
    return signing.encode_frames(json.dumps(body, separators=(",", ":")).encode(), signing.HMAC_SHA256, key)


def insert_job(job_id: str, org_id: int, names: list[str]) -> None:
    """The POST /jobs transaction: the API's own helper when it has one, else the old inline code."""
    from pushjobs.server.api import jobs as api_jobs
    from pushjobs.server.store import Job, JobNode, db, utcnow

    spec = api_jobs.validate_job(json.dumps({"command": "chef-client", "nodes": names}).encode())
    helper = getattr(api_jobs, "store_job", None)
    if helper is not None:
        helper(job_id, org_id, spec, "bench", 3600)
        return
    now = utcnow()
    with db.atomic():
        Job.create(id=job_id, org=org_id, command=spec.command, status="new", run_timeout=3600,
                   quorum=len(spec.nodes), requestor="bench", created_at=now, updated_at=now)
        JobNode.insert_many([{"job": job_id, "node_name": x, "status": "new", "created_at": now, "updated_at": now}
                             for x in spec.nodes]).execute()


def run(n: int, url: str, tmp: str) -> dict:
    from pushjobs.server import store
    from pushjobs.server.api import jobs as api_jobs
    from pushjobs.server.events import EventBus
    from pushjobs.server.jobs import JobCoordinator
    from pushjobs.server.nodes import NodeRegistry
    from pushjobs.server.runtime import _greenlet_local_connections
    from pushjobs.server.settings import Settings

    settings = Settings(data_dir=tmp, database_url=url, server_name="bench")
    database = store.open_database(settings)
    _greenlet_local_connections(database)
    org = store.Org.create(name=ORG, guid=uuid.uuid4().hex)
    org_id = org.id

    names = [f"node{i:05d}" for i in range(n)]
    keys = {x: os.urandom(32) for x in names}
    incs = {x: str(uuid.uuid4()) for x in names}
    rids = {x: f"rid-{x}".encode() for x in names}
    node_of = {r: x for x, r in rids.items()}
    sent: deque = deque()

    def send_frames(rid: bytes, frames: list[bytes]) -> None:
        sent.append((rid, frames))

    reg = NodeRegistry(settings=settings, session_key_for=lambda o, x: keys.get(x) if o == ORG else None,
                       send_frames=send_frames, drop_counts=Counter())
    bus = EventBus(float(settings.org_feed_expiration))
    coord = JobCoordinator(settings=settings, registry=reg, bus=bus, server_name="bench")
    reg.jobs = coord
    coord.start()
    # every node online and idle: heartbeat (FSM created, abort sent), aborted
    for x in names:
        reg.on_frames(rids[x], signed(keys[x], x, incs[x], "heartbeat", 1, None))
        reg.on_frames(rids[x], signed(keys[x], x, incs[x], "aborted", 2, None))
    sent.clear()
    assert sum(1 for e in reg.entries.values() if e.fsm.available) == n

    job_id = uuid.uuid4().hex
    replies = {x: {"commit": [signed(keys[x], x, incs[x], "ack_commit", 3, job_id)],
                   "run": [signed(keys[x], x, incs[x], "ack_run", 4, job_id),
                           signed(keys[x], x, incs[x], "succeeded", 5, job_id)]} for x in names}

    marks: dict[str, float] = {}
    done = gevent.event.Event()
    orig_finished = coord._finished

    def finished(lj: Any, status: str) -> None:
        marks["memory"] = time.perf_counter()
        marks["status"] = status
        orig_finished(lj, status)

    coord._finished = finished

    def router() -> None:
        handled = 0
        while not done.is_set():
            if not sent:
                gevent.sleep(0.001)
                continue
            rid, frames = sent.popleft()
            body = frames[1]
            node = node_of[rid]
            for kind in ("commit", "run"):
                if b'"type":"' + kind.encode() + b'"' in body:
                    for fr in replies[node][kind]:
                        reg.on_frames(rid, fr)
                        handled += 1
                        if handled % 128 == 0:
                            gevent.sleep(1e-6)  # broker.yield_to_loop

    final = ("complete", "quorum_failed", "timed_out", "crashed", "aborted")

    def poller() -> None:
        """What the database shows (every 10 ms)."""
        while True:
            st = store.Job.select(store.Job.status).where(store.Job.id == job_id).scalar()
            if st in final:
                marks["db"] = time.perf_counter()
                marks["db_status"] = st
                return
            gevent.sleep(0.01)

    def getter() -> None:
        """What GET /jobs/ID shows (every 50 ms): the live view where the coordinator has one."""
        view = getattr(coord, "live_view", None)
        while True:
            v = view(job_id) if view is not None else None
            if v is not None:
                st = v.status
                marks["get_view"] = True
            else:
                st = store.Job.select(store.Job.status).where(store.Job.id == job_id).scalar()
            if st in final:
                marks["get"] = time.perf_counter()
                marks["get_status"] = st
                return
            gevent.sleep(0.05)

    lag = [0.0]
    lags: list = []

    def heartbeat() -> None:
        while not done.is_set():
            t = time.perf_counter()
            gevent.sleep(0.01)
            late = time.perf_counter() - t - 0.01
            lag[0] = max(lag[0], late)
            if late > 0.05:
                lags.append((round(t - tracer.t0, 3), round(late, 3)))

    g_router = gevent.spawn(router)
    g_hb = gevent.spawn(heartbeat)
    labels = {coord.writer._greenlet: "writer", g_router: "router", g_hb: "heartbeat",
              greenlet.getcurrent(): "api/start"}
    tracer = SwitchTracer(labels)
    gevent.sleep(0.05)
    gcs: list = []
    gc_t = [0.0]

    def gc_cb(phase: str, info: dict) -> None:
        if phase == "start":
            gc_t[0] = time.perf_counter()
        else:
            gcs.append((info["generation"], time.perf_counter() - gc_t[0]))

    gc.callbacks.append(gc_cb)
    old_trace = greenlet.settrace(tracer)
    try:
        t0 = tracer.last = tracer.t0 = time.perf_counter()
        c0 = time.process_time()
        insert_job(job_id, org_id, names)
        t_insert = time.perf_counter() - t0
        coord.start_job(job_id)
        marks["start_returned"] = time.perf_counter()
        g_poll = gevent.spawn(poller)
        g_get = gevent.spawn(getter)
        labels[g_poll] = "poller"
        labels[g_get] = "getter"
        gevent.joinall([g_poll, g_get], timeout=600)
        done.set()
    finally:
        greenlet.settrace(old_trace)
        gc.callbacks.remove(gc_cb)
    cpu = time.process_time() - c0
    coord.flush(60)
    job = store.Job.get_by_id(job_id)
    g0 = time.perf_counter()
    detail = api_jobs.job_detail(job)
    t_detail = time.perf_counter() - g0
    counts = {k: len(v) for k, v in detail["nodes"].items()}
    events = store.JobEvent.select().where(store.JobEvent.job == job_id).count()
    for g in (g_router, g_hb):
        g.kill()
    coord.stop()
    worst, who = tracer.worst()
    store.close_database()
    return {
        "nodes": n, "status": marks.get("db_status"), "node_statuses": counts, "events": events,
        "insert_s": t_insert, "start_call_s": marks["start_returned"] - t0 - t_insert,
        "memory_s": marks["memory"] - t0, "db_s": marks["db"] - t0, "get_s": marks["get"] - t0,
        "get_from_memory": bool(marks.get("get_view")),
        "writer_s": tracer.total.get("writer", 0.0), "router_s": tracer.total.get("router", 0.0),
        "worst_ms": 1000 * worst, "worst_who": who, "hb_lag_ms": 1000 * lag[0], "detail_s": t_detail, "cpu_s": cpu,
        "writer_errors": coord.writer.errors, "long_stretches": tracer.long[:20], "hb_lags": lags[:20],
        "writer_batches": getattr(coord.writer, "batches", None),
        "writer_longest_batch_s": getattr(coord.writer, "longest_batch", None),
        "gc_s": sum(d for _, d in gcs), "gc_max_ms": 1000 * max((d for _, d in gcs), default=0.0),
        "gc_gen2": sum(1 for g, _ in gcs if g == 2),
    }


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.perf.bench_jobs")
    p.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--db", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    p.add_argument("--runs", type=int, default=1)
    a = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    cluster = None
    if "postgresql" in a.db:
        from pushjobs.server import store

        store.make_cooperative()
        from tests.helpers.postgres import find_postgres_bindir, start_cluster

        if find_postgres_bindir() is None:
            print("PostgreSQL not installed: sqlite only", file=sys.stderr)
            a.db = [d for d in a.db if d != "postgresql"]
        else:
            cluster = start_cluster()
    rows = []
    ok = True
    try:
        for n in a.nodes:
            cpu = fsm_cpu(n)
            for dbname in a.db:
                for _ in range(a.runs):
                    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
                        url = f"sqlite:///{tmp}/push-jobs-server.sqlite3" if dbname == "sqlite" \
                            else cluster.create_database()
                        r = run(n, url, tmp)
                    ok = ok and r["status"] == "complete" and r["node_statuses"] == {"succeeded": n}
                    rows.append((dbname, cpu, r))
                    print(f"{dbname} {n}: {json.dumps(r)}", file=sys.stderr, flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
    hdr = ["nodes", "db", "FSM CPU s", "insert s", "start_job s", "memory complete s", "DB complete s", "GET complete s", "process CPU s",
           "writer s", "router s", "longest stretch ms (who)", "hb lag ms", "GET detail s", "status"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for dbname, cpu, r in rows:
        print(f"| {r['nodes']:,} | {dbname} | {cpu:.3f} | {r['insert_s']:.3f} | {r['start_call_s']:.3f} | "
              f"{r['memory_s']:.3f} | {r['db_s']:.3f} | {r['get_s']:.3f} | {r['cpu_s']:.2f} | {r['writer_s']:.3f} | {r['router_s']:.3f} | "
              f"{r['worst_ms']:.1f} ({r['worst_who']}) | {r['hb_lag_ms']:.1f} | {r['detail_s']:.3f} | "
              f"{r['status']} |")
    print(f"load average: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
