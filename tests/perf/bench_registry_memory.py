"""What one online node costs the server's Python heap: tracemalloc bytes per node.

    PUSHJOBS_BENCH_NO_DOC=1 .venv/bin/python -m tests.perf.bench_registry_memory --nodes 10000

Builds N node entries in-process the way a live server does: a session key
per node from `Runtime.session_key` (what the config handshake creates), then
valid HMAC-signed heartbeats into `NodeRegistry.on_frames` (FSM created,
`abort` sent, rehab timer armed), then `aborted` (the node goes idle, the
timer is cancelled), then a few more heartbeats (the liveness record). No
sockets: what is measured is the Python side only (entries, FSMs, liveness
records, routing maps, session keys). The rest of a live server's RSS per node
is libzmq's, per TCP connection (buffers, the CurveZMQ state, the pipe pair):
this benchmark says nothing about it.

Why tracemalloc and not RSS: RSS moves in arenas and pages, and includes what
the frames built for the run cost; tracemalloc counts exactly the bytes still
allocated after the run, and names the lines that hold them (`--top`).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
import tracemalloc
import uuid
from collections import Counter
from typing import Optional

import gevent

from pushjobs.protocol import signing
from pushjobs.protocol.timestamps import http_date
from pushjobs.server.nodes import NodeRegistry
from pushjobs.server.runtime import Runtime
from pushjobs.server.settings import Settings
from tests.perf.harness import append_result, table

ORG = "bench"


def _frames(name: str, key: bytes, incarnation: str, mtype: str, seq: int, ts: str) -> list[bytes]:
    fields = {"node": name, "client": name, "protocol_version": "2.0", "org": ORG, "type": mtype,
              "sequence": seq, "timestamp": ts, "incarnation_id": incarnation, "job_id": None}
    if mtype == "heartbeat":
        fields["job_state"] = "idle"
    body = json.dumps(fields, separators=(",", ":")).encode()
    return signing.encode_frames(body, signing.HMAC_SHA256, key)


def run(n: int, top: int) -> dict:
    settings = Settings(heartbeat_interval=1000)
    runtime = Runtime(settings, server_private_key=object())  # never started: only its session keys are used
    names = [f"node-{i:06d}.example.com" for i in range(n)]
    incarnations = {x: str(uuid.uuid4()) for x in names}
    rids = {x: b"\x00" + uuid.uuid4().bytes[:4] for x in names}  # a ROUTER routing id is 5 bytes
    sent: Counter = Counter()
    # A frozen FSM clock: with tracemalloc on, one round over 10,000 nodes takes longer than
    # the liveness window, and nodes declared dead would leave the registry before counting.
    registry = NodeRegistry(settings=settings, session_key_for=runtime._existing_session_key,
                            send_frames=lambda rid, frames: sent.__setitem__("n", sent["n"] + 1),
                            drop_counts=runtime.drop_counts, clock=lambda: 1000.0)
    gc.collect()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start(1)
    base = tracemalloc.take_snapshot()
    m0 = tracemalloc.get_traced_memory()[0]
    keys = {x: runtime.session_key(ORG, x) for x in names}  # the config handshake
    m_keys = tracemalloc.get_traced_memory()[0]
    ts = http_date()
    for x in names:  # first heartbeat: FSM + abort + rehab timer
        registry.on_frames(rids[x], _frames(x, keys[x], incarnations[x], "heartbeat", 1, ts))
    rehab = sum(1 for e in registry.entries.values() if e.fsm.state == "rehab")
    gevent.sleep(0)
    m_rehab = tracemalloc.get_traced_memory()[0]
    for x in names:  # aborted: idle, rehab timer cancelled
        registry.on_frames(rids[x], _frames(x, keys[x], incarnations[x], "aborted", 2, ts))
    for seq in (3, 4, 5):  # steady heartbeats
        for x in names:
            registry.on_frames(rids[x], _frames(x, keys[x], incarnations[x], "heartbeat", seq, ts))
    for _ in range(3):  # let the cancelled timers go
        gevent.sleep(0)
    gc.collect()
    m1 = tracemalloc.get_traced_memory()[0]
    snap = tracemalloc.take_snapshot()
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    idle = sum(1 for e in registry.entries.values() if e.fsm.available)
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = snap.filter_traces(filters).compare_to(base.filter_traces(filters), "lineno")
    lines = []
    for s in stats[:top]:
        fr = s.traceback[0]
        lines.append(f"{s.size_diff / n:8.1f} B/node  {s.count_diff / n:5.2f} blocks/node  "
                     f"{fr.filename.split('site-packages/')[-1].split('/work/main/')[-1]}:{fr.lineno}")
    return {
        "nodes": n, "idle": idle, "in_rehab_after_first_heartbeat": rehab,
        "dropped": dict(runtime.drop_counts), "messages_sent": sent["n"],
        "session_key_bytes_per_node": (m_keys - m0) / n,
        "registry_bytes_per_node_in_rehab": (m_rehab - m_keys) / n,
        "registry_bytes_per_node_idle": (m1 - m_keys) / n,
        "total_bytes_per_node": (m1 - m0) / n,
        "max_rss_growth_kib_per_node": (rss1 - rss0) / n,
        "top": lines,
    }


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.perf.bench_registry_memory")
    p.add_argument("--nodes", type=int, default=10000)
    p.add_argument("--top", type=int, default=12, help="allocation sites to list (tracemalloc, by line)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    r = run(a.nodes, a.top)
    body = table(
        ["nodes", "idle at the end", "session key B/node", "registry B/node (in rehab)",
         "registry B/node (idle)", "total B/node", "max RSS growth KiB/node", "dropped"],
        [[r["nodes"], r["idle"], r["session_key_bytes_per_node"], r["registry_bytes_per_node_in_rehab"],
          r["registry_bytes_per_node_idle"], r["total_bytes_per_node"], r["max_rss_growth_kib_per_node"],
          json.dumps(r["dropped"])]])
    body += ("\n\n<details><summary>where the bytes of an idle node are (tracemalloc, by line)</summary>\n\n```\n"
             + "\n".join(r["top"]) + "\n```\n\n</details>")
    append_result(f"node registry memory: {a.nodes} nodes ({time.perf_counter() - t0:.0f} s)", body)
    return 0 if r["idle"] == a.nodes and not r["dropped"] else 1


if __name__ == "__main__":
    sys.exit(main())
