"""A protocol-level, scripted test node: what a push-jobs client does on the wire, nothing more.

`FakeNode` performs the real config handshake (Chef-signed GET
`/organizations/ORG/pushy/config/NODE?ccpk=…`, RSA-decrypts the session key),
opens a real SUB socket on the heartbeat address and a real DEALER with
CurveZMQ on the command address, HMAC-signs everything it sends and
verifies everything it receives (RSA for server heartbeats, HMAC for
commands). It has no job runner: tests script its answers.

    node = FakeNode(server, server.create_client("web1", org="acme"))
    node.start()                       # config, sockets, first heartbeat
    node.wait_available(http)          # abort → aborted → idle (node_states says available)
    node.commit_reply = "nack"         # answer the next commits with nack_commit
    msg = node.wait_for("commit")      # a received, verified command (dict)

Scripting (attributes, change them any time):

* `auto_abort` (True): answer every `abort` with `aborted` (carrying the
  current job id) and go idle.
* `commit_reply` ("ack" | "nack" | None): answer to `commit`; None = silence.
  A busy node (committed/running) always nacks, as the reference does.
* `run_reply` ("ack" | "nack" | None): answer to `run` of the committed job.
* `run_result` (("succeeded"|"failed", stdout, stderr) | None): sent
  `run_delay` seconds after `ack_run`; None = the "process" never ends.
* `heartbeats` (True): send a heartbeat every config `interval` seconds.
* `auto_reconfigure` (True): when the server heartbeat carries a new
  incarnation id, fetch the config again and reopen both sockets (what the
  reference client does, §2.5), keeping its curve keys and incarnation.

Raw access for negative tests: `body(type, **fields)` builds a client body,
`sign(body_bytes, key=None)` the frames, `send_frames([...])` sends any frame
list as is. `commands` is every verified command received (in order),
`server_heartbeats` the verified server heartbeats, `rejected` what failed
verification.

Everything socket-related happens in one I/O thread (ZeroMQ sockets are not
thread-safe); the test thread talks to it through queues.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

import zmq

from pushjobs.protocol import signing
from pushjobs.protocol.errors import ProtocolError
from pushjobs.protocol.keys import curve_keypair, load_public_key, rsa_decrypt
from pushjobs.protocol.timestamps import http_date

log = logging.getLogger(__name__)

POLL_MS = 10


@dataclass
class Received:
    type: str
    body: dict
    at: float


class FakeNodeError(RuntimeError):
    pass


class FakeNode:
    def __init__(self, server: Any, principal: Any, *, name: Optional[str] = None,
                 org: Optional[str] = None, curve: bool = True,
                 heartbeat_interval: Optional[float] = None):
        self.server = server
        self.principal = principal
        self.name = name or principal.name
        self.org = org or principal.org
        self.curve = curve
        self.heartbeat_interval_override = heartbeat_interval
        self.curve_public, self.curve_secret = curve_keypair()
        self.incarnation_id = str(uuid.uuid4())
        self.config: dict = {}
        self.session_key: bytes = b""
        self.server_public_key = None
        # script
        self.auto_abort = True
        self.commit_reply: Optional[str] = "ack"
        self.run_reply: Optional[str] = "ack"
        self.run_result: Optional[tuple[str, str, str]] = ("succeeded", "", "")
        self.run_delay = 0.0
        self.heartbeats = True
        self.auto_reconfigure = True
        # state (I/O thread)
        self.job_state = "idle"
        self.job_id: Optional[str] = None
        self.sequence = 0
        self.server_incarnation: Optional[str] = None
        self.reconfigures = 0
        # observations
        self.commands: list[Received] = []
        self.server_heartbeats: list[Received] = []
        self.sent: list[dict] = []
        self.rejected: list[str] = []
        self._cond = threading.Condition()
        self._outbox: "queue.Queue[tuple[str, Any]]" = queue.Queue()
        self._timers: list[tuple[float, Callable[[], None]]] = []
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._ctx: Optional[zmq.Context] = None
        self._dealer = None
        self._sub = None
        self._next_heartbeat = 0.0
        self._http = None

    # --- handshake ---------------------------------------------------------
    def fetch_config(self, retries: int = 1, delay: float = 0.2) -> dict:
        """The config handshake (§2): GET config with our ccpk; decrypt the session key."""
        if self._http is None:
            self._http = self.server.client(self.principal, org=self.org)
        params = {"ccpk": self.curve_public, "version": "2.0"} if self.curve else {"version": "2.0"}
        last = None
        for _ in range(max(1, retries)):
            try:
                # quote(safe="") so that '+' and friends survive (§2.1)
                qs = urllib.parse.urlencode(params, quote_via=urllib.parse.quote, safe="")
                r = self._http.get(f"config/{self.name}?{qs}")
                if r.status_code == 200:
                    cfg = r.json()
                    self.config = cfg
                    enc = base64.b64decode(cfg["encoded_session_key"]["key"])
                    self.session_key = rsa_decrypt(self.principal.private_key, enc)
                    self.server_public_key = load_public_key(cfg["public_key"])
                    # no idle keep-alive connection left behind (it would hold
                    # up a graceful server stop); the next fetch reconnects
                    self._http.session.close()
                    return cfg
                last = FakeNodeError(f"config GET: {r.status_code} {r.text}")
            except Exception as e:  # noqa: BLE001 - retried, reported at the end
                last = e
            time.sleep(delay)
        raise FakeNodeError(f"config handshake of {self.name} failed: {last!r}")

    @property
    def interval(self) -> float:
        if self.heartbeat_interval_override is not None:
            return self.heartbeat_interval_override
        return float(self.config["push_jobs"]["heartbeat"]["interval"])

    # --- lifecycle ---------------------------------------------------------
    def start(self) -> "FakeNode":
        """Handshake, open the sockets and start the I/O thread (first heartbeat right away)."""
        if not self.config:
            self.fetch_config(retries=3)
        self._ctx = zmq.Context()
        self._open_sockets()
        self.server_incarnation = self.config.get("incarnation_id")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"fakenode-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close everything (a node that vanishes without a word)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> "FakeNode":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _open_sockets(self) -> None:
        hb = self.config["push_jobs"]["heartbeat"]
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.linger = 0
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(hb["out_addr"])
        self._dealer = self._ctx.socket(zmq.DEALER)
        self._dealer.linger = 0
        self._dealer.rcvhwm = 0
        self._dealer.sndhwm = 100
        if self.curve and self.config.get("curve_public_key"):
            self._dealer.curve_serverkey = self.config["curve_public_key"].encode()
            self._dealer.curve_publickey = self.curve_public.encode()
            self._dealer.curve_secretkey = self.curve_secret.encode()
        self._dealer.connect(hb["command_addr"])
        self.sequence = 0
        self._next_heartbeat = 0.0

    def _close_sockets(self) -> None:
        for s in (self._sub, self._dealer):
            if s is not None:
                s.close(linger=0)
        self._sub = self._dealer = None

    # --- building and sending ---------------------------------------------
    def body(self, mtype: str, job_id: Any = "__current__", **fields: Any) -> dict:
        """A client message body (§5.1) with the next sequence number and a fresh timestamp."""
        self.sequence += 1
        b = {
            "node": self.name, "client": self.name, "protocol_version": "2.0", "org": self.org,
            "type": mtype, "sequence": self.sequence, "timestamp": http_date(),
            "incarnation_id": self.incarnation_id,
            "job_id": self.job_id if job_id == "__current__" else job_id,
        }
        b.update(fields)
        return b

    def sign(self, body: dict | bytes, key: Optional[bytes] = None) -> list[bytes]:
        raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        return signing.encode_frames(raw, signing.HMAC_SHA256, key if key is not None else self.session_key)

    def send(self, mtype: str, job_id: Any = "__current__", **fields: Any) -> None:
        """Queue a signed message of `type` (job_id defaults to the current job)."""
        self._outbox.put(("msg", (mtype, job_id, fields)))

    def send_frames(self, frames: list[bytes]) -> None:
        """Send a raw frame list on the DEALER, unchanged (negative tests)."""
        self._outbox.put(("raw", list(frames)))

    def call(self, fn: Callable[["FakeNode"], Any]) -> None:
        """Run `fn(self)` in the I/O thread (to build and send a message atomically)."""
        self._outbox.put(("call", fn))

    def _send_now(self, mtype: str, job_id: Any = "__current__", **fields: Any) -> None:
        b = self.body(mtype, job_id, **fields)
        self._dealer.send_multipart(self.sign(b), flags=zmq.NOBLOCK)
        with self._cond:
            self.sent.append(b)
            self._cond.notify_all()

    # --- waiting -----------------------------------------------------------
    def wait_for(self, mtype: str, timeout: float = 10.0, *, after: int = 0,
                 where: Optional[Callable[[dict], bool]] = None) -> dict:
        """The first verified command of `mtype` with index >= `after` (and `where(body)`)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for r in self.commands[after:]:
                    if r.type == mtype and (where is None or where(r.body)):
                        return r.body
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [r.type for r in self.commands]
                    raise AssertionError(f"{self.name}: no {mtype!r} within {timeout}s (received {got})")
                self._cond.wait(min(left, 0.1))

    def find(self, mtype: str, after: int = 0) -> Optional[dict]:
        """The first received command of `mtype` (index >= `after`), or None: never blocks."""
        with self._cond:
            for r in self.commands[after:]:
                if r.type == mtype:
                    return r.body
        return None

    def count(self, mtype: str) -> int:
        with self._cond:
            return sum(1 for r in self.commands if r.type == mtype)

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 10.0, message: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            v = predicate()
            if v:
                return v
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: timed out waiting for {message}")
            time.sleep(0.02)

    def wait_idle_on_server(self, http: Any, timeout: float = 10.0) -> None:
        """Until GET node_states/NAME says online + available (the rehab is over)."""
        def ok() -> bool:
            r = http.get(f"node_states/{self.name}")
            return r.status_code == 200 and r.json().get("availability") == "available"
        self.wait_until(ok, timeout, f"{self.name} available")

    # --- the I/O thread ----------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._dealer, zmq.POLLIN)
        poller.register(self._sub, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                self._drain_outbox()
                now = time.monotonic()
                if self.heartbeats and now >= self._next_heartbeat:
                    self._next_heartbeat = now + self.interval
                    self._send_now("heartbeat", job_state=self.job_state)
                due = [t for t in self._timers if t[0] <= now]
                if due:
                    self._timers = [t for t in self._timers if t[0] > now]
                    for _, fn in due:
                        fn()
                events = dict(poller.poll(POLL_MS))
                if self._dealer in events:
                    self._on_command(self._dealer.recv_multipart())
                if self._sub in events:
                    new_inc = self._on_heartbeat(self._sub.recv_multipart())
                    if new_inc and self.auto_reconfigure:
                        poller.unregister(self._dealer)
                        poller.unregister(self._sub)
                        self._reconfigure()
                        poller.register(self._dealer, zmq.POLLIN)
                        poller.register(self._sub, zmq.POLLIN)
            except zmq.ZMQError as e:
                if self._stop.is_set():
                    break
                log.warning("%s: zmq error %s", self.name, e)
            except Exception:  # noqa: BLE001 - keep the node alive; tests look at the log
                log.exception("%s: I/O loop error", self.name)
        self._close_sockets()

    def _reconfigure(self) -> None:
        """§2.5: new config (new session key, server curve key), both sockets reopened."""
        self._close_sockets()
        self.fetch_config(retries=50, delay=0.1)
        self.server_incarnation = self.config.get("incarnation_id")
        self._open_sockets()
        self.reconfigures += 1
        log.info("%s: reconfigured for server incarnation %s", self.name, self.server_incarnation)

    def _drain_outbox(self) -> None:
        while True:
            try:
                kind, item = self._outbox.get_nowait()
            except queue.Empty:
                return
            if kind == "msg":
                mtype, job_id, fields = item
                self._send_now(mtype, job_id, **fields)
            elif kind == "raw":
                self._dealer.send_multipart(item, flags=zmq.NOBLOCK)
            elif kind == "call":
                item(self)

    def _on_heartbeat(self, frames: list[bytes]) -> bool:
        """Verify a server heartbeat; True when it announces a new server incarnation."""
        try:
            body = signing.decode_frames(
                frames, lambda b: self.server_public_key, max_body_size=65536, max_skew=300,
                now=time.time(), methods=(signing.RSA2048_SHA1,))
        except ProtocolError as e:
            # after a server restart the key changes until we reconfigure: an
            # unverifiable heartbeat from a new incarnation still triggers it
            try:
                inc = json.loads(frames[1]).get("incarnation_id")
            except Exception:  # noqa: BLE001
                inc = None
            with self._cond:
                self.rejected.append(f"heartbeat: {e.reason}")
            return bool(inc and inc != self.server_incarnation)
        with self._cond:
            self.server_heartbeats.append(Received("heartbeat", body, time.time()))
            self._cond.notify_all()
        inc = body.get("incarnation_id")
        return bool(inc and self.server_incarnation and inc != self.server_incarnation)

    def _on_command(self, frames: list[bytes]) -> None:
        try:
            body = signing.decode_frames(frames, lambda b: self.session_key, max_body_size=1 << 20,
                                         max_skew=300, now=time.time())
        except ProtocolError as e:
            with self._cond:
                self.rejected.append(f"command: {e.reason}")
            return
        mtype = body.get("type")
        with self._cond:
            self.commands.append(Received(mtype, body, time.time()))
            self._cond.notify_all()
        if mtype == "abort":
            if self.auto_abort:
                prev = self.job_id
                self.job_state, self.job_id = "idle", None
                self._timers.clear()
                self._send_now("aborted", job_id=prev)
        elif mtype == "commit":
            jid = body.get("job_id")
            if self.job_state != "idle":
                self._send_now("nack_commit", job_id=jid)
            elif self.commit_reply == "ack":
                self.job_state, self.job_id = "committed", jid
                self._send_now("ack_commit", job_id=jid)
            elif self.commit_reply == "nack":
                self._send_now("nack_commit", job_id=jid)
        elif mtype == "run":
            jid = body.get("job_id")
            if self.job_state != "committed" or jid != self.job_id:
                if self.run_reply is not None:
                    self._send_now("nack_run", job_id=jid)
            elif self.run_reply == "ack":
                self.job_state = "running"
                self._send_now("ack_run", job_id=jid)
                if self.run_result is not None:
                    self._timers.append((time.monotonic() + self.run_delay, lambda: self._finish(jid)))
            elif self.run_reply == "nack":
                self.job_state, self.job_id = "idle", None
                self._send_now("nack_run", job_id=jid)

    def _finish(self, jid: str) -> None:
        if self.job_id != jid or self.job_state != "running" or self.run_result is None:
            return
        status, out, err = self.run_result
        fields = {}
        if out is not None:
            fields["stdout"] = out
        if err is not None:
            fields["stderr"] = err
        self._send_now(status, job_id=jid, **fields)
        self.job_state, self.job_id = "idle", None


# --------------------------------------------------------------------------------------
# A small SSE reader for the job and org feeds (§11)


@dataclass
class SseEvent:
    event: str
    id: str
    data: dict


class SseReader:
    """Reads an SSE response in a background thread: `events`, `comments`, `done`.

    `http` is a SignedClient (tests/helpers/server.py); `path` is relative to
    the org's pushy/ prefix. The raw text is kept in `raw` for wire-format
    assertions (blank line after every event, keepalive comments).
    """

    def __init__(self, http: Any, path: str, *, last_event_id: Optional[str] = None,
                 accept: str = "text/event-stream", timeout: float = 30.0):
        self.http = http
        self.path = path
        self.headers = {"Accept": accept}
        if last_event_id is not None:
            self.headers["Last-Event-ID"] = last_event_id
        self.timeout = timeout
        self.status: Optional[int] = None
        self.response_headers: dict = {}
        self.raw = ""
        self.events: list[SseEvent] = []
        self.comments: list[str] = []
        self.done = threading.Event()
        self.error: Optional[BaseException] = None
        self._resp = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"sse-{path}")

    def start(self) -> "SseReader":
        self._thread.start()
        return self

    def close(self) -> None:
        if self._resp is not None:
            try:
                self._resp.close()
            except Exception:  # noqa: BLE001
                pass
        self._thread.join(2)

    def _run(self) -> None:
        buf = ""
        try:
            r = self.http.get(self.path, headers=self.headers, stream=True, timeout=self.timeout)
            self._resp = r
            self.status = r.status_code
            self.response_headers = dict(r.headers)
            for chunk in r.iter_content(chunk_size=None):
                text = chunk.decode("utf-8")
                self.raw += text
                buf += text
                while "\n\n" in buf or buf.startswith(":"):
                    if buf.startswith(":"):
                        line, sep, rest = buf.partition("\n")
                        if not sep:
                            break
                        self.comments.append(line)
                        buf = rest
                        continue
                    block, _, buf = buf.partition("\n\n")
                    self._block(block)
        except Exception as e:  # noqa: BLE001 - closed by close(), or a test failure to report
            self.error = e
        finally:
            if buf.strip():
                self._block(buf)  # a final event without its blank line (reference S2)
            self.done.set()

    def _block(self, block: str) -> None:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments.append(line)
                continue
            if ":" in line:
                k, _, v = line.partition(":")
                fields[k] = v[1:] if v.startswith(" ") else v
        if "event" in fields:
            self.events.append(SseEvent(fields["event"], fields.get("id", ""), json.loads(fields.get("data", "{}"))))

    def names(self) -> list[str]:
        return [e.event for e in self.events]

    def wait(self, predicate: Callable[["SseReader"], bool], timeout: float = 10.0,
             sleep: Callable[[float], None] = time.sleep) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"SSE {self.path}: timed out; events so far {self.names()}")
            sleep(0.02)
