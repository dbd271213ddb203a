"""Our agent against a scripted ORIGINAL push-jobs server (Erlang 2.x behind Chef's nginx).

`OriginalServer` is built from real sockets (HTTP, ZeroMQ PUB, CURVE
ROUTER) and the protocol library, and reproduces what the original does on
the wire (PROTOCOL.md §2–§8, §10.1a, §17), quirks included:

* the config is served under `/organizations/ORG/pushy/config/NODE` of a
  Chef-server-like front end; every other path is "Chef" (a PUT to
  `/organizations/ORG/nodes/NODE` succeeds, as on a real Chef server, which
  is exactly why the agent must never send one there);
* the Chef signature is verified against the path the server sees;
* `interval` is a float, `lifetime`/`max_message_skew` integers, the PEM
  ends in "\\n\\n", `curve_public_key` is sent even when the ROUTER does not
  do CURVE (S6), and there is no `pushjobs` marker;
* server heartbeats: `server` = the OS hostname, `sequence` from 0, RSA;
* per node: the first message creates the FSM and gets `abort` (repeated
  every `rehab_interval` until `aborted`), a new routing id gets `ack`,
  heartbeats and `aborted` for unknown jobs get nothing at all, a job
  message naming an unknown job gets a rehab `abort`;
* `commit` always carries `capture` (false unless asked) and `server`, and
  user/dir/env/file only when set; `abort` has no `job_id`.

The agent is the real `main.Agent` (settings, session, jobs, runner) on a
thread, with intervals scaled down through settings and the config.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import zmq

from pushjobs.agent.main import Agent
from pushjobs.agent.settings import AgentSettings, api_base_url, org_from_url
from pushjobs.protocol.chef_auth import parse_auth_headers, verify_signature
from pushjobs.protocol.errors import ProtocolError
from pushjobs.protocol.framing import HMAC_SHA256, RSA2048_SHA1
from pushjobs.protocol.keys import (curve_keypair, generate_rsa_key, private_key_pem, public_key_pem,
                                    rsa_encrypt, z85_decode)
from pushjobs.protocol.signing import decode_frames, encode_frames, sign
from pushjobs.protocol.timestamps import http_date

pytestmark = pytest.mark.timeout(60)

ORG = "acme"
NODE = "web01"


def wait_for(cond, timeout=5.0, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {message}")


@pytest.fixture(scope="module")
def keys():
    return {"server": generate_rsa_key(), "client": generate_rsa_key()}


class OriginalServer:
    """The original server's wire behaviour, one thread for both ZeroMQ sockets."""

    def __init__(self, keys, *, interval=0.2, lifetime=3600, max_message_skew=300,
                 curve_router=True, rehab_interval=0.15, marker=None, prefix="", tls=None):
        self.keys = keys
        self.interval = interval  # seconds on the wire; the original's 10000 ms -> 10.0
        self.lifetime = lifetime
        self.max_message_skew = max_message_skew
        self.rehab_interval = rehab_interval
        self.marker = marker  # None: the original (no `pushjobs` field)
        self.prefix = prefix
        self.session_key = os.urandom(32)
        self.incarnation = str(uuid.uuid4())
        self.http_status = 200
        self.http_body = None
        self.http_delay = 0.0  # a slow front end: seconds before each config answer
        self.advertised = "127.0.0.1"  # server_name: the host put in the ZeroMQ addresses
        self.received_at: list[float] = []  # monotonic arrival time of each received message
        self.requests: list[dict] = []  # every HTTP request: method, path, query, headers, verified
        self.received: list[tuple[bytes, dict]] = []  # verified client messages
        self.sent: list[tuple[bytes, dict]] = []
        self.nodes: dict[str, dict] = {}
        self.jobs: set[str] = set()
        self.ignore_aborted = 0  # how many `aborted` replies to "lose" (forces repeated aborts)
        self.heartbeats = True
        self.hb_sequence = 0  # the broadcast counter starts at 0
        self.hb_header = "Signature"  # or the legacy alias SignedChecksum
        self.hb_version = "2.0"
        self.cond = threading.Condition()
        self.outbox: deque = deque()
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub_port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        self.curve_public, secret = curve_keypair()
        if curve_router:  # False: disable_curve_encryption, yet the key is still advertised (S6)
            self.router.curve_server = True
            self.router.curve_secretkey = secret.encode()
        self.router_port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        if tls is not None:  # (certfile, keyfile): HTTPS like Chef's nginx
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.http.socket = ctx.wrap_socket(self.http.socket, server_side=True)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.port = self.http.server_address[1]
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}{prefix}/organizations/{ORG}"

    # --- HTTP: a Chef server front end with the push jobs add-on ------------------
    def config_doc(self, node):
        doc = {
            "type": "config", "host": "127.0.0.1",
            "push_jobs": {"heartbeat": {"out_addr": f"tcp://{self.advertised}:{self.pub_port}",
                                        "command_addr": f"tcp://{self.advertised}:{self.router_port}",
                                        "interval": float(self.interval), "offline_threshold": 3,
                                        "online_threshold": 2}},
            "node": node, "organization": ORG,
            "public_key": public_key_pem(self.keys["server"]).rstrip("\n") + "\n\n",
            "curve_public_key": self.curve_public,
            "encoded_session_key": {"method": "hmac_sha256", "key": base64.b64encode(
                rsa_encrypt(self.keys["client"].public_key(), self.session_key)).decode()},
            "lifetime": int(self.lifetime), "max_message_skew": int(self.max_message_skew),
            "max_body_size": 65536, "incarnation_id": self.incarnation,
        }
        if self.marker is not None:
            doc["pushjobs"] = self.marker
        return doc

    def _handler(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _reply(self, status, doc):
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, method):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = urlsplit(self.path)
                try:
                    signed = parse_auth_headers(dict(self.headers))
                    verified = verify_signature(signed, method, parts.path, body,
                                                outer.keys["client"].public_key())
                except Exception:  # noqa: BLE001 - unsigned or malformed: recorded as such
                    verified = False
                rec = {"method": method, "path": parts.path, "query": parse_qs(parts.query),
                       "raw_query": parts.query, "headers": dict(self.headers),
                       "verified": verified, "body": body}
                with outer.cond:
                    outer.requests.append(rec)
                    outer.cond.notify_all()
                cfg = f"{outer.prefix}/organizations/{ORG}/pushy/config/"
                if method == "GET" and parts.path.startswith(cfg):
                    node = parts.path[len(cfg):]
                    time.sleep(outer.http_delay)
                    if outer.http_status != 200:
                        return self._reply(outer.http_status, outer.http_body or {"error": ["nope"]})
                    ccpk = rec["query"].get("ccpk", [None])[0]
                    if ccpk is None:
                        return self._reply(400, {"error": ["Missing ccpk"]})
                    if len(ccpk) != 40:
                        return self._reply(401, {"error": ["Bad ccpk"]})
                    if not verified:
                        return self._reply(401, {"error": [
                            f"Invalid signature for user or client '{signed.user_id}'"]})
                    if signed.user_id != node:
                        return self._reply(403, {"error": ["Client and node name must match"]})
                    return self._reply(200, outer.config_doc(node))
                # anything else is the Chef server itself: it accepts a node PUT (the hazard)
                return self._reply(200, {"name": parts.path.rsplit("/", 1)[-1]})

            def do_GET(self):
                self._handle("GET")

            def do_PUT(self):
                self._handle("PUT")

            def do_POST(self):
                self._handle("POST")

        return Handler

    def config_requests(self):
        return [r for r in self.requests if "/pushy/config/" in r["path"]]

    def node_requests(self):
        return [r for r in self.requests if "/nodes" in r["path"]]

    # --- ZeroMQ: heartbeat generator and node FSMs (§5.3, §7) ---------------------
    def _run(self):
        next_hb = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if self.heartbeats and now >= next_hb:
                self._heartbeat()
                next_hb = now + self.interval
            while self.outbox:
                self.outbox.popleft()()
            for name, st in list(self.nodes.items()):
                if st["state"] == "rehab" and now >= st["next_abort"]:
                    self._send(name, "abort")
                    st["next_abort"] = now + self.rehab_interval
            if self.router.poll(10):
                try:
                    self._receive(self.router.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    pass

    def _heartbeat(self):
        body = json.dumps({"sequence": self.hb_sequence, "timestamp": http_date(),
                           "server": socket.gethostname(), "type": "heartbeat",
                           "incarnation_id": self.incarnation}, separators=(",", ":")).encode()
        self.hb_sequence += 1
        sig = sign(RSA2048_SHA1, self.keys["server"], body)
        header = f"Version:{self.hb_version};SigningMethod:rsa2048_sha1;{self.hb_header}:{sig}"
        self.pub.send_multipart([header.encode(), body])

    def _receive(self, frames):
        rid, *rest = frames
        if len(rest) != 2:
            return
        try:
            body = decode_frames(rest, lambda b: self.session_key, max_body_size=65536,
                                 max_skew=300, now=time.time())
        except ProtocolError:
            return
        with self.cond:
            self.received.append((rid, body))
            self.received_at.append(time.monotonic())
            self.cond.notify_all()
        name = body.get("node")
        st = self.nodes.get(name)
        if st is None:  # a new node FSM: abort at once, rehab until `aborted`
            st = self.nodes[name] = {"rid": rid, "state": "idle", "seq": 0, "next_abort": 0.0}
            self._rehab(name)
        elif st["rid"] != rid:  # a known node on a new connection
            st["rid"] = rid
            self._send(name, "ack")
        kind, job_id = body.get("type"), body.get("job_id")
        if kind == "heartbeat":
            if job_id not in (None, "null") and job_id not in self.jobs:
                self._rehab(name)
        elif kind == "aborted":
            if self.ignore_aborted > 0:
                self.ignore_aborted -= 1
            elif st["state"] == "rehab":
                st["state"] = "idle"
        elif kind in ("ack_commit", "nack_commit", "ack_run", "nack_run", "succeeded", "failed"):
            if job_id not in self.jobs:
                self._rehab(name)
        # anything else: logged and ignored by the original; no reply

    def _rehab(self, name):
        st = self.nodes[name]
        if st["state"] != "rehab":
            st["state"] = "rehab"
            self._send(name, "abort")
            st["next_abort"] = time.monotonic() + self.rehab_interval

    def _send(self, name, kind, **fields):
        st = self.nodes[name]
        st["seq"] += 1
        body = json.dumps({"sequence": st["seq"], "timestamp": fields.pop("timestamp", None) or http_date(),
                           "type": kind, **fields}, separators=(",", ":")).encode()
        self.router.send_multipart([st["rid"]] + encode_frames(body, HMAC_SHA256, self.session_key))
        with self.cond:
            self.sent.append((st["rid"], json.loads(body)))

    # --- what a test asks the "server" to do (run on the server thread) -----------
    def call(self, fn):
        self.outbox.append(fn)

    def commit(self, node, job_id, command, **opts):
        """The original's commit: `server` and `capture` always, options only when set."""
        capture = opts.pop("capture", False)
        self.jobs.add(job_id)
        self.call(lambda: self._send(node, "commit", job_id=job_id, server="chef.example.com",
                                     command=command, **opts, capture=capture))

    def run_job(self, node, job_id):
        self.call(lambda: self._send(node, "run", job_id=job_id))

    def abort(self, node, **fields):
        self.call(lambda: self._send(node, "abort", **fields))

    def restart(self):
        """A server restart: new incarnation, no node FSMs, no jobs (same sockets)."""
        def do():
            self.incarnation = str(uuid.uuid4())
            self.nodes.clear()
            self.jobs.clear()
            self.hb_sequence = 0
        self.call(do)

    def wait_msg(self, kind, *, after=0, timeout=5.0, **match):
        """The first verified client message of `kind` at index >= after: (index, body)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(after, len(self.received)):
                    body = self.received[i][1]
                    if body.get("type") == kind and all(body.get(k) == v for k, v in match.items()):
                        return i, body
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {kind} {match} from the agent; got "
                                         f"{[b.get('type') for _, b in self.received[after:]]}")
                self.cond.wait(left)

    def idle(self, node=NODE):
        st = self.nodes.get(node)
        return st is not None and st["state"] == "idle"

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.http.shutdown()
        self.http.server_close()
        self.ctx.destroy(linger=0)


@pytest.fixture
def original(keys):
    servers = []

    def make(**kw):
        s = OriginalServer(keys, **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def agent(keys, tmp_path):
    """Start the real Agent (settings -> session -> jobs) on a thread."""
    key_path = tmp_path / "client.pem"
    key_path.write_text(private_key_pem(keys["client"]))
    key_path.chmod(0o600)
    running = []

    def start(url, **overrides):
        settings = AgentSettings(
            chef_server_url=url, node_name=NODE, client_key=str(key_path),
            whitelist={"true": "true", "hello": "echo hello; echo oops >&2",
                       "sleep": "sleep 30", "env": "echo foo=$FOO"},
            file_dir=str(tmp_path / "files"), reconnect_min_delay=0.05, reconnect_max_delay=0.3,
            restart_splay=0.1, command_check_timeout=0.6, http_timeout=2.0,
            whitelist_poll_interval=5.0, term_grace_period=1.0)
        settings = settings.replace(**overrides)
        a = Agent(settings)
        t = threading.Thread(target=a.run, daemon=True)
        t.start()
        running.append((a, t))
        return a

    yield start
    for a, t in running:
        a.loop.stop()
        t.join(5)


def connected_and_idle(server, agent, node=NODE):
    """The original's bring-up (§1.1): heartbeat -> abort -> aborted -> node idle."""
    wait_for(lambda: server.idle(node), message="node idle on the server")
    assert agent.session.command_channel_ok


# --- the config handshake through a Chef front end -------------------------------------

@pytest.mark.parametrize("suffix", ["", "/", "//extra/segments/"])
def test_config_through_chef_front_end_and_never_chef_nodes_api(original, agent, suffix):
    server = original(prefix="/chef")
    a = agent(server.url + suffix)  # trailing slash, or segments after the org
    connected_and_idle(server, a)
    req = server.config_requests()[0]
    assert req["path"] == f"/chef/organizations/{ORG}/pushy/config/{NODE}"
    assert req["verified"]  # signed over the path the server sees (no query)
    assert req["query"]["version"] == ["2.0"]
    ccpk = req["query"]["ccpk"][0]
    assert ccpk == a.session.curve_keys[0] and len(z85_decode(ccpk)) == 32
    assert "+" not in req["raw_query"]  # a Z85 '+' travels as %2B (§2.1)
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["accept"] == "application/json"
    assert headers["x-ops-sign"].startswith("algorithm=sha1;version=1.1")
    assert headers["x-ops-userid"] == NODE
    # the float interval, integer lifetime/skew and the "\n\n" PEM were all taken
    assert a.session.config.interval == pytest.approx(0.2)
    assert a.session.config.max_message_skew == 300.0
    # no marker in the original's config: node facts are never PUT to Chef's node API
    _, hb = server.wait_msg("heartbeat", after=len(server.received))
    assert server.node_requests() == []
    assert hb["job_state"] == "idle" and hb["job_id"] is None and hb["org"] == ORG


@pytest.mark.parametrize("marker, mode, expected", [
    ({"version": "0.1.0", "node_facts": True}, "auto", True),
    ({"version": "0.1.0", "node_facts": False}, "auto", False),
    ({"version": "0.1.0", "node_facts": True}, "false", False),
    (None, "true", True),  # forced: a pushjobs server older than the marker
])
def test_node_facts_only_with_the_pushjobs_marker(original, agent, marker, mode, expected):
    server = original(marker=marker)
    a = agent(server.url, report_facts=mode)
    connected_and_idle(server, a)
    if expected:
        req = wait_for(server.node_requests, message="facts PUT")[0]
        assert req["method"] == "PUT" and req["path"] == f"/organizations/{ORG}/nodes/{NODE}"
        assert req["verified"] and json.loads(req["body"])["name"] == NODE
    else:
        server.wait_msg("heartbeat", after=len(server.received))
        assert server.node_requests() == []


# --- bring-up, rehab, silence -----------------------------------------------------------

def test_rehab_aborts_repeat_until_aborted_and_then_silence(original, agent):
    server = original()
    server.ignore_aborted = 2  # the first two `aborted` are "lost": abort comes again each time
    a = agent(server.url)
    connected_and_idle(server, a)
    aborts = [b for _, b in server.sent if b["type"] == "abort"]
    assert len(aborts) >= 3 and all("job_id" not in b for b in aborts)
    assert aborts[0]["sequence"] == 1  # per-node counter from 1
    replies = [b for _, b in server.received if b["type"] == "aborted"]
    assert len(replies) >= 3 and all(b["job_id"] is None for b in replies)
    # from now on the original says nothing on the command port (heartbeats get no reply):
    # the agent must stay connected on its one config fetch, heartbeating every interval
    first = len(server.received)
    server.wait_msg("heartbeat", after=first)
    time.sleep(2 * 0.6)  # two command_check_timeouts of silence (the thing under test)
    beats = [b for _, b in server.received[first:] if b["type"] == "heartbeat"]
    assert len(server.config_requests()) == 1 and a.session.connected
    assert 3 <= len(beats) <= 10  # ~every 0.2 s
    seqs = [b["sequence"] for b in beats]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_server_heartbeat_quirks_are_accepted(original, agent):
    server = original()
    a = agent(server.url)
    connected_and_idle(server, a)
    stats = a.session.stats
    n = stats["server_heartbeats"]
    wait_for(lambda: stats["server_heartbeats"] > n + 1, message="server heartbeats")
    server.call(lambda: setattr(server, "hb_header", "SignedChecksum"))  # legacy alias
    n = stats["server_heartbeats"]
    wait_for(lambda: stats["server_heartbeats"] > n + 2, message="SignedChecksum heartbeats")
    server.call(lambda: setattr(server, "hb_version", "1.0"))  # v1 + rsa2048_sha1
    n = stats["server_heartbeats"]
    wait_for(lambda: stats["server_heartbeats"] > n + 2, message="Version:1.0 heartbeats")
    assert stats["dropped"] == 0 and a.session.online


# --- jobs with the original's message shapes ------------------------------------------

def test_jobs_with_the_originals_commit_run_and_abort(original, agent):
    server = original()
    a = agent(server.url)
    connected_and_idle(server, a)
    # capture false, no user/dir/env/file: no output in the completion
    job = uuid.uuid4().hex
    server.commit(NODE, job, "hello")
    server.wait_msg("ack_commit", job_id=job)
    server.run_job(NODE, job)
    server.wait_msg("ack_run", job_id=job)
    _, done = server.wait_msg("succeeded", job_id=job)
    assert "stdout" not in done and "stderr" not in done
    # capture true with env
    job2 = uuid.uuid4().hex
    server.commit(NODE, job2, "env", env={"FOO": "bar"}, capture=True)
    server.wait_msg("ack_commit", job_id=job2)
    server.run_job(NODE, job2)
    _, done = server.wait_msg("succeeded", job_id=job2)
    assert done["stdout"] == "foo=bar\n" and done["stderr"] == ""
    # not whitelisted -> nack_commit with the job id
    job3 = uuid.uuid4().hex
    server.commit(NODE, job3, "rm -rf /")
    server.wait_msg("nack_commit", job_id=job3)
    # abort WITHOUT job_id while running: aborted names the running job, group killed
    job4 = uuid.uuid4().hex
    server.commit(NODE, job4, "sleep")
    server.wait_msg("ack_commit", job_id=job4)
    server.run_job(NODE, job4)
    server.wait_msg("ack_run", job_id=job4)
    _, hb = server.wait_msg("heartbeat", after=len(server.received), job_state="running")
    assert hb["job_id"] == job4
    mark = len(server.received)
    server.abort(NODE)
    _, aborted = server.wait_msg("aborted", after=mark)
    assert aborted["job_id"] == job4
    server.wait_msg("heartbeat", after=mark, job_state="idle")
    wait_for(lambda: not a.jobs.busy, timeout=5, message="process group gone")


# --- reconnects: ack on a new routing id, lifetime, restart ----------------------------

def test_lifetime_reconfigure_gets_ack_on_the_new_connection(original, agent):
    server = original(lifetime=1)  # integer seconds, as the original sends it
    a = agent(server.url)
    connected_and_idle(server, a)
    first_rid = server.nodes[NODE]["rid"]
    t0 = time.monotonic()
    wait_for(lambda: len(server.config_requests()) >= 2, timeout=4, message="lifetime reconfigure")
    assert 0.8 <= time.monotonic() - t0 <= 2.5
    wait_for(lambda: server.nodes[NODE]["rid"] != first_rid, message="new routing id")
    wait_for(lambda: any(b["type"] == "ack" for _, b in server.sent), message="ack sent")
    # the ack proves the channel: no "no message on the command port" reconfigure follows
    wait_for(lambda: a.session.command_channel_ok, message="command channel ok after ack")
    assert server.idle()  # the node FSM survived: no new abort/rehab
    assert len(server.config_requests()) == 2


def test_planned_reconfigure_keeps_heartbeating_during_a_slow_fetch(original, agent):
    """Lifetime/SIGUSR1 reconfigures keep the old connection until the new config is in:
    no heartbeat gap for the server's liveness average (§6.3) to punish."""
    server = original(lifetime=1)
    a = agent(server.url)
    connected_and_idle(server, a)
    server.http_delay = 0.8  # four heartbeat intervals
    first_rid = server.nodes[NODE]["rid"]
    mark = len(server.received)
    wait_for(lambda: server.nodes[NODE]["rid"] != first_rid, timeout=5, message="new connection")
    server.wait_msg("heartbeat", after=len(server.received))
    beats = [server.received_at[i] for i in range(mark, len(server.received))
             if server.received[i][1]["type"] == "heartbeat"]
    gaps = [b - a_ for a_, b in zip(beats, beats[1:])]
    assert max(gaps) < 0.75, gaps  # less than the 0.8 s fetch: the old connection kept beating
    assert server.idle() and a.session.stats["reconfigures"] >= 1


def test_server_restart_new_incarnation_fresh_fsm(original, agent):
    server = original()
    a = agent(server.url)
    connected_and_idle(server, a)
    old = server.incarnation
    server.restart()
    wait_for(lambda: len(server.config_requests()) >= 2, timeout=5, message="reconfigure after restart")
    wait_for(lambda: server.idle(), message="fresh node FSM idle again (abort -> aborted)")
    assert a.session.server_incarnation == server.incarnation != old


def test_server_restart_during_a_job_aborts_it_on_reconnect(original, agent):
    """The restarted original has marked the job crashed; its fresh node FSM answers our
    first message (a heartbeat naming the job) with `abort`: the job's group is killed."""
    server = original()
    a = agent(server.url)
    connected_and_idle(server, a)
    job = uuid.uuid4().hex
    server.commit(NODE, job, "sleep")
    server.wait_msg("ack_commit", job_id=job)
    server.run_job(NODE, job)
    server.wait_msg("ack_run", job_id=job)
    mark = len(server.received)
    server.restart()
    _, aborted = server.wait_msg("aborted", after=mark)
    assert aborted["job_id"] == job  # an unknown job to the new server: no rehab, just idle
    wait_for(lambda: server.idle(), message="node idle on the restarted server")
    wait_for(lambda: not a.jobs.busy, timeout=5, message="process group gone")


# --- message validation with the config's max_message_skew ----------------------------

def test_max_message_skew_from_config_both_directions(original, agent):
    server = original(max_message_skew=5)
    a = agent(server.url)
    connected_and_idle(server, a)
    dropped = a.session.stats["dropped"]
    mark = len(server.received)
    server.abort(NODE, timestamp=http_date(time.time() - 10))  # C3: old is stale too
    server.abort(NODE, timestamp=http_date(time.time() + 10))
    wait_for(lambda: a.session.stats["dropped"] >= dropped + 2, message="two drops")
    server.abort(NODE, timestamp=http_date(time.time() - 2))  # within the skew
    server.wait_msg("aborted", after=mark)
    assert sum(1 for _, b in server.received[mark:] if b["type"] == "aborted") == 1


# --- failures of the config fetch ----------------------------------------------------

def test_401_and_503_on_config_are_retried_not_fatal(original, agent, caplog):
    server = original()
    server.http_status = 401  # the stock client exits 1 here (§10.1a)
    server.http_body = {"error": ["Failed to authenticate as 'web01'. Ensure that your node_name "
                                  "and client key are correct."]}
    with caplog.at_level(logging.WARNING, logger="pushjobs.agent"):
        a = agent(server.url)
        wait_for(lambda: len(server.config_requests()) >= 3, message="retries after 401")
    assert any("401" in r.getMessage() and "client key" in r.getMessage() for r in caplog.records)
    server.http_status = 503  # the original retried 5x every 30 s, then exited
    n = len(server.config_requests())
    wait_for(lambda: len(server.config_requests()) >= n + 2, message="retries after 503")
    assert not a.session.connected
    server.http_status = 200
    connected_and_idle(server, a)


def test_curve_key_advertised_without_curve_router_S6(original, agent):
    """disable_curve_encryption on the original: curve_public_key is sent anyway (S6)."""
    server = original(curve_router=False)
    a = agent(server.url)
    # the CURVE handshake can never succeed: the command check keeps reconfiguring, never idle
    wait_for(lambda: len(server.config_requests()) >= 3, timeout=8, message="reconfigures")
    assert not server.received and not a.session.command_channel_ok

    server2 = original(curve_router=False)
    b = agent(server2.url, allow_unencrypted=True)  # the operator allowed plaintext
    connected_and_idle(server2, b)
    assert not b.session.config.encrypted


# --- chef_server_url forms and proxies (USERLAND.md §1.4) -------------------------------

@pytest.mark.parametrize("url, org, base", [
    ("https://chef.example.com/organizations/acme", "acme", "https://chef.example.com/organizations/acme"),
    ("https://chef.example.com/organizations/acme/", "acme", "https://chef.example.com/organizations/acme"),
    ("https://chef.example.com:8443/organizations/acme", "acme",
     "https://chef.example.com:8443/organizations/acme"),
    ("https://chef.example.com/organizations//acme//", "acme", "https://chef.example.com/organizations/acme"),
    ("https://chef.example.com/organizations/acme/nodes/x", "acme",
     "https://chef.example.com/organizations/acme"),
    ("https://h/chef/organizations/my-org_1.x/", "my-org_1.x", "https://h/chef/organizations/my-org_1.x"),
    ("https://h/organizations/acme/organizations/other", "acme", "https://h/organizations/acme"),
])
def test_chef_server_url_forms(url, org, base):
    assert org_from_url(url) == org
    assert api_base_url(url) == base


@pytest.mark.parametrize("url", ["https://chef.example.com", "https://h/organizations/", "https://h/orgs/acme"])
def test_chef_server_url_without_org_is_refused(url):
    from pushjobs.agent.settings import SettingsError

    with pytest.raises(SettingsError, match="must end in /organizations/ORG_NAME"):
        org_from_url(url)


class Proxy:
    """A forward HTTP proxy that records what it relays."""

    def __init__(self):
        self.seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                import http.client

                outer.seen.append(self.path)  # absolute-form URI, as clients send to proxies
                target = urlsplit(self.path)
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "proxy-connection"}
                conn.request("GET", target.path + ("?" + target.query if target.query else ""),
                             headers=headers)
                r = conn.getresponse()
                body = r.read()
                self.send_response(r.status)
                self.send_header("Content-Type", r.getheader("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                conn.close()

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"

    def close(self):
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY",
                "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    p = Proxy()
    yield p
    p.close()


def test_environment_proxy_is_used_for_the_config_fetch_zeromq_goes_direct(
        original, agent, proxy, monkeypatch):
    monkeypatch.setenv("http_proxy", proxy.url)
    server = original()
    a = agent(server.url)
    connected_and_idle(server, a)  # ZeroMQ connected straight to the ports in the config
    assert proxy.seen and proxy.seen[0].startswith(f"{server.url}/pushy/config/{NODE}?ccpk=")
    assert server.config_requests()[0]["verified"]  # the signature survives the proxy


def test_settings_proxy_wins_and_no_proxy_bypasses(original, agent, proxy, monkeypatch):
    server = original()
    a = agent(server.url, http_proxy=proxy.url)
    connected_and_idle(server, a)
    assert len(proxy.seen) == 1
    # no_proxy (setting or environment) sends the fetch direct even with a proxy set
    monkeypatch.setenv("http_proxy", proxy.url)
    server2 = original()
    b = agent(server2.url, no_proxy="localhost,127.0.0.1")
    connected_and_idle(server2, b)
    assert len(proxy.seen) == 1


@pytest.mark.parametrize("text, expected", [
    ("", "auto"), ("report_facts: auto", "auto"), ("report_facts: true", "true"),
    ("report_facts: false", "false"), ("report_facts: 'FALSE'", "false"),
])
def test_report_facts_setting(tmp_path, text, expected):
    from pushjobs.agent.session import SessionOptions
    from pushjobs.agent.settings import load_settings

    path = tmp_path / "agent.yml"
    path.write_text(text + "\nhttps_proxy: 'http://proxy:3128'\nno_proxy: 'localhost,.corp'\n")
    s = load_settings(str(path))
    assert s.report_facts == expected
    opts = SessionOptions.from_settings(s)
    assert opts.proxies == {"http": None, "https": "http://proxy:3128", "no_proxy": "localhost,.corp"}


def test_report_facts_setting_rejects_other_values(tmp_path):
    from pushjobs.agent.settings import SettingsError, load_settings

    path = tmp_path / "agent.yml"
    path.write_text("report_facts: sometimes\n")
    with pytest.raises(SettingsError, match=r"agent.yml:1: report_facts: expected auto, true or false"):
        load_settings(str(path))


def test_client_rb_proxy_keys_are_read(tmp_path):
    from pushjobs.agent.settings import load_settings

    path = tmp_path / "client.rb"
    path.write_text('chef_server_url "https://chef.example.com/organizations/acme"\n'
                    'http_proxy "http://proxy:3128"\nno_proxy "localhost"\n')
    s = load_settings(str(path))
    assert (s.http_proxy, s.https_proxy, s.no_proxy) == ("http://proxy:3128", None, "localhost")



def self_signed(tmp_path):
    """A self-signed certificate for 127.0.0.1, as `knife ssl fetch` would store it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = generate_rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chef.example.com")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "server.pem").write_bytes(cert_pem)
    (tmp_path / "server.key").write_text(private_key_pem(key))
    trusted = tmp_path / "trusted_certs"
    trusted.mkdir()
    (trusted / "chef_example_com.crt").write_bytes(cert_pem)  # not an OpenSSL hash name
    return str(tmp_path / "server.pem"), str(tmp_path / "server.key"), str(trusted)


def test_https_front_end_trusted_through_chefs_trusted_certs_dir(original, agent, tmp_path):
    from pushjobs.agent.settings import load_settings

    cert, key, trusted = self_signed(tmp_path)
    server = original(tls=(cert, key))
    # not trusted: retried, never connected
    a = agent(server.url)
    wait_for(lambda: a.session.stats["config_failures"] >= 2, message="TLS failures")
    assert not server.config_requests() and not a.session.connected
    a.loop.stop()
    # client.rb's trusted_certs_dir (plain *.crt files, as knife ssl fetch writes them)
    rb = tmp_path / "client.rb"
    rb.write_text(f'chef_server_url "{server.url}"\ntrusted_certs_dir "{trusted}"\n')
    b = agent(server.url, ca_file=load_settings(str(rb)).ca_file)
    connected_and_idle(server, b)


def test_config_fetch_follows_a_front_end_redirect(original, agent):
    """Chef's nginx answers plain http with a 301 to https; Chef's HTTP stack follows GETs."""
    server = original()
    target = f"http://127.0.0.1:{server.port}"
    seen = []

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            seen.append(self.path)
            self.send_response(301)
            self.send_header("Location", target + self.path)  # nginx: $scheme://$host$request_uri
            self.send_header("Content-Length", "0")
            self.end_headers()

    front = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    try:
        a = agent(f"http://127.0.0.1:{front.server_address[1]}/organizations/{ORG}")
        connected_and_idle(server, a)
        assert seen and seen[0].startswith(f"/organizations/{ORG}/pushy/config/{NODE}?ccpk=")
        req = server.config_requests()[0]
        assert req["verified"] and req["query"]["ccpk"] == [a.session.curve_keys[0]]
    finally:
        front.shutdown()
        front.server_close()


def test_an_address_libzmq_refuses_is_retried_not_wedged(original, agent):
    """A misconfigured server_name ("bad host") must not wedge the agent mid-handshake."""
    server = original()
    server.advertised = "bad host"
    a = agent(server.url)
    wait_for(lambda: a.session.stats["config_failures"] >= 2, message="refused addresses retried")
    assert not a.session.connected
    server.advertised = "127.0.0.1"
    connected_and_idle(server, a)
