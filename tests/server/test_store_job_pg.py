"""`store_job` writes a job and its job nodes exactly, all or nothing, on both back ends.

PostgreSQL takes a different path (one statement, the node names as one array
parameter) from SQLite (`bulk_insert`), so both are checked on real databases.
Set PUSHJOBS_BENCH_STORE_JOB=1 to also print best-of-5 timings (issue #8).
"""

from __future__ import annotations

import os
import time

import peewee as pw
import pytest

from pushjobs.server import store
from pushjobs.server.api.jobs import JobSpec, store_job


def _org(name: str = "acme") -> store.Org:
    return store.Org.create(name=name, guid=("%032x" % abs(hash(name)))[:32])


def _spec(nodes: list[str], **kw) -> JobSpec:
    base = dict(command="chef-client", nodes=tuple(nodes), quorum=None, run_timeout=None, user=None,
                dir=None, env=None, file=None, capture_output=False)
    base.update(kw)
    return JobSpec(**base)


# Not sorted, with awkward characters, so order and quoting are both checked.
NODES = [f"node-{(i * 7919) % 1000:04d}" for i in range(997)] + ['we"ird', "o'brien", "back\\slash"]


def test_job_and_nodes_stored_exactly(store_db):
    org = _org()
    before = store.utcnow()
    store_job("a" * 32, org.id, _spec(NODES, env={"A": "1"}), "alice", 3600)
    after = store.utcnow()
    job = store.Job.get_by_id("a" * 32)
    assert (job.status, job.quorum, job.run_timeout, job.requestor, job.env) == \
        ("new", 1000, 3600, "alice", '{"A":"1"}')
    rows = list(store.JobNode.select().where(store.JobNode.job == job.id).order_by(store.JobNode.id))
    assert [r.node_name for r in rows] == NODES  # ids ascend in node order
    assert {r.status for r in rows} == {"new"}
    assert {(r.created_at, r.updated_at) for r in rows} == {(job.created_at, job.created_at)}
    assert before <= job.created_at <= after and job.updated_at == job.created_at


def test_two_jobs_keep_their_own_nodes(store_db):
    org = _org()
    store_job("b" * 32, org.id, _spec(["n1", "n2"], quorum=1), "alice", 3600)
    store_job("c" * 32, org.id, _spec(["n2", "n1", "n3"], run_timeout=5), "bob", 3600)
    got = {j: [r.node_name for r in store.JobNode.select().where(store.JobNode.job == j)
                .order_by(store.JobNode.id)] for j in ("b" * 32, "c" * 32)}
    assert got == {"b" * 32: ["n1", "n2"], "c" * 32: ["n2", "n1", "n3"]}
    assert store.Job.get_by_id("c" * 32).run_timeout == 5


def test_failing_insert_leaves_nothing(store_db):
    org = _org()
    store_job("d" * 32, org.id, _spec(["n1"]), "alice", 3600)
    with pytest.raises(pw.IntegrityError):  # duplicate job id
        store_job("d" * 32, org.id, _spec(["x1", "x2"]), "alice", 3600)
    with pytest.raises(pw.IntegrityError):  # duplicate node name: the job row must go too
        store_job("e" * 32, org.id, _spec(["y1", "y2", "y1"]), "alice", 3600)
    assert [j.id for j in store.Job.select()] == ["d" * 32]
    assert [r.node_name for r in store.JobNode.select()] == ["n1"]


@pytest.mark.skipif(not os.environ.get("PUSHJOBS_BENCH_STORE_JOB"), reason="benchmark: set PUSHJOBS_BENCH_STORE_JOB=1")
def test_bench_store_job(store_db, capsys):
    org = _org()
    for n in (1000, 10_000):
        spec = _spec([f"node-{i:05d}" for i in range(n)])
        best = float("inf")
        for k in range(5):
            t = time.perf_counter()
            store_job(f"{n:08d}{k:024d}", org.id, spec, "alice", 3600)
            best = min(best, time.perf_counter() - t)
        with capsys.disabled():
            print(f"\n{store.db.obj.__class__.__name__} store_job {n} nodes: best of 5 {best * 1000:.1f} ms")
