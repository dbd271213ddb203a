"""The ZeroMQ side of the server: heartbeat PUB, command ROUTER, ZAP handler.

Rules of this file:
* Sockets only. What a frame set means is the node registry's business
  (`on_frames(routing_id, frames)`); the broker never parses a body.
* Everything runs as greenlets of the one gevent worker. The PUB and ZAP
  sockets are `zmq.green` sockets; the command ROUTER is a plain socket that
  only this class touches: it reads it with NOBLOCK (after a ZMQ_EVENTS check,
  except right after a wake-up and during a backlog: `_router_loop`) and waits
  for it itself (`_wait_router`), and every send on it goes through
  `send`, which wakes the waiting loop if the send consumed the socket's
  read edge (ZMQ_FD is edge-triggered).
* The ZAP handler is bound and serving BEFORE the ROUTER binds (§3.4): a
  CURVE socket without a reachable handler would admit any client key.
* The heartbeat is RSA-signed once per interval and published to everyone
  (§5.3, §6.1); its cost does not depend on the number of nodes.
* No loop ever dies on bad input: every callback is wrapped, failures are
  logged and the loop continues.
* No loop may hog the one worker: the ROUTER loop drains at most
  `ROUTER_BATCH` messages, then yields to the hub (docs/performance.md,
  finding 1: a green `recv_multipart()` returns at once while messages are
  queued, so a flood used to starve the heartbeat publisher, the API and the
  database writer until every node declared the server dead).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Callable, Optional

import gevent
import zmq as _plain_zmq
import zmq.backend as _zmq_backend
import zmq.green as zmq
from gevent.hub import Waiter, get_hub

from pushjobs.protocol import signing
from pushjobs.protocol.timestamps import http_date

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"

#: At most this many ROUTER messages are handled between two yields to the
#: hub. Why 128: one message costs ~35 us here (~15 us to receive in a drain,
#: ~20 us in the node registry), so a batch is ~4-5 ms: the heartbeat
#: publisher, the HTTP API and the database writer wait at most about that
#: long, while a yield (`yield_to_loop`, ~10 us) stays under 1 % of a batch.
ROUTER_BATCH = 128

# Per-connection queue limits of the command ROUTER (libzmq's default is 1,000
# messages each way PER PEER). A healthy node has a few messages in flight (a
# heartbeat a second, three per job); a server that falls behind with 10,000
# nodes connected queued up to 1,000 heartbeats per node and reached 6.3 GB RSS
# in a 10,000-node start-up on 2 cores (docs/performance.md). With 32 a
# connection holds at most ~30 s of heartbeats: beyond that libzmq stops
# reading that TCP connection (back-pressure; the node's own tiny send queue
# fills and it reconnects), nothing queued is dropped, and memory stays bounded
# (10,000 × 32 × ~0.7 KB ≈ 220 MB at worst). Outgoing: ROUTER drops a message
# to a peer whose queue is full; 32 unread commands means that peer is gone.
ROUTER_RCVHWM = 32
ROUTER_SNDHWM = 32

# The non-green socket methods: inside a drain, the router loop reads with
# NOBLOCK straight from libzmq (zmq.green's wrapper re-reads ZMQ_EVENTS after
# every message, which costs more than the receive; a flood from 50 DEALERs:
# ~29-34 -> ~11-12 us per message). Safe because this loop is the ROUTER's only reader and goes back to
# the green (waiting) receive, which retries before it waits, once EAGAIN says
# the queue is empty.
_raw_recv = _zmq_backend.Socket.recv
_raw_send = _zmq_backend.Socket.send
_raw_get = _zmq_backend.Socket.get

#: The ROUTER loop's wait for input also wakes up after this many seconds with
#: nothing seen (a safety net, like zmq.green's 11.6 s one: ZMQ_FD is
#: edge-triggered, and a missed edge would otherwise stall the command channel).
ROUTER_WAIT_SAFETY = 1.0
_NOBLOCK = int(_plain_zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(_plain_zmq.NOBLOCK | _plain_zmq.SNDMORE)
_EVENTS = int(_plain_zmq.EVENTS)
_POLLIN = int(_plain_zmq.POLLIN)  # a plain int: `int & IntFlag` goes through enum code


def yield_to_loop() -> None:
    """Let every other ready greenlet, timer and socket watcher run once.

    Not `gevent.sleep(0)`: that only queues a callback, and gevent runs
    queued callbacks in groups of 50 before it polls and fires timers again,
    so a loop that yields with sleep(0) every few ms still holds timers
    (the server heartbeat) back for 50 x its slice (measured: a 10 ms timer
    ran every ~200 ms). A 1 us timer forces a full hub iteration (poll +
    timers); it costs ~10 us."""
    gevent.sleep(1e-6)


class Broker:
    """Owns the three sockets and their greenlets.

    `on_frames(routing_id, frames)` is called for every message arriving on
    the ROUTER (frames after the routing id, any count). `key_allowed(raw32)`
    decides ZAP admission. `heartbeat_body()` returns the fields of the next
    server heartbeat (without signature).
    """

    def __init__(
        self,
        *,
        listen_address: str,
        heartbeat_port: int,
        command_port: int,
        heartbeat_interval: float,
        server_private_key,
        incarnation_id: str,
        on_frames: Callable[[bytes, list[bytes]], None],
        key_allowed: Callable[[bytes], bool],
        curve_secret_key: Optional[str],
        max_frame_bytes: int,
        router_batch: int = ROUTER_BATCH,
        on_backlog: Optional[Callable[[bool], None]] = None,
    ):
        self.listen_address = listen_address
        self.heartbeat_port = heartbeat_port
        self.command_port = command_port
        self.heartbeat_interval = heartbeat_interval
        self.server_private_key = server_private_key
        self.incarnation_id = incarnation_id
        self.on_frames = on_frames
        self.key_allowed = key_allowed
        self.curve_secret_key = curve_secret_key
        self.max_frame_bytes = max_frame_bytes
        # Told True when a full batch was queued (a backlog) and False once the
        # queue is empty again: the node registry's liveness clock slows down
        # in between (heartbeats are processed late, through no fault of the nodes).
        self.on_backlog = on_backlog
        self.backlogged = False
        self.hostname = socket.gethostname()
        self.ctx: Optional[zmq.Context] = None
        self.pub = None
        self.router = None
        self.zap = None
        self.greenlets: list[gevent.Greenlet] = []
        self.heartbeat_sequence = 0
        self.zap_denied = 0
        self.router_batch = max(1, int(router_batch))
        self.router_yields = 0  # full batches after which the ROUTER loop yielded (a sign of a flood)
        self._router_waiter: Optional[Waiter] = None  # set while the ROUTER loop waits for input
        self._hub = None
        self._router_io = None  # the ROUTER's ZMQ_FD read watcher and the safety timer
        self.router_wait_timeouts = 0  # waits ended by the safety timer (idle, or a missed edge)
        self._router_timer = None

    # --- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self.ctx = zmq.Context()
        if self.curve_secret_key is not None:
            self.zap = self.ctx.socket(zmq.REP)
            self.zap.linger = 0
            self.zap.bind(ZAP_ENDPOINT)
            self.greenlets.append(gevent.spawn(self._zap_loop))
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub.bind(f"{self.listen_address}:{self.heartbeat_port}")
        # A plain (not zmq.green) socket: the broker alone reads and writes it and
        # waits for it itself (`_wait_router`). The green wrapper re-read
        # ZMQ_EVENTS and set two AsyncResults after every send and receive, and
        # built an AsyncResult and a gevent.Timeout for every wait: at 1,000
        # messages/s (a wake-up per message) that was most of the loop's overhead.
        self.router = _plain_zmq.Socket(self.ctx, zmq.ROUTER)
        self.router.linger = 0
        # A cap far above any valid message: oversize-but-sane frames reach the
        # receive pipeline (dropped and counted there); absurd ones cut the peer.
        self.router.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        self.router.setsockopt(zmq.RCVHWM, ROUTER_RCVHWM)
        self.router.setsockopt(zmq.SNDHWM, ROUTER_SNDHWM)
        if self.curve_secret_key is not None:
            self.router.curve_server = True
            self.router.curve_secretkey = self.curve_secret_key.encode("ascii")
        self.router.bind(f"{self.listen_address}:{self.command_port}")
        self.greenlets.append(gevent.spawn(self._router_loop))
        self.greenlets.append(gevent.spawn(self._heartbeat_loop))
        log.info(
            "broker up: heartbeat %s:%s command %s:%s curve=%s",
            self.listen_address, self.heartbeat_port, self.listen_address, self.command_port,
            self.curve_secret_key is not None,
        )

    def stop(self) -> None:
        gevent.killall(self.greenlets, block=True, timeout=2)
        self.greenlets.clear()
        for w in (self._router_io, self._router_timer):
            if w is not None:
                w.close()
        self._router_io = self._router_timer = None
        for s in (self.router, self.pub, self.zap):
            if s is not None:
                try:
                    s.close(linger=0)
                except Exception:  # pragma: no cover - best effort at shutdown
                    log.exception("closing socket")
        self.router = self.pub = self.zap = None
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None

    # --- sending ---------------------------------------------------------
    def send(self, routing_id: bytes, frames: list[bytes]) -> None:
        """Send [routing_id, header, body]; unknown routing ids are silently dropped.

        Straight to libzmq (NOBLOCK; a ROUTER drops rather than blocks). A send
        from another greenlet while the ROUTER loop waits may consume the
        socket's read edge (libzmq processes its pending commands on every
        call), so then ZMQ_EVENTS is checked and the loop woken if input is
        queued."""
        router = self.router
        if router is None:
            return
        try:
            _raw_send(router, routing_id, _SNDMORE_NOBLOCK)
            last = len(frames) - 1
            for i, f in enumerate(frames):
                _raw_send(router, f, _NOBLOCK if i == last else _SNDMORE_NOBLOCK)
        except zmq.Again:
            log.warning("command socket full, message to %r dropped", routing_id)
        except zmq.ZMQError as e:
            log.warning("command send failed: %s", e)
        waiter = self._router_waiter
        if waiter is not None:
            try:
                if _raw_get(router, _EVENTS) & _POLLIN:
                    self._hub.loop.run_callback(waiter.switch, "send")
            except zmq.ZMQError:
                pass

    # --- loops -----------------------------------------------------------
    def _zap_loop(self) -> None:
        """ZAP (RFC 27): admit a CURVE client iff its key came with a recent config request."""
        while True:
            try:
                msg = self.zap.recv_multipart()
            except zmq.ZMQError:
                return
            try:
                version, request_id = msg[0], msg[1]
                mechanism = msg[5] if len(msg) > 5 else b""
                key = msg[6] if len(msg) > 6 else b""
                ok = mechanism == b"CURVE" and len(key) == 32 and self.key_allowed(key)
                if ok:
                    reply = [version, request_id, b"200", b"OK", b"", b""]
                else:
                    self.zap_denied += 1
                    log.info("ZAP: refused client key (mechanism %r)", mechanism)
                    reply = [version, request_id, b"400", b"No such client", b"", b""]
            except Exception:
                log.exception("ZAP: bad request")
                reply = [msg[0] if msg else b"1.0", msg[1] if len(msg) > 1 else b"", b"500", b"Internal error", b"", b""]
            try:
                self.zap.send_multipart(reply)
            except zmq.ZMQError:
                return

    def _router_loop(self) -> None:
        """Receive and hand over ROUTER messages, yielding every `ROUTER_BATCH`.

        Reads with NOBLOCK straight from libzmq; waits (`_wait_router`) only
        once the queue is empty, and after a full batch lets every other ready
        greenlet run (`yield_to_loop`) before draining on.

        What a read costs decides the shape (1,000-node trickle: one wake-up
        per message). ZMQ_EVENTS is ~3 us (libzmq polls its command mailbox,
        a syscall); a NOBLOCK read that finds nothing raises zmq.Again, ~7.5 us;
        a frame read as a Frame carries its RCVMORE flag (read in C), where
        `get(RCVMORE)` per frame is a Python call and an enum conversion. So:
        * right after a wake-up, read without checking EVENTS: the wake-up
          almost always means input (a spurious one costs one zmq.Again, and a
          failed NOBLOCK read processes libzmq's commands just like EVENTS, so
          ZMQ_FD's edge is re-armed before the wait);
        * after a message, check EVENTS before the next read (one check per
          message, not two), unless the last batch was full (a backlog): then
          read on until zmq.Again, once per backlog instead of ~3 us per message.
        """
        router = self.router
        on_frames = self.on_frames
        batch = self.router_batch
        NOBLOCK, EVENTS, POLLIN = _NOBLOCK, _EVENTS, _POLLIN
        recv, get = _raw_recv, _raw_get
        n = 0
        check = True  # read ZMQ_EVENTS before the next read
        while True:
            try:
                if check and not self.backlogged and not get(router, EVENTS) & POLLIN:
                    n = 0
                    self._wait_router(router, checked=True)
                    check = False
                    continue
                f = recv(router, NOBLOCK, False)
                rid = f.bytes
                frames = []
                while f.more:
                    f = recv(router, NOBLOCK, False)
                    frames.append(f.bytes)
            except zmq.Again:  # nothing queued (spurious wake-up, or a backlog's end): wait
                if self.backlogged:
                    self._set_backlog(False)
                n = 0
                self._wait_router(router, checked=True)
                check = False
                continue
            except zmq.ZMQError as e:
                if e.errno in (zmq.ETERM, zmq.ENOTSOCK):
                    return
                log.warning("command socket receive failed: %s", e)
                yield_to_loop()
                check = True
                continue
            check = True
            try:
                on_frames(rid, frames)
            except Exception:
                log.exception("command message handling failed (dropped)")
            n += 1
            if n >= batch:
                self.router_yields += 1
                if not self.backlogged:
                    self._set_backlog(True)
                yield_to_loop()  # let the heartbeat, the API and the DB writer run
                n = 0

    def _wait_router(self, router, checked: bool = False) -> None:
        """Wait until the ROUTER may have input: its ZMQ_FD readable, a send
        that found input queued (`send`), or `ROUTER_WAIT_SAFETY` seconds.

        ZMQ_FD is edge-triggered: it signals only after ZMQ_EVENTS has been
        read with nothing to do, so EVENTS is read first (unless the caller
        just did: `checked`) and the wait skipped when input is already queued."""
        if not checked and _raw_get(router, _EVENTS) & _POLLIN:
            return
        hub = self._hub
        if hub is None:
            hub = self._hub = get_hub()
        if self._router_io is None:
            self._router_io = hub.loop.io(_raw_get(router, zmq.FD), 1)
            # repeating, restarted with `again`: a one-shot libev timer restarted
            # with `start` after it fired once fires at once
            self._router_timer = hub.loop.timer(ROUTER_WAIT_SAFETY, ROUTER_WAIT_SAFETY)
        waiter = Waiter(hub)
        io, timer = self._router_io, self._router_timer
        io.start(waiter.switch, "io")
        timer.again(waiter.switch, "timer")
        self._router_waiter = waiter
        try:
            if waiter.get() == "timer":
                self.router_wait_timeouts += 1
        finally:
            self._router_waiter = None
            io.stop()
            timer.stop()

    def _set_backlog(self, on: bool) -> None:
        self.backlogged = on
        if self.on_backlog is not None:
            try:
                self.on_backlog(on)
            except Exception:
                log.exception("backlog callback failed")

    def _heartbeat_loop(self) -> None:
        interval = self.heartbeat_interval
        next_at = time.monotonic()
        while True:
            try:
                self.publish_heartbeat()
            except Exception:
                log.exception("heartbeat publish failed")
            next_at += interval
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (e.g. a slow DB call): do not burst
                next_at = time.monotonic()
                delay = 0
            gevent.sleep(delay)

    def publish_heartbeat(self) -> None:
        body = {
            "sequence": self.heartbeat_sequence,
            "timestamp": http_date(),
            "server": self.hostname,
            "type": "heartbeat",
            "incarnation_id": self.incarnation_id,
        }
        self.heartbeat_sequence += 1
        raw = json.dumps(body, separators=(",", ":")).encode()
        frames = signing.encode_frames(raw, signing.RSA2048_SHA1, self.server_private_key)
        self.pub.send_multipart(frames, flags=zmq.NOBLOCK)
