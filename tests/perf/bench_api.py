"""Server CPU per REST request: the config handshake, node_states, job status, `_status`.

    .venv/bin/python -m tests.perf.bench_api --nodes 1000 --db sqlite
    .venv/bin/python -m tests.perf.bench_api --nodes 10000 --db postgresql --requests 1000
    .venv/bin/python -m tests.perf.bench_api --nodes 1000 --only config --loop 60   # py-spy record --pid ...

In-process and single-threaded, so that nothing else competes for the CPU
being measured: the real Flask app (`create_app`) driven by werkzeug's test
client (no sockets, no gunicorn), a real database (a SQLite file in a temp
dir, or a throwaway PostgreSQL cluster from tests/helpers/postgres.py), an
org with N clients that share one key (as `client-create --count` makes them
for the fleet) plus one admin user, a real `Runtime` whose node registry has
N nodes online (brought up by real signed heartbeats, as in
bench_heartbeat), and one stored job of N nodes.

Every request is signed before the clock starts (Chef v1.1 signing is
pure-Python RSA on the client side and would dominate), so the numbers are
what the server spends: `time.process_time()` around `client.get()`. That
includes the test client's own environ building and response parsing: the
`_status` row (unauthenticated, no database) is that floor plus Flask's.

`--server` sends the same pre-signed requests to a real push-jobs-server
(gunicorn + gevent, tests/helpers/server.py) over loopback HTTP with
keep-alive and reads the server's CPU from /proc: what the in-process
numbers leave out (HTTP parsing, gevent, logging).

`--loop S` runs one endpoint for S seconds after the measurement, for
py-spy (`py-spy record --pid PID` or `py-spy top`); `--cprofile` prints the
top functions of each endpoint. `--doc` appends the table to
docs/performance.md (by default it only prints).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import quote

from pushjobs.protocol import chef_auth, keys, signing
from pushjobs.protocol.timestamps import http_date

ORG = "bench"
USER = "bench-admin"
PREFIX = "n"


@dataclass
class Endpoint:
    name: str
    requests: list[tuple[str, dict[str, str]]]  # (path with query, headers): cycled
    expect: int = 200


@dataclass
class Result:
    name: str
    count: int
    cpu_us: float  # mean process CPU per request
    p50_us: float
    p99_us: float
    statuses: Counter = field(default_factory=Counter)
    profile: Optional[str] = None


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))] if s else 0.0


# ---------------------------------------------------------------------------
# fixture: database, identities, runtime with N live nodes, one N-node job


@dataclass
class Bench:
    app: Any
    client: Any
    runtime: Any
    node_key: Any
    user_key: Any
    job_id: str
    nodes: int
    tmp: str
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for fn in reversed(self.cleanup):
            try:
                fn()
            except Exception:  # noqa: BLE001 - best effort at exit
                logging.getLogger(__name__).debug("cleanup failed", exc_info=True)


def database_url(db: str, tmp: str, cleanup: list) -> str:
    if db == "sqlite":
        return f"sqlite:///{os.path.join(tmp, 'pushjobs.db')}"
    from tests.helpers.postgres import PostgresCluster, find_postgres_bindir

    bindir = find_postgres_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (make sysdeps)")
    cluster = PostgresCluster(bindir)
    cluster.start()
    cleanup.append(cluster.stop)
    return cluster.create_database("bench")


def build(nodes: int, db: str) -> Bench:
    from pushjobs.server import identity, store
    from pushjobs.server.app import create_app
    from pushjobs.server.nodes import NodeRegistry
    from pushjobs.server.runtime import Runtime
    from pushjobs.server.settings import Settings

    tmp = tempfile.mkdtemp(prefix="pushjobs-bench-api-")
    cleanup: list = [lambda: shutil.rmtree(tmp, ignore_errors=True)]
    url = database_url(db, tmp, cleanup)
    settings = Settings(data_dir=tmp, database_url=url, server_name="127.0.0.1")
    store.open_database(settings)
    cleanup.append(store.close_database)
    server_key = keys.generate_rsa_key()
    node_key = keys.generate_rsa_key()
    user_key = keys.generate_rsa_key()
    with store.db.connection_context():
        identity.create_org(ORG)
        identity.create_user(USER, keys.public_key_pem(user_key), ORG, admin=True)
        identity.create_clients_bulk(ORG, PREFIX, nodes, keys.public_key_pem(node_key))
        org = identity.get_org(ORG)
        job_id = uuid.uuid4().hex
        now = store.utcnow()
        with store.db.atomic():
            store.Job.create(id=job_id, org=org, command="chef-client", status="complete", run_timeout=3600,
                             quorum=nodes, requestor=USER, created_at=now, updated_at=now)
            rows = [{"job": job_id, "node_name": f"{PREFIX}{i}", "status": "succeeded", "created_at": now,
                     "updated_at": now} for i in range(1, nodes + 1)]
            for i in range(0, len(rows), 100):
                store.JobNode.insert_many(rows[i:i + 100]).execute()

    runtime = Runtime(settings, server_private_key=server_key)
    names = [f"{PREFIX}{i}" for i in range(1, nodes + 1)]
    hb_keys = {(ORG, x): os.urandom(32) for x in names}
    runtime.registry = NodeRegistry(settings=settings, session_key_for=lambda o, x: hb_keys.get((o, x)),
                                    send_frames=lambda rid, frames: None, drop_counts=Counter())
    _bring_online(runtime.registry, names, hb_keys)
    app = create_app(settings, runtime, public_key_pem=keys.public_key_pem(server_key))
    return Bench(app=app, client=app.test_client(), runtime=runtime, node_key=node_key, user_key=user_key,
                 job_id=job_id, nodes=nodes, tmp=tmp, cleanup=cleanup)


def _bring_online(registry: Any, names: list[str], hb_keys: dict) -> None:
    """First heartbeat (the FSM aborts any job), then `aborted`: the node is idle and available."""
    inc = {x: str(uuid.uuid4()) for x in names}
    for typ, seq in (("heartbeat", 1), ("aborted", 2)):
        ts = http_date()
        for x in names:
            body = {"node": x, "client": x, "protocol_version": "2.0", "org": ORG, "type": typ,
                    "sequence": seq, "timestamp": ts, "incarnation_id": inc[x], "job_id": None}
            if typ == "heartbeat":
                body["job_state"] = "idle"
            frames = signing.encode_frames(json.dumps(body, separators=(",", ":")).encode(),
                                           signing.HMAC_SHA256, hb_keys[(ORG, x)])
            registry.on_frames(f"rid-{x}".encode(), frames)


# ---------------------------------------------------------------------------
# requests


def signed(key: Any, user: str, path: str, version: str) -> dict[str, str]:
    h = chef_auth.sign_request(key, user, "GET", path, b"", version=version)
    h["Accept"] = "application/json"
    return h


def endpoints(b: Bench, distinct: int, version: str) -> list[Endpoint]:
    from pushjobs.protocol.keys import curve_keypair

    ccpk, _ = curve_keypair()
    base = f"/organizations/{ORG}/pushy"
    cfg = []
    for i in range(1, min(distinct, b.nodes) + 1):
        node = f"{PREFIX}{i}"
        path = f"{base}/config/{node}"
        cfg.append((f"{path}?ccpk={quote(ccpk, safe='')}", signed(b.node_key, node, path, version)))
    ns = f"{base}/node_states"
    job = f"{base}/jobs/{b.job_id}"
    return [
        Endpoint("_status (no auth, no db)", [("/pushy/_status", {"Accept": "application/json"})]),
        Endpoint("config (handshake)", cfg),
        Endpoint("node_states/NODE", [(f"{ns}/{PREFIX}1", signed(b.user_key, USER, f"{ns}/{PREFIX}1", version))]),
        Endpoint("node_states", [(ns, signed(b.user_key, USER, ns, version))]),
        Endpoint("jobs/ID (job status)", [(job, signed(b.user_key, USER, job, version))]),
    ]


def measure(b: Bench, ep: Endpoint, count: int, profile: bool) -> Result:
    client = b.client
    reqs = ep.requests
    per: list[float] = []
    statuses: Counter = Counter()
    # warm-up: first-use costs (imports, statement caches, key parsing) are not per request
    for path, headers in reqs[: min(len(reqs), 20)]:
        client.get(path, headers=headers)
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    c_total = time.process_time()
    for i in range(count):
        path, headers = reqs[i % len(reqs)]
        c0 = time.process_time()
        r = client.get(path, headers=headers)
        per.append(time.process_time() - c0)
        statuses[r.status_code] += 1
    c_total = time.process_time() - c_total
    text = None
    if prof:
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(16)
        text = "\n".join(line for line in s.getvalue().splitlines() if line.strip())
    return Result(ep.name, count, 1e6 * c_total / count, 1e6 * _pct(per, 50), 1e6 * _pct(per, 99), statuses, text)


def loop(b: Bench, ep: Endpoint, seconds: float) -> int:
    """Issue `ep` requests for `seconds` (for py-spy); returns how many."""
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        path, headers = ep.requests[n % len(ep.requests)]
        b.client.get(path, headers=headers)
        n += 1
    return n


# ---------------------------------------------------------------------------
# --server: the same requests against a real push-jobs-server (gunicorn + gevent)


def run_server(a: argparse.Namespace) -> tuple[list[Result], str]:
    """Real HTTP on loopback, keep-alive, one client thread; the server's CPU from /proc.

    What the in-process numbers leave out: gunicorn/gevent's HTTP parsing and
    writing, logging, the gevent hub. The registry is empty here (no fleet), so
    node_states lists no node: its row is the per-request cost without the
    list; node_states with N nodes is measured in-process."""
    from pathlib import Path

    import requests

    from pushjobs.server import store
    from pushjobs.server.settings import Settings
    from tests.helpers.server import ServerProcess
    from tests.perf import procstat

    tmp = tempfile.mkdtemp(prefix="pushjobs-bench-api-server-")
    cleanup: list = [lambda: shutil.rmtree(tmp, ignore_errors=True)]
    url = None if a.db == "sqlite" else database_url(a.db, tmp, cleanup)
    server = ServerProcess(Path(tmp) / "server", database_url=url, heartbeat_interval=1000,
                           settings={"log_level": "warning"})
    try:
        server.start()
        server.create_org(ORG)
        user = server.create_user(USER, ORG, admin=True)
        node_key_path = Path(tmp) / "nodes.pem"
        server.ctl("client-create", "--org", ORG, "--count", str(a.nodes), "--prefix", PREFIX,
                   "--key-out", str(node_key_path))
        node_key = keys.load_private_key(node_key_path.read_text())
        job_id = uuid.uuid4().hex
        settings = Settings(data_dir=str(server.data_dir), database_url=server.database_url, server_name="127.0.0.1")
        store.open_database(settings, migrate=False)
        try:
            with store.db.connection_context(), store.db.atomic():
                from pushjobs.server import identity

                org = identity.get_org(ORG)
                now = store.utcnow()
                store.Job.create(id=job_id, org=org, command="chef-client", status="complete", run_timeout=3600,
                                 quorum=a.nodes, requestor=USER, created_at=now, updated_at=now)
                rows = [{"job": job_id, "node_name": f"{PREFIX}{i}", "status": "succeeded", "created_at": now,
                         "updated_at": now} for i in range(1, a.nodes + 1)]
                for i in range(0, len(rows), 100):
                    store.JobNode.insert_many(rows[i:i + 100]).execute()
        finally:
            store.close_database()
        fake = Bench(app=None, client=None, runtime=None, node_key=node_key, user_key=user.private_key,
                     job_id=job_id, nodes=a.nodes, tmp=tmp)
        eps = _select(endpoints(fake, a.distinct, a.sign_version), a.only)
        http = requests.Session()
        pids = [server.pid] + procstat.children(server.pid)
        results = []
        for ep in eps:
            for path, headers in ep.requests[:20]:
                http.get(server.base_url + path, headers=headers)
            statuses: Counter = Counter()
            before = sum(procstat.sample(pid).cpu for pid in pids)
            for i in range(a.requests):
                path, headers = ep.requests[i % len(ep.requests)]
                statuses[http.get(server.base_url + path, headers=headers).status_code] += 1
            used = sum(procstat.sample(pid).cpu for pid in pids) - before
            results.append(Result(ep.name, a.requests, 1e6 * used / a.requests, 0.0, 0.0, statuses))
        http.close()
        return results, f"server pid {server.pid} (+ worker {pids[1:]})"
    finally:
        server.stop()
        for fn in reversed(cleanup):
            fn()


def _select(eps: list[Endpoint], only: str) -> list[Endpoint]:
    if not only:
        return eps
    wanted = tuple(x.strip() for x in only.split(",") if x.strip())
    return [e for e in eps if e.name.startswith(wanted)]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.perf.bench_api", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1000, help="clients in the org, live nodes, nodes of the job")
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--requests", type=int, default=2000, help="measured requests per endpoint")
    p.add_argument("--distinct", type=int, default=300,
                   help="distinct nodes whose config requests are pre-signed (then cycled)")
    p.add_argument("--sign-version", default="1.1", choices=("1.0", "1.1", "1.3"),
                   help="Chef signing version of the requests (the agent and knife sign 1.1)")
    p.add_argument("--only", default="", help="comma-separated endpoint prefixes (config,node_states,jobs,_status)")
    p.add_argument("--cprofile", action="store_true", help="print each endpoint's top functions")
    p.add_argument("--loop", type=float, default=0.0, help="then loop the (first selected) endpoint this long")
    p.add_argument("--doc", action="store_true", help="append the table to docs/performance.md")
    p.add_argument("--server", action="store_true",
                   help="against a real push-jobs-server over loopback HTTP (server CPU from /proc, 10 ms ticks)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    if a.server:
        from tests.perf.harness import table

        results, where = run_server(a)
        print(f"set-up and run {time.perf_counter() - t0:.1f} s: {where}", flush=True)
        print(table(["endpoint", "nodes", "db", "requests", "server CPU µs/request", "req/s at 1 core", "statuses"],
                    [[r.name, a.nodes, a.db, r.count, r.cpu_us, 1e6 / max(r.cpu_us, 1.0),
                      json.dumps(dict(r.statuses))] for r in results]), flush=True)
        return 1 if any(set(r.statuses) != {200} for r in results) else 0
    b = build(a.nodes, a.db)
    try:
        eps = endpoints(b, a.distinct, a.sign_version)
        eps = _select(eps, a.only)
        print(f"set-up {time.perf_counter() - t0:.1f} s: {a.nodes} nodes on {a.db}, pid {os.getpid()}", flush=True)
        results = [measure(b, ep, a.requests, False) for ep in eps]
        bad = [r for r in results if set(r.statuses) != {200}]
        from tests.perf.harness import table

        body = table(["endpoint", "nodes", "db", "requests", "CPU µs/request (mean)", "p50 µs", "p99 µs",
                      "req/s at 1 core", "statuses"],
                     [[r.name, a.nodes, a.db, r.count, r.cpu_us, r.p50_us, r.p99_us, 1e6 / r.cpu_us,
                       json.dumps(dict(r.statuses))] for r in results])
        print(body, flush=True)
        if a.cprofile:
            for ep in eps:
                r = measure(b, ep, min(a.requests, 500), True)
                print(f"\n--- cProfile: {r.name} (tottime, with profiler overhead)\n{r.profile}", flush=True)
        if a.doc:
            from tests.perf.harness import append_result

            append_result(f"API in-process: {a.nodes} nodes, {a.db}", body)
        if a.loop and eps:
            print(f"looping {eps[0].name} for {a.loop:.0f} s (pid {os.getpid()})", flush=True)
            n = loop(b, eps[0], a.loop)
            print(f"{n} requests", flush=True)
        return 1 if bad else 0
    finally:
        b.close()


if __name__ == "__main__":
    sys.exit(main())
