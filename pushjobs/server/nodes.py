"""The node registry: the I/O shell of `pushjobs.core.node.NodeFSM`.

Rules of this file:
* The heartbeat path is memory only: verify, look up, feed the FSM. No
  database, no greenlet per message, no per-node timers except while a node
  is in rehab (the rehab timer).
* The §4.5 receive pipeline runs BEFORE any state is created (S7): the key
  of a message is the session key of its body's (org, node) that a config
  request created; without one the signature cannot verify and nothing is
  created. A verified message whose (org, node) differ from the node bound
  to its routing id is dropped as well (`node_mismatch`).
* Every dropped message is counted by reason (`drop_counts`, shown by the
  metrics endpoint) and logged; nothing raises out of `on_frames`.
* The FSM decides; this module carries out its actions in order: `Send`
  (sign with the session key, route by the FSM's routing id), timers (one
  heap and ONE greenlet for the timers of all nodes, not a greenlet per
  node), `Rebind`, `ForwardToJob`, `Terminate` (tell the job coordinator:
  `down`).
* The node FSMs run on a lag-compensated clock (`LoopLagMonitor.now`):
  monotonic time minus the seconds the worker's event loop was stalled. When
  the server itself falls behind (a flood, a slow database call), heartbeats
  queued in the meantime are processed late; on the plain clock those
  intervals would look silent and the liveness average would declare healthy
  nodes dead, and they would all reconnect at once. Only the message
  pipeline's timestamp check (§4.5) uses the wall clock.
* Counting is cheap and per message: `received_by_type`, `sent_by_type`,
  `heartbeat_seconds`/`heartbeats_processed` (read by the metrics collector
  at scrape time, `metrics.OPTIONAL_RUNTIME_COUNTERS`).
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Container, Optional, Protocol

import gevent
from gevent.event import Event as _GEvent

from pushjobs.core import actions as A
from pushjobs.core.node import CLIENT_MESSAGE_TYPES, NodeFSM
from pushjobs.protocol import signing
from pushjobs.protocol.errors import ProtocolError
from pushjobs.protocol.timestamps import http_date
from pushjobs.server.broker import ROUTER_BATCH, yield_to_loop

log = logging.getLogger(__name__)

NodeKey = tuple[str, str]  # (org name, node name)

#: The loop-lag monitor wakes every heartbeat interval / LAG_TICKS_PER_INTERVAL.
LAG_TICKS_PER_INTERVAL = 4
#: `pushjobs_event_loop_lag_seconds` shows the largest lag of the last one to
#: two windows of this many seconds (two rotating maxima: no per-tick storage).
LAG_WINDOW = 60.0
#: At most one "event loop stalled" warning per this many seconds (the rest are counted).
STALL_LOG_EVERY = 10.0
#: While the command ROUTER has a backlog (the broker found a full batch queued
#: and the queue has not been empty since), heartbeats are processed late
#: although the loop keeps turning, which the wake-up lateness above does not
#: see: a 5,000-node fan-out on 2 cores declared 1,994 nodes down this way
#: (docs/performance.md). The node clock then runs at (1 - BACKLOG_CREDIT) of
#: real speed for the part of a backlog longer than one monitor tick. Not 1.0:
#: a server that stays overloaded must still find dead nodes (4x slower).
BACKLOG_CREDIT = 0.75
#: Message types counted by name; anything else a (validly signed) client sends
#: is counted as "unknown", so a client cannot grow the metrics without bound.
_COUNTED_TYPES = CLIENT_MESSAGE_TYPES
#: `json.dumps(..., separators=...)` builds a new encoder per call; one is enough.
_encode_json = json.JSONEncoder(separators=(",", ":")).encode


class LoopLagMonitor:
    """How late the worker's event loop runs, and a clock that skips its stalls.

    A greenlet (`run`) sleeps `tick` seconds (interval / 4) over and over and
    measures how late it wakes. Lateness up to `tolerance` (one tick) is
    ordinary jitter; beyond that the loop was stalled, and the excess is added
    to `stalled`. `now()` is monotonic time minus `stalled`, minus the stall
    in progress (time past the next tick's due time + tolerance), so the clock
    stands still while the loop is stuck whichever greenlet runs first
    afterwards, and it never jumps back.

    Pure bookkeeping apart from `run`: `observe(t)` is what a wake-up does,
    tests call it with their own times.
    """

    __slots__ = ("interval", "tick", "tolerance", "clock", "stalled", "stalls", "ticks", "max_lag",
                 "_due", "_cur_max", "_prev_max", "_window_start", "_last_warn", "_unlogged",
                 "backlog_credit", "backlogged", "backlogs", "backlog_skipped", "_backlog_since", "_last_now")

    def __init__(self, interval: float, *, tick: Optional[float] = None, tolerance: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.interval = float(interval)
        self.tick = self.interval / LAG_TICKS_PER_INTERVAL if tick is None else float(tick)
        self.tolerance = self.tick if tolerance is None else float(tolerance)
        self.clock = clock
        self.stalled = 0.0  # seconds the loop was stalled (beyond tolerance), in total
        self.stalls = 0  # wake-ups later than one heartbeat interval
        self.ticks = 0
        self.max_lag = 0.0  # largest lateness ever seen
        self._due = math.inf  # not running: no stall in progress, now() == clock()
        self._cur_max = self._prev_max = 0.0
        self._window_start = -math.inf
        self._last_warn = -math.inf
        self._unlogged = 0
        self.backlog_credit = BACKLOG_CREDIT
        self.backlogged = 0.0  # seconds of command backlog beyond tolerance, in total
        self.backlogs = 0  # backlog episodes longer than tolerance
        self.backlog_skipped = 0.0  # seconds the node clock skipped for them
        self._backlog_since: Optional[float] = None
        self._last_now = -math.inf

    def now(self) -> float:
        """The lag-compensated clock (seconds, monotonic, never backwards)."""
        t = self.clock()
        behind = t - self._due - self.tolerance
        v = t - self.stalled - self.backlog_skipped - (behind if behind > 0.0 else 0.0)
        since = self._backlog_since
        if since is not None:
            extra = t - since - self.tolerance
            if extra > 0.0:
                v -= self.backlog_credit * extra
        # A loop stall during a backlog is credited twice; never let that step back.
        if v < self._last_now:
            return self._last_now
        self._last_now = v
        return v

    def set_backlog(self, on: bool) -> None:
        """The broker's command queue has (True) or no longer has (False) a backlog."""
        t = self.clock()
        if on:
            if self._backlog_since is None:
                self._backlog_since = t
            return
        since, self._backlog_since = self._backlog_since, None
        if since is not None:
            extra = t - since - self.tolerance
            if extra > 0.0:
                self.backlog_skipped += self.backlog_credit * extra
                self.backlogged += extra
                self.backlogs += 1

    def arm(self, t: float) -> None:
        """The next wake-up is due `tick` after `t`."""
        self._due = t + self.tick

    def observe(self, t: float) -> float:
        """The monitor woke at `t`: account for its lateness, arm the next tick; returns the lateness."""
        lateness = t - self._due if self._due != math.inf else 0.0
        if lateness < 0.0:
            lateness = 0.0
        excess = lateness - self.tolerance
        if excess > 0.0:
            self.stalled += excess
        self.ticks += 1
        if lateness > self.max_lag:
            self.max_lag = lateness
        if t - self._window_start >= LAG_WINDOW:
            self._prev_max, self._cur_max, self._window_start = self._cur_max, 0.0, t
        if lateness > self._cur_max:
            self._cur_max = lateness
        if lateness > self.interval:
            self.stalls += 1
            if t - self._last_warn >= STALL_LOG_EVERY:
                log.warning(
                    "event loop stalled %.2f s (heartbeat interval %.2f s): node liveness does not count it "
                    "(%d more stalls since the last warning; %.1f s stalled in total)",
                    lateness, self.interval, self._unlogged, self.stalled,
                )
                self._last_warn, self._unlogged = t, 0
            else:
                self._unlogged += 1
        self._due = t + self.tick
        return lateness

    def recent_max_lag(self) -> float:
        """The largest lateness of the current and the previous `LAG_WINDOW`."""
        return max(self._cur_max, self._prev_max)

    def run(self) -> None:
        """The monitor greenlet."""
        clock = self.clock
        self.arm(clock())
        try:
            while True:
                gevent.sleep(self.tick)
                self.observe(clock())
        finally:
            self._due = math.inf


class _TimerQueue:
    """Every node timer on one heap, fired by one greenlet.

    A greenlet per armed timer cost ~2.4 KB per node in rehab (10,000 nodes
    coming online at once are all in rehab); a heap item costs ~150 B.
    Cancelling marks the item dead (its entry slot set to None); dead items
    are dropped when they come due, or all at once when they are the majority
    (10,000 nodes going idle cancel 10,000 rehab timers)."""

    #: compact the heap when more than this many items, and half of it, are dead
    COMPACT_MIN_DEAD = 256

    def __init__(self, fire: Callable[["NodeEntry", str, list], None]):
        self._fire = fire
        self._heap: list[list] = []
        self._seq = 0
        self._dead = 0
        self._wake = _GEvent()

    def arm(self, delay: float, entry: "NodeEntry", name: str) -> list:
        self._seq += 1
        item = [time.monotonic() + max(0.0, delay), self._seq, entry, name]
        heapq.heappush(self._heap, item)
        if self._heap[0] is item:
            self._wake.set()
        return item

    def cancel(self, item: list) -> None:
        if item[2] is None:
            return
        item[2] = None
        self._dead += 1
        heap = self._heap
        if self._dead > self.COMPACT_MIN_DEAD and 2 * self._dead > len(heap):
            heap[:] = [i for i in heap if i[2] is not None]  # in place: `run` holds the list
            heapq.heapify(heap)
            self._dead = 0

    def __len__(self) -> int:
        return len(self._heap)

    def run(self) -> None:
        heap = self._heap
        while True:
            fired = 0
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                item = heapq.heappop(heap)
                entry = item[2]
                if entry is None:
                    self._dead -= 1
                    continue
                item[2] = None
                try:
                    self._fire(entry, item[3], item)
                except Exception:
                    log.exception("node timer %s failed", item[3])
                fired += 1
                if fired >= ROUTER_BATCH:  # 10,000 rehab timers due at once: let the loop breathe
                    yield_to_loop()
                    fired = 0
                    now = time.monotonic()
            self._wake.clear()
            self._wake.wait(max(0.0, heap[0][0] - now) if heap else None)


class JobSink(Protocol):
    """What the registry needs from the job coordinator."""

    live: Container[str]  # ids of live (and lingering) jobs

    def node_message(self, job_id: str, key: NodeKey, mtype: str, body: dict) -> None: ...

    def node_down(self, key: NodeKey) -> None: ...


@dataclass(eq=False, slots=True)
class NodeEntry:
    """One node FSM plus what only the shell knows: org, sequence, timers.

    Slotted, and `timers` is None unless a timer is armed: 10,000 of these
    live as long as their nodes are online."""

    org: str
    fsm: NodeFSM
    bound_id: bytes = b""  # the routing id `by_routing_id` maps to this entry
    sequence: int = 0
    timers: Optional[dict[str, list]] = None  # name -> _TimerQueue item

    @property
    def key(self) -> NodeKey:
        return (self.org, self.fsm.node)


class NodeRegistry:
    def __init__(
        self,
        *,
        settings: Any,
        session_key_for: Callable[[str, str], Optional[bytes]],
        send_frames: Callable[[bytes, list[bytes]], None],
        drop_counts: Counter,
        clock: Optional[Callable[[], float]] = None,
    ):
        """`clock` is the node FSMs' clock (seconds); by default the loop-lag
        monitor's compensated monotonic clock (see the module docstring)."""
        self.settings = settings
        self.session_key_for = session_key_for
        self.send_frames = send_frames
        self.drop_counts = drop_counts
        self.jobs: Optional[JobSink] = None
        self.entries: dict[NodeKey, NodeEntry] = {}
        self.by_routing_id: dict[bytes, NodeEntry] = {}
        self.interval = settings.heartbeat_interval / 1000.0
        # read once: the pipeline runs for every message (settings change only with a new worker)
        self._max_body_size = settings.max_body_size
        self._max_skew = float(settings.max_message_skew)
        self._check_signature = not (
            getattr(settings, "ignore_signature_check", False) or getattr(settings, "skip_header_validation", False)
        )
        self.rehab_interval = settings.rehab_timer / 1000.0
        self._greenlets: list[gevent.Greenlet] = []
        self._last_drop_log: dict[str, float] = {}
        self._orgs: dict[str, str] = {}  # one string per org name, shared by its entries
        self.lag = LoopLagMonitor(self.interval)
        self.clock: Callable[[], float] = self.lag.now if clock is None else clock
        self.timers = _TimerQueue(self._fire)
        self.received = 0  # every ROUTER message, valid or not
        self.received_by_type: Counter = Counter()  # messages that passed the §4.5 pipeline, by type
        self.sent_by_type: Counter = Counter()
        # FSMs terminated, by reason (`dead`: liveness decayed; `incarnation`: the node
        # restarted): a false down in a benchmark is a `dead` the node did not deserve.
        self.offline_by_reason: Counter = Counter()
        self.heartbeat_seconds = 0.0  # time spent in on_frames for valid heartbeats (perf_counter)
        self.heartbeats_processed = 0

    # --- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self._greenlets = [gevent.spawn(self.lag.run), gevent.spawn(self.timers.run),
                           gevent.spawn(self._scan_loop)]

    def stop(self) -> None:
        gevent.killall(self._greenlets, block=False)
        self._greenlets = []
        for e in list(self.entries.values()):
            self._cancel_all_timers(e)
        self.entries.clear()
        self.by_routing_id.clear()

    # --- queries for the API ---------------------------------------------
    def availability(self, key: NodeKey) -> Optional[str]:
        """None when the node has no FSM (offline), else available|unavailable (S9)."""
        e = self.entries.get(key)
        if e is None:
            return None
        return "available" if e.fsm.available else "unavailable"

    def is_available(self, key: NodeKey) -> bool:
        e = self.entries.get(key)
        return e is not None and e.fsm.available

    def nodes_of_org(self, org: str) -> list[NodeEntry]:
        return [e for (o, _), e in self.entries.items() if o == org]

    # --- receive pipeline --------------------------------------------------
    def _drop(self, reason: str, routing_id: bytes, detail: str = "") -> None:
        self.drop_counts[reason] += 1
        now = time.monotonic()
        # Every dropped message is logged once; a flood of one reason is
        # summarized (at most one line a second) instead of drowning the log.
        last = self._last_drop_log.get(reason, 0.0)
        if now - last >= 1.0:
            self._last_drop_log[reason] = now
            log.warning(
                "dropped command message (reason=%s, connection=%s, dropped so far=%d): %s",
                reason, routing_id.hex(), self.drop_counts[reason], detail,
            )
        else:
            log.debug("dropped command message (reason=%s, connection=%s): %s", reason, routing_id.hex(), detail)

    def _key_for(self, body: dict) -> Optional[bytes]:
        org, node = body.get("org"), body.get("node")
        if not isinstance(org, str) or not isinstance(node, str):
            return None
        return self.session_key_for(org, node)

    def on_frames(self, routing_id: bytes, frames: list[bytes], now: Optional[float] = None) -> None:
        """Entry point for every ROUTER message (the frames after the routing id).

        `now` (wall clock, default `time.time()`) is for the §4.5 timestamp
        check only; the node FSMs get `self.clock()`."""
        self.received += 1
        t0 = time.perf_counter()
        try:
            mtype = self._on_frames(routing_id, frames, time.time() if now is None else now)
        except ProtocolError as e:
            self._drop(e.reason, routing_id, e.detail)
        except Exception as e:  # never raise out of the socket loop
            log.exception("command message from connection %s failed", routing_id.hex())
            self._drop("internal_error", routing_id, repr(e))
        else:
            if mtype == "heartbeat":
                self.heartbeat_seconds += time.perf_counter() - t0
                self.heartbeats_processed += 1

    def _on_frames(self, routing_id: bytes, frames: list[bytes], now: float) -> Optional[str]:
        """The pipeline and the FSM; returns the type of a message that got to its FSM."""
        body = signing.decode_frames(
            frames,
            self._key_for,
            max_body_size=self._max_body_size,
            max_skew=self._max_skew,
            now=now,
            check_signature=self._check_signature,
        )
        org, node = body.get("org"), body.get("node")
        if not isinstance(org, str) or not isinstance(node, str):
            raise ProtocolError("missing_field", "org/node")
        bound = self.by_routing_id.get(routing_id)
        if bound is not None and (bound.fsm.node != node or bound.org != org):
            self._drop("node_mismatch", routing_id, f"connection of {bound.key} sent a message as {(org, node)}")
            return None
        mtype = body.get("type")
        if mtype in _COUNTED_TYPES:
            self.received_by_type[mtype] += 1
        else:
            # Not a pipeline failure: the FSM logs and ignores it (§5.1), but
            # the metrics should show senders of unknown types.
            self.received_by_type["unknown"] += 1
            self.drop_counts["unknown_type"] += 1
        fsm_now = self.clock()
        # the connection's own node (the common case: no key tuple, one lookup fewer);
        # a bound entry is always the live one (`_terminate` and `Rebind` unbind)
        entry = bound if bound is not None else self.entries.get((org, node))
        if entry is None:
            incarnation = body.get("incarnation_id")
            fsm = NodeFSM(
                node,
                incarnation if isinstance(incarnation, str) else None,
                routing_id,
                rehab_timer=self.rehab_interval,
                interval=self.interval,
                decay_window=self.settings.decay_window,
                down_threshold=self.settings.down_threshold,
            )
            org = self._orgs.setdefault(org, org)
            entry = NodeEntry(org, fsm, bound_id=routing_id)
            self.entries[(org, node)] = entry
            self.by_routing_id[routing_id] = entry
            log.info("node %s/%s online (incarnation %s)", org, node, fsm.incarnation_id)
            self._execute(entry, fsm.start(fsm_now))
        live: Container[str] = self.jobs.live if self.jobs is not None else ()
        actions = entry.fsm.message(body, routing_id, fsm_now, live)
        if actions:  # a heartbeat of an idle node has none: no call
            self._execute(entry, actions)
        return mtype

    # --- carrying out node FSM actions ----------------------------------------
    def _execute(self, entry: NodeEntry, actions: list) -> None:
        for a in actions:
            if isinstance(a, A.Send):
                self._send(entry, a.type, a.fields)
            elif isinstance(a, A.ArmTimer):
                self._arm(entry, a.name, a.delay)
            elif isinstance(a, A.CancelTimer):
                self._cancel(entry, a.name)
            elif isinstance(a, A.SetAvailability):
                log.info("node %s/%s %s", entry.org, a.node, "available" if a.available else "unavailable")
            elif isinstance(a, A.Rebind):
                # O(1): a reconnect storm of N nodes must not cost N^2.
                self._unbind(entry)
                self.by_routing_id[a.routing_id] = entry
                entry.bound_id = a.routing_id
                log.info("node %s/%s moved to connection %s", entry.org, a.node, a.routing_id.hex())
            elif isinstance(a, A.ForwardToJob):
                if self.jobs is not None:
                    self.jobs.node_message(a.job_id, entry.key, a.type, a.body)
            elif isinstance(a, A.Terminate):
                self._terminate(entry, a.reason)
            else:
                log.warning("node %s/%s: unexpected action %r", entry.org, entry.fsm.node, a)

    def _unbind(self, entry: NodeEntry) -> None:
        if self.by_routing_id.get(entry.bound_id) is entry:
            del self.by_routing_id[entry.bound_id]

    def _send(self, entry: NodeEntry, mtype: str, fields: dict) -> None:
        """Build, HMAC-sign and route a command-channel message (§4.6, §5.2)."""
        key = self.session_key_for(entry.org, entry.fsm.node)
        if key is None:  # cannot happen for a verified node; be defensive
            log.warning("no session key for %s/%s; %s not sent", entry.org, entry.fsm.node, mtype)
            return
        entry.sequence += 1
        self.sent_by_type[mtype] += 1
        body = {"sequence": entry.sequence, "timestamp": http_date(), "type": mtype}
        body.update(fields)
        raw = _encode_json(body).encode()
        self.send_frames(entry.fsm.routing_id, signing.encode_frames(raw, signing.HMAC_SHA256, key))

    def send_to(self, key: NodeKey, mtype: str, fields: dict) -> bool:
        """Send to a node if it has an FSM (a job's `Send`); False = not delivered."""
        e = self.entries.get(key)
        if e is None:
            return False
        self._send(e, mtype, fields)
        return True

    def rehab(self, key: NodeKey, now: Optional[float] = None) -> None:
        """A job's `Rehab`: reset the node; no-op when it is offline."""
        e = self.entries.get(key)
        if e is None:
            return
        now = self.clock() if now is None else now
        self._execute(e, e.fsm.rehab(now))

    def _arm(self, entry: NodeEntry, name: str, delay: float) -> None:
        self._cancel(entry, name)
        if entry.timers is None:
            entry.timers = {}
        entry.timers[name] = self.timers.arm(delay, entry, name)

    def _cancel(self, entry: NodeEntry, name: str) -> None:
        if entry.timers is None:
            return
        item = entry.timers.pop(name, None)
        if item is not None:
            self.timers.cancel(item)
        if not entry.timers:
            entry.timers = None

    def _cancel_all_timers(self, entry: NodeEntry) -> None:
        for name in list(entry.timers or ()):
            self._cancel(entry, name)

    def _fire(self, entry: NodeEntry, name: str, item: list) -> None:
        if entry.timers is not None and entry.timers.get(name) is item:
            del entry.timers[name]
            if not entry.timers:
                entry.timers = None
        if self.entries.get(entry.key) is not entry:
            return
        try:
            self._execute(entry, entry.fsm.on_timer(name, self.clock()))
        except Exception:
            log.exception("node %s/%s: timer %s failed", entry.org, entry.fsm.node, name)

    def _terminate(self, entry: NodeEntry, reason: str) -> None:
        """The node goes offline: forget it and tell the jobs (`down`)."""
        if self.entries.get(entry.key) is not entry:
            return
        del self.entries[entry.key]
        self._unbind(entry)
        self._cancel_all_timers(entry)
        self.offline_by_reason[reason] += 1
        log.info("node %s/%s offline (%s)", entry.org, entry.fsm.node, reason)
        if self.jobs is not None:
            try:
                self.jobs.node_down(entry.key)
            except Exception:
                log.exception("job notification of node %s/%s down failed", entry.org, entry.fsm.node)

    # --- liveness scanner ----------------------------------------------------
    def scan(self, now: Optional[float] = None) -> int:
        """Terminate every node whose heartbeat average decayed; returns how many died."""
        now = self.clock() if now is None else now
        died = 0
        for e in list(self.entries.values()):
            acts = e.fsm.check(now)
            if acts:
                died += any(isinstance(a, A.Terminate) for a in acts)
                self._execute(e, acts)
        return died

    def _scan_loop(self) -> None:
        period = self.interval * max(1, int(self.settings.detect_offline_nodes_interval))
        while True:
            gevent.sleep(period)
            try:
                self.scan()
            except Exception:
                log.exception("liveness scan failed")
