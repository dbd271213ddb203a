"""The server's heartbeat path alone: `NodeRegistry.on_frames` fed pre-signed frames in-process.

    .venv/bin/python -m tests.perf.bench_heartbeat --nodes 10000 --rounds 5

No sockets, no CurveZMQ, no simulator: what one client heartbeat costs the
server's Python code (the §4.5 pipeline: header, JSON, HMAC, timestamp; the
node FSM and its liveness record), so that the cost of N nodes at a 1 s
heartbeat can be read off without the simulator competing for the CPU.
Prints a table, a cProfile summary, and appends both to docs/performance.md.

As in the server: the session keys come from a `Runtime` (the config
handshake's `Runtime.session_key`, the registry's `_existing_session_key`),
and the process is monkey-patched by gevent first (the gunicorn gevent
worker is: its `threading.Lock` is gevent's), unless `--no-patch`. The
CPU figure is the best of `--repeat` passes (this machine is shared).
"""

from __future__ import annotations

if __name__ == "__main__":
    import sys as _sys

    if "--no-patch" not in _sys.argv:
        from gevent import monkey

        monkey.patch_all()

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
import uuid
from collections import Counter
from typing import Optional

from pushjobs.protocol import signing
from pushjobs.protocol.timestamps import http_date
from pushjobs.server.nodes import NodeRegistry
from pushjobs.server.runtime import Runtime
from pushjobs.server.settings import Settings
from tests.perf.harness import append_result, table


def make_frames(nodes: list[str], keys: dict, org: str, incarnations: dict, seq: int) -> list[list[bytes]]:
    ts = http_date()
    out = []
    for n in nodes:
        body = json.dumps({"node": n, "client": n, "protocol_version": "2.0", "org": org, "type": "heartbeat",
                           "sequence": seq, "timestamp": ts, "incarnation_id": incarnations[n],
                           "job_state": "idle", "job_id": None}, separators=(",", ":")).encode()
        out.append(signing.encode_frames(body, signing.HMAC_SHA256, keys[(org, n)]))
    return out


def run(n: int, rounds: int, profile: bool, repeat: int = 1) -> tuple[dict, Optional[str]]:
    import gevent  # noqa: F401  (the registry arms rehab timers as greenlets)

    org = "bench"
    names = [f"n{i}" for i in range(1, n + 1)]
    runtime = Runtime(Settings(), server_private_key=object())  # never started: its session keys only
    keys = {(org, x): runtime.session_key(org, x) for x in names}
    incarnations = {x: str(uuid.uuid4()) for x in names}
    sent: Counter = Counter()

    def send_frames(rid: bytes, frames: list[bytes]) -> None:
        sent[rid] += 1

    reg = NodeRegistry(settings=Settings(), session_key_for=runtime._existing_session_key,
                       send_frames=send_frames, drop_counts=Counter())
    rids = {x: f"rid-{x}".encode() for x in names}
    # bring every node online: first heartbeat (creates the FSM, abort), `aborted` → idle
    t_create = time.perf_counter()
    for x, fr in zip(names, make_frames(names, keys, org, incarnations, 1)):
        reg.on_frames(rids[x], fr)
    ts = http_date()
    for x in names:
        body = json.dumps({"node": x, "client": x, "protocol_version": "2.0", "org": org, "type": "aborted",
                           "sequence": 2, "timestamp": ts, "incarnation_id": incarnations[x], "job_id": None},
                          separators=(",", ":")).encode()
        reg.on_frames(rids[x], signing.encode_frames(body, signing.HMAC_SHA256, keys[(org, x)]))
    t_create = time.perf_counter() - t_create
    available = sum(1 for e in reg.entries.values() if e.fsm.available)
    prof = cProfile.Profile() if profile else None
    cpu = wall = float("inf")
    seq = 3
    for _ in range(max(1, repeat)):
        batches = [make_frames(names, keys, org, incarnations, seq + r) for r in range(rounds)]
        seq += rounds
        t0 = time.perf_counter()
        c0 = time.process_time()
        if prof:
            prof.enable()
        for batch in batches:
            for x, fr in zip(names, batch):
                reg.on_frames(rids[x], fr)
        if prof:
            prof.disable()
        cpu = min(cpu, time.process_time() - c0)
        wall = min(wall, time.perf_counter() - t0)
    msgs = n * rounds
    res = {"nodes": n, "rounds": rounds, "available": available, "messages": msgs,
           "us_per_heartbeat": 1e6 * cpu / msgs, "cores_at_1s": cpu / msgs * n,
           "wall_s": wall, "online_us_per_node": 1e6 * t_create / n,
           "dropped": dict(reg.drop_counts), "alive_after": len(reg.entries)}
    text = None
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(14)
        text = "\n".join(line for line in s.getvalue().splitlines() if line.strip())
    return res, text


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.perf.bench_heartbeat")
    p.add_argument("--nodes", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3, help="passes of --rounds; the fastest counts")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--no-patch", action="store_true", help="do not monkey-patch with gevent first")
    a = p.parse_args(argv)
    res, prof = run(a.nodes, a.rounds, False, a.repeat)
    _, prof = run(min(a.nodes, 2000), 2, True) if a.profile else (None, None)
    body = table(["nodes", "heartbeats processed", "CPU µs per heartbeat", "cores for N nodes at 1 s",
                  "µs per node to come online (heartbeat + aborted)", "nodes alive after", "dropped"],
                 [[res["nodes"], res["messages"], res["us_per_heartbeat"], res["cores_at_1s"],
                   res["online_us_per_node"], res["alive_after"], json.dumps(res["dropped"])]])
    if prof:
        body += "\n\n<details><summary>cProfile of the heartbeat path (tottime, with profiler overhead)</summary>" \
                "\n\n```\n" + prof + "\n```\n\n</details>"
    append_result(f"server heartbeat path in-process: {a.nodes} nodes", body)
    return 0 if res["alive_after"] == a.nodes and not res["dropped"] else 1


if __name__ == "__main__":
    sys.exit(main())
