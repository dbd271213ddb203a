"""`pushjobs-fleet`: N simulated nodes speaking the real protocol to one server.

Each simulated node is a real `pushjobs.agent.session.NodeSession` (the
agent's own protocol code: Chef-signed config handshake, session key
decryption, CurveZMQ DEALER, SUB, HMAC signing, heartbeats, server liveness,
reconfigure on restart) driven by a `SimulatedRunner` instead of the agent's
process runner. The runner is the agent's job FSM (`pushjobs.core.agent`),
with "processes" that are timers, and a scripted behaviour per node:

  succeed     ack commit and run, report `succeeded` after `--run-time`
  fail        same, report `failed`
  nack        refuse every commit (`nack_commit`)
  slow        succeed after `--slow-time`
  silent      never answer commit or run (still heartbeats and answers abort)
  disconnect  on commit, vanish (close both sockets, stop heartbeating);
              with `--rejoin-after S` a fresh agent process comes back S later

A mix is written `succeed=90,fail=5,nack=5` (weights; nodes are assigned in
order, deterministically). `--latency S` delays every reply.

Clients come from `push-jobs-server-ctl client-create --org ORG --count N
--prefix P --public-key PEM` (P1..PN sharing one key): give the same
`--prefix`, `--count` and the private key.

Many nodes share one process and one loop (`pushjobs.agent.loop.EventLoop`);
`--processes K` splits the fleet over K worker processes. Start-up is spread
over `--ramp` seconds. Every `--report-interval` seconds one line reports how
many nodes are connected (socket up), confirmed (a valid message came back on
the command port), idle/committed/running, and what the server itself says
(`pushjobs_nodes_online/available` from its unauthenticated /pushy/_metrics).
`--stats-file` appends the same as JSON lines for the benchmarks.

Safety: the simulator only ever talks to the loopback interface. The server
URL and the ZeroMQ addresses the server hands out must be 127.0.0.0/8,
::1 or localhost, proxies from the environment are ignored, and it stops by
itself after `--duration` seconds.

Adapters: the simulator uses only the public extension points of the agent's
session and loop (docs/agent.md "Extension points"), filled here:
* `EventLoop(poller=FleetPoller(sends=...), timer_grain=0.01)`: epoll on
  each socket's ZMQ_FD instead of `zmq_poll` over every socket on every
  wake-up (O(sockets)); ZMQ_EVENTS is asked only of sockets epoll, a direct
  send or a batch send (once, `check_later`) points at, plus a sweep of all
  every 15 s.
* `NodeSession(heartbeats=HeartbeatWheel)`: no timer per node; one loop
  timer per slot (10-100 ms, `--heartbeat-batch`) beats every session due
  in it, and their sends go out back to back once the slot is encoded
  (`SendBatch`, pyzmq's Cython send, through the DEALERs of the socket
  factory below).
* `NodeSession(codec=FleetCodec)`: heartbeats from a per-node template
  (byte-identical to the agent's encoder, HMAC per message from two
  pre-keyed SHA-256 states copied per message; tested) and the RSA
  verification of server heartbeats memoized per (bytes, server key).
* The wheel's lean beat (`HeartbeatWheel._lean_beat`): a node in the steady
  state (connected, idle, server online, nothing pending, every server
  heartbeat since its last beat verified and of its incarnation) beats
  without the session's per-beat code: an integer step of its liveness
  counters (from the hub's sequence numbers), its template heartbeat
  straight into the send batch, the next beat scheduled. Anything else (a
  job, the offline threshold, a new incarnation, a forgery, a failed send, a
  first beat) takes the full path (`catch_up` + `NodeSession.beat`); a test
  drives a lean and a full fleet in lockstep and finds the same decisions.
* `NodeSession(context=FleetContext.for_node(runner))`: in shared-SUB mode
  (`--sub shared`, and `auto` above 200 nodes per process) every session's
  SUB socket is a stand-in of ONE real SUB per process, so the server sees N
  command connections but only K heartbeat connections (its open-file limit
  here is 20,000: 10,000 nodes cannot each hold two TCP connections). The
  `HeartbeatHub` verifies each server heartbeat once per process and server
  key and the wheel hands it to each session just before its beat
  (`NodeSession.server_heartbeat`): every node keeps its own liveness
  counters and declares the server offline on its own when they stop.
* `NodeSession(address_check=...)`: non-loopback ZeroMQ addresses refused
  before connecting; `http=`: one keep-alive HTTP pool per process.

Cost (steady state, 1 s heartbeat, 1,000 idle nodes, `--sub shared`, this
2-core machine shared with other work, CPU of the fleet process over 20-25 s
from /proc/PID/stat, A/B runs against the same server): ~85-92 µs per
node-second with the lean beat, its Python thread 54-58 (without it, same
runs: 88-98, Python thread 59-66; round 2: 102-115; round 1: ~200). Of
that, ~32 µs is libzmq's I/O thread (one loopback TCP send per message, most
of it the kernel's TCP path, plus two epoll_ctl and the CurveZMQ box), and
in the Python thread ~20 µs is not Python: two raw sends, and one ZMQ_EVENTS
check per send (SNDHWM 3, the agent's, makes libzmq answer every message
with an `activate_write` command that must be drained: three system calls
on a cold socket). A lean beat itself is ~8 µs of Python with warm caches
(template heartbeat ~4 of it, HMAC ~1.7, reschedule ~2); the rest is the
loop, the poller and the cold objects each beat touches.
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import json
import logging
import math
import multiprocessing
import os
import random
import select
import signal
import sys
import threading
import time
import urllib.parse
from binascii import b2a_base64
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import zmq

from pushjobs.agent.chef_http import ChefHTTP
from pushjobs.agent.connection import ServerConfig
from pushjobs.agent.loop import EventLoop
from pushjobs.agent.session import CONNECTED, MessageCodec, NodeIdentity, NodeSession, SessionOptions
from pushjobs.core import actions as A
from pushjobs.core.agent import AgentFSM, JobOptions
from pushjobs.protocol.errors import ProtocolError
from pushjobs.protocol.framing import HMAC_SHA256
from pushjobs.protocol.messages import dumps
from pushjobs.protocol.signing import hmac_pad_states
from pushjobs.protocol.timestamps import http_date

log = logging.getLogger("pushjobs.fleet")

BEHAVIOURS = ("succeed", "fail", "nack", "slow", "silent", "disconnect")
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
HEARTBEAT_CACHE_SIZE = 16
#: timers (and heartbeat slots) are rounded up to this many seconds: thousands of nodes
#: beat in ~100 batches per second instead of one loop wake-up each
TIMER_GRAIN = 0.01
#: `--sub auto`: one shared SUB per process above this many nodes per process
SHARED_SUB_ABOVE = 200
JOB_STATES = frozenset(("idle", "committed", "running"))
#: counter: the latest any timer (heartbeats, replies) fired in the last report window, ms
LAG_KEY = "loop_lag_max_ms"


class FleetError(Exception):
    """Bad fleet options (a clear message for the command line)."""


# --------------------------------------------------------------------------------------
# Loopback only


def is_loopback_host(host: Optional[str]) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (no name resolution: names other than localhost are refused)."""
    if not host:
        return False
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_loopback_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FleetError(f"server URL must be http(s)://127.0.0.1:PORT, got {url!r}")
    if not is_loopback_host(parts.hostname):
        raise FleetError(f"the fleet simulator only talks to the loopback interface; {parts.hostname!r} is not")
    return url.rstrip("/")


def zmq_address_is_loopback(addr: str) -> bool:
    """tcp://HOST:PORT with a loopback HOST (or ipc/inproc, which never leave the machine)."""
    scheme, _, rest = addr.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp" or not rest:
        return False
    host = rest.rsplit(":", 1)[0]
    return is_loopback_host(host)


# --------------------------------------------------------------------------------------
# Behaviours


@dataclass(frozen=True)
class Behaviour:
    """What one simulated node does with jobs."""

    kind: str = "succeed"
    run_time: float = 0.0  # s between ack_run and the result
    slow_time: float = 5.0  # run time of "slow"
    latency: float = 0.0  # s before every reply
    rejoin_after: Optional[float] = None  # "disconnect": come back after this many seconds


def parse_mix(spec: str) -> list[tuple[str, int]]:
    """`succeed` or `succeed=90,fail=5,nack=5` → [(kind, weight), ...]."""
    out: list[tuple[str, int]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        kind, _, weight = part.partition("=")
        kind = kind.strip()
        if kind not in BEHAVIOURS:
            raise FleetError(f"unknown behaviour {kind!r} (one of {', '.join(BEHAVIOURS)})")
        try:
            w = int(weight) if weight else 1
        except ValueError:
            raise FleetError(f"behaviour weight must be an integer: {part!r}") from None
        if w < 0:
            raise FleetError(f"behaviour weight must be >= 0: {part!r}")
        out.append((kind, w))
    if not out or sum(w for _, w in out) == 0:
        raise FleetError(f"empty behaviour mix: {spec!r}")
    return out


def assign_behaviours(mix: list[tuple[str, int]], n: int) -> list[str]:
    """Deterministic assignment: node i gets the kind whose cumulative share covers i (largest remainder)."""
    total = sum(w for _, w in mix)
    counts = [n * w // total for _, w in mix]
    rest = n - sum(counts)
    order = sorted(range(len(mix)), key=lambda i: -((n * mix[i][1]) % total))
    for i in order[:rest]:
        counts[i] += 1
    out: list[str] = []
    for (kind, _), c in zip(mix, counts):
        out += [kind] * c
    return out


class SimulatedRunner:
    """A `JobHandler` for NodeSession: the agent's job FSM with timers instead of processes."""

    def __init__(self, node: str, behaviour: Behaviour, loop: EventLoop, fleet: "Fleet"):
        self.node = node
        self.behaviour = behaviour
        self.loop = loop
        self.fleet = fleet
        self.fsm = AgentFSM(node)
        self.session: Optional[NodeSession] = None
        self._process: Optional[Any] = None  # the TimerHandle of the simulated process
        self._reply_at = 0.0

    # JobHandler
    def attach(self, session: NodeSession) -> None:
        self.session = session

    def heartbeat_fields(self) -> dict[str, Any]:
        return self.fsm.heartbeat_fields()

    def handle(self, msg_type: str, body: dict[str, Any], now: float) -> None:
        b = self.behaviour
        self.fleet.count(f"received_{msg_type}")
        if msg_type == "commit":
            if b.kind == "silent":
                return
            if b.kind == "disconnect":
                self.fleet.disconnect(self)
                return
            refusal = "simulated refusal" if b.kind == "nack" else None
            options: Optional[JobOptions] = None
            try:
                options = JobOptions.from_commit(body)
            except ValueError as exc:
                refusal = str(exc)
            acts = self.fsm.commit(body.get("job_id"), body.get("command"), options, now, refusal=refusal)
        elif msg_type == "run":
            if b.kind == "silent":
                return
            acts = self.fsm.run(body.get("job_id"), now)
        elif msg_type == "abort":
            acts = self.fsm.abort(now)
        else:
            return
        self._carry_out(acts)

    def _carry_out(self, acts: list) -> None:
        for a in acts:
            if isinstance(a, A.Send):
                self._reply(a.type, dict(a.fields))
            elif isinstance(a, A.StartProcess):
                self._start(a.job_id)
            elif isinstance(a, A.KillProcess):
                if self._process is not None:
                    self._process.cancel()
                    self._process = None

    def _reply(self, msg_type: str, fields: dict[str, Any]) -> None:
        session = self.session
        if session is None:
            return
        latency = self.behaviour.latency
        if latency <= 0:
            self._send(session, msg_type, fields)
            return
        # keep replies in order even when a later one is produced sooner
        at = max(self.loop.clock() + latency, self._reply_at)
        self._reply_at = at
        self.loop.call_later(at - self.loop.clock(), lambda: self._send(session, msg_type, fields))

    def _send(self, session: NodeSession, msg_type: str, fields: dict[str, Any]) -> None:
        if session is not self.session:
            return  # this node disconnected meanwhile
        session.send(msg_type, fields)
        self.fleet.count(f"sent_{msg_type}")

    def _start(self, job_id: str) -> None:
        b = self.behaviour
        duration = b.slow_time if b.kind == "slow" else b.run_time
        status = 1 if b.kind == "fail" else 0

        def exited() -> None:
            self._process = None
            out = f"simulated {b.kind} on {self.node}\n"
            acts = self.fsm.process_exited(job_id, status, out, "", self.loop.clock())
            self._carry_out(acts)

        self._process = self.loop.call_later(duration, exited)


# --------------------------------------------------------------------------------------
# Adapters: the session's and the loop's public extension points, filled for a fleet


_AGAIN = zmq.Again()  # raised by stand-ins when empty (no strerror() per empty read)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE) | _NOBLOCK
# pyzmq's Cython socket methods: the `zmq.Socket` wrappers add ~5 µs per multipart send
# (argument checks, enum flags) and ~2 µs per option read, per node and second
_raw_send = zmq.backend.Socket.send
_raw_get = zmq.backend.Socket.get


_HMAC_HEADER = b"Version:2.0;SigningMethod:" + HMAC_SHA256.encode("ascii") + b";Signature:"


class _SharedSub:
    """Stands in for one session's SUB socket; frames come from the process's one real SUB.

    The hub feeds it in one of two ways. While its session is connected and
    beaten by the `HeartbeatWheel`, the wheel hands the session, just before
    each beat, the verified heartbeats that arrived since the last one
    (`HeartbeatHub.catch_up`). Until then (the first interval after
    connecting, or the SUB a waiting session keeps open to notice the
    server's return), and for anything that does not verify, the hub puts the
    frames in `inbox` and wakes the poller, which reports the stand-in as
    readable: the session drains it like a socket, through its own receive
    pipeline (which drops and logs what is bad)."""

    __slots__ = ("hub", "owner", "feed", "inbox", "addr", "poller", "closed", "seen", "session", "key", "kid")

    def __init__(self, hub: "HeartbeatHub", owner: Any = None):
        self.hub = hub
        self.owner = owner  # the SimulatedRunner whose session holds this stand-in
        self.session: Any = None
        self.feed: Optional["_Feed"] = None
        self.inbox: collections.deque = collections.deque(maxlen=64)
        self.addr: Optional[str] = None
        self.poller: Optional["FleetPoller"] = None
        self.closed = False
        self.seen = 0  # the hub sequence number of the last heartbeat this stand-in got
        self.key: Any = None  # the server key of its session's config, and its id (codec.key_id)
        self.kid = 0

    def setsockopt(self, *args: Any) -> None:
        pass

    def connect(self, addr: str) -> None:
        self.addr = addr
        self.hub.attach(self, addr)

    def recv_multipart(self, flags: int = 0, **kw: Any) -> list[bytes]:
        if self.inbox:
            return self.inbox.popleft()
        raise _AGAIN.with_traceback(None)

    def push(self, frames: list[bytes]) -> None:
        """Frames for the session's own pipeline (the loop calls its reader)."""
        self.inbox.append(frames)
        if self.poller is not None:
            self.poller.wake(self)

    def close(self, linger: Optional[int] = None) -> None:
        if not self.closed:
            self.closed = True
            self.hub.detach(self)


#: server heartbeats kept per address for the wheel to hand out (a session normally needs
#: the one or two of the last interval)
FEED_HISTORY = 16


class _Feed:
    """One server heartbeat address: its real SUB, the last heartbeats, who listens."""

    __slots__ = ("addr", "sub", "history", "members", "unfed")

    def __init__(self, addr: str, sub: Any):
        self.addr = addr
        self.sub = sub
        # [hub sequence number, frames, {server key id: verified body, or None if it failed}]
        self.history: collections.deque = collections.deque(maxlen=FEED_HISTORY)
        self.members: dict[_SharedSub, None] = {}
        self.unfed: dict[_SharedSub, None] = {}  # members the wheel does not feed (yet)


_UNSEEN = object()


class HeartbeatHub:
    """One real SUB per server heartbeat address, fanned out to every session's stand-in.

    A server heartbeat is verified once per process and server key (through
    the codec of the first session trusting that key: the agent's full
    pipeline, signature, size and timestamp skew) and recorded once; each
    connected session gets the verified body from the `HeartbeatWheel` just
    before its own beat (`catch_up` → `NodeSession.server_heartbeat`), so each
    node still keeps its own liveness counters and incarnation and declares
    the server offline on its own when the heartbeats stop. The session's
    offline check runs at its beat, so handing heartbeats over then rather
    than on arrival changes no decision; what costs is touching 10,000
    sessions when a heartbeat arrives (it was ~10 µs per node and heartbeat
    through stand-in, poller, loop and codec; the catch-up ~2).
    """

    def __init__(self, loop: EventLoop, context: zmq.Context, codec: Optional["FleetCodec"] = None):
        self.loop = loop
        self.context = context
        self.codec = codec if codec is not None else FleetCodec()
        self.feeds: dict[str, _Feed] = {}
        self.by_session: dict[Any, _SharedSub] = {}  # the newest stand-in of each session
        self.seq = 0  # hub sequence number of the last heartbeat received (any address)
        self.heartbeats = 0  # server heartbeats received on the shared SUBs
        self.handed = 0  # verified bodies handed to sessions by catch_up

    @property
    def subs(self) -> dict[str, Any]:
        return {addr: f.sub for addr, f in self.feeds.items()}

    def attach(self, stand_in: _SharedSub, addr: str) -> None:
        if not zmq_address_is_loopback(addr):
            raise FleetError(f"refusing to connect to non-loopback address {addr}")
        feed = self.feeds.get(addr)
        if feed is None:
            sub = self.context.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(addr)
            self.feeds[addr] = feed = _Feed(addr, sub)
            self.loop.add_reader(sub, lambda: self._dispatch(feed))
        stand_in.feed = feed
        stand_in.seen = self.seq  # like a real SUB: nothing from before it connected
        feed.members[stand_in] = None
        feed.unfed[stand_in] = None
        owner = stand_in.owner
        session = getattr(owner, "session", None)
        if session is not None:
            stand_in.session = session
            self.by_session[session] = stand_in

    def detach(self, stand_in: _SharedSub) -> None:
        feed = stand_in.feed
        if feed is not None:
            feed.members.pop(stand_in, None)
            feed.unfed.pop(stand_in, None)
        if stand_in.session is not None and self.by_session.get(stand_in.session) is stand_in:
            del self.by_session[stand_in.session]

    def _dispatch(self, feed: _Feed) -> None:
        sub = feed.sub
        batch = []
        while len(batch) < 100:
            try:
                batch.append(sub.recv_multipart(flags=zmq.NOBLOCK))
            except zmq.Again:
                break
        for frames in batch:
            self.heartbeats += 1
            self.seq += 1
            feed.history.append([self.seq, frames, {}])
            for m in list(feed.unfed):  # usually none: sessions the wheel does not beat yet
                m.seen = self.seq
                m.push(frames)

    def catch_up(self, session: NodeSession) -> None:
        """Hand `session` the heartbeats its stand-in has not had (called before its beat).

        From then on the hub stops feeding this stand-in through its inbox."""
        m = self.by_session.get(session)
        if m is None or m.closed:
            return
        feed = m.feed
        config = session.config
        if feed is None or config is None or session.phase != CONNECTED:
            return
        if feed.unfed:
            feed.unfed.pop(m, None)
        seen = m.seen
        if seen >= self.seq:
            return
        fresh = []
        for entry in reversed(feed.history):
            if entry[0] <= seen:
                break
            fresh.append(entry)
        m.seen = self.seq
        if not fresh:
            return
        if m.key is not config.public_key:
            m.key, m.kid = config.public_key, self.codec.key_id(config.public_key)
        kid = m.kid
        for entry in reversed(fresh):
            verdicts = entry[2]
            body = verdicts.get(kid, _UNSEEN)
            if body is _UNSEEN:
                try:
                    body = self.codec.decode(session, entry[1], "heartbeat")
                    if body.get("type") != "heartbeat":
                        body = None
                except ProtocolError:
                    body = None
                verdicts[kid] = body
            if body is None:
                m.push(entry[1])  # the session's own pipeline drops (or ignores) and logs it
            else:
                session.server_heartbeat(body)
                self.handed += 1

    def close(self) -> None:
        for feed in self.feeds.values():
            self.loop.remove_reader(feed.sub)
            feed.sub.close(linger=0)
        self.feeds.clear()


class SendBatch:
    """Sends held back while a heartbeat slot is being beaten, then sent in one tight run.

    Why: every send wakes libzmq's I/O thread with a mailbox write unless it
    is still busy; encoding a whole slot first and then sending it back to
    back keeps the I/O thread busy across the run, so most sends skip the
    write and the I/O thread's wake-up. Only `BatchingDealer.send_multipart`
    is held back, only inside `hold()`; the order per socket is kept. A
    held-back send that then fails (queue full, socket gone) is counted in
    `failed` (the agent drops a heartbeat that cannot be sent, too).

    The flush sends through pyzmq's Cython methods (two raw sends, SNDMORE |
    NOBLOCK, EAGAIN caught) and hands the sockets it sent on to
    `poller.check_later`: a send processes the socket's pending libzmq
    commands and may thereby swallow the ZMQ_FD notification of a message
    that arrived meanwhile, so each socket must be asked for ZMQ_EVENTS once
    after its send (see `FleetPoller.check_later` for why not at once).
    """

    def __init__(self) -> None:
        self.holding = False
        self.items: list[tuple[zmq.Socket, Any]] = []
        self.failed = 0
        self.poller: Optional["FleetPoller"] = None

    def flush(self) -> None:
        items, self.items = self.items, []
        send = _raw_send
        more, last = _MORE_NOBLOCK, _NOBLOCK
        sent = []
        for sock, frames in items:
            try:
                if len(frames) == 2:  # a heartbeat: header + body, no slice and loop per send
                    send(sock, frames[0], more)
                else:
                    for frame in frames[:-1]:
                        send(sock, frame, more)
                send(sock, frames[-1], last)
            except zmq.ZMQError:  # EAGAIN (queue full), ENOTSOCK (closed meanwhile)...
                self.failed += 1
                continue
            sent.append(sock)
        if self.poller is not None:
            self.poller.check_later(sent)


class BatchingDealer(zmq.Socket):
    """A real DEALER whose non-blocking sends join the open `SendBatch` (see there)."""

    batch: Optional[SendBatch] = None

    def send_multipart(self, msg_parts: Any, flags: int = 0, copy: bool = True, track: bool = False,
                       **kw: Any) -> Any:
        batch = self.batch
        if batch is not None and batch.holding and flags == zmq.NOBLOCK and not track:
            batch.items.append((self, list(msg_parts)))
            return None
        return super().send_multipart(msg_parts, flags=flags, copy=copy, track=track, **kw)


class FleetContext:
    """The sessions' socket factory: real DEALERs (batching their heartbeat sends when `batch`
    is given), stand-in SUBs in shared mode. Each session gets a `NodeSockets` view of it
    (`for_node`), so that a stand-in knows whose it is."""

    def __init__(self, context: zmq.Context, hub: Optional[HeartbeatHub], batch: Optional[SendBatch] = None):
        self._context = context
        self.hub = hub
        self.batch = batch

    def for_node(self, owner: Any) -> "NodeSockets":
        return NodeSockets(self, owner)

    def socket(self, socket_type: int, owner: Any = None, **kw: Any) -> Any:
        if socket_type == zmq.SUB and self.hub is not None:
            return _SharedSub(self.hub, owner)
        if socket_type == zmq.DEALER and self.batch is not None:
            sock = self._context.socket(socket_type, socket_class=BatchingDealer, **kw)
            sock.batch = self.batch
            return sock
        return self._context.socket(socket_type, **kw)


class NodeSockets:
    """One session's `context` (`NodeSession(context=...)`): the fleet's factory, plus whose."""

    __slots__ = ("factory", "owner")

    def __init__(self, factory: FleetContext, owner: Any):
        self.factory = factory
        self.owner = owner

    def socket(self, socket_type: int, **kw: Any) -> Any:
        return self.factory.socket(socket_type, owner=self.owner, **kw)


class FleetPoller:
    """A `pushjobs.agent.loop.Poller` for thousands of sockets: epoll on each ZMQ_FD.

    The agent's `ZmqPoller` hands every socket to `zmq_poll` on every
    wake-up: O(sockets). Here each ZeroMQ socket's notification fd (ZMQ_FD)
    sits in an epoll set, so a wake-up costs O(sockets with news). ZMQ_FD
    only says "look at ZMQ_EVENTS", and a send can swallow the notification
    of a message that arrived meanwhile, so a socket is re-checked after
    every send (`note_send`), and every socket once per SWEEP_PERIOD (a safety net).
    Stand-in SUBs (shared mode) are reported when the hub `wake`s them.
    """

    #: every socket is checked once per this many seconds, a slice per wake-up
    SWEEP_PERIOD = 15.0
    #: a socket a heartbeat was batch-sent on is checked this many seconds later (check_later)
    CHECK_DELAY = 0.05

    def __init__(self, clock: Callable[[], float] = time.monotonic, sends: Optional[SendBatch] = None):
        self.clock = clock
        self.sends = sends
        if sends is not None:
            sends.poller = self
        self._epoll = select.epoll()
        self._fd_of: dict[Any, int] = {}
        self._sock_of: dict[int, Any] = {}
        self._dirty: set = set()
        self._later: collections.deque = collections.deque()  # (due, [sockets]) of check_later
        self._check_due: dict[Any, float] = {}  # socket -> due time of its pending later check
        self._last_sweep = clock()
        self.checks = 0  # ZMQ_EVENTS asked (each one a system call in libzmq)
        self.polls = 0  # wake-ups
        self._sweep_order: list[Any] = []
        self._sweep_pos = 0

    def register(self, sock: Any) -> None:
        if isinstance(sock, _SharedSub):
            sock.poller = self
            if sock.inbox:
                self._dirty.add(sock)
            return
        self.unregister(sock)
        fd = sock.getsockopt(zmq.FD) if isinstance(sock, zmq.Socket) else int(sock)
        self._fd_of[sock] = fd
        self._sock_of[fd] = sock
        self._epoll.register(fd, select.EPOLLIN)
        self._dirty.add(sock)  # messages may be queued already

    def unregister(self, sock: Any) -> None:
        self._dirty.discard(sock)
        self._check_due.pop(sock, None)
        if isinstance(sock, _SharedSub):
            sock.poller = None
            return
        fd = self._fd_of.pop(sock, None)
        if fd is not None:
            self._sock_of.pop(fd, None)
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def wake(self, sock: Any) -> None:
        """A stand-in has input."""
        self._dirty.add(sock)

    def note_send(self, sock: Any) -> None:
        sends = self.sends
        if sends is not None and sends.holding:
            return  # a held-back send: `SendBatch.flush` checks the socket once it went out
        if sock in self._fd_of:
            self._dirty.add(sock)

    def check_later(self, socks: list[Any]) -> None:
        """Ask these sockets for ZMQ_EVENTS once, CHECK_DELAY s from now (after a batch send).

        Why later: libzmq's I/O thread answers every second message read from
        a DEALER with SNDHWM 3 with an `activate_write` command, whose ZMQ_FD
        notification costs a ZMQ_EVENTS check of its own. Checked at once,
        that was 1.5 checks per node and heartbeat; checked a little later,
        the command is usually there, a socket epoll reports meanwhile is
        checked then and not again: one check per heartbeat. Input that a
        send's command processing hid is found at most CHECK_DELAY s late.
        """
        if not socks:
            return
        due = self.clock() + self.CHECK_DELAY
        check_due = self._check_due
        for sock in socks:
            check_due[sock] = due
        self._later.append((due, socks))

    def pending(self) -> bool:
        return bool(self._dirty)

    def poll(self, timeout: float) -> list[Any]:
        later = self._later
        if later:
            timeout = max(0.0, min(timeout, later[0][0] - self.clock()))
        try:
            events = self._epoll.poll(timeout)
        except InterruptedError:
            events = []
        ready, self._dirty = self._dirty, set()
        sock_of = self._sock_of
        for fd, _ in events:
            sock = sock_of.get(fd)
            if sock is not None:
                ready.add(sock)
        check_due = self._check_due
        if later:
            now = self.clock()
            fd_of = self._fd_of
            while later and later[0][0] <= now:
                due, socks = later.popleft()
                for sock in socks:
                    if check_due.get(sock) == due:  # not checked since it was sent on
                        if sock in fd_of:
                            ready.add(sock)
                        else:
                            del check_due[sock]
        self._sweep(ready)
        out = []
        get = _raw_get
        self.polls += 1
        for sock in ready:
            if isinstance(sock, zmq.Socket):
                self.checks += 1
                if check_due:
                    check_due.pop(sock, None)
                try:
                    if not get(sock, _EVENTS) & _POLLIN:
                        continue
                except zmq.ZMQError:
                    continue
            out.append(sock)
        return out

    def _sweep(self, ready: set) -> None:
        """Add the next slice of all sockets, so that each is looked at every SWEEP_PERIOD s."""
        order = self._sweep_order
        if self._sweep_pos >= len(order):  # a lap done: a fresh list without closed sockets
            self._sweep_order = order = [s for s in self._fd_of if isinstance(s, zmq.Socket)]
            self._sweep_pos = 0
        now = self.clock()
        count = int((now - self._last_sweep) / self.SWEEP_PERIOD * len(order))
        if count < 1:
            return
        self._last_sweep = now
        end = min(len(order), self._sweep_pos + count)
        fd_of = self._fd_of
        for sock in order[self._sweep_pos:end]:
            if sock in fd_of:
                ready.add(sock)
        self._sweep_pos = end

    def close(self) -> None:
        try:
            self._epoll.close()
        except OSError:
            pass


class HeartbeatWheel:
    """A `HeartbeatScheduler` without a timer per node: sessions wait in time slots and one
    loop timer per non-empty slot beats every session due in it.

    Why slots of up to `batch` seconds (default 0.1, at most a quarter of the
    interval): every send wakes libzmq's I/O thread through a mailbox write
    unless it is still busy with the previous ones, so sends in a tight batch
    share wake-ups (1,000 nodes, one run each: 10 ms slots cost ~210 µs of
    CPU per node-second, 100 ms ~125, 250 ms ~123). Beats stay on an exact
    interval grid (the next one is due one interval after the previous *due*
    time, then rounded up to its slot), so a node's heartbeats are late by
    less than one slot and never drift: the server sees the right rate.

    A session is in at most one slot (`due`): rescheduling or cancelling only
    updates `due`, and stale slot entries are skipped when the slot fires, so
    every session beats exactly once per schedule.
    """

    def __init__(self, loop: EventLoop, batch: float = 0.1, grain: float = TIMER_GRAIN,
                 sends: Optional[SendBatch] = None, hub: Optional[HeartbeatHub] = None):
        self.loop = loop
        self.sends = sends
        self.hub = hub
        self.grain = grain
        self.batch = max(grain, batch)
        self.slots: dict[int, list[NodeSession]] = {}
        self.due: dict[NodeSession, int] = {}
        self.ideal: dict[NodeSession, float] = {}  # exact due time of each session's next beat
        self.beats = 0
        self._beating: Optional[NodeSession] = None
        self.lean = True  # steady-state beats take `_lean_beat` (False: always the full path)
        self.lean_beats = 0  # beats that took the lean path

    def schedule(self, session: NodeSession, delay: float) -> None:
        now = self.loop.clock()
        delay = max(0.0, delay)
        base = self.ideal.get(session, now) if session is self._beating else now
        ideal = base + delay
        if ideal < now:  # the loop was stalled for more than an interval: no catch-up burst
            ideal = now
        width = max(1, int(min(self.batch, delay / 4) / self.grain))  # slot width in grains
        slot = math.ceil(ideal / self.grain / width - 1e-9) * width
        self.ideal[session] = ideal
        self.due[session] = slot
        members = self.slots.get(slot)
        if members is None:
            self.slots[slot] = members = []
            # (a hair early: the loop's own rounding must not push it into the next grain)
            self.loop.call_later(slot * self.grain - now - 1e-7, lambda: self._fire(slot))
        members.append(session)

    def cancel(self, session: NodeSession) -> None:
        self.due.pop(session, None)
        self.ideal.pop(session, None)

    def _fire(self, slot: int) -> None:
        sends = self.sends
        if sends is None:
            self._beat_all(slot)
            return
        sends.holding = True
        try:
            self._beat_all(slot)
        finally:
            sends.holding = False
            sends.flush()

    def _beat_all(self, slot: int) -> None:
        due = self.due
        catch_up = self.hub.catch_up if self.hub is not None else None
        lean = self._lean_beat if self.lean else None
        for s in self.slots.pop(slot, ()):
            if due.get(s) != slot:
                continue  # rescheduled or cancelled since
            del due[s]
            self.beats += 1
            self._beating = s
            try:
                if lean is not None and lean(s):
                    continue
                if catch_up is not None:
                    catch_up(s)  # the server heartbeats since its last beat, then its beat
                s.beat()
            except Exception:  # one session must not stop the others' heartbeats
                log.exception("heartbeat of %s failed", s.node)
            finally:
                self._beating = None
                if s not in due:
                    self.ideal.pop(s, None)


    def _lean_beat(self, s: Any) -> bool:
        """The beat of a node in the steady state, without the session's per-beat code; False
        (nothing changed) when anything is not steady, and the caller takes the full path
        (`HeartbeatHub.catch_up` + `NodeSession.beat`).

        Steady: a connected `NodeSession` of a `SimulatedRunner` whose job FSM is idle, the
        server online, no job message waiting, no failed send, the current heartbeat template,
        and every server heartbeat since its last beat verified for its server key and of its
        server incarnation. Then the effect is exactly the full path's, in fewer steps: the
        hub's integer sequence says whether heartbeats came (none: the offline counter counts
        on; k: `server_heartbeats` and the online counter go up by k and the offline counter
        restarts), the heartbeat is encoded from the template and joins the send batch, the
        next beat is scheduled. Whatever would change something else (the offline threshold
        reached, a new incarnation, an unverified or forged heartbeat, a job, a full queue, a
        first beat) is left to the full path, which decides as the agent does.
        """
        if s.__class__ is not NodeSession or s.handler.__class__ is not SimulatedRunner:
            return False
        if s.phase != CONNECTED or not s.online or s._pending or s._send_failures:
            return False
        conn, config = s._conn, s.config
        if conn is None or config is None or conn.closed:
            return False
        fsm = s.handler.fsm
        if fsm.state != "idle" or fsm.job_id is not None:
            return False
        hub = self.hub
        k = 0
        m = None
        if hub is not None:
            m = hub.by_session.get(s)
            if m is not None and not m.closed and m.feed is not None:
                feed = m.feed
                if m in feed.unfed:
                    return False  # its first beat: the hub stops feeding it through its inbox
                seen = m.seen
                if seen < hub.seq:
                    if m.key is not config.public_key:  # (a cache, as catch_up keeps it)
                        m.key, m.kid = config.public_key, hub.codec.key_id(config.public_key)
                    kid, inc = m.kid, s.server_incarnation
                    for entry in reversed(feed.history):
                        if entry[0] <= seen:
                            break
                        body = entry[2].get(kid)  # verified body; None: failed; absent: not yet
                        if (body is None or body.get("incarnation_id") != inc or inc is None
                                or not isinstance(body.get("sequence"), int)):
                            return False
                        k += 1
                else:
                    m = None  # nothing new: leave its `seen` alone
            else:
                m = None  # catch_up would hand it nothing
        if (0 if k else s._offline_counter) > config.offline_threshold:
            return False  # the full path declares the server offline
        sends = self.sends
        dealer = conn.dealer
        frames = None
        if sends is not None and sends.holding and getattr(dealer, "batch", None) is sends:
            codec = s.codec
            if codec.__class__ is FleetCodec:
                frames = codec.idle_heartbeat(s, config)
            if frames is None:
                return False  # the full path makes the template
        # from here on: the steady beat, all or nothing
        if m is not None:
            m.seen = hub.seq
            if k:
                hub.handed += k
        stats = s.stats
        if k:
            stats["server_heartbeats"] += k
            s._online_counter += k
            s._offline_counter = 1
        else:
            s._offline_counter += 1
        if frames is not None:
            sends.items.append((dealer, frames))  # what BatchingDealer.send_multipart does now
            stats["heartbeats_sent"] += 1
        else:
            s.send("heartbeat", {"job_state": "idle", "job_id": None})
        if s.phase == CONNECTED:
            self.schedule(s, config.interval)
        self.lean_beats += 1
        return True


class FleetCodec(MessageCodec):
    """The agent's codec, minus work a fleet repeats N times (never minus a check).

    * Heartbeats (`fast_heartbeats`) are encoded from a per-session template:
      the bytes are exactly the agent's (tests/tools/test_fleet.py compares
      them) and the HMAC is computed per message, without building and
      validating a message object per beat; the date string is made once a
      second for the whole process.
    * Server heartbeats: the same signed bytes reach every session of a
      process, so a successful verification (RSA, ~0.5 ms) is memoized per
      (frames, server key); the rest of the pipeline ran on first sight, and
      an entry is forgotten after `HEARTBEAT_CACHE_SIZE` newer heartbeats.
    Anything else goes through the agent's code.
    """

    def __init__(self, fast_heartbeats: bool = True):
        self.fast_heartbeats = fast_heartbeats
        self.verified: dict[tuple[bytes, bytes, int], dict] = {}
        self._templates: dict[NodeSession, tuple[str, bytes, bytes, bytes, Any]] = {}
        self._key_ids: dict[int, tuple[Any, int]] = {}
        self._date_second = -1
        self._date = b""

    def encode(self, session: NodeSession, msg_type: str, fields: dict[str, Any]) -> list[bytes]:
        config = session.config
        if (msg_type != "heartbeat" or not self.fast_heartbeats or config is None
                or config.session_key is None or len(fields) != 2):
            return super().encode(session, msg_type, fields)
        job_state, job_id = fields.get("job_state"), fields.get("job_id")
        if job_state not in JOB_STATES or not (job_id is None or isinstance(job_id, str)):
            return super().encode(session, msg_type, fields)
        tpl = self._templates.get(session)
        if tpl is None or tpl[0] != session.incarnation_id or tpl[3] is not config.session_key:
            ident = session.identity
            head = dumps({"node": session.node, "client": ident.client_name, "protocol_version": "2.0",
                          "org": ident.org, "type": "heartbeat"})
            # the HMAC's two keyed SHA-256 states per template, copied per message: a third of
            # the cost of hmac.digest(), which sets the key up (and looks the digest up by name)
            tpl = (session.incarnation_id, head[:-1] + b',"sequence":',
                   b',"incarnation_id":' + dumps(session.incarnation_id) + b',"job_state":',
                   config.session_key, hmac_pad_states(config.session_key))
            self._templates[session] = tpl
        return self._frames(session, tpl, b'"idle"' if job_state == "idle" else dumps(job_state),
                            b',"job_id":null}' if job_id is None else b',"job_id":' + dumps(job_id) + b"}")

    def idle_heartbeat(self, session: NodeSession, config: ServerConfig) -> Optional[list[bytes]]:
        """The frames of an idle heartbeat (`job_state` idle, no job) from the session's template,
        or None when there is no current template (then `encode` makes one): the lean beat's
        encoder (`HeartbeatWheel`), byte-identical to `encode`'s and the agent's."""
        if not self.fast_heartbeats:
            return None
        tpl = self._templates.get(session)
        if tpl is None or tpl[0] != session.incarnation_id or tpl[3] is not config.session_key:
            return None
        return self._frames(session, tpl, b'"idle"', b',"job_id":null}')

    def _frames(self, session: NodeSession, tpl: tuple, state: bytes, job_id: bytes) -> list[bytes]:
        t = session.wall_clock()
        second = int(t)
        if second != self._date_second:
            self._date_second, self._date = second, b',"timestamp":' + dumps(http_date(t))
        body = b"".join((tpl[1], str(session.next_sequence()).encode(), self._date, tpl[2], state, job_id))
        inner, outer = tpl[4]
        inner = inner.copy()
        inner.update(body)
        outer = outer.copy()
        outer.update(inner.digest())
        return [_HMAC_HEADER + b2a_base64(outer.digest(), newline=False), body]

    def forget(self, session: NodeSession) -> None:
        self._templates.pop(session, None)

    def key_id(self, key: Any) -> int:
        """The server key's modulus (sessions hold equal keys as different objects)."""
        entry = self._key_ids.get(id(key))
        if entry is None or entry[0] is not key:
            if len(self._key_ids) > 100_000:
                self._key_ids.clear()
            entry = (key, key.public_numbers().n if key is not None else 0)
            self._key_ids[id(key)] = entry
        return entry[1]

    def decode(self, session: NodeSession, frames: list[bytes], channel: str) -> dict[str, Any]:
        config = session.config
        if channel != "heartbeat" or len(frames) != 2 or config is None:
            return super().decode(session, frames, channel)
        key = (bytes(frames[0]), bytes(frames[1]), self.key_id(config.public_key))
        body = self.verified.get(key)
        if body is None:
            body = super().decode(session, frames, channel)  # raises if invalid: never cached
            self.verified[key] = body
            while len(self.verified) > HEARTBEAT_CACHE_SIZE:
                self.verified.pop(next(iter(self.verified)))
        return dict(body)


def loopback_only(fleet: "Fleet") -> Callable[[ServerConfig], Optional[str]]:
    """The sessions' `address_check`: only loopback ZeroMQ addresses."""

    def check(config: ServerConfig) -> Optional[str]:
        bad = [a for a in (config.out_addr, config.command_addr) if not zmq_address_is_loopback(a)]
        if bad:
            fleet.count("refused_address")
            return f"the server sent non-loopback addresses {bad}"
        return None

    return check


# --------------------------------------------------------------------------------------
# The fleet (one process)


@dataclass
class FleetOptions:
    server_url: str  # http://127.0.0.1:PORT (the org path is added)
    org: str
    prefix: str
    count: int
    key_path: str
    first: int = 1  # the first index of this process's slice
    behaviour: str = "succeed"
    run_time: float = 0.0
    slow_time: float = 5.0
    latency: float = 0.0
    rejoin_after: Optional[float] = None
    ramp: float = 10.0
    shared_sub: bool = False
    command_check_timeout: float = 3.0
    restart_splay: float = 10.0
    reconnect_min_delay: float = 1.0
    reconnect_max_delay: float = 30.0
    http_timeout: float = 10.0
    workers: int = 8  # HTTP (config handshake) threads
    seed: int = 0
    fast_heartbeats: bool = True
    io_threads: int = 1
    heartbeat_batch: float = 0.1  # s: the widest heartbeat slot (see HeartbeatWheel)
    batch_sends: bool = True  # see SendBatch

    @property
    def chef_server_url(self) -> str:
        return f"{self.server_url.rstrip('/')}/organizations/{self.org}"


@dataclass
class FleetStats:
    """A snapshot of one fleet (or the sum of several)."""

    nodes: int = 0
    connected: int = 0
    confirmed: int = 0  # a valid message came back on the command port
    idle: int = 0
    committed: int = 0
    running: int = 0
    counters: dict[str, int] = field(default_factory=dict)

    def add(self, other: "FleetStats") -> "FleetStats":
        c = collections.Counter(self.counters)
        c.update(other.counters)
        for k in (k for k in c if k.endswith("_max_ms")):  # maxima, not sums
            c[k] = max(self.counters.get(k, 0), other.counters.get(k, 0))
        return FleetStats(self.nodes + other.nodes, self.connected + other.connected,
                          self.confirmed + other.confirmed, self.idle + other.idle,
                          self.committed + other.committed, self.running + other.running, dict(c))


def _load_private_key(path: str) -> Any:
    from pushjobs.protocol.keys import load_private_key

    try:
        with open(path, "rb") as fh:
            return load_private_key(fh.read())
    except OSError as exc:
        raise FleetError(f"cannot read the client key {path}: {exc.strerror}") from None
    except Exception as exc:  # noqa: BLE001 - a clear message instead of a traceback
        raise FleetError(f"{path} is not an RSA private key: {exc}") from None


class Fleet:
    """`count` simulated nodes PREFIX<first>..PREFIX<first+count-1> on one loop thread."""

    def __init__(self, opts: FleetOptions, private_key: Any = None):
        check_loopback_url(opts.server_url)
        if opts.count < 1:
            raise FleetError("--count must be at least 1")
        for var in PROXY_VARIABLES:  # loopback only: never through a proxy
            os.environ.pop(var, None)
        self.opts = opts
        self.private_key = private_key if private_key is not None else _load_private_key(opts.key_path)
        self.zmq_context = zmq.Context(io_threads=max(1, opts.io_threads))
        self.zmq_context.set(zmq.MAX_SOCKETS, max(1024, 4 * opts.count + 64))
        self.sends = SendBatch() if opts.batch_sends else None
        self.poller = FleetPoller(sends=self.sends)
        self.loop = EventLoop(context=self.zmq_context, workers=opts.workers, poller=self.poller,
                              timer_grain=TIMER_GRAIN)
        self.codec = FleetCodec(fast_heartbeats=opts.fast_heartbeats)
        self.hub = HeartbeatHub(self.loop, self.zmq_context, self.codec) if opts.shared_sub else None
        self.socket_factory = FleetContext(self.zmq_context, self.hub, self.sends)
        self.heartbeats = HeartbeatWheel(self.loop, opts.heartbeat_batch, sends=self.sends, hub=self.hub)
        self.address_check = loopback_only(self)
        self.counters: collections.Counter = collections.Counter()
        self.rng = random.Random(opts.seed + opts.first)
        import requests

        self.http = requests.Session()
        self.http.trust_env = False
        kinds = assign_behaviours(parse_mix(opts.behaviour), opts.count)
        self.runners: list[SimulatedRunner] = []
        self.sessions: list[NodeSession] = []
        self.session_options = SessionOptions(
            allow_unencrypted=False, http_timeout=opts.http_timeout, tls_verify=False,
            reconnect_min_delay=opts.reconnect_min_delay, reconnect_max_delay=opts.reconnect_max_delay,
            restart_splay=opts.restart_splay, command_check_timeout=opts.command_check_timeout,
            report_facts=False)
        for i, kind in enumerate(kinds):
            name = f"{opts.prefix}{opts.first + i}"
            b = Behaviour(kind, opts.run_time, opts.slow_time, opts.latency, opts.rejoin_after)
            runner = SimulatedRunner(name, b, self.loop, self)
            self.runners.append(runner)
            self.sessions.append(self._new_session(runner))
        self._thread: Optional[threading.Thread] = None

    def _new_session(self, runner: SimulatedRunner) -> NodeSession:
        ident = NodeIdentity(node_name=runner.node, org=self.opts.org,
                             chef_server_url=self.opts.chef_server_url,
                             private_key=self.private_key, client_name=runner.node)
        return NodeSession(self.loop, ident, runner, self.session_options,
                           rng=random.Random(self.rng.random()), context=self.socket_factory.for_node(runner),
                           address_check=self.address_check, codec=self.codec,
                           heartbeats=self.heartbeats, http=self._http_for(ident))

    def _http_for(self, ident: NodeIdentity) -> ChefHTTP:
        """One shared keep-alive HTTP session per process, proxies ignored."""
        return ChefHTTP(ident.chef_server_url, ident.node_name, ident.private_key,
                        verify=False, timeout=self.opts.http_timeout, session=self.http)

    # --- running ---------------------------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def start(self) -> None:
        """Start the loop thread and spread the sessions' start over `ramp` seconds."""
        n = len(self.sessions)
        ramp = max(0.0, self.opts.ramp)

        def schedule() -> None:
            for i, s in enumerate(self.sessions):
                s.start(delay=ramp * i / n if n > 1 else 0.0)

        self.loop.call_soon_threadsafe(schedule)
        self._thread = self.loop.start_thread(name=f"fleet-{self.opts.first}")

    def stop(self, timeout: float = 10.0) -> None:
        """Close every session and the loop (nodes vanish without a word, like a power cut)."""
        done = threading.Event()

        def close_all() -> None:
            try:
                for s in self.sessions:
                    s.stop()
                if self.hub is not None:
                    self.hub.close()
            finally:
                done.set()
                self.loop.stop()

        if self._thread is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(close_all)
            done.wait(timeout)
            self._thread.join(timeout)
        self.loop.close()
        self.http.close()
        self.zmq_context.term()

    def disconnect(self, runner: SimulatedRunner) -> None:
        """Behaviour "disconnect": the node vanishes; with rejoin_after a new agent process comes back."""
        idx = self.runners.index(runner)
        old = self.sessions[idx]
        runner.session = None
        old.stop()
        self.codec.forget(old)
        self.count("disconnects")
        if runner.behaviour.rejoin_after is not None:
            def rejoin() -> None:
                fresh = SimulatedRunner(runner.node, Behaviour("succeed", runner.behaviour.run_time,
                                                               runner.behaviour.slow_time,
                                                               runner.behaviour.latency), self.loop, self)
                self.runners[idx] = fresh
                self.sessions[idx] = s = self._new_session(fresh)
                s.start()
                self.count("rejoins")

            self.loop.call_later(runner.behaviour.rejoin_after, rejoin)

    def stats(self) -> FleetStats:
        """A snapshot (read from another thread: approximate while the loop runs)."""
        st = FleetStats(nodes=len(self.sessions))
        agg: dict[str, int] = dict(self.counters)
        get = agg.get
        for s, r in zip(list(self.sessions), list(self.runners)):
            if s.phase == CONNECTED:
                st.connected += 1
                if s.command_channel_ok:
                    st.confirmed += 1
            state = r.fsm.state
            if state == "idle":
                st.idle += 1
            elif state == "committed":
                st.committed += 1
            elif state == "running":
                st.running += 1
            for k, v in list(s.stats.items()):
                if v:
                    agg[k] = get(k, 0) + v
        agg["poller_checks"] = self.poller.checks
        agg["poller_wakeups"] = self.poller.polls
        agg["lean_beats"] = self.heartbeats.lean_beats
        if self.hub is not None:
            agg["shared_server_heartbeats"] = self.hub.heartbeats
        if self.sends is not None and self.sends.failed:
            agg["send_failures"] = get("send_failures", 0) + self.sends.failed
            agg["batched_send_failures"] = self.sends.failed
        st.counters = dict(agg)
        st.counters[LAG_KEY] = int(1000 * self.loop.take_lag())
        return st


# --------------------------------------------------------------------------------------
# Several processes


def _worker_main(opts: FleetOptions, queue: Any, stop_event: Any, report_interval: float) -> None:
    """A worker process: run one Fleet slice, push stats snapshots until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    fleet = Fleet(opts)
    fleet.start()
    try:
        while not stop_event.wait(report_interval):
            queue.put((opts.first, asdict(fleet.stats())))
    finally:
        queue.put((opts.first, asdict(fleet.stats())))
        fleet.stop()


class MultiFleet:
    """The fleet split over `processes` worker processes (fork), stats aggregated here."""

    def __init__(self, opts: FleetOptions, processes: int, report_interval: float = 1.0):
        check_loopback_url(opts.server_url)
        _load_private_key(opts.key_path)  # fail early, in the parent
        self.opts = opts
        self.report_interval = report_interval
        ctx = multiprocessing.get_context("fork")
        self.queue = ctx.Queue()
        self.stop_event = ctx.Event()
        self.latest: dict[int, FleetStats] = {}
        self.procs = []
        processes = max(1, min(processes, opts.count))
        base, extra = divmod(opts.count, processes)
        first = opts.first
        for i in range(processes):
            n = base + (1 if i < extra else 0)
            sub = FleetOptions(**{**asdict(opts), "first": first, "count": n})
            first += n
            p = ctx.Process(target=_worker_main, args=(sub, self.queue, self.stop_event, report_interval),
                            name=f"fleet-worker-{i}", daemon=True)
            self.procs.append(p)

    def start(self) -> None:
        for p in self.procs:
            p.start()

    def poll(self, timeout: float = 0.0) -> None:
        """Collect the workers' snapshots for `timeout` seconds (0: only what is waiting)."""
        import queue as _q

        deadline = time.monotonic() + timeout
        while True:
            try:
                first, d = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except _q.Empty:
                return
            self.latest[first] = FleetStats(**d)

    def stats(self) -> FleetStats:
        total = FleetStats()
        for st in self.latest.values():
            total = total.add(st)
        return total

    def stop(self, timeout: float = 15.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
            self.poll(0.0)
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(2)


# --------------------------------------------------------------------------------------
# Server view and the command line


def server_view(server_url: str, timeout: float = 2.0) -> dict[str, float]:
    """`pushjobs_nodes_online`/`_available` and a few more from the server's /pushy/_metrics."""
    import requests

    check_loopback_url(server_url)
    s = requests.Session()
    s.trust_env = False
    try:
        r = s.get(server_url.rstrip("/") + "/pushy/_metrics", timeout=timeout, verify=False)
        if r.status_code != 200:
            return {}
        return parse_metrics_text(r.text)
    except requests.RequestException:
        return {}
    finally:
        s.close()


def parse_metrics_text(text: str) -> dict[str, float]:
    """Unlabelled samples (plus `name{labels}` keys) of a Prometheus text page."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, val = line.rpartition(" ")
        try:
            out[name] = float(val)
        except ValueError:
            continue
    return out


def format_report(elapsed: float, st: FleetStats, view: dict[str, float]) -> str:
    c = st.counters
    srv = ""
    if view:
        srv = (f" | server: online {int(view.get('pushjobs_nodes_online', 0))}"
               f" available {int(view.get('pushjobs_nodes_available', 0))}")
    return (f"[{elapsed:7.1f}s] nodes {st.nodes} connected {st.connected} confirmed {st.confirmed}"
            f" idle {st.idle} committed {st.committed} running {st.running}"
            f" | hb sent {c.get('heartbeats_sent', 0)} srv hb {c.get('server_heartbeats', 0)}"
            f" reconf {c.get('reconfigures', 0)} cfg fail {c.get('config_failures', 0)}"
            f" send fail {c.get('send_failures', 0)} dropped {c.get('dropped', 0)}"
            f" lag {c.get(LAG_KEY, 0)}ms{srv}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pushjobs-fleet",
        description="Simulate N push-jobs nodes (real protocol) against a server on this machine.")
    p.add_argument("--server-url", default="http://127.0.0.1:10003",
                   help="the push-jobs server API, loopback only (default http://127.0.0.1:10003)")
    p.add_argument("--org", required=True, help="organization of the clients")
    p.add_argument("--prefix", required=True, help="client name prefix (ctl client-create --count N --prefix P)")
    p.add_argument("--count", "-n", type=int, required=True, help="number of nodes (P1..PN)")
    p.add_argument("--first", type=int, default=1, help="index of the first node (default 1)")
    p.add_argument("--key", required=True, help="the clients' shared RSA private key (PEM)")
    p.add_argument("--processes", type=int, default=1, help="worker processes (default 1: in this process)")
    p.add_argument("--ramp", type=float, default=10.0, help="spread the start-up over this many seconds")
    p.add_argument("--behaviour", "--behavior", default="succeed",
                   help=f"one of {', '.join(BEHAVIOURS)}, or a weighted mix like succeed=90,fail=5,nack=5")
    p.add_argument("--run-time", type=float, default=0.0, help="seconds a simulated job runs (default 0)")
    p.add_argument("--slow-time", type=float, default=5.0, help="run time of the 'slow' behaviour (default 5)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds before every reply (default 0)")
    p.add_argument("--rejoin-after", type=float, default=None,
                   help="'disconnect' nodes come back (new incarnation) after this many seconds")
    p.add_argument("--sub", choices=("auto", "per-node", "shared"), default="auto",
                   help="one SUB socket per node (like real agents), or one per process (fewer server fds, "
                        f"less CPU); auto: shared above {SHARED_SUB_ABOVE} nodes per process (default)")
    p.add_argument("--command-check-timeout", type=float, default=3.0,
                   help="seconds without a command-port message before a reconfigure (agent default 3)")
    p.add_argument("--restart-splay", type=float, default=10.0,
                   help="max random delay before reconnecting after a server restart (agent default 10)")
    p.add_argument("--fast-heartbeats", dest="fast_heartbeats", action="store_true", default=True,
                   help="encode heartbeats from a per-node template (same bytes, less CPU; the default)")
    p.add_argument("--agent-heartbeats", dest="fast_heartbeats", action="store_false",
                   help="encode heartbeats with the agent's message objects instead")
    p.add_argument("--heartbeat-batch", type=float, default=0.1,
                   help="send heartbeats in slots of up to this many seconds (at most a quarter of the "
                        "interval; default 0.1): fewer libzmq wake-ups, same rate")
    p.add_argument("--no-batch-sends", dest="batch_sends", action="store_false",
                   help="send each heartbeat at once instead of encoding a slot first, then sending it")
    p.add_argument("--io-threads", type=int, default=1, help="libzmq I/O threads per process (default 1)")
    p.add_argument("--http-threads", type=int, default=8, help="config handshake threads per process (default 8)")
    p.add_argument("--report-interval", type=float, default=5.0, help="seconds between report lines")
    p.add_argument("--duration", type=float, default=600.0,
                   help="stop by itself after this many seconds (default 600)")
    p.add_argument("--stats-file", help="append every report as a JSON line to this file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v: info, -vv: debug logs")
    return p


def options_from_args(a: argparse.Namespace) -> FleetOptions:
    for name in ("ramp", "run_time", "slow_time", "latency", "report_interval", "duration", "heartbeat_batch"):
        if getattr(a, name) < 0:
            raise FleetError(f"--{name.replace('_', '-')} must be >= 0")
    if a.count < 1:
        raise FleetError("--count must be at least 1")
    if a.processes < 1:
        raise FleetError("--processes must be at least 1")
    if a.io_threads < 1:
        raise FleetError("--io-threads must be at least 1")
    per_process = -(-a.count // a.processes)
    shared = a.sub == "shared" or (a.sub == "auto" and per_process > SHARED_SUB_ABOVE)
    parse_mix(a.behaviour)
    return FleetOptions(
        server_url=check_loopback_url(a.server_url), org=a.org, prefix=a.prefix, count=a.count,
        key_path=a.key, first=a.first, behaviour=a.behaviour, run_time=a.run_time, slow_time=a.slow_time,
        latency=a.latency, rejoin_after=a.rejoin_after, ramp=a.ramp, shared_sub=shared,
        command_check_timeout=a.command_check_timeout, restart_splay=a.restart_splay,
        workers=max(1, a.http_threads), seed=a.seed, fast_heartbeats=a.fast_heartbeats,
        io_threads=a.io_threads, heartbeat_batch=a.heartbeat_batch, batch_sends=a.batch_sends)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    level = logging.WARNING if a.verbose == 0 else logging.INFO if a.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        opts = options_from_args(a)
        fleet: Any = MultiFleet(opts, a.processes, a.report_interval) if a.processes > 1 else Fleet(opts)
    except FleetError as exc:
        print(f"pushjobs-fleet: {exc}", file=sys.stderr)
        return 2
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t0 = time.monotonic()
    fleet.start()
    stats_fh = open(a.stats_file, "a", buffering=1) if a.stats_file else None
    try:
        while not stopping.is_set():
            left = a.duration - (time.monotonic() - t0)
            if left <= 0:
                break
            if isinstance(fleet, MultiFleet):
                fleet.poll(min(a.report_interval, left))
            else:
                stopping.wait(min(a.report_interval, left))
            st = fleet.stats()
            view = server_view(opts.server_url)
            elapsed = time.monotonic() - t0
            print(format_report(elapsed, st, view), flush=True)
            if stats_fh is not None:
                stats_fh.write(json.dumps({"t": round(elapsed, 3), "wall": time.time(), **asdict(st),
                                           "server": {k: v for k, v in view.items()
                                                      if k.startswith("pushjobs_nodes")}}) + "\n")
    finally:
        fleet.stop()
        if stats_fh is not None:
            stats_fh.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
