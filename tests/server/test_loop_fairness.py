"""The broker must not starve the rest of the worker under a message flood (issue #8, finding 1).

A real `Broker` (ZeroMQ ROUTER + PUB on loopback, CurveZMQ off) with a 100 ms
server heartbeat is flooded for ~2 s by several real DEALERs in another OS
process, sending as fast as libzmq lets them. Meanwhile:

* a real SUB in a plain OS thread timestamps every server heartbeat it
  receives: no gap may reach 3 heartbeat intervals (after 4 missed server
  heartbeats every node reconnects at once, the collapse measured at 5-6k
  nodes);
* a plain greenlet ticking every 10 ms must keep being scheduled.

Before the fix, `_router_loop` called the green `recv_multipart()` which
returns at once while messages are queued, so it never yielded: no heartbeat
and no tick for the whole flood. `router_yields > 0` proves that the queue
really stayed non-empty (full batches), i.e. that the flood was a flood.

Then the other half of the fix: when the server itself was behind, node
liveness must not count the lost time against the nodes (the loop-lag
monitor and its compensated clock, `pushjobs.server.nodes.LoopLagMonitor`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import gevent
import gevent.event
import pytest
import zmq

from pushjobs.protocol import signing
from pushjobs.protocol.keys import generate_rsa_key
from pushjobs.protocol.timestamps import http_date
from pushjobs.server.broker import Broker
from pushjobs.server.nodes import LoopLagMonitor, NodeRegistry
from pushjobs.server.settings import Settings
from tests.helpers.server import free_ports

INTERVAL = 0.1  # s, server heartbeat
FLOOD_SECONDS = 2.0

# Runs in its own process: real DEALERs sending heartbeat-sized two-frame messages as
# fast as they can, then prints the flood's start and end (CLOCK_MONOTONIC is system-wide).
SENDER = r"""
import sys, time, zmq
port, dealers, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
ctx = zmq.Context()
socks = []
for _ in range(dealers):
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect("tcp://127.0.0.1:%d" % port)
    socks.append(s)
time.sleep(0.3)  # connections up
header = b"Version:2.0;SigningMethod:hmac_sha256;Signature:" + b"A" * 44
body = b'{"node":"n1","org":"acme","type":"heartbeat","job_state":"idle","pad":"' + b"x" * 200 + b'"}'
sent = 0
t0 = time.monotonic()
end = t0 + seconds
while time.monotonic() < end:
    for s in socks:
        for _ in range(50):
            s.send_multipart([header, body])
        sent += 50
print(t0, time.monotonic(), sent, flush=True)
for s in socks:
    s.close()
ctx.term()
"""


class HeartbeatWatcher(threading.Thread):
    """A real SUB in an OS thread (plain pyzmq, not gevent): arrival time of every server heartbeat."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(f"tcp://127.0.0.1:{port}")
        self.arrivals: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        while not self._halt.is_set():
            if poller.poll(50):
                frames = self.sub.recv_multipart()
                if len(frames) == 2 and b'"type":"heartbeat"' in frames[1]:
                    self.arrivals.append(time.monotonic())

    def close(self) -> None:
        self._halt.set()
        self.join(2)
        self.sub.close()
        self.ctx.term()


def gwait(pred, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        gevent.sleep(0.02)


@pytest.fixture
def broker():
    hb, cmd = free_ports(2)
    received = [0]

    def on_frames(routing_id: bytes, frames: list[bytes]) -> None:
        received[0] += 1

    b = Broker(listen_address="tcp://127.0.0.1", heartbeat_port=hb, command_port=cmd, heartbeat_interval=INTERVAL,
               server_private_key=generate_rsa_key(), incarnation_id="fairness", on_frames=on_frames,
               key_allowed=lambda key: True, curve_secret_key=None, max_frame_bytes=1 << 20)
    b.start()
    b.received = received
    try:
        yield b
    finally:
        b.stop()


def test_a_flood_on_the_router_does_not_starve_heartbeats_or_other_greenlets(broker):
    watcher = HeartbeatWatcher(broker.heartbeat_port)
    watcher.start()
    gwait(lambda: len(watcher.arrivals) >= 2, 5, "server heartbeats on the SUB before the flood")

    ticks: list[float] = []

    def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    tick_g = gevent.spawn(ticker)
    sender = subprocess.Popen([sys.executable, "-c", SENDER, str(broker.command_port), "4", str(FLOOD_SECONDS)],
                              stdout=subprocess.PIPE, text=True)
    try:
        # This greenlet waits through the hub too: under the old loop it would not run until the flood ended.
        gwait(lambda: sender.poll() is not None, FLOOD_SECONDS + 10, "the flood to end")
        out, _ = sender.communicate(timeout=5)
        assert sender.returncode == 0
        t0, t1, sent = out.split()
        t0, t1 = float(t0), float(t1)
        gevent.sleep(3 * INTERVAL)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
        tick_g.kill()
        watcher.close()

    assert int(sent) > 20000
    assert broker.received[0] > 5000

    beats = [t for t in watcher.arrivals if t0 - INTERVAL <= t <= t1 + 2 * INTERVAL]
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    assert len(beats) >= FLOOD_SECONDS / INTERVAL / 2, f"only {len(beats)} server heartbeats during the flood"
    assert beats[0] - t0 < 3 * INTERVAL and t1 - beats[-1] < 3 * INTERVAL
    assert max(gaps) < 3 * INTERVAL, f"server heartbeat gap {max(gaps):.3f} s during the flood"

    during = [t for t in ticks if t0 <= t <= t1]
    tick_gaps = [b - a for a, b in zip(during, during[1:])]
    assert len(during) >= FLOOD_SECONDS / 0.05, f"a 10 ms greenlet ran only {len(during)} times in the flood"
    assert max(tick_gaps) < 3 * INTERVAL, f"greenlet starved for {max(tick_gaps):.3f} s"
    assert broker.router_yields > 10, "the queue never held a full batch: this was no flood"


# --- the lag-compensated liveness clock ----------------------------------------------------


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_lag_monitor_jitter_is_not_a_stall_and_a_stall_is_skipped_by_the_clock():
    clock = FakeClock()
    lag = LoopLagMonitor(1.0, clock=clock)  # tick = tolerance = 0.25 s
    assert lag.now() == clock.t  # not running yet: the plain clock
    lag.arm(clock.t)
    clock.t += 0.25 + 0.1  # 0.1 s late: jitter
    assert lag.observe(clock.t) == pytest.approx(0.1)
    assert lag.stalled == 0 and lag.stalls == 0 and lag.now() == clock.t
    before = lag.now()
    clock.t += 0.25 + 3.0  # the loop was stuck for 3 s
    # a heartbeat processed before the monitor's late wake-up already sees the frozen clock
    assert lag.now() == pytest.approx(before + 0.25 + 0.25)
    assert lag.observe(clock.t) == pytest.approx(3.0)
    assert lag.stalled == pytest.approx(2.75) and lag.stalls == 1
    assert lag.now() == pytest.approx(before + 0.5)  # continuous across the wake-up: never backwards
    assert lag.recent_max_lag() == pytest.approx(3.0) and lag.max_lag == pytest.approx(3.0)
    clock.t += 0.25
    lag.observe(clock.t)
    assert lag.now() == pytest.approx(before + 0.75)  # and runs on at full speed afterwards


def test_a_command_backlog_slows_the_node_clock_beyond_one_tick_and_never_steps_back():
    from pushjobs.server.nodes import BACKLOG_CREDIT

    clock = FakeClock()
    lag = LoopLagMonitor(1.0, clock=clock)  # tolerance 0.25 s
    t0 = lag.now()
    lag.set_backlog(True)
    clock.t += 0.2  # a burst drained within a tick: no credit
    assert lag.now() == pytest.approx(t0 + 0.2)
    lag.set_backlog(False)
    assert lag.backlogs == 0 and lag.backlogged == 0
    t1 = lag.now()
    lag.set_backlog(True)
    lag.set_backlog(True)  # repeated reports do not restart the episode
    clock.t += 4.25
    mid = lag.now()
    assert mid == pytest.approx(t1 + 0.25 + (1 - BACKLOG_CREDIT) * 4.0)  # slower, not stopped
    lag.set_backlog(False)
    assert lag.now() == pytest.approx(mid)  # continuous when the backlog ends
    assert lag.backlogs == 1 and lag.backlogged == pytest.approx(4.0)
    clock.t += 1.0
    assert lag.now() == pytest.approx(mid + 1.0)  # full speed again
    # a loop stall inside a backlog is credited by both; the clock must not step back
    lag.arm(clock.t)
    lag.set_backlog(True)
    before = lag.now()
    clock.t += 3.0
    seen = [lag.now()]
    lag.observe(clock.t)
    seen.append(lag.now())
    lag.set_backlog(False)
    seen.append(lag.now())
    assert all(b >= a for a, b in zip([before] + seen, seen))
    assert lag.stalled == 0.0 or lag.stalled > 0  # both kinds counted in their own fields
    assert lag.backlog_skipped > 0


def test_a_stalled_loop_counts_and_warns(caplog):
    clock = FakeClock()
    lag = LoopLagMonitor(0.1, clock=clock)
    lag.arm(clock.t)
    with caplog.at_level(logging.WARNING, logger="pushjobs.server.nodes"):
        for _ in range(3):
            clock.t += 0.025 + 0.5
            lag.observe(clock.t)
    assert lag.stalls == 3
    warnings = [r for r in caplog.records if "event loop stalled" in r.getMessage()]
    assert len(warnings) == 1, "one warning, the next two stalls are counted for the next one"


def _frames(name: str, key: bytes, incarnation: str, mtype: str) -> list[bytes]:
    body = {"node": name, "client": name, "org": "acme", "type": mtype, "sequence": 1, "timestamp": http_date(),
            "incarnation_id": incarnation, "job_id": None, "protocol_version": "2.0"}
    if mtype == "heartbeat":
        body["job_state"] = "idle"
    return signing.encode_frames(json.dumps(body).encode(), signing.HMAC_SHA256, key)


class DownSink:
    """The job coordinator's side of the registry: records every node declared down."""

    live: frozenset = frozenset()

    def __init__(self) -> None:
        self.down: list[tuple[str, str]] = []

    def node_message(self, job_id: str, key: tuple[str, str], mtype: str, body: dict) -> None:
        pass

    def node_down(self, key: tuple[str, str]) -> None:
        self.down.append(key)


@pytest.fixture
def two_idle_nodes():
    """A real registry (100 ms heartbeat) with nodes a and b idle; `beat(n)` feeds one heartbeat."""
    keys = {n: os.urandom(32) for n in ("a", "b")}
    inc = {n: str(uuid.uuid4()) for n in keys}
    reg = NodeRegistry(settings=Settings(heartbeat_interval=100, rehab_timer=100),
                       session_key_for=lambda org, node: keys.get(node) if org == "acme" else None,
                       send_frames=lambda rid, frames: None, drop_counts=Counter())
    reg.jobs = sink = DownSink()
    reg.start()

    def beat(n: str) -> None:
        reg.on_frames(n.encode(), _frames(n, keys[n], inc[n], "heartbeat"))

    try:
        for n in keys:
            beat(n)
            reg.on_frames(n.encode(), _frames(n, keys[n], inc[n], "aborted"))
        assert all(reg.is_available(("acme", n)) for n in keys)
        yield reg, sink, keys, beat
    finally:
        reg.stop()


def test_a_server_stall_is_not_counted_against_nodes_but_a_silent_node_still_dies(two_idle_nodes):
    """Real registry, real greenlets and clock (100 ms heartbeat): the worker blocks for 6
    intervals; the heartbeats the nodes sent meanwhile are processed afterwards (as a ROUTER
    backlog would be). No node is declared down. Then a node that really stops is."""
    reg, sink, keys, beat = two_idle_nodes
    beating = {"a", "b"}
    feeder_g = None
    try:
        def feeder() -> None:
            last = time.monotonic()
            while True:
                now = time.monotonic()
                due = max(1, int((now - last) / INTERVAL))  # beats sent while this greenlet could not run
                last = now
                for n in sorted(beating):
                    for _ in range(due):
                        beat(n)
                gevent.sleep(INTERVAL)

        feeder_g = gevent.spawn(feeder)
        gevent.sleep(5 * INTERVAL)
        gevent.spawn(time.sleep, 6 * INTERVAL).join()  # the whole worker is stuck (a blocking call)
        gevent.sleep(8 * INTERVAL)  # long enough for the liveness average to have died 2x over
        assert reg.lag.stalls >= 1 and reg.lag.stalled >= 4 * INTERVAL
        assert sink.down == [], "a stall of the server itself was counted against the nodes"
        assert all(reg.is_available(("acme", n)) for n in keys)

        beating.discard("b")  # b really goes silent
        t_silent = time.monotonic()
        gwait(lambda: sink.down, 20 * INTERVAL, "the silent node to be declared down")
        assert time.monotonic() - t_silent >= 2 * INTERVAL
        assert sink.down == [("acme", "b")] and ("acme", "b") not in reg.entries
        assert reg.is_available(("acme", "a"))
        assert dict(reg.offline_by_reason) == {"dead": 1}  # the metric pushjobs_nodes_offline_total
    finally:
        if feeder_g is not None:
            feeder_g.kill()


def test_heartbeats_processed_late_behind_a_backlog_do_not_kill_nodes_but_silence_still_does(two_idle_nodes):
    """Real registry and greenlets (100 ms heartbeat). The loop keeps turning (no stall the
    lag monitor could see) but the command queue is backlogged: every node's heartbeats
    arrive in one late batch every 5 intervals, as in a 5,000-node fan-out on 2 cores
    (without the backlog credit four empty intervals in a row kill them).
    With the backlog reported no node dies; a node that really stops still does."""
    reg, sink, keys, beat = two_idle_nodes
    beating = {"a", "b"}
    feeder_g = None
    try:
        def feeder() -> None:
            while True:
                reg.lag.set_backlog(True)  # what the broker reports on a full batch
                gevent.sleep(5 * INTERVAL)  # the queue holds the beats meanwhile
                for n in sorted(beating):
                    for _ in range(5):
                        beat(n)
                reg.lag.set_backlog(False)  # drained
                gevent.sleep(0)

        feeder_g = gevent.spawn(feeder)
        gevent.sleep(20 * INTERVAL)
        assert reg.lag.backlogs >= 3 and reg.lag.stalls == 0
        assert sink.down == [], "heartbeats processed late behind a backlog killed nodes"
        assert all(reg.is_available(("acme", n)) for n in keys)

        beating.discard("b")
        gwait(lambda: sink.down, 60 * INTERVAL, "the silent node to be declared down despite the backlog")
        assert sink.down == [("acme", "b")] and reg.is_available(("acme", "a"))
    finally:
        if feeder_g is not None:
            feeder_g.kill()



# --- bounded per-connection queues ------------------------------------------------------------


def test_router_queues_are_bounded_per_connection_and_back_pressure_loses_nothing():
    """A server that falls behind must not buffer 1,000 messages per node (6.3 GB at
    10,000 nodes): the ROUTER's per-peer queues are small, libzmq stops reading a
    connection whose queue is full, and what waits in TCP arrives later, in order."""
    from pushjobs.server import broker as broker_mod

    hb, cmd = free_ports(2)
    gate = gevent.event.Event()
    got: list[bytes] = []

    def on_frames(routing_id: bytes, frames: list[bytes]) -> None:
        gate.wait()  # the server is "behind" until the gate opens
        got.append(frames[0])

    b = Broker(listen_address="tcp://127.0.0.1", heartbeat_port=hb, command_port=cmd, heartbeat_interval=INTERVAL,
               server_private_key=generate_rsa_key(), incarnation_id="hwm", on_frames=on_frames,
               key_allowed=lambda key: True, curve_secret_key=None, max_frame_bytes=1 << 20)
    b.start()
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    try:
        assert b.router.getsockopt(zmq.RCVHWM) == broker_mod.ROUTER_RCVHWM <= 64
        assert b.router.getsockopt(zmq.SNDHWM) == broker_mod.ROUTER_SNDHWM <= 64
        dealer.setsockopt(zmq.SNDHWM, 100000)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(f"tcp://127.0.0.1:{cmd}")
        n = 2000
        for i in range(n):
            dealer.send(b"%06d" % i)
        gevent.sleep(0.3)  # the backlog builds up behind the blocked handler
        gate.set()
        gwait(lambda: len(got) == n, 10, f"all {n} messages after the back-pressure")
        assert got == [b"%06d" % i for i in range(n)]
    finally:
        dealer.close(linger=0)
        ctx.term()
        b.stop()
