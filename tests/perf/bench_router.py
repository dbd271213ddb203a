"""What receiving one command message costs the server's process, by receive style.

    .venv/bin/python -m tests.perf.bench_router --messages 100000

A `zmq.green` ROUTER in a gevent loop (like pushjobs.server.broker) receives
heartbeat-sized two-frame messages from DEALERs in another process, over
loopback TCP, with and without CurveZMQ. Receive styles:

* `green`: `recv_multipart()` per message (what the broker does today): the
  green socket checks ZMQ_EVENTS and may wait on the hub per message;
* `drain`: after one green wait, `recv_multipart(NOBLOCK)` until `Again`
  (up to 1,000), then yield once;
* `plain`: `Broker._router_loop` itself (round 3): a plain (not zmq.green)
  socket, ZMQ_EVENTS checked before each read, frames read straight from
  libzmq with NOBLOCK, its own wait (`Broker._wait_router`: ZMQ_FD watcher,
  safety timer). `--gap` spaces the sends (a wake-up per message, as
  at 1,000 nodes) instead of a flood.

CPU is the receiving process's (Python and the libzmq I/O thread, which does
the TCP reads and the CURVE decryption), and its main thread's alone (the gevent
hub and the receive loop: what the server's one worker thread pays). Nothing is parsed: this is the
floor under `NodeRegistry.on_frames`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from typing import Optional

from tests.perf.harness import append_result, table

BODY = (b'{"node":"n1234","client":"n1234","protocol_version":"2.0","org":"bench","type":"heartbeat",'
        b'"sequence":17,"timestamp":"Sun, 29 Nov 2026 05:40:00 GMT",'
        b'"incarnation_id":"0d4c9ab6-6a4b-4d0c-9f5e-8a1a4f9f3d21","job_state":"idle","job_id":null}')
HEADER = b"Version:2.0;SigningMethod:hmac_sha256;Signature:H1EX80i7K4xP2WT8TXO+9Cgr5kqMipX1JsCFhdVWAOo="


def sender(port: int, count: int, dealers: int, server_public: Optional[bytes], gap: float = 0.0) -> None:
    import zmq

    ctx = zmq.Context()
    socks = []
    for _ in range(dealers):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 2000)
        s.setsockopt(zmq.SNDHWM, 0)
        if server_public is not None:
            pub, sec = zmq.curve_keypair()
            s.curve_serverkey, s.curve_publickey, s.curve_secretkey = server_public, pub, sec
        s.connect(f"tcp://127.0.0.1:{port}")
        socks.append(s)
    time.sleep(0.5)
    for i in range(count):
        socks[i % dealers].send_multipart([HEADER, BODY])
        if gap:
            time.sleep(gap)
    for s in socks:
        s.close()
    ctx.term()


def receive(style: str, curve: bool, count: int, dealers: int, gap: float = 0.0) -> dict:
    import gevent
    import zmq
    import zmq.green as gzmq

    ctx = gzmq.Context()
    router = zmq.Socket(ctx, zmq.ROUTER) if style == "plain" else ctx.socket(gzmq.ROUTER)
    router.setsockopt(gzmq.LINGER, 0)
    server_public = None
    if curve:
        server_public, secret = zmq.curve_keypair()
        router.curve_server = True
        router.curve_secretkey = secret  # no ZAP handler: every client key is accepted (benchmark only)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    proc = multiprocessing.get_context("fork").Process(target=sender,
                                                       args=(port, count, dealers, server_public, gap))
    got = 0
    t0 = c0 = m0 = None

    def plain_loop() -> None:
        """`Broker._router_loop` itself, on this socket."""
        from pushjobs.server.broker import ROUTER_BATCH, Broker

        def on_frames(rid: bytes, frames: list) -> None:
            nonlocal got, t0, c0, m0
            if t0 is None:
                t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
            got += 1

        b = Broker.__new__(Broker)  # only what the loop uses
        b.router, b.on_frames, b.router_batch, b.router_yields = router, on_frames, ROUTER_BATCH, 0
        b.backlogged, b.on_backlog, b.router_wait_timeouts = False, None, 0
        b._hub = b._router_io = b._router_timer = b._router_waiter = None
        g = gevent.spawn(b._router_loop)
        while got < count:
            gevent.sleep(0.01)
        g.kill()
        for w in (b._router_io, b._router_timer):
            if w is not None:
                w.close()

    def loop() -> None:
        nonlocal got, t0, c0, m0
        if style == "plain":
            return plain_loop()
        while got < count:
            msg = router.recv_multipart()
            if t0 is None:
                t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
            got += 1
            if style == "drain":
                for _ in range(1000):
                    try:
                        router.recv_multipart(flags=gzmq.NOBLOCK)
                    except gzmq.Again:
                        break
                    got += 1
                gevent.sleep(0)
            del msg

    proc.start()
    g = gevent.spawn(loop)
    g.join(timeout=300)
    wall, cpu, main_cpu = time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - m0
    proc.join(30)
    router.close()
    ctx.term()
    return {"style": style, "curve": curve, "messages": got, "cpu_us": 1e6 * cpu / max(1, got - 1),
            "main_us": 1e6 * main_cpu / max(1, got - 1), "rate": got / wall}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.perf.bench_router")
    p.add_argument("--messages", type=int, default=100000)
    p.add_argument("--dealers", type=int, default=50)
    p.add_argument("--gap", type=float, default=0.0, help="seconds between two sends (0: a flood)")
    p.add_argument("--styles", default="green,drain,plain")
    p.add_argument("--no-curve", action="store_true")
    a = p.parse_args(argv)
    rows = []
    for curve in ((False,) if a.no_curve else (False, True)):
        for style in a.styles.split(","):
            # each style in a fresh process (gevent and libzmq state), results back over a pipe
            ctx = multiprocessing.get_context("fork")
            q = ctx.Queue()
            pr = ctx.Process(target=lambda: q.put(receive(style, curve, a.messages, a.dealers, a.gap)))
            pr.start()
            r = q.get(timeout=600)
            pr.join(10)
            print(r, flush=True)
            rows.append([r["style"], "yes" if r["curve"] else "no", r["messages"], r["cpu_us"], r["main_us"],
                         r["rate"]])
    append_result(f"command ROUTER receive cost: {a.messages} messages from {a.dealers} DEALERs"
                  + (f", {a.gap * 1000:g} ms apart" if a.gap else ""), table(
        ["receive style", "CurveZMQ", "messages", "process CPU µs per message",
         "main thread CPU µs per message", "messages/s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
