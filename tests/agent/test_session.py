"""NodeSession against a scripted server made of real sockets (HTTP, PUB, CURVE ROUTER).

The scripted server lets a test do what the real one never does: send stale
or forged messages, stay silent on the command port, change incarnation,
stop heartbeating, or answer the config without a curve key.
"""
import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import zmq

from pushjobs.agent.loop import EventLoop
from pushjobs.agent.session import (NodeIdentity, NodeSession, SessionOptions, backoff_delay,
                                    fit_output)
from pushjobs.protocol.framing import HMAC_SHA256, RSA2048_SHA1
from pushjobs.protocol.keys import (curve_keypair, generate_rsa_key, public_key_pem, rsa_encrypt,
                                    z85_decode)
from pushjobs.protocol.signing import decode_frames, encode_frames
from pushjobs.protocol.timestamps import http_date


@pytest.fixture(scope="module")
def keys():
    return {"server": generate_rsa_key(), "client": generate_rsa_key()}


def wait_for(cond, timeout=5.0, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {message}")


class ScriptedServer:
    def __init__(self, keys, *, curve=True, interval=0.1, lifetime=3600):
        self.keys = keys
        self.session_key = bytes(range(32))
        self.incarnation = str(uuid.uuid4())
        self.curve = curve
        self.interval = interval
        self.lifetime = lifetime
        self.http_status = 200
        self.requests = []
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub_port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        self.curve_public, secret = curve_keypair()
        if curve:
            self.router.curve_server = True
            self.router.curve_secretkey = secret.encode()
        self.router_port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.seq = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.requests.append((self.path, dict(self.headers)))
                if outer.http_status != 200:
                    self.send_response(outer.http_status)
                    self.end_headers()
                    return
                body = json.dumps(outer.config_doc()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(404)  # an older server: facts are not accepted
                self.end_headers()

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/organizations/acme"

    def config_doc(self):
        doc = {
            "type": "config", "host": "127.0.0.1", "node": "n1", "organization": "acme",
            "push_jobs": {"heartbeat": {"out_addr": f"tcp://127.0.0.1:{self.pub_port}",
                                        "command_addr": f"tcp://127.0.0.1:{self.router_port}",
                                        "interval": self.interval, "offline_threshold": 3,
                                        "online_threshold": 2}},
            "public_key": public_key_pem(self.keys["server"]),
            "encoded_session_key": {"method": "hmac_sha256", "key": base64.b64encode(
                rsa_encrypt(self.keys["client"].public_key(), self.session_key)).decode()},
            "lifetime": self.lifetime, "max_message_skew": 300, "max_body_size": 65536,
            "incarnation_id": self.incarnation,
        }
        if self.curve:
            doc["curve_public_key"] = self.curve_public
        return doc

    def heartbeat(self, incarnation=None):
        self.seq += 1
        body = json.dumps({"sequence": self.seq, "timestamp": http_date(), "server": "s",
                           "type": "heartbeat",
                           "incarnation_id": incarnation or self.incarnation}).encode()
        self.pub.send_multipart(encode_frames(body, RSA2048_SHA1, self.keys["server"]))

    def recv(self, timeout=3.0):
        """(routing_id, body dict) of the next verified client message."""
        if not self.router.poll(int(timeout * 1000)):
            return None
        rid, *frames = self.router.recv_multipart()
        body = decode_frames(frames, lambda b: self.session_key, max_body_size=65536,
                             max_skew=300, now=time.time())
        return rid, body

    def recv_type(self, msg_type, timeout=3.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.recv(max(0.01, deadline - time.monotonic()))
            if got and got[1]["type"] == msg_type:
                return got
        return None

    def send(self, rid, msg_type, *, timestamp=None, key=None, **fields):
        self.seq += 1
        body = json.dumps({"sequence": self.seq, "timestamp": timestamp or http_date(),
                           "type": msg_type, **fields}).encode()
        self.router.send_multipart([rid] + encode_frames(body, HMAC_SHA256, key or self.session_key))

    def close(self):
        self.http.shutdown()
        self.http.server_close()
        self.ctx.destroy(linger=0)


class RecordingHandler:
    """A minimal JobHandler: answers abort with aborted, records the rest."""

    def __init__(self):
        self.got = []

    def attach(self, session):
        self.session = session

    def heartbeat_fields(self):
        return {"job_state": "idle", "job_id": None}

    def handle(self, msg_type, body, now):
        self.got.append((msg_type, body))
        if msg_type == "abort":
            self.session.send("aborted", {"job_id": None})


@pytest.fixture
def scripted(keys):
    servers = []

    def make(**kw):
        s = ScriptedServer(keys, **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def run_session(keys):
    loops = []

    def start(server, **opts):
        loop = EventLoop(zmq.Context())
        handler = RecordingHandler()
        options = SessionOptions(reconnect_min_delay=0.05, reconnect_max_delay=0.2,
                                 restart_splay=0.1, command_check_timeout=0.5, http_timeout=2)
        for k, v in opts.items():
            setattr(options, k, v)
        ident = NodeIdentity("n1", "acme", server.url, keys["client"], client_name="host1")
        session = NodeSession(loop, ident, handler, options, facts=lambda: {"name": "n1"})
        session.start()
        loop.start_thread()
        loops.append((loop, session))
        return session, handler

    yield start
    for loop, session in loops:
        loop.call_soon_threadsafe(session.stop)
        loop.stop()
        time.sleep(0.05)
        loop.close()
        loop.context.destroy(linger=0)


def test_handshake_ccpk_and_first_heartbeat(scripted, run_session):
    server = scripted()
    session, _ = run_session(server)
    rid, body = server.recv_type("heartbeat")
    path, headers = server.requests[0]
    query = parse_qs(urlsplit(path).query)
    assert urlsplit(path).path == "/organizations/acme/pushy/config/n1"
    assert query["version"] == ["2.0"]
    assert query["ccpk"] == [session.curve_keys[0]] and len(z85_decode(query["ccpk"][0])) == 32
    assert "%" in path.split("ccpk=")[1] or all(c.isalnum() for c in session.curve_keys[0])
    assert headers["X-Ops-UserId"] == "n1"
    assert body["node"] == "n1" and body["org"] == "acme" and body["client"] == "host1"
    assert body["incarnation_id"] == session.incarnation_id and body["sequence"] == 1
    assert body["job_state"] == "idle" and body["job_id"] is None
    _, second = server.recv_type("heartbeat")
    assert second["sequence"] == 2


def test_stale_and_forged_messages_are_dropped(scripted, run_session):
    server = scripted()
    session, handler = run_session(server)
    rid, _ = server.recv_type("heartbeat")
    server.send(rid, "abort", timestamp=http_date(time.time() - 600))  # C3: old is stale too
    server.send(rid, "abort", timestamp=http_date(time.time() + 600))
    server.send(rid, "abort", key=b"x" * 32)
    server.router.send_multipart([rid, b"garbage"])
    server.router.send_multipart([rid, b"Version:2.0;SigningMethod:hmac_sha256;Signature:AAAA", b"{"])
    wait_for(lambda: session.stats["dropped"] >= 5, message="5 drops")
    assert handler.got == []
    server.send(rid, "abort")
    assert server.recv_type("aborted") is not None
    assert [t for t, _ in handler.got] == ["abort"]


def test_no_message_on_command_port_triggers_full_reconfigure(scripted, run_session):
    server = scripted()
    session, _ = run_session(server)
    assert server.recv_type("heartbeat")
    # the server stays silent on the command port: reconfigure after ~0.5 s of wall time
    wait_for(lambda: len(server.requests) >= 2, timeout=5, message="second config fetch")
    assert session.stats["reconfigures"] >= 1


def test_command_message_disarms_the_check(scripted, run_session):
    server = scripted()
    session, _ = run_session(server)
    rid, _ = server.recv_type("heartbeat")
    server.send(rid, "ack")
    wait_for(lambda: session.command_channel_ok, message="command channel ok")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        server.heartbeat()
        time.sleep(0.05)
    assert len(server.requests) == 1


def test_new_server_incarnation_reconfigures(scripted, run_session):
    server = scripted()
    session, _ = run_session(server)
    rid, _ = server.recv_type("heartbeat")
    server.send(rid, "ack")
    wait_for(lambda: session.command_channel_ok)
    wait_for(lambda: (server.heartbeat(), session.stats["server_heartbeats"] > 0)[1], message="heartbeat seen")
    old = server.incarnation
    server.incarnation = str(uuid.uuid4())
    wait_for(lambda: (server.heartbeat(), len(server.requests) >= 2)[1], timeout=5,
             message="reconfigure after the incarnation change")
    assert session.server_incarnation != old


def test_server_silence_goes_offline_then_reconnects(scripted, run_session):
    server = scripted()
    session, _ = run_session(server)
    rid, _ = server.recv_type("heartbeat")
    server.send(rid, "ack")
    # no server heartbeats at all: offline after > offline_threshold ticks (C11: reconnect loop)
    wait_for(lambda: len(server.requests) >= 2, timeout=5, message="reconnect after offline")


def test_config_failures_retry_forever_with_backoff(scripted, run_session):
    server = scripted()
    server.http_status = 503
    session, _ = run_session(server)
    wait_for(lambda: len(server.requests) >= 4, timeout=5, message="retries")
    assert not session.connected
    server.http_status = 200
    assert server.recv_type("heartbeat", timeout=5)
    assert session.connected


def test_legacy_server_needs_allow_unencrypted(scripted, run_session):
    server = scripted(curve=False)
    session, _ = run_session(server)
    wait_for(lambda: session.stats["config_failures"] >= 2, message="refused legacy config")
    assert not session.connected

    server2 = scripted(curve=False)
    session2, handler = run_session(server2, allow_unencrypted=True)
    rid, body = server2.recv_type("heartbeat")
    server2.send(rid, "abort")
    assert server2.recv_type("aborted")
    deadline = time.monotonic() + 0.8  # longer than command_check_timeout: no check in legacy mode
    while time.monotonic() < deadline:
        server2.heartbeat()
        time.sleep(0.05)
    assert len(server2.requests) == 1 and session2.connected


def test_backoff_is_exponential_jittered_and_capped():
    import random

    rng = random.Random(1)
    for attempt, cap in ((1, 1), (2, 2), (3, 4), (4, 8), (10, 60), (50, 60)):
        for _ in range(50):
            d = backoff_delay(attempt, 1.0, 60.0, rng)
            assert cap / 2 <= d <= cap
    spread = {round(backoff_delay(3, 1.0, 60.0, rng), 3) for _ in range(100)}
    assert len(spread) > 50  # a thousand agents do not retry in the same instant


def test_fit_output_truncates_but_never_drops_the_message():
    def build(out, err):
        d = {"type": "succeeded", "job_id": "j"}
        if out is not None:
            d["stdout"] = out
        if err is not None:
            d["stderr"] = err
        return json.dumps(d, separators=(",", ":")).encode()

    small = fit_output(build, "a", "b", 1000)
    assert json.loads(small)["stdout"] == "a"
    body = fit_output(build, "x" * 100000 + "TAIL", "\x00" * 30000, 63000)
    assert len(body) <= 63000
    d = json.loads(body)
    assert d["job_id"] == "j" and "truncated" in d["stdout"] and d["stdout"].endswith("TAIL")
    assert d["stdout"].startswith("xxxx")


def test_a_restarted_server_is_noticed_during_a_long_backoff(scripted, run_session):
    server = scripted()
    session, _ = run_session(server, reconnect_min_delay=20.0, reconnect_max_delay=30.0)
    rid, _ = server.recv_type("heartbeat")
    server.send(rid, "ack")
    wait_for(lambda: session.command_channel_ok)
    server.http_status = 503  # the server "goes down": no heartbeats, no config
    wait_for(lambda: not session.connected, timeout=5, message="offline")
    requests_when_down = len(server.requests)
    time.sleep(0.3)
    assert len(server.requests) == requests_when_down  # waiting out a long backoff
    server.http_status = 200  # ... and comes back with a new incarnation
    server.incarnation = str(uuid.uuid4())
    t0 = time.monotonic()
    wait_for(lambda: (server.heartbeat(), session.connected)[1], timeout=5, message="reconnected")
    assert time.monotonic() - t0 < 3  # not the 10-30 s backoff delay
    assert session.server_incarnation == server.incarnation


def test_config_lifetime_triggers_a_jittered_full_reconfigure(scripted, run_session):
    server = scripted(lifetime=1)
    session, _ = run_session(server)
    rid, _ = server.recv_type("heartbeat")
    server.send(rid, "ack")
    t0 = time.monotonic()
    wait_for(lambda: (server.heartbeat(), len(server.requests) >= 2)[1], timeout=5,
             message="lifetime reconfigure")
    assert 0.85 <= time.monotonic() - t0 <= 2.0


def test_simulated_jobs_speak_the_agent_protocol(scripted, keys):
    """Many sessions on one loop with SimulatedJobs: what the fleet simulator does."""
    from pushjobs.agent.simulated import SimulatedJobs

    server = scripted()
    loop = EventLoop(zmq.Context())
    sessions = []
    for i in range(3):
        ident = NodeIdentity(f"n{i}", "acme", server.url, keys["client"])
        sessions.append(NodeSession(loop, ident, SimulatedJobs(f"n{i}", duration=0.1,
                                                               commands={"chef-client"}),
                                    SessionOptions(report_facts=False)))
    for s in sessions:
        s.start()
    loop.start_thread()
    try:
        routes = {}
        while len(routes) < 3:
            rid, body = server.recv_type("heartbeat")
            routes[body["node"]] = rid
        job = "c" * 32
        server.send(routes["n0"], "commit", job_id=job, command="chef-client", capture=True)
        _, body = server.recv_type("ack_commit")
        assert body["node"] == "n0" and body["job_id"] == job
        server.send(routes["n1"], "commit", job_id=job, command="rm -rf /")
        _, body = server.recv_type("nack_commit")
        assert body["node"] == "n1"
        server.send(routes["n0"], "run", job_id=job)
        assert server.recv_type("ack_run")
        _, body = server.recv_type("succeeded")
        assert body["stdout"] == "simulated chef-client\n" and body["node"] == "n0"
    finally:
        for s in sessions:
            loop.call_soon_threadsafe(s.stop)
        loop.stop()
        time.sleep(0.05)
        loop.close()
        loop.context.destroy(linger=0)


def test_config_fetch_failure_reason_is_one_warning_line_without_query(run_session, caplog):
    """The reason is logged at WARNING (same reason: at most once a minute, the
    rest at DEBUG), in one line, never with the `?ccpk=` query string."""
    import logging
    import socket
    import types

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connection refused
    caplog.set_level(logging.DEBUG)
    dead = types.SimpleNamespace(url=f"http://127.0.0.1:{port}/organizations/acme")
    session, _ = run_session(dead)
    wait_for(lambda: session.stats["config_failures"] >= 5, timeout=10, message="retries")
    fails = [r for r in caplog.records if "could not get the push jobs config" in r.getMessage()]
    assert len(fails) >= 5
    warned = [r for r in fails if r.levelno == logging.WARNING]
    assert len(warned) == 1 and fails[0] is warned[0]
    for r in fails:
        msg = r.getMessage()
        assert "ccpk" not in msg and "?" not in msg and "\n" not in msg
        assert "Connection refused" in msg and "object at 0x" not in msg


class RefusingDealer(zmq.Socket):
    """A real DEALER whose send queue is "full" (EAGAIN) for the next `refuse` job messages."""

    refuse = 0

    def send_multipart(self, frames, flags=0, **kw):
        if RefusingDealer.refuse > 0 and b'"heartbeat"' not in frames[-1]:
            RefusingDealer.refuse -= 1
            raise zmq.Again()
        return super().send_multipart(frames, flags=flags, **kw)


class RefusingContext(zmq.Context):
    _socket_class = RefusingDealer


def test_a_job_message_refused_by_a_full_queue_is_retried_in_order(scripted, keys):
    """Found in CI under load: `succeeded` hit the DEALER's SNDHWM once and then
    waited for a reconnect that never came (the heartbeats got through), so the
    job hung. It must be retried promptly, in order, without a reconnect."""
    server = scripted()
    loop = EventLoop(zmq.Context())
    ctx = RefusingContext()
    options = SessionOptions(reconnect_min_delay=0.05, reconnect_max_delay=0.2, restart_splay=0.1,
                             command_check_timeout=0.5, http_timeout=2)
    ident = NodeIdentity("n1", "acme", server.url, keys["client"], client_name="host1")
    handler = RecordingHandler()
    session = NodeSession(loop, ident, handler, options, facts=lambda: {"name": "n1"}, context=ctx)
    session.start()
    loop.start_thread()
    try:
        server.recv_type("heartbeat")
        wait_for(lambda: session.stats.get("reconfigures", 0) == 0 and session.phase == "connected",
                 message="connected")
        RefusingDealer.refuse = 2
        loop.call_soon_threadsafe(lambda: session.send("ack_run", {"job_id": "j1"}))
        loop.call_soon_threadsafe(lambda: session.send("succeeded", {"job_id": "j1"}))
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            m = server.recv(0.5)
            if m and m[1]["type"] != "heartbeat":
                got.append(m[1]["type"])
        assert got == ["ack_run", "succeeded"]
        assert session.stats["send_failures"] == 2
        assert session.stats.get("reconfigures", 0) == 0
    finally:
        RefusingDealer.refuse = 0
        loop.call_soon_threadsafe(session.stop)
        loop.stop()
        time.sleep(0.05)
        loop.close()
        ctx.destroy(linger=0)
        loop.context.destroy(linger=0)
