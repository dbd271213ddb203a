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
  (sign with the session key, route by the FSM's routing id), timers as
  gevent greenlets, `Rebind`, `ForwardToJob`, `Terminate` (tell the job
  coordinator: `down`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Container, Optional, Protocol

import gevent

from pushjobs.core import actions as A
from pushjobs.core.node import CLIENT_MESSAGE_TYPES, NodeFSM
from pushjobs.protocol import signing
from pushjobs.protocol.errors import ProtocolError
from pushjobs.protocol.timestamps import http_date

log = logging.getLogger(__name__)

NodeKey = tuple[str, str]  # (org name, node name)


class JobSink(Protocol):
    """What the registry needs from the job coordinator."""

    live: Container[str]  # ids of live (and lingering) jobs

    def node_message(self, job_id: str, key: NodeKey, mtype: str, body: dict) -> None: ...

    def node_down(self, key: NodeKey) -> None: ...


@dataclass(eq=False)
class NodeEntry:
    """One node FSM plus what only the shell knows: org, sequence, timers."""

    org: str
    fsm: NodeFSM
    bound_id: bytes = b""  # the routing id `by_routing_id` maps to this entry
    sequence: int = 0
    timers: dict[str, gevent.Greenlet] = field(default_factory=dict)

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
    ):
        self.settings = settings
        self.session_key_for = session_key_for
        self.send_frames = send_frames
        self.drop_counts = drop_counts
        self.jobs: Optional[JobSink] = None
        self.entries: dict[NodeKey, NodeEntry] = {}
        self.by_routing_id: dict[bytes, NodeEntry] = {}
        self.interval = settings.heartbeat_interval / 1000.0
        self.rehab_interval = settings.rehab_timer / 1000.0
        self._scanner: Optional[gevent.Greenlet] = None
        self._last_drop_log: dict[str, float] = {}
        self.received = 0

    # --- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self._scanner = gevent.spawn(self._scan_loop)

    def stop(self) -> None:
        if self._scanner is not None:
            self._scanner.kill(block=False)
            self._scanner = None
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
        """Entry point for every ROUTER message (the frames after the routing id)."""
        self.received += 1
        try:
            self._on_frames(routing_id, frames, time.time() if now is None else now)
        except ProtocolError as e:
            self._drop(e.reason, routing_id, e.detail)
        except Exception as e:  # never raise out of the socket loop
            log.exception("command message from connection %s failed", routing_id.hex())
            self._drop("internal_error", routing_id, repr(e))

    def _on_frames(self, routing_id: bytes, frames: list[bytes], now: float) -> None:
        body = signing.decode_frames(
            frames,
            self._key_for,
            max_body_size=self.settings.max_body_size,
            max_skew=float(self.settings.max_message_skew),
            now=now,
            check_signature=not (
                getattr(self.settings, "ignore_signature_check", False)
                or getattr(self.settings, "skip_header_validation", False)
            ),
        )
        org, node = body.get("org"), body.get("node")
        if not isinstance(org, str) or not isinstance(node, str):
            raise ProtocolError("missing_field", "org/node")
        key = (org, node)
        bound = self.by_routing_id.get(routing_id)
        if bound is not None and bound.key != key:
            self._drop("node_mismatch", routing_id, f"connection of {bound.key} sent a message as {key}")
            return
        if body.get("type") not in CLIENT_MESSAGE_TYPES:
            # Not a pipeline failure: the FSM logs and ignores it (§5.1), but
            # the metrics should show senders of unknown types.
            self.drop_counts["unknown_type"] += 1
        entry = self.entries.get(key)
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
            entry = NodeEntry(org, fsm, bound_id=routing_id)
            self.entries[key] = entry
            self.by_routing_id[routing_id] = entry
            log.info("node %s/%s online (incarnation %s)", org, node, fsm.incarnation_id)
            self._execute(entry, fsm.start(now), now)
        live: Container[str] = self.jobs.live if self.jobs is not None else ()
        self._execute(entry, entry.fsm.message(body, routing_id, now, live), now)

    # --- carrying out node FSM actions ----------------------------------------
    def _execute(self, entry: NodeEntry, actions: list, now: float) -> None:
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
        body = {"sequence": entry.sequence, "timestamp": http_date(), "type": mtype}
        body.update(fields)
        raw = json.dumps(body, separators=(",", ":")).encode()
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
        now = time.time() if now is None else now
        self._execute(e, e.fsm.rehab(now), now)

    def _arm(self, entry: NodeEntry, name: str, delay: float) -> None:
        self._cancel(entry, name)
        entry.timers[name] = gevent.spawn_later(max(0.0, delay), self._fire, entry, name)

    def _cancel(self, entry: NodeEntry, name: str) -> None:
        g = entry.timers.pop(name, None)
        if g is not None and g is not gevent.getcurrent():
            g.kill(block=False)

    def _cancel_all_timers(self, entry: NodeEntry) -> None:
        for name in list(entry.timers):
            self._cancel(entry, name)

    def _fire(self, entry: NodeEntry, name: str) -> None:
        if entry.timers.get(name) is gevent.getcurrent():
            del entry.timers[name]
        if self.entries.get(entry.key) is not entry:
            return
        now = time.time()
        try:
            self._execute(entry, entry.fsm.on_timer(name, now), now)
        except Exception:
            log.exception("node %s/%s: timer %s failed", entry.org, entry.fsm.node, name)

    def _terminate(self, entry: NodeEntry, reason: str) -> None:
        """The node goes offline: forget it and tell the jobs (`down`)."""
        if self.entries.get(entry.key) is not entry:
            return
        del self.entries[entry.key]
        self._unbind(entry)
        self._cancel_all_timers(entry)
        log.info("node %s/%s offline (%s)", entry.org, entry.fsm.node, reason)
        if self.jobs is not None:
            try:
                self.jobs.node_down(entry.key)
            except Exception:
                log.exception("job notification of node %s/%s down failed", entry.org, entry.fsm.node)

    # --- liveness scanner ----------------------------------------------------
    def scan(self, now: Optional[float] = None) -> int:
        """Terminate every node whose heartbeat average decayed; returns how many died."""
        now = time.time() if now is None else now
        died = 0
        for e in list(self.entries.values()):
            acts = e.fsm.check(now)
            if acts:
                died += any(isinstance(a, A.Terminate) for a in acts)
                self._execute(e, acts, now)
        return died

    def _scan_loop(self) -> None:
        period = self.interval * max(1, int(self.settings.detect_offline_nodes_interval))
        while True:
            gevent.sleep(period)
            try:
                self.scan()
            except Exception:
                log.exception("liveness scan failed")
