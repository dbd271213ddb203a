"""The fleet simulator against a real push-jobs-server subprocess (small N, 150 ms heartbeats).

The nodes are the agent's real protocol sessions: if these pass, N simulated
nodes did the signed config handshake, CurveZMQ, heartbeats and the job
protocol with the real server.
"""

from __future__ import annotations

import json
import subprocess
import time
import types
from pathlib import Path

import pytest
import requests

from pushjobs.protocol.errors import ProtocolError
from pushjobs.tools.fleet import (Fleet, FleetCodec, FleetError, FleetOptions, FleetPoller, HeartbeatWheel,
                                  assign_behaviours, check_loopback_url, is_loopback_host, main,
                                  parse_metrics_text, parse_mix, zmq_address_is_loopback)
from tests.helpers.server import BIN_DIR, wait_for

# --------------------------------------------------------------------------------------
# pure parts


def test_behaviour_mix_parsing_and_deterministic_assignment():
    assert parse_mix("succeed") == [("succeed", 1)]
    mix = parse_mix("succeed=90, fail=5,nack=5")
    assert mix == [("succeed", 90), ("fail", 5), ("nack", 5)]
    kinds = assign_behaviours(mix, 100)
    assert kinds.count("succeed") == 90 and kinds.count("fail") == 5 and kinds.count("nack") == 5
    assert assign_behaviours(mix, 100) == kinds  # deterministic
    odd = assign_behaviours(parse_mix("succeed=1,fail=1,nack=1"), 4)
    assert len(odd) == 4 and set(odd) == {"succeed", "fail", "nack"}
    for bad in ("dance", "succeed=x", "succeed=-1", "", "succeed=0"):
        with pytest.raises(FleetError):
            parse_mix(bad)


def test_only_loopback_is_ever_a_target():
    for ok in ("127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"):
        assert is_loopback_host(ok), ok
    for bad in ("10.0.0.1", "192.168.1.1", "8.8.8.8", "example.com", "", None, "0.0.0.0"):
        assert not is_loopback_host(bad), bad
    assert check_loopback_url("http://127.0.0.1:10003/") == "http://127.0.0.1:10003"
    for url in ("http://10.1.2.3:10003", "https://push.example.com", "ftp://127.0.0.1/"):
        with pytest.raises(FleetError):
            check_loopback_url(url)
    assert zmq_address_is_loopback("tcp://127.0.0.1:10000")
    assert not zmq_address_is_loopback("tcp://172.16.0.1:10000")
    assert not zmq_address_is_loopback("tcp://push.example.com:10000")


def test_fleet_refuses_a_non_loopback_server_before_any_traffic(tmp_path):
    opts = FleetOptions(server_url="http://192.168.10.10:10003", org="o", prefix="n", count=1,
                        key_path=str(tmp_path / "missing.pem"))
    with pytest.raises(FleetError, match="loopback"):
        Fleet(opts)


def test_cli_reports_bad_options_clearly(capsys, tmp_path):
    rc = main(["--server-url", "http://10.0.0.1:1", "--org", "o", "--prefix", "n", "--count", "1",
               "--key", str(tmp_path / "k.pem")])
    assert rc == 2
    assert "loopback" in capsys.readouterr().err
    rc = main(["--org", "o", "--prefix", "n", "--count", "1", "--key", str(tmp_path / "nope.pem"),
               "--server-url", "http://127.0.0.1:1"])
    assert rc == 2
    assert "cannot read the client key" in capsys.readouterr().err


def test_parse_metrics_text():
    text = "# HELP x y\n# TYPE x gauge\npushjobs_nodes_online 3.0\nfoo{a=\"b\"} 2\n"
    assert parse_metrics_text(text) == {"pushjobs_nodes_online": 3.0, 'foo{a="b"}': 2.0}


# --------------------------------------------------------------------------------------
# against a real server



@pytest.fixture(scope="module")
def srv(module_server_factory):
    s = module_server_factory(heartbeat_interval=150,
                              settings={"log_level": "info", "voting_timeout": 3})
    s.create_org("acme")
    return s


@pytest.fixture(scope="module")
def admin(srv):
    return srv.client(srv.create_user("fleetadmin", org="acme", admin=True))


def make_clients(srv, prefix: str, count: int) -> Path:
    """`ctl client-create --count N --prefix P --key-out KEY`: P1..PN sharing one key."""
    srv.keys_dir.mkdir(exist_ok=True)
    key = srv.keys_dir / f"fleet-{prefix}.pem"
    srv.ctl("client-create", "--org", "acme", "--count", str(count), "--prefix", prefix,
            "--key-out", str(key))
    return key


def node_states(admin) -> dict[str, str]:
    r = admin.get("node_states")
    assert r.status_code == 200, r.text
    return {e["node_name"]: e["availability"] for e in r.json()}


def wait_available(admin, names, timeout: float = 20.0) -> None:
    wait_for(lambda: all(node_states(admin).get(n) == "available" for n in names), timeout=timeout,
             message=f"{names} available")


@pytest.mark.e2e
def test_fleet_nodes_connect_and_answer_a_job_by_behaviour(srv, admin):
    key = make_clients(srv, "f", 4)
    opts = FleetOptions(server_url=srv.base_url, org="acme", prefix="f", count=4, key_path=str(key),
                        behaviour="succeed=2,fail=1,nack=1", ramp=0.3, latency=0.02)
    fleet = Fleet(opts)
    fleet.start()
    try:
        names = [f"f{i}" for i in range(1, 5)]
        wait_available(admin, names)
        st = wait_for(lambda: (lambda s: s if s.confirmed == 4 else None)(fleet.stats()), timeout=10,
                      message="4 confirmed sessions")
        assert st.connected == 4 and st.idle == 4
        # heartbeats flow both ways
        wait_for(lambda: fleet.stats().counters.get("server_heartbeats", 0) >= 8, timeout=5,
                 message="server heartbeats received")
        assert fleet.stats().counters.get("heartbeats_sent", 0) >= 4

        job_id = admin.create_job("chef-client", names, quorum=3)
        job = admin.wait_job(job_id, timeout=20)
        assert job["status"] == "complete", job
        assert sorted(job["nodes"].get("succeeded", [])) == ["f1", "f2"], job
        assert job["nodes"].get("failed") == ["f3"]
        assert job["nodes"].get("nacked") == ["f4"]
        c = fleet.stats().counters
        assert c["received_commit"] >= 4 and c["sent_nack_commit"] >= 1
        assert c["sent_succeeded"] >= 2 and c["sent_failed"] >= 1
        # they are idle and available again afterwards
        wait_available(admin, names)
    finally:
        fleet.stop()


@pytest.mark.e2e
def test_shared_sub_slow_silent_and_disconnect(srv, admin):
    key = make_clients(srv, "g", 4)
    opts = FleetOptions(server_url=srv.base_url, org="acme", prefix="g", count=4, key_path=str(key),
                        behaviour="slow=1,silent=1,disconnect=1,succeed=1", ramp=0.2, slow_time=0.6,
                        rejoin_after=0.5, shared_sub=True)
    fleet = Fleet(opts)
    fleet.start()
    try:
        wait_available(admin, ["g1", "g2", "g3", "g4"])
        # one real SUB for the process, every session still gets (and verifies) the heartbeats
        assert fleet.hub is not None and len(fleet.hub.subs) == 1
        wait_for(lambda: all(s.stats["server_heartbeats"] >= 2 for s in fleet.sessions), timeout=5,
                 message="every session saw server heartbeats")
        # idle nodes in the steady state beat through the wheel's lean path (real sockets, batch)
        wait_for(lambda: fleet.stats().counters.get("lean_beats", 0) >= 4, timeout=5, message="lean beats")

        # slow: the job takes at least slow_time
        t0 = time.monotonic()
        job = admin.wait_job(admin.create_job("chef-client", ["g1"]), timeout=15)
        assert job["status"] == "complete" and job["nodes"].get("succeeded") == ["g1"]
        assert time.monotonic() - t0 >= 0.6

        # silent: never votes; the voting timeout (3 s) fails the quorum
        job = admin.wait_job(admin.create_job("chef-client", ["g2"]), timeout=15)
        assert job["status"] == "quorum_failed" and job["nodes"].get("unavailable") == ["g2"]

        # disconnect: vanishes on commit, goes offline, then rejoins as a new incarnation
        job = admin.wait_job(admin.create_job("chef-client", ["g3"]), timeout=20)
        assert job["status"] == "quorum_failed", job
        wait_for(lambda: fleet.stats().counters.get("rejoins", 0) == 1, timeout=10, message="rejoin")
        wait_available(admin, ["g3"])
        job = admin.wait_job(admin.create_job("chef-client", ["g3", "g4"]), timeout=15)
        assert job["status"] == "complete" and sorted(job["nodes"]["succeeded"]) == ["g3", "g4"]
    finally:
        fleet.stop()


@pytest.mark.e2e
def test_cli_with_two_processes_reports_and_stops_by_itself(srv, admin, tmp_path):
    key = make_clients(srv, "h", 6)
    stats = tmp_path / "stats.jsonl"
    cmd = [str(BIN_DIR / "pushjobs-fleet"), "--server-url", srv.base_url, "--org", "acme", "--prefix", "h",
           "--count", "6", "--key", str(key), "--processes", "2", "--ramp", "0.5",
           "--report-interval", "0.5", "--duration", "6", "--stats-file", str(stats)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_available(admin, [f"h{i}" for i in range(1, 7)])
        wait_for(lambda: stats.exists() and any(
            json.loads(line)["confirmed"] == 6 and json.loads(line)["server"].get("pushjobs_nodes_available", 0) >= 6
            for line in stats.read_text().splitlines()), timeout=10, message="a report with 6 confirmed nodes")
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "nodes 6 connected 6 confirmed 6" in out
    rows = [json.loads(line) for line in stats.read_text().splitlines()]
    assert rows[-1]["nodes"] == 6 and rows[-1]["counters"]["heartbeats_sent"] > 6
    # the server sees the nodes go away once the fleet has stopped
    r = requests.get(srv.base_url + "/pushy/_status", timeout=5)
    assert r.status_code == 200


def _session(loop, codec, *, wall=lambda: 1764393600.25, heartbeats=None, name="wéb-1"):
    from pushjobs.agent.connection import ServerConfig
    from pushjobs.agent.session import NodeIdentity, NodeSession, SessionOptions
    from pushjobs.tools.fleet import Behaviour, SimulatedRunner

    fleet = types.SimpleNamespace(count=lambda *a: None)
    ident = NodeIdentity(name, "acme", "http://127.0.0.1:1/organizations/acme", private_key=None,
                         client_name=name)
    s = NodeSession(loop, ident, SimulatedRunner(name, Behaviour(), loop, fleet), SessionOptions(),
                    wall_clock=wall, codec=codec, heartbeats=heartbeats)
    s.config = ServerConfig(out_addr="tcp://127.0.0.1:1", command_addr="tcp://127.0.0.1:2", interval=1.0,
                            offline_threshold=3, online_threshold=2, public_key=None, curve_public_key=None,
                            session_key=b"k" * 32, lifetime=3600.0, max_message_skew=300.0,
                            max_body_size=65536, incarnation_id="x")
    return s


def test_template_heartbeats_are_byte_identical_to_the_agents_encoder():
    """The template codec must put exactly the agent's bytes on the wire (it only skips work)."""
    from pushjobs.agent.loop import EventLoop
    from pushjobs.agent.session import MessageCodec
    from pushjobs.protocol.signing import decode_frames

    loop = EventLoop(workers=1)
    try:
        fast, agent = FleetCodec(), MessageCodec()
        clock = [1764393600.25]
        s = _session(loop, fast, wall=lambda: clock[0])
        for fields in ({"job_state": "idle", "job_id": None}, {"job_state": "committed", "job_id": "a" * 32},
                       {"job_state": "running", "job_id": "b" * 32}):
            for seq in (0, 41, 9999):
                for t in (1764393600.25, 1764393600.99, 1764393601.0, 1764397200.5):  # date cache turns over
                    clock[0] = t
                    s._sequence = seq
                    got = fast.encode(s, "heartbeat", fields)
                    s._sequence = seq
                    assert agent.encode(s, "heartbeat", fields) == got
                    assert s._sequence == seq + 1
                    body = decode_frames(got, lambda _b: b"k" * 32, now=t, methods=("hmac_sha256",),
                                         max_body_size=65536, max_skew=300)
                    assert body["sequence"] == seq + 1 and body["job_state"] == fields["job_state"]
        # a new incarnation gets a new template
        s.incarnation_id = "new-incarnation"
        s._sequence = 0
        got = fast.encode(s, "heartbeat", {"job_state": "idle", "job_id": None})
        s._sequence = 0
        assert agent.encode(s, "heartbeat", {"job_state": "idle", "job_id": None}) == got
        # anything unusual goes through the agent's own encoder (and its validation)
        assert fast.encode(s, "heartbeat", {"job_state": "idle", "job_id": None, "x": 1})
        with pytest.raises(ProtocolError):
            fast.encode(s, "heartbeat", {"job_state": "dancing", "job_id": None})
        assert FleetCodec(fast_heartbeats=False).encode(s, "ack_commit", {"job_id": "c" * 32})
    finally:
        loop.close()


def test_server_heartbeat_verification_is_memoized_but_never_skipped():
    """Identical signed bytes are verified once per server key; forged or re-signed bytes never pass."""
    import uuid

    from pushjobs.agent.connection import ServerConfig
    from pushjobs.agent.loop import EventLoop
    from pushjobs.protocol.framing import RSA2048_SHA1
    from pushjobs.protocol.keys import generate_rsa_key
    from pushjobs.protocol.messages import dumps
    from pushjobs.protocol.signing import encode_frames
    from pushjobs.protocol.timestamps import http_date

    server_key, other_key = generate_rsa_key(), generate_rsa_key()
    loop = EventLoop(workers=1)
    try:
        codec = FleetCodec()
        now = time.time()
        sessions = []
        for i in range(3):
            s = _session(loop, codec, wall=lambda: now, name=f"n{i}")
            s.config = ServerConfig(**{**s.config.__dict__, "public_key": server_key.public_key()})
            sessions.append(s)
        body = dumps({"type": "heartbeat", "server": "h", "org": "acme", "timestamp": http_date(now),
                      "incarnation_id": str(uuid.uuid4()), "sequence": 1, "job_state": "running"})
        frames = encode_frames(body, RSA2048_SHA1, server_key)
        for s in sessions:
            got = s._decode(frames, "heartbeat")
            assert got is not None and got["sequence"] == 1
            got["sequence"] = 99  # a caller's copy: the memo is not touched
        assert len(codec.verified) == 1
        # signed by another key: dropped, not memoized
        forged = encode_frames(body, RSA2048_SHA1, other_key)
        assert sessions[0]._decode(forged, "heartbeat") is None and sessions[0].stats["dropped"] == 1
        # a session that trusts the other key: its own verification (key is part of the memo)
        odd = _session(loop, codec, wall=lambda: now, name="odd")
        odd.config = ServerConfig(**{**odd.config.__dict__, "public_key": other_key.public_key()})
        assert odd._decode(frames, "heartbeat") is None
        assert odd._decode(forged, "heartbeat") is not None
        # tampered body bytes with a valid header: dropped
        assert sessions[1]._decode([frames[0], frames[1].replace(b'"sequence":1', b'"sequence":2')],
                                   "heartbeat") is None
        # old entries go away
        for i in range(2, 40):
            b = body.replace(b'"sequence":1', f'"sequence":{i}'.encode())
            assert sessions[2]._decode(encode_frames(b, RSA2048_SHA1, server_key), "heartbeat") is not None
        assert len(codec.verified) <= 16
    finally:
        loop.close()


class _Beating:
    """Stands in for a session in the wheel: counts beats and asks for the next one."""

    def __init__(self, wheel, interval, node):
        self.wheel, self.interval, self.node = wheel, interval, node
        self.beats: list[float] = []

    def beat(self):
        self.beats.append(self.wheel.loop.clock())
        self.wheel.schedule(self, self.interval)


def test_heartbeat_wheel_beats_each_session_exactly_once_per_interval():
    """500 sessions at a 1 s interval: one beat per interval each, on an exact grid (late by less
    than one 100 ms slot, never drifting), and ~10 batches a second instead of 500 timers."""
    from pushjobs.agent.loop import EventLoop

    class NoWait:  # a Poller that never blocks: the test drives a fake clock
        def register(self, sock): pass
        def unregister(self, sock): pass
        def poll(self, timeout): return []
        def pending(self): return False
        def note_send(self, sock): pass
        def close(self): pass

    clock = [1000.0]
    loop = EventLoop(workers=1, clock=lambda: clock[0], timer_grain=0.01, poller=NoWait())
    try:
        wheel = HeartbeatWheel(loop, batch=0.1)
        sessions = [_Beating(wheel, 1.0, f"n{i}") for i in range(500)]
        for i, s in enumerate(sessions):
            wheel.schedule(s, i / 500)  # spread over the first second
        # rescheduling or cancelling never makes a session beat twice
        wheel.schedule(sessions[0], 0.0)
        wheel.schedule(sessions[0], 0.0)
        wheel.cancel(sessions[1])
        assert len(loop._timers) <= 101  # one timer per 10 ms slot, not one per session
        while clock[0] < 1010.0:
            clock[0] = round(clock[0] + 0.005, 6)
            loop._run_once()
        assert sessions[1].beats == []
        for i, s in enumerate(sessions):
            if i == 1:
                continue
            offset = i / 500
            assert len(s.beats) in (10, 11), (s.node, s.beats)
            for k, at in enumerate(s.beats):
                late = at - (1000.0 + offset + k)
                assert -1e-6 <= late <= 0.1 + 0.011, (s.node, k, at, late)
        assert wheel.beats == sum(len(s.beats) for s in sessions)
        late_batches = {round(b, 3) for s in sessions for b in s.beats if 1003.0 <= b < 1004.0}
        assert len(late_batches) <= 11, sorted(late_batches)
        assert len(wheel.due) == 499
    finally:
        loop.close()


def test_sessions_use_only_the_public_hooks():
    """The fleet builds plain NodeSessions (no subclass) on a plain EventLoop with its hooks."""
    from pushjobs.agent.loop import EventLoop
    from pushjobs.agent.session import NodeSession

    key_pem = __import__("pushjobs.protocol.keys", fromlist=["x"])
    k = key_pem.generate_rsa_key()
    opts = FleetOptions(server_url="http://127.0.0.1:1", org="o", prefix="n", count=3, key_path="unused",
                        shared_sub=True)
    fleet = Fleet(opts, private_key=k)
    try:
        assert type(fleet.loop) is EventLoop and isinstance(fleet.loop.poller, FleetPoller)
        assert all(type(s) is NodeSession for s in fleet.sessions)
        s = fleet.sessions[0]
        assert s.codec is fleet.codec and s.heartbeats is fleet.heartbeats
        assert s.context.factory is fleet.socket_factory and s.context.owner is fleet.runners[0]
        bad = types.SimpleNamespace(out_addr="tcp://10.0.0.1:1", command_addr="tcp://127.0.0.1:2")
        assert "non-loopback" in s.address_check(bad)
        assert fleet.counters["refused_address"] == 1
        ok = types.SimpleNamespace(out_addr="tcp://127.0.0.1:1", command_addr="tcp://[::1]:2")
        assert s.address_check(ok) is None
    finally:
        fleet.loop.close()
        fleet.zmq_context.term()


def test_send_batch_holds_dealer_sends_until_the_slot_is_encoded():
    """Inside a held batch, DEALER sends queue in order and go out on flush; outside, at once."""
    import zmq

    from pushjobs.tools.fleet import FleetContext, SendBatch

    ctx = zmq.Context()
    batch = SendBatch()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = FleetContext(ctx, None, batch).socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        def recv(timeout_ms=2000):
            if router.poll(timeout_ms):
                return router.recv_multipart()[1:]
            return None

        dealer.send_multipart([b"h", b"now"], flags=zmq.NOBLOCK)
        assert recv() == [b"h", b"now"]
        batch.holding = True
        dealer.send_multipart([b"h", b"1"], flags=zmq.NOBLOCK)
        dealer.send_multipart([b"h", b"2"], flags=zmq.NOBLOCK)
        assert len(batch.items) == 2 and recv(200) is None
        batch.holding = False
        batch.flush()
        assert recv() == [b"h", b"1"] and recv() == [b"h", b"2"] and batch.failed == 0
        # a send that cannot go out when flushed is counted, not raised
        batch.holding = True
        dealer.send_multipart([b"h", b"3"], flags=zmq.NOBLOCK)
        batch.holding = False
        dealer.close(linger=0)
        batch.flush()
        assert batch.failed == 1
    finally:
        router.close(linger=0)
        if not dealer.closed:
            dealer.close(linger=0)
        ctx.term()


# --------------------------------------------------------------------------------------
# shared server heartbeats: verified once, handed to each session at its beat


class _Owner:
    """What a stand-in knows of its node: the runner, whose `session` is the current one."""

    def __init__(self):
        self.session = None


def _hub_fleet(n, *, offline_threshold=2):
    """n real NodeSessions on one loop (fake clock, no network) fed by one HeartbeatHub whose SUB
    is a real PUB/SUB pair on loopback; the wheel beats them. Returns (loop, hub, wheel, sessions,
    publish, clock, close)."""
    import uuid

    import zmq

    from pushjobs.agent.connection import ServerConfig
    from pushjobs.agent.loop import EventLoop
    from pushjobs.agent.session import CONNECTED
    from pushjobs.protocol.framing import RSA2048_SHA1
    from pushjobs.protocol.keys import generate_rsa_key
    from pushjobs.protocol.messages import dumps
    from pushjobs.protocol.signing import encode_frames
    from pushjobs.protocol.timestamps import http_date
    from pushjobs.tools.fleet import FleetContext, HeartbeatHub

    class NoWait:
        def register(self, sock): pass
        def unregister(self, sock): pass
        def poll(self, timeout): return []
        def pending(self): return False
        def note_send(self, sock): pass
        def close(self): pass

    server_key = generate_rsa_key()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    clock = [1000.0]
    loop = EventLoop(ctx, workers=1, clock=lambda: clock[0], timer_grain=0.01, poller=NoWait())
    codec = FleetCodec()
    hub = HeartbeatHub(loop, ctx, codec)
    wheel = HeartbeatWheel(loop, batch=0.1, hub=hub)
    factory = FleetContext(ctx, hub)
    incarnation = [str(uuid.uuid4())]
    sessions = []
    for i in range(n):
        owner = _Owner()
        s = _session(loop, codec, wall=time.time, heartbeats=wheel, name=f"n{i}")
        owner.session = s
        s.handler.session = s
        s.config = ServerConfig(**{**s.config.__dict__, "public_key": server_key.public_key(),
                                   "out_addr": f"tcp://127.0.0.1:{port}",
                                   "offline_threshold": offline_threshold,
                                   "incarnation_id": incarnation[0]})
        s.server_incarnation = incarnation[0]
        sub = factory.socket(zmq.SUB, owner=owner)
        sub.connect(s.config.out_addr)
        s.phase = CONNECTED
        s._conn = types.SimpleNamespace(sub=sub, dealer=None, send=lambda frames: True, closed=False,
                                        close=lambda: None, drain=lambda sock: [])
        wheel.schedule(s, i / n)
        sessions.append(s)
    sub = hub.feeds[f"tcp://127.0.0.1:{port}"].sub
    seq = [0]

    def publish():
        """One signed server heartbeat, delivered to the hub's real SUB (waits for it)."""
        seq[0] += 1
        body = dumps({"type": "heartbeat", "server": "h", "org": "acme", "timestamp": http_date(),
                      "incarnation_id": incarnation[0], "sequence": seq[0], "job_state": "running"})
        before = hub.heartbeats
        deadline = time.monotonic() + 5
        while hub.heartbeats == before:
            assert time.monotonic() < deadline, "the hub's SUB got nothing"
            pub.send_multipart(encode_frames(body, RSA2048_SHA1, server_key))
            if sub.poll(200):
                hub._dispatch(hub.feeds[f"tcp://127.0.0.1:{port}"])

    def close():
        hub.close()
        loop.close()
        pub.close(linger=0)
        ctx.term()

    return loop, hub, wheel, sessions, publish, clock, incarnation, close


def test_shared_heartbeats_are_verified_once_and_every_node_still_judges_the_server_itself():
    """50 nodes on one shared SUB: each server heartbeat is verified once per process and handed
    to every node at its beat (each node's own counters); when they stop, every node declares the
    server offline on its own; heartbeats from a new incarnation make every node reconfigure."""
    loop, hub, wheel, sessions, publish, clock, incarnation, close = _hub_fleet(50)
    offline: list[str] = []
    for s in sessions:
        s._reconnect = (lambda node: lambda reason, **kw: offline.append((node, reason)))(s.node)

    def run(seconds, heartbeat=True):
        end = clock[0] + seconds
        while clock[0] < end:
            if heartbeat and abs(clock[0] - round(clock[0])) < 1e-9:
                publish()
            clock[0] = round(clock[0] + 0.01, 6)
            loop._run_once()

    try:
        run(5.0)
        assert offline == []
        assert all(s.stats["server_heartbeats"] >= 4 for s in sessions)
        assert hub.handed >= 4 * 50
        assert len(codec_verified := hub.codec.verified) <= 16 and len(codec_verified) >= 1
        # no node got a heartbeat twice: per-node count == heartbeats received since it first beat
        assert max(s.stats["server_heartbeats"] for s in sessions) <= hub.heartbeats
        # the server goes quiet: each node counts its own intervals (threshold 2: offline at the 4th)
        run(5.0, heartbeat=False)
        assert sorted(n for n, _ in offline) == sorted(s.node for s in sessions)
        assert all(reason == "server offline" for _, reason in offline)
    finally:
        close()


def test_shared_heartbeats_a_new_incarnation_and_forgeries():
    loop, hub, wheel, sessions, publish, clock, incarnation, close = _hub_fleet(20)
    reconf: list[str] = []
    for s in sessions:
        s._schedule = (lambda node, orig: lambda name, delay, fn: (reconf.append(node) if name == "reconfigure"
                                                                  else orig(name, delay, fn)))(s.node, s._schedule)
    try:
        def run(seconds):
            end = clock[0] + seconds
            while clock[0] < end:
                if abs(clock[0] - round(clock[0])) < 1e-9:
                    publish()
                clock[0] = round(clock[0] + 0.01, 6)
                loop._run_once()

        run(2.0)
        assert reconf == []
        import uuid
        incarnation[0] = str(uuid.uuid4())  # the server restarted
        run(2.0)
        assert sorted(set(reconf)) == sorted(s.node for s in sessions)
        # a forged heartbeat (bad signature) is handed to each session's own pipeline, which drops it
        before = [s.stats["dropped"] for s in sessions]
        feed = next(iter(hub.feeds.values()))
        hub.seq += 1
        feed.history.append([hub.seq, [b"Version:2.0;SigningMethod:rsa2048_sha1;Signature:AAAA", b"{}"], {}])
        clock[0] = round(clock[0] + 1.0, 6)
        loop._run_once()
        for s in sessions:
            while s._conn.sub.inbox:
                s._decode(s._conn.sub.recv_multipart(), "heartbeat")
        assert all(s.stats["dropped"] == b + 1 for s, b in zip(sessions, before))
    finally:
        close()


def test_poller_checks_a_batch_sent_socket_once_later_and_finds_swallowed_input():
    """After a held-back send the poller asks the socket for ZMQ_EVENTS once (CHECK_DELAY later, or
    when epoll reports it first): input whose notification the send processed is still found."""
    import zmq

    from pushjobs.tools.fleet import FleetContext, SendBatch

    ctx = zmq.Context()
    batch = SendBatch()
    clock = [100.0]
    poller = FleetPoller(clock=lambda: clock[0], sends=batch)
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = FleetContext(ctx, None, batch).socket(zmq.DEALER)
    dealer.linger = 0
    dealer.setsockopt(zmq.SNDHWM, 3)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        poller.register(dealer)
        dealer.send_multipart([b"h", b"hello"], flags=zmq.NOBLOCK)
        rid = router.recv_multipart()[0]
        wait_for(lambda: dealer in poller.poll(0.05) or not dealer.poll(0), timeout=5, message="settled")
        while dealer.poll(0):
            dealer.recv_multipart()
        # the server's message arrives; then a batch send processes its notification
        router.send_multipart([rid, b"h", b"commit"])
        wait_for(lambda: zmq.backend.Socket.get(dealer, zmq.FD) and
                 __import__("select").select([dealer.getsockopt(zmq.FD)], [], [], 0)[0], timeout=5,
                 message="notification pending")
        batch.holding = True
        dealer.send_multipart([b"h", b"beat"], flags=zmq.NOBLOCK)
        batch.holding = False
        batch.flush()
        assert poller._check_due  # one check pending for this socket
        got = []
        deadline = time.monotonic() + 5
        while dealer not in got and time.monotonic() < deadline:
            clock[0] += 0.06  # past CHECK_DELAY
            got = poller.poll(0.01)
        assert dealer in got
        assert dealer.recv_multipart(zmq.NOBLOCK) == [b"h", b"commit"]
        assert not poller._check_due
    finally:
        poller.close()
        router.close(linger=0)
        dealer.close(linger=0)
        ctx.term()


def test_lean_beats_in_steady_state_decide_exactly_as_the_full_path():
    """Two identical 30-node fleets driven in lockstep, one with the wheel's lean steady-state
    beat and one with the full path only (`wheel.lean = False`): steady beats take the lean path
    (a node with a job does not), and every node's counters, sequence, liveness, the moment it
    declares the server offline, and the moment it schedules a reconfigure after a server restart
    are the same in both."""
    fleets = []
    for lean in (True, False):
        loop, hub, wheel, sessions, publish, clock, incarnation, close = _hub_fleet(30)
        wheel.lean = lean
        events: list[tuple] = []
        for s in sessions:
            s._reconnect = (lambda node, clk, ev: lambda reason, **kw: ev.append(
                ("reconnect", node, reason, clk[0])))(s.node, clock, events)
            s._schedule = (lambda node, orig, clk, ev: lambda name, delay, fn: (
                ev.append(("schedule", node, name, clk[0])) if name == "reconfigure"
                else orig(name, delay, fn)))(s.node, s._schedule, clock, events)
        fleets.append(dict(loop=loop, hub=hub, wheel=wheel, sessions=sessions, publish=publish, clock=clock,
                           incarnation=incarnation, close=close, events=events))

    def run(seconds, heartbeat=True):
        for _ in range(int(round(seconds / 0.01))):
            for f in fleets:
                clock = f["clock"]
                if heartbeat and abs(clock[0] - round(clock[0])) < 1e-9:
                    f["publish"]()
                clock[0] = round(clock[0] + 0.01, 6)
                f["loop"]._run_once()

    def state(f):
        return [(s.node, dict(s.stats), s._offline_counter, s._online_counter, s._sequence, s.online,
                 s.server_incarnation == f["incarnation"][0], s.handler.fsm.state) for s in f["sessions"]]

    lean, full = fleets
    try:
        run(3.0)
        steady = lean["wheel"].lean_beats
        assert steady >= 0.6 * lean["wheel"].beats  # the first beat of each node is a full one
        assert full["wheel"].lean_beats == 0
        # a job on node 0: its heartbeats say "committed" through the full path
        for f in fleets:
            f["sessions"][0].handler.handle("commit", {"job_id": "j1", "command": "chef-client"},
                                            f["clock"][0])
            assert f["sessions"][0].handler.fsm.state == "committed"
        before = {s.node: s._sequence for s in lean["sessions"]}
        run(3.0)
        for a, b in zip(state(lean), state(full)):
            assert a == b
        assert lean["wheel"].lean_beats - steady >= 29 * 2  # every idle node, every beat but the first
        assert lean["sessions"][0]._sequence > before[lean["sessions"][0].node]  # node 0 still beats
        # a server restart: every node schedules its reconfigure at the same moment in both fleets
        for f in fleets:
            import uuid
            f["incarnation"][0] = str(uuid.uuid4())
        run(2.0)
        assert state(lean) == state(full)
        assert {e[1] for e in lean["events"] if e[2] == "reconfigure"} == {s.node for s in lean["sessions"]}
        # the server goes quiet: every node declares it offline on its own, at the same moment
        run(6.0, heartbeat=False)
        assert state(lean) == state(full)
        assert sorted(lean["events"]) == sorted(full["events"])
        assert {e[1] for e in lean["events"] if e[2] == "server offline"} == {s.node for s in lean["sessions"]}
    finally:
        for f in fleets:
            f["close"]()


def test_lean_beat_sends_the_full_paths_bytes_through_the_send_batch():
    """With a SendBatch (the fleet's production set-up) the lean beat encodes the idle heartbeat
    from the template and joins the batch: byte-identical to the codec's full encoding."""
    from pushjobs.agent.loop import EventLoop
    from pushjobs.agent.session import CONNECTED
    from pushjobs.tools.fleet import SendBatch

    class NoWait:
        def register(self, sock): pass
        def unregister(self, sock): pass
        def poll(self, timeout): return []
        def pending(self): return False
        def note_send(self, sock): pass
        def close(self): pass

    clock = [1000.0]
    loop = EventLoop(workers=1, clock=lambda: clock[0], timer_grain=0.01, poller=NoWait())
    try:
        sends = SendBatch()
        codec = FleetCodec()
        wheel = HeartbeatWheel(loop, batch=0.1, sends=sends)
        s = _session(loop, codec, heartbeats=wheel)
        s.handler.session = s
        dealer = types.SimpleNamespace(batch=sends)
        s._conn = types.SimpleNamespace(sub=None, dealer=dealer, closed=False, close=lambda: None,
                                        drain=lambda sock: [],
                                        send=lambda frames: (sends.items.append((dealer, frames)), True)[1])
        s.phase = CONNECTED
        fields = {"job_state": "idle", "job_id": None}
        sends.holding = True
        assert wheel._lean_beat(s) is False  # no template yet: the full path makes it
        s.send("heartbeat", fields)
        assert wheel._lean_beat(s) is True
        assert wheel.lean_beats == 1 and s.stats["heartbeats_sent"] == 2 and s._offline_counter == 1
        (_, full_frames), (sock, lean_frames) = sends.items
        assert sock is dealer
        s._sequence -= 1  # the same message again, through the codec's general encoder
        assert codec.encode(s, "heartbeat", fields) == lean_frames
        assert full_frames != lean_frames  # (a new sequence number each)
        # anything not steady: the full path
        s._pending.append(("ack_commit", {"job_id": "j"}))
        assert wheel._lean_beat(s) is False
        s._pending.clear()
        s.online = False
        assert wheel._lean_beat(s) is False
        s.online = True
        s._offline_counter = s.config.offline_threshold + 1
        assert wheel._lean_beat(s) is False
        s._offline_counter = 0
        sends.holding = False  # not inside a slot: the session's own send
        assert wheel._lean_beat(s) is True and len(sends.items) == 3
    finally:
        loop.close()


def test_template_hmac_pads_are_rfc2104_hmac_sha256():
    """The heartbeat template's two pre-keyed SHA-256 states give exactly HMAC-SHA256, for keys
    shorter than, equal to and longer than the block."""
    import hmac
    import os

    from pushjobs.protocol.signing import hmac_pad_states as _hmac_sha256_pads

    for n in (0, 1, 32, 63, 64, 65, 200):
        key, body = os.urandom(n), os.urandom(300)
        inner, outer = _hmac_sha256_pads(key)
        for _ in range(2):  # the states are copied per message, never consumed
            i = inner.copy()
            i.update(body)
            o = outer.copy()
            o.update(i.digest())
            assert o.digest() == hmac.digest(key, body, "sha256"), n
