"""The command ROUTER's own wait (#8): a plain socket, woken by its ZMQ_FD, by a
send that found input queued, or by a 1 s safety timer.

ZMQ_FD is edge-triggered and every libzmq call on the socket may consume the
edge; these tests send on the ROUTER from another greenlet all the time while
a real DEALER (OS thread, plain pyzmq) trickles messages in, and check that
every message is handed over promptly: none waits for the safety timer.
"""

from __future__ import annotations

import threading
import time

import gevent
import pytest
import zmq

from pushjobs.protocol.keys import generate_rsa_key
from pushjobs.server import broker as broker_mod
from pushjobs.server.broker import Broker
from tests.helpers.server import free_ports


@pytest.fixture
def router_broker():
    hb, cmd = free_ports(2)
    arrivals: list[tuple[float, list[bytes]]] = []

    def on_frames(routing_id: bytes, frames: list[bytes]) -> None:
        arrivals.append((time.monotonic(), [routing_id] + frames))

    b = Broker(listen_address="tcp://127.0.0.1", heartbeat_port=hb, command_port=cmd, heartbeat_interval=0.1,
               server_private_key=generate_rsa_key(), incarnation_id="router", on_frames=on_frames,
               key_allowed=lambda key: True, curve_secret_key=None, max_frame_bytes=1 << 20)
    b.start()
    b.arrivals = arrivals
    try:
        yield b
    finally:
        b.stop()


class Dealer(threading.Thread):
    """A real DEALER in an OS thread: sends `count` messages `gap` s apart (send time in the
    body), and records what the server sends back."""

    def __init__(self, port: int, count: int, gap: float):
        super().__init__(daemon=True)
        self.port, self.count, self.gap = port, count, gap
        self.replies: list[list[bytes]] = []
        self.done = threading.Event()

    def run(self) -> None:
        ctx = zmq.Context()
        d = ctx.socket(zmq.DEALER)
        d.linger = 0
        d.connect(f"tcp://127.0.0.1:{self.port}")
        try:
            time.sleep(0.2)
            for i in range(self.count):
                d.send_multipart([b"h", repr(time.monotonic()).encode()])
                deadline = time.monotonic() + self.gap
                while time.monotonic() < deadline:
                    if d.poll(max(1, int(1000 * (deadline - time.monotonic())))):
                        self.replies.append(d.recv_multipart())
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                if d.poll(50):
                    self.replies.append(d.recv_multipart())
        finally:
            d.close()
            ctx.term()
            self.done.set()


def gwait(pred, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        gevent.sleep(0.01)


def test_messages_are_handed_over_promptly_while_other_greenlets_send(router_broker):
    b = router_broker
    stop = [False]
    sends = [0]

    def chatter() -> None:  # sends to a routing id that does not exist (ROUTER drops it)
        while not stop[0]:
            b.send(b"\x00nobody", [b"h", b"b"])
            sends[0] += 1
            gevent.sleep(0.001)

    g = gevent.spawn(chatter)
    dealer = Dealer(b.command_port, count=60, gap=0.02)
    dealer.start()
    try:
        gwait(dealer.done.is_set, 20, "the dealer to finish")
    finally:
        stop[0] = True
        g.join(2)
    assert sends[0] > 100
    assert len(b.arrivals) == 60
    latencies = [t - float(frames[2]) for t, frames in b.arrivals]
    assert max(latencies) < 0.25, f"a message waited {max(latencies):.3f} s (the safety timer is 1 s)"
    assert b.router_wait_timeouts <= 1  # at most the idle second before the dealer connected


def test_replies_from_the_router_greenlet_reach_the_dealer_and_idle_waits_time_out(router_broker):
    b = router_broker
    dealer = Dealer(b.command_port, count=20, gap=0.02)
    dealer.start()
    gwait(lambda: len(b.arrivals) >= 1, 10, "the first message")
    rid = b.arrivals[0][1][0]
    for i in range(5):
        b.send(rid, [b"reply", str(i).encode()])
    gwait(dealer.done.is_set, 20, "the dealer to finish")
    assert [r[1] for r in dealer.replies] == [b"0", b"1", b"2", b"3", b"4"]
    assert len(b.arrivals) == 20
    t = b.router_wait_timeouts
    gwait(lambda: b.router_wait_timeouts >= t + 1, 3, "an idle wait to end by the safety timer")
    assert broker_mod.ROUTER_WAIT_SAFETY <= 1.0


def test_a_burst_of_multipart_messages_in_order_backlog_ends_and_the_next_message_is_prompt():
    """A burst bigger than a batch: the loop reads on without ZMQ_EVENTS while backlogged,
    ends the backlog on the first empty read, and its wait after that read is armed (ZMQ_FD
    re-armed by the failed read): a message sent later is handed over at once. Frame counts
    vary (1-4, empty frames too): each message arrives whole, in order."""
    hb, cmd = free_ports(2)
    arrivals: list[tuple[float, list[bytes]]] = []
    backlog: list[bool] = []
    b = Broker(listen_address="tcp://127.0.0.1", heartbeat_port=hb, command_port=cmd, heartbeat_interval=0.1,
               server_private_key=generate_rsa_key(), incarnation_id="burst",
               on_frames=lambda rid, frames: arrivals.append((time.monotonic(), frames)),
               key_allowed=lambda key: True, curve_secret_key=None, max_frame_bytes=1 << 20,
               router_batch=4, on_backlog=backlog.append)
    b.start()
    sent: list[list[bytes]] = [[str(i).encode()] + [b"x" * (i % 7)] * (i % 4) for i in range(400)]
    late_at: list[float] = []
    go_late = threading.Event()

    def dealer() -> None:
        ctx = zmq.Context()
        d = ctx.socket(zmq.DEALER)
        d.linger = 1000
        d.connect(f"tcp://127.0.0.1:{cmd}")
        try:
            time.sleep(0.2)
            for m in sent:  # one burst: queued faster than a batch is read
                d.send_multipart(m)
            go_late.wait(10)
            late_at.append(time.monotonic())
            d.send_multipart([b"late"])
            time.sleep(0.3)
        finally:
            d.close()
            ctx.term()

    t = threading.Thread(target=dealer, daemon=True)
    t.start()
    try:
        gwait(lambda: len(arrivals) >= len(sent), 20, "the burst")
        gwait(lambda: backlog[-1:] == [False], 5, "the backlog to end")
        gevent.sleep(0.3)  # the loop is waiting now
        go_late.set()
        gwait(lambda: len(arrivals) > len(sent), 5, "the late message")
        assert [f for _, f in arrivals[:len(sent)]] == sent
        assert arrivals[-1][1] == [b"late"]
        assert arrivals[-1][0] - late_at[0] < 0.25, "the late message waited for the safety timer"
        assert b.router_yields >= 1 and backlog[0] is True
        assert all(a != c for a, c in zip(backlog, backlog[1:]))  # reported on each change only
    finally:
        t.join(5)
        b.stop()
