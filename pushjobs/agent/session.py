"""One node's protocol session: config handshake, sockets, heartbeats, reconfigure.

This is the reusable library part of the agent: it knows nothing about
signals, logging setup, settings files or processes, and keeps no global
state, so the fleet simulator runs hundreds of `NodeSession`s on one
`EventLoop`. Everything here runs on the loop thread.

Life of a session (PROTOCOL.md §2, §3, §6, with the fixes C3, C8, C11):

    waiting --(timer)--> fetching --(config ok)--> connected
       ^                    |                          |
       +--- backoff --------+ (error)                  |
       +--------------- full reconfigure --------------+

* fetching: signed `GET …/pushy/config/NODE?ccpk=…&version=2.0` (ccpk
  URL-escaped with quote(safe='')), session key decrypted with the client
  key, then the node facts PUT (only to a pushjobs server: its config
  carries `"pushjobs": {"node_facts": true}`; behind a Chef server
  `…/nodes/NODE` is Chef's real node, never to be overwritten); in a
  worker thread, never on the loop.
* connected: SUB + DEALER (CurveZMQ); a heartbeat at once and then every
  `interval`; server liveness counters of §6.4; server incarnation tracking.
* Full reconfigure (close both sockets, fetch again, reconnect) on: lifetime
  expiry (jittered 0-10 % early); a new server incarnation (after a random
  delay of up to max(interval, restart_splay)); no valid message on the
  command port within `command_check_timeout` s of wall-clock time after
  connecting (C8, encrypted mode only); the server going offline (C11:
  straight into the reconnect loop instead of waiting for a deadline);
  `request_reconfigure()` (SIGHUP / SIGUSR1 in the agent).
* Failed fetches retry forever with jittered exponential backoff
  (reconnect_min_delay doubling up to reconnect_max_delay, each delay drawn
  in [d/2, d]) so a fleet does not stampede a restarted server.
* The job runner is not touched by any of this: a reconfigure never kills a
  running job; job messages that cannot be sent wait for the next connection.
* Every incoming message is verified (signature, and timestamp in both
  directions: |now - ts| < max_message_skew, C3); anything malformed is
  dropped and logged.

Public extension points (keyword arguments of `NodeSession`; the agent uses
the defaults, the fleet simulator replaces them to run thousands of sessions
in one process; docs/agent.md "Extension points"):

* `context`: what the session's sockets come from (anything with
  `.socket(type)`; default the loop's ZeroMQ context).
* `address_check(config)`: a reason to refuse the server's ZeroMQ addresses
  before connecting (the session then logs it and stops), or None.
* `codec`: a `MessageCodec` that builds outgoing and verifies incoming
  frames (`encode`/`decode`); subclasses may skip work, never checks.
* `heartbeats`: a `HeartbeatScheduler` that calls `session.beat()` every
  interval (default `TimerHeartbeats`: one loop timer per session).
* `http`: the `ChefHTTP` client of the config handshake (default: one per
  session, from the identity and options; a fleet shares one keep-alive pool).
* `server_heartbeat(body)`: a server heartbeat verified elsewhere (a shared
  SUB), handed in instead of arriving on the session's SUB socket.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import zmq

from pushjobs.agent.chef_http import ChefHTTP
from pushjobs.agent.connection import ConfigError, Connection, ServerConfig, parse_config
from pushjobs.agent.loop import EventLoop, TimerHandle
from pushjobs.protocol.errors import ProtocolError
from pushjobs.protocol.framing import HMAC_SHA256, RSA2048_SHA1, parse_header
from pushjobs.protocol.keys import curve_keypair
from pushjobs.protocol.messages import client_message
from pushjobs.protocol.signing import decode_frames, encode_frames
from pushjobs.protocol.timestamps import http_date

log = logging.getLogger(__name__)

WAITING = "waiting"
FETCHING = "fetching"
CONNECTED = "connected"
STOPPED = "stopped"

OUTPUT_MARKER = "\n[... pushjobs: output truncated to fit the message size limit ...]\n"


@dataclass(frozen=True)
class NodeIdentity:
    """Who this session speaks for."""

    node_name: str
    org: str
    chef_server_url: str  # …/organizations/ORG
    private_key: Any  # the client key: signs HTTP, decrypts the session key
    client_name: str = field(default_factory=lambda: socket.gethostname().split(".")[0])


@dataclass
class SessionOptions:
    """Protocol knobs of one session (the agent fills them from its settings)."""

    allow_unencrypted: bool = False
    http_timeout: float = 5.0
    tls_verify: Any = True
    reconnect_min_delay: float = 1.0
    reconnect_max_delay: float = 60.0
    restart_splay: float = 10.0
    command_check_timeout: float = 3.0
    max_body_size: int = 63000  # of what we send
    max_incoming_body: int = 1 << 20  # a commit may carry a 100 kB file, base64
    # "auto" (only to a server whose config has the pushjobs node_facts marker),
    # True/"true" (always: a pushjobs server older than the marker, never a Chef
    # server), False/"false" (never)
    report_facts: Any = "auto"
    proxies: Optional[dict[str, Optional[str]]] = None  # settings' http(s)_proxy/no_proxy

    def wants_facts(self, config: "ServerConfig") -> bool:
        """Whether to PUT node facts to this server (see `report_facts`)."""
        mode = self.report_facts
        if mode is True or mode == "true":
            return True
        if mode is False or mode == "false" or mode is None:
            return False
        return config.node_facts

    @classmethod
    def from_settings(cls, settings: Any) -> "SessionOptions":
        proxies = {"http": settings.http_proxy, "https": settings.https_proxy,
                   "no_proxy": settings.no_proxy}
        return cls(allow_unencrypted=settings.allow_unencrypted, proxies=proxies,
                   http_timeout=settings.http_timeout, tls_verify=settings.tls_verify,
                   reconnect_min_delay=settings.reconnect_min_delay,
                   reconnect_max_delay=settings.reconnect_max_delay,
                   restart_splay=settings.restart_splay,
                   command_check_timeout=settings.command_check_timeout,
                   max_body_size=settings.max_body_size, report_facts=settings.report_facts)


class MessageCodec:
    """Builds a session's outgoing frames and verifies its incoming ones (an extension point).

    Stateless: one instance may serve many sessions. The default is the
    agent's: a validated message object per message (`client_message`),
    signed with the session key (or the client key for a 1.x server), and
    the full receive pipeline (header, size, signature, timestamp skew).
    """

    def encode(self, session: "NodeSession", msg_type: str, fields: dict[str, Any]) -> list[bytes]:
        """`[header, body]` of a client message; takes the next sequence number.
        Raises ProtocolError for fields the message type does not allow."""
        config = session.config
        assert config is not None
        common = {
            "node": session.node, "client": session.identity.client_name, "org": session.identity.org,
            "sequence": session.next_sequence(), "timestamp": http_date(session.wall_clock()),
            "incarnation_id": session.incarnation_id,
        }
        if msg_type in ("succeeded", "failed") and ("stdout" in fields or "stderr" in fields):
            rest = {k: v for k, v in fields.items() if k not in ("stdout", "stderr")}

            def build(out: Optional[str], err: Optional[str]) -> bytes:
                extra = {}
                if out is not None:
                    extra["stdout"] = out
                if err is not None:
                    extra["stderr"] = err
                return client_message(msg_type, **common, **rest, **extra).to_body()

            body = fit_output(build, fields.get("stdout"), fields.get("stderr"),
                              session.options.max_body_size)
        else:
            body = client_message(msg_type, **common, **fields).to_body()
        if config.session_key is not None:
            return encode_frames(body, HMAC_SHA256, config.session_key)
        return encode_frames(body, RSA2048_SHA1, session.identity.private_key)  # 1.x legacy

    def decode(self, session: "NodeSession", frames: list[bytes], channel: str) -> dict[str, Any]:
        """The verified body of `frames` received on `channel` ("heartbeat" or "command");
        raises ProtocolError for anything that is not a valid, fresh, signed message."""
        config = session.config
        assert config is not None
        keys = {RSA2048_SHA1: config.public_key, HMAC_SHA256: config.session_key}
        if len(frames) != 2:
            raise ProtocolError("frame_count", f"{len(frames)} frames, expected 2")
        method = parse_header(frames[0]).method
        return decode_frames(frames, lambda _body: keys.get(method),
                             max_body_size=session.options.max_incoming_body,
                             max_skew=config.max_message_skew, now=session.wall_clock(),
                             methods=(HMAC_SHA256, RSA2048_SHA1))


class HeartbeatScheduler(Protocol):
    """Calls `session.beat()` every `interval` s while the session wants it (an extension point)."""

    def schedule(self, session: "NodeSession", delay: float) -> None:
        """Call `session.beat()` once, `delay` s from now (replacing an earlier schedule)."""

    def cancel(self, session: "NodeSession") -> None:
        """Forget the session's pending beat (unknown sessions are ignored)."""


class TimerHeartbeats:
    """The default `HeartbeatScheduler`: one loop timer per session."""

    def __init__(self) -> None:
        self._timers: dict["NodeSession", TimerHandle] = {}

    def schedule(self, session: "NodeSession", delay: float) -> None:
        old = self._timers.pop(session, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(session, None)
            session.beat()

        self._timers[session] = session.loop.call_later(delay, fire)

    def cancel(self, session: "NodeSession") -> None:
        t = self._timers.pop(session, None)
        if t is not None:
            t.cancel()


DEFAULT_CODEC = MessageCodec()


class JobHandler(Protocol):
    """What a session delegates job messages to (the agent's runner, or a simulator's)."""

    def attach(self, session: "NodeSession") -> None:
        """Called once; the handler replies through `session.send(type, fields)`."""

    def heartbeat_fields(self) -> dict[str, Any]:
        """`job_state` and `job_id` for the next heartbeat."""

    def handle(self, msg_type: str, body: dict[str, Any], now: float) -> None:
        """A verified `commit`, `run` or `abort` body."""


FETCH_LOG_INTERVAL = 60.0  # s between two warnings about the same config-fetch failure
RESEND_DELAY = 0.1  # s before a job message the full send queue refused is tried again


def _one_line(exc: Optional[BaseException]) -> str:
    """An exception as one log line, without URL query strings (the long `?ccpk=`)."""
    text = re.sub(r"\?ccpk=[^\s'\")]*", "", str(exc))
    return " ".join(text.split())


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random) -> float:
    """Jittered exponential backoff: d = min(high, low * 2**(attempt-1)), drawn in [d/2, d]."""
    d = min(high, low * (2 ** max(0, attempt - 1)))
    return d / 2 + rng.random() * d / 2


def fit_output(build: Callable[[Optional[str], Optional[str]], bytes], stdout: Optional[str],
               stderr: Optional[str], limit: int) -> bytes:
    """The completion body with stdout/stderr cut until it fits `limit` (C7: never drop it).

    The stream taking more room once JSON-escaped is shortened first, keeping
    its head and its tail with a marker in between; escaping can expand text
    up to 6x, hence measuring the encoded size and looping.
    """
    body = build(stdout, stderr)
    for _ in range(40):
        if len(body) <= limit:
            return body
        excess = len(body) - limit + 2 * len(OUTPUT_MARKER) + 64
        sizes = {name: _encoded_len(text) for name, text in (("out", stdout), ("err", stderr)) if text}
        if not sizes:
            break
        name = max(sizes, key=lambda k: sizes[k])
        text = stdout if name == "out" else stderr
        assert text is not None
        ratio = sizes[name] / max(1, len(text))
        cut = _cut(text, int(excess / ratio) + 1)
        if name == "out":
            stdout = cut
        else:
            stderr = cut
        body = build(stdout, stderr)
    if len(body) > limit:  # pathological: keep the result, drop the output
        body = build("" if stdout is not None else None, OUTPUT_MARKER if stderr is not None else None)
    return body


def _encoded_len(text: str) -> int:
    return len(json.dumps(text).encode())


def _cut(text: str, remove: int) -> str:
    """Remove about `remove` characters from the middle of `text`, marking the cut."""
    if OUTPUT_MARKER in text:
        head, tail = text.split(OUTPUT_MARKER, 1)
    else:
        head, tail = text[: len(text) // 2], text[len(text) // 2:]
    total = len(head) + len(tail)
    keep = max(0, total - max(remove, 1))
    head_keep = min(len(head), keep // 2)
    tail_keep = min(len(tail), keep - head_keep)
    head_keep = min(len(head), keep - tail_keep)
    return head[:head_keep] + OUTPUT_MARKER + (tail[len(tail) - tail_keep:] if tail_keep else "")


class NodeSession:
    """The protocol conversation of one node with the push-jobs server."""

    def __init__(self, loop: EventLoop, identity: NodeIdentity, handler: JobHandler,
                 options: Optional[SessionOptions] = None, *,
                 facts: Optional[Callable[[], dict]] = None,
                 rng: Optional[random.Random] = None,
                 wall_clock: Callable[[], float] = time.time,
                 context: Any = None,
                 address_check: Optional[Callable[[ServerConfig], Optional[str]]] = None,
                 codec: Optional[MessageCodec] = None,
                 heartbeats: Optional[HeartbeatScheduler] = None,
                 http: Optional[ChefHTTP] = None):
        self.loop = loop
        self.context = context  # None: the loop's context, looked up when connecting
        self.address_check = address_check
        self.codec = codec if codec is not None else DEFAULT_CODEC
        self.heartbeats: HeartbeatScheduler = heartbeats if heartbeats is not None else TimerHeartbeats()
        self.identity = identity
        self.handler = handler
        self.options = options or SessionOptions()
        self.facts = facts
        self.rng = rng or random.Random()
        self.wall_clock = wall_clock
        self.node = identity.node_name
        self.incarnation_id = str(uuid.uuid4())  # once per session (§6.5)
        self.curve_keys = curve_keypair()  # once per session (§2.5)
        self.phase = WAITING
        self.config: Optional[ServerConfig] = None
        self.server_incarnation: Optional[str] = None
        self.online = True
        self.stats: dict[str, int] = {
            "config_fetches": 0, "config_failures": 0, "connects": 0, "heartbeats_sent": 0,
            "server_heartbeats": 0, "messages_received": 0, "dropped": 0, "reconfigures": 0,
            "send_failures": 0,
        }
        self._conn: Optional[Connection] = None
        self._timers: dict[str, TimerHandle] = {}
        self._attempt = 0
        self._generation = 0
        self._fetch_logged_reason: Optional[str] = None  # rate limit of fetch-failure warnings
        self._fetch_logged_at = 0.0
        self._sequence = 0
        self._offline_counter = 0
        self._online_counter = 0
        self._got_command_message = False
        # S6: encrypted connections that heard the server's heartbeats but got no
        # command message (a CURVE handshake that can never succeed)
        self._curve_failures = 0
        self._plaintext_fallback = False
        self._hb_at_connect = 0
        self._refreshing = False  # a fetch in flight while the current connection stays up
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._send_failures = 0
        self._http: Optional[ChefHTTP] = http  # None: built on the first fetch
        self._http_lock = threading.Lock()  # the config GET and the facts PUT share a Session
        self._facts_unsupported: Optional[str] = None  # server incarnation that said 404/405
        self._fetch_due = 0.0
        self._drop_window = -1e9
        self._drop_logged = 0
        self._watch: Any = None  # SUB kept open while waiting to reconnect (see _open_watch)
        self.log = logging.LoggerAdapter(log, {"node": self.node})
        handler.attach(self)

    # --- public API (loop thread) -------------------------------------------------
    def start(self, delay: float = 0.0) -> None:
        self._schedule_fetch(delay)

    def stop(self) -> None:
        """Close the sockets and forget all timers; the handler is left alone."""
        self.phase = STOPPED
        self._generation += 1
        self._disconnect()
        self._close_watch()
        self.heartbeats.cancel(self)
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        if self._http is not None:
            self._http.close()
            self._http = None

    @property
    def connected(self) -> bool:
        return self.phase == CONNECTED

    @property
    def command_channel_ok(self) -> bool:
        """True once a valid message arrived on the command port since connecting."""
        return self.connected and self._got_command_message

    def request_reconfigure(self, reason: str = "requested") -> None:
        """Full reconfigure now (SIGHUP/SIGUSR1); no-op while a fetch is in flight."""
        if self.phase in (FETCHING, STOPPED) or self._refreshing:
            return
        self.log.info("[%s] full reconfigure: %s", self.node, reason)
        if self.phase == CONNECTED:
            self._refresh(reason)
        else:
            self._reconnect(reason, delay=0.0)

    def send(self, msg_type: str, fields: dict[str, Any]) -> bool:
        """Sign and send a client message; job messages wait when we are not connected."""
        if self._conn is None or self.phase != CONNECTED or self.config is None:
            if msg_type != "heartbeat":
                self._pending.append((msg_type, dict(fields)))
                self.log.info("[%s] not connected: %s for job %s will be sent after reconnecting",
                              self.node, msg_type, fields.get("job_id"))
            return False
        if self._pending and msg_type != "heartbeat":
            # Job messages leave in the order they were made: behind the ones waiting.
            self._pending.append((msg_type, dict(fields)))
            return self._flush_pending()
        try:
            frames = self._encode(msg_type, fields)
        except ProtocolError as exc:
            self.log.error("[%s] cannot build %s message: %s", self.node, msg_type, exc)
            return False
        sent = self._conn.send(frames)
        self.loop.note_send(self._conn.dealer)
        if sent:
            self._send_failures = 0
            if msg_type == "heartbeat":
                self.stats["heartbeats_sent"] += 1
            else:
                self.log.info("[%s] sent %s for job %s", self.node, msg_type, fields.get("job_id"))
            return True
        self.stats["send_failures"] += 1
        self._send_failures += 1
        if msg_type != "heartbeat":
            self._pending.append((msg_type, dict(fields)))
        self.log.warning("[%s] send queue full, %s not sent (%d in a row)", self.node, msg_type,
                         self._send_failures)
        if self._send_failures >= 3:
            self._reconnect("the command socket does not take messages", backoff=True)
        elif msg_type != "heartbeat":
            # A job message must not wait for a reconnect that may never come (the
            # heartbeats that follow may well get through): retry it shortly.
            self._schedule("resend", RESEND_DELAY, self._flush_pending)
        return False

    def _flush_pending(self) -> bool:
        """Send the job messages held back (a full queue, or made while disconnected)
        in order; stop at the first that does not go (it stays first in line)."""
        pending, self._pending = self._pending, []
        for i, (msg_type, fields) in enumerate(pending):
            if not self.send(msg_type, fields):  # a failure re-queues it (and schedules a retry)
                self._pending.extend(pending[i + 1:])
                return False
        return True

    def server_heartbeat(self, body: dict[str, Any]) -> None:
        """A server heartbeat that reached this node other than through its own SUB socket
        (an extension point: a fleet verifies what its one shared SUB receives once, through
        a session's codec, and hands the verified body to every connected session). Same
        effect as one arriving on the SUB: liveness counters, incarnation change; ignored
        unless connected. The caller vouches for the signature; `body` is only read."""
        if self.phase == CONNECTED and self.config is not None and body.get("type") == "heartbeat":
            self._server_heartbeat(body)

    def next_sequence(self) -> int:
        """The sequence number of the next message sent (for codecs)."""
        self._sequence += 1
        return self._sequence

    # --- internals: timers ---------------------------------------------------------
    def _schedule(self, name: str, delay: float, fn: Callable[[], None]) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        self._timers[name] = self.loop.call_later(delay, fn)

    def _cancel(self, *names: str) -> None:
        for name in names:
            t = self._timers.pop(name, None)
            if t is not None:
                t.cancel()

    def _schedule_fetch(self, delay: float) -> None:
        self._fetch_due = self.loop.clock() + delay
        self._schedule("fetch", delay, self._begin_fetch)

    # --- watching for the server's return ------------------------------------------
    def _open_watch(self) -> None:
        """While waiting to reconnect, keep listening to the last heartbeat address.

        A server that comes back announces itself with a heartbeat carrying a
        new incarnation: reconnect then (after the restart splay) instead of
        waiting out a long backoff delay. The same incarnation (a network
        problem, a failed handshake) leaves the backoff alone.
        """
        if self._watch is not None or self.config is None:
            return
        sock = self._socket_context().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            sock.connect(self.config.out_addr)
        except zmq.ZMQError:  # an address libzmq refuses: nothing to watch
            sock.close(linger=0)
            return
        self._watch = sock
        self.loop.add_reader(sock, self._on_watch)

    def _socket_context(self) -> Any:
        return self.context if self.context is not None else self.loop.context

    def _close_watch(self) -> None:
        if self._watch is not None:
            self.loop.remove_reader(self._watch)
            self._watch.close(linger=0)
            self._watch = None

    def _on_watch(self) -> None:
        sock, config = self._watch, self.config
        if sock is None or config is None:
            return
        for frames in Connection.drain(sock):
            body = self._decode(frames, "heartbeat")
            if body is None or body["type"] != "heartbeat" or self.phase != WAITING:
                continue
            inc = body.get("incarnation_id")
            if isinstance(inc, str) and inc != self.server_incarnation:
                delay = self.rng.random() * max(config.interval, self.options.restart_splay)
                if self._fetch_due - self.loop.clock() > delay:
                    self.log.info("[%s] the server is back (incarnation %s); reconnecting in "
                                  "%.1fs", self.node, inc, delay)
                    self._attempt = 0
                    self._schedule_fetch(delay)
                self._close_watch()
                return

    # --- config handshake ------------------------------------------------------------
    def _begin_fetch(self) -> None:
        if self.phase == STOPPED:
            return
        self.phase = FETCHING
        self.stats["config_fetches"] += 1
        generation = self._generation
        self.loop.run_in_executor(self._fetch, lambda result, exc: self._fetched(generation, result, exc))

    def _fetch(self) -> ServerConfig:
        """Worker thread: the signed config GET, then the node facts PUT (pushjobs servers only).

        Facts go before connecting so that a node is searchable by the time it
        is available. The PUT adds no heartbeat gap to planned reconfigures:
        those keep the old connection up meanwhile (`_refresh`).
        """
        ident, opts = self.identity, self.options
        with self._http_lock:
            if self._http is None:
                self._http = ChefHTTP(ident.chef_server_url, ident.node_name, ident.private_key,
                                      verify=opts.tls_verify, timeout=opts.http_timeout,
                                      proxies=opts.proxies)
            self.log.info("[%s] retrieving configuration from %s/pushy/config/%s", self.node,
                          ident.chef_server_url.rstrip("/"), ident.node_name)
            doc = self._http.get_json(f"pushy/config/{ident.node_name}",
                                      {"ccpk": self.curve_keys[0], "version": "2.0"})
            config = parse_config(doc, ident.private_key)
            if (self.facts is not None and opts.wants_facts(config)
                    and self._facts_unsupported != config.incarnation_id):
                from pushjobs.agent.facts import report_facts

                try:
                    if report_facts(self._http, ident.node_name, self.facts()) == "unsupported":
                        # an older server: do not ask again until it restarts (maybe upgraded)
                        self._facts_unsupported = config.incarnation_id
                except Exception:  # facts are best effort; never block the handshake
                    self.log.exception("[%s] building node facts failed", self.node)
        return config

    def _fetched(self, generation: int, config: Optional[ServerConfig], exc: Optional[BaseException]) -> None:
        if generation != self._generation or self.phase == STOPPED:
            return
        if exc is None and config is not None and not config.encrypted and not self.options.allow_unencrypted:
            exc = ConfigError("the server sent no curve_public_key (a 1.x server, or encryption "
                              "disabled); set allow_unencrypted to connect without encryption")
        if exc is None and config is not None:
            try:
                self._refreshing = False
                self._connect(config)
                return
            except zmq.ZMQError as zexc:  # an address libzmq refuses ("tcp://bad host:1")
                self._disconnect()
                self._refreshing = False
                self.phase = FETCHING
                exc = ConfigError(f"cannot connect to {config.out_addr} / {config.command_addr}: "
                                  f"{zexc}")
        if exc is not None or config is None:
            self.stats["config_failures"] += 1
            self._attempt += 1
            delay = backoff_delay(self._attempt, self.options.reconnect_min_delay,
                                  self.options.reconnect_max_delay, self.rng)
            status = getattr(exc, "status", None)
            reason = _one_line(exc)
            # the reason is always worth a warning, but not every retry: a new
            # reason logs at once, the same one again at most once a minute
            now = self.loop.clock()
            loud = (reason != self._fetch_logged_reason
                    or now - self._fetch_logged_at >= FETCH_LOG_INTERVAL)
            if loud:
                self._fetch_logged_reason, self._fetch_logged_at = reason, now
            if status in (401, 403):
                # the original client exits on this; we keep retrying (a client being
                # created, a clock being fixed), loudly, since it needs a person
                level = logging.ERROR if loud else logging.DEBUG
                hint = (" (check node_name, client_key and the clock: the server refused "
                        "this client)")
            else:
                level = logging.WARNING if loud else logging.DEBUG
                hint = ""
            self.log.log(level, "[%s] could not get the push jobs config (attempt %d): %s%s; "
                         "retrying in %.1fs", self.node, self._attempt, reason, hint, delay)
            if self._refreshing and self.phase == CONNECTED:
                # the current connection still works: keep it, try the refresh again later
                self._refreshing = False
                self._schedule("refresh", delay, lambda: self._refresh("retrying the reconfigure"))
                return
            self.phase = WAITING
            self._schedule_fetch(delay)

    def _refresh(self, reason: str) -> None:
        """Full reconfigure that keeps the current connection until the new config is in.

        For the planned reconfigures (lifetime, SIGHUP, SIGUSR1): heartbeats go
        on during the fetch, and the sockets are swapped only once it
        succeeded, so the server's liveness average never sees a gap (with
        short heartbeat intervals a slow fetch got the node declared dead).
        """
        if self.phase != CONNECTED:
            self._reconnect(reason, delay=0.0)
            return
        if self._refreshing:
            return
        self.stats["reconfigures"] += 1
        self.stats["config_fetches"] += 1
        self._generation += 1  # a fetch in flight is now stale
        self._refreshing = True
        self.log.info("[%s] reconfiguring (the connection stays up until the new config is "
                      "in): %s", self.node, reason)
        generation = self._generation
        self.loop.run_in_executor(self._fetch, lambda result, exc: self._fetched(generation, result, exc))

    # --- connection -------------------------------------------------------------------
    def _connect(self, config: ServerConfig) -> None:
        if self.address_check is not None:
            refusal = self.address_check(config)
            if refusal:
                self.log.error("[%s] not connecting to %s / %s: %s", self.node, config.out_addr,
                               config.command_addr, refusal)
                self.stop()
                return
        self._disconnect()
        self._close_watch()
        self._plaintext_fallback = False
        if config.encrypted and self._curve_failures >= 2:
            if self.options.allow_unencrypted:
                self.log.warning(
                    "[%s] %d encrypted connections got no message on the command port while "
                    "the server's heartbeats arrive: it advertises a curve key but probably runs "
                    "with disable_curve_encryption (the original server's quirk S6); "
                    "allow_unencrypted is set, connecting WITHOUT encryption", self.node,
                    self._curve_failures)
                config = dataclasses.replace(config, curve_public_key=None)
                self._plaintext_fallback = True
            elif self._curve_failures == 2:
                self.log.error(
                    "[%s] encrypted connections get no message on the command port while the "
                    "server's heartbeats arrive: if the server runs with disable_curve_encryption "
                    "(it still advertises a curve key), set allow_unencrypted", self.node)
        self.config = config
        self._hb_at_connect = self.stats["server_heartbeats"]
        self._conn = Connection(self._socket_context(), config,
                                self.curve_keys if config.encrypted else None)
        self.loop.add_reader(self._conn.sub, self._on_sub)
        self.loop.add_reader(self._conn.dealer, self._on_dealer)
        self.phase = CONNECTED
        self.stats["connects"] += 1
        self._attempt = 0
        self.server_incarnation = config.incarnation_id
        self.online = True
        self._offline_counter = self._online_counter = 0
        self._sequence = 0
        self._send_failures = 0
        self._got_command_message = False
        self.log.info("[%s] connected: heartbeat %s, command %s (%s), interval %gs, server "
                      "incarnation %s", self.node, config.out_addr, config.command_addr,
                      "CurveZMQ" if config.encrypted else "UNENCRYPTED legacy mode",
                      config.interval, config.incarnation_id)
        if config.encrypted or self._plaintext_fallback:
            self._schedule("command_check", self.options.command_check_timeout, self._command_check)
        lifetime = config.lifetime * (1 - self.rng.random() * 0.10)
        self._schedule("lifetime", lifetime,
                       lambda: self._refresh(f"config lifetime ({config.lifetime:g}s) expired"))
        self._heartbeat_tick()
        self._flush_pending()

    def _disconnect(self) -> None:
        self.heartbeats.cancel(self)
        self._cancel("command_check", "lifetime", "reconfigure", "refresh")
        if self._conn is not None:
            self.loop.remove_reader(self._conn.sub)
            self.loop.remove_reader(self._conn.dealer)
            self._conn.close()
            self._conn = None

    def _reconnect(self, reason: str, *, delay: Optional[float] = None, backoff: bool = False) -> None:
        """Full reconfigure: drop the sockets, fetch the config again, reconnect."""
        if self.phase == STOPPED:
            return
        self.stats["reconfigures"] += 1
        self._disconnect()
        self._generation += 1  # a fetch in flight is now stale
        self._refreshing = False
        if backoff:
            self._attempt += 1
            delay = backoff_delay(self._attempt, self.options.reconnect_min_delay,
                                  self.options.reconnect_max_delay, self.rng)
        delay = 0.0 if delay is None else delay
        self.log.info("[%s] reconnecting in %.1fs: %s", self.node, delay, reason)
        self.phase = WAITING
        self._schedule_fetch(delay)
        self._open_watch()

    # --- heartbeats and server liveness (§6.2, §6.4) -------------------------------------
    def beat(self) -> None:
        """One heartbeat interval (called by the `HeartbeatScheduler`): server liveness
        (§6.4), our heartbeat, and the next beat scheduled while connected."""
        self._heartbeat_tick()

    def _heartbeat_tick(self) -> None:
        config = self.config
        if self.phase != CONNECTED or config is None:
            return
        if self.online:
            if self._offline_counter > config.offline_threshold:
                self.online = False
                self._online_counter = 0
                self.log.warning("[%s] no heartbeat from the server for %d intervals: server "
                                 "offline", self.node, self._offline_counter)
                self._reconnect("server offline", backoff=True)  # C11
                return
            self._offline_counter += 1
        if self.online:
            fields = dict(self.handler.heartbeat_fields())
            fields.setdefault("job_state", "idle")
            fields.setdefault("job_id", None)
            self.send("heartbeat", fields)
        if self.phase == CONNECTED:  # a failed send may have reconnected us
            self.heartbeats.schedule(self, config.interval)

    def _server_heartbeat(self, body: dict[str, Any]) -> None:
        config = self.config
        assert config is not None
        self.stats["server_heartbeats"] += 1
        inc = body.get("incarnation_id")
        if not isinstance(inc, str) or not isinstance(body.get("sequence"), int):
            self.log.warning("[%s] server heartbeat without incarnation_id or sequence", self.node)
        elif inc != self.server_incarnation:
            if self.server_incarnation is None:
                self.server_incarnation = inc
            else:
                old, self.server_incarnation = self.server_incarnation, inc
                delay = self.rng.random() * max(config.interval, self.options.restart_splay)
                self.log.info("[%s] server restarted (incarnation %s -> %s); reconfiguring in "
                              "%.1fs", self.node, old, inc, delay)
                self._schedule("reconfigure", delay,
                               lambda: self._reconnect("server incarnation changed", delay=0.0))
        self._offline_counter = 0
        if not self.online and self._online_counter > config.online_threshold:
            self.online = True
            self.log.info("[%s] server online again", self.node)
        else:
            self._online_counter += 1

    def _command_check(self) -> None:
        if self.phase == CONNECTED and not self._got_command_message:
            if self._plaintext_fallback:
                self._curve_failures = 0  # plaintext did not work either: back to CURVE
            elif self.stats["server_heartbeats"] > self._hb_at_connect:
                self._curve_failures += 1  # the server is there; the handshake is not
            self.log.warning("[%s] no messages received on the command port within %gs. Possible "
                             "encryption problem?", self.node, self.options.command_check_timeout)
            self._reconnect("no message on the command port", backoff=True)

    # --- receiving ----------------------------------------------------------------
    def _decode(self, frames: list[bytes], channel: str) -> Optional[dict[str, Any]]:
        try:
            body = self.codec.decode(self, frames, channel)
        except ProtocolError as exc:
            self.stats["dropped"] += 1
            self._log_drop("[%s] dropped a message on the %s socket: %s", self.node, channel, exc)
            return None
        if not isinstance(body.get("type"), str):
            self.stats["dropped"] += 1
            self._log_drop("[%s] dropped a message without type on the %s socket", self.node, channel)
            return None
        return body

    def _log_drop(self, fmt: str, *args: Any) -> None:
        """Warn about dropped input, at most 10 lines a minute (then debug): a flood
        of garbage must not fill the disk."""
        now = self.loop.clock()
        if now - self._drop_window > 60.0:
            self._drop_window, self._drop_logged = now, 0
        self._drop_logged += 1
        if self._drop_logged <= 10:
            self.log.warning(fmt, *args)
            if self._drop_logged == 10:
                self.log.warning("[%s] more dropped messages in this minute are logged at debug "
                                 "level only", self.node)
        else:
            self.log.debug(fmt, *args)

    def _on_sub(self) -> None:
        conn = self._conn
        if conn is None:
            return
        for frames in conn.drain(conn.sub):
            if self._conn is not conn:
                return
            body = self._decode(frames, "heartbeat")
            if body is None:
                continue
            if body["type"] == "heartbeat":
                self._server_heartbeat(body)
            else:
                self.log.warning("[%s] ignoring %r on the heartbeat socket", self.node, body["type"])

    def _on_dealer(self) -> None:
        conn = self._conn
        if conn is None:
            return
        for frames in conn.drain(conn.dealer):
            if self._conn is not conn:
                return  # a handler reconnected us; the rest belongs to the old socket
            body = self._decode(frames, "command")
            if body is None:
                continue
            self.stats["messages_received"] += 1
            if not self._got_command_message:
                self._got_command_message = True
                if not self._plaintext_fallback:
                    self._curve_failures = 0
                self._cancel("command_check")
            msg_type = body["type"]
            if msg_type == "heartbeat":
                self._server_heartbeat(body)
            elif msg_type == "ack":
                self.log.debug("[%s] ack: command channel is up", self.node)
            elif msg_type in ("commit", "run", "abort"):
                self.log.info("[%s] received %s%s", self.node, msg_type,
                              f" for job {body.get('job_id')}" if body.get("job_id") else "")
                self.handler.handle(msg_type, body, self.loop.clock())
            else:
                self.stats["dropped"] += 1
                self._log_drop("[%s] ignoring unknown message type %r", self.node, msg_type[:40])

    # --- encoding --------------------------------------------------------------------
    def _encode(self, msg_type: str, fields: dict[str, Any]) -> list[bytes]:
        return self.codec.encode(self, msg_type, fields)
