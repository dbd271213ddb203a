"""The broker, node registry and receive pipeline, in process: a real Runtime + Flask app
served by gevent in this process, real ZeroMQ sockets on loopback, real SQLite, and
FakeNodes (real DEALER/SUB, CurveZMQ, HMAC) in their own OS threads.

Why in process: the drop counters by reason (`Runtime.drop_counts`) and the node
registry can be asserted directly. The end-to-end tests (test_e2e_jobs*.py) cover
the same negative cases through the real server subprocess.

The gevent hub runs only while the test thread waits in `gwait` (gevent.sleep), so
every blocking call of the test thread (HTTP, FakeNode start) goes through the hub's
thread pool (`blocking`).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gevent
import pytest
import zmq
from gevent.pywsgi import WSGIServer

from pushjobs.protocol import signing
from pushjobs.protocol.keys import curve_keypair, generate_rsa_key, public_key_pem, write_private_key
from pushjobs.protocol.timestamps import http_date
from pushjobs.server import store
from pushjobs.server.app import create_app
from pushjobs.server.runtime import Runtime
from pushjobs.server.settings import Settings
from tests.helpers.fakenode import FakeNode
from tests.helpers.server import Principal, SignedClient, free_ports


def gwait(pred: Callable[[], Any], timeout: float = 5.0, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        gevent.sleep(0.02)


def blocking(fn: Callable, *args: Any) -> Any:
    """Run a blocking call in a real thread while the hub keeps serving."""
    return gevent.get_hub().threadpool.apply(fn, args)


@dataclass
class InProcessServer:
    settings: Settings
    runtime: Runtime
    base_url: str
    directory: Path
    wsgi: WSGIServer

    def client(self, principal: Principal, *, org: str | None = None) -> SignedClient:
        return SignedClient(self.base_url, principal, org=org)

    def add_principal(self, kind: str, name: str, org: store.Org) -> Principal:
        key = generate_rsa_key()
        path = self.directory / f"{kind}-{name}.pem"
        write_private_key(str(path), key)
        pem = public_key_pem(key.public_key())
        if kind == "client":
            store.Client.create(org=org, name=name, public_key=pem)
        else:
            u = store.User.create(name=name, public_key=pem)
            store.OrgUser.create(org=org, user=u)
        return Principal(name=name, kind=kind, org=org.name, key_path=path)


@pytest.fixture
def live_overrides() -> dict:
    """Settings on top of the short test intervals; modules override this fixture."""
    return {}


@pytest.fixture
def live(tmp_path: Path, live_overrides: dict):
    api, hb, cmd = free_ports(3)
    values = dict(
        data_dir=str(tmp_path), server_name="127.0.0.1", zeromq_listen_address="tcp://127.0.0.1",
        api_listen_address="127.0.0.1", api_port=api, server_heartbeat_port=hb, command_port=cmd,
        heartbeat_interval=100, rehab_timer=100, voting_timeout=1, wait_complete_time=1,
    )
    values.update(live_overrides)
    settings = Settings(**values)
    store.open_database(settings)
    key = generate_rsa_key()
    runtime = Runtime(settings, server_private_key=key)
    app = create_app(settings, runtime, public_key_pem=public_key_pem(key.public_key()))
    runtime.start()
    wsgi = WSGIServer(("127.0.0.1", api), app, log=None)
    wsgi.start()
    srv = InProcessServer(settings, runtime, f"http://127.0.0.1:{api}", tmp_path, wsgi)
    try:
        yield srv
    finally:
        wsgi.stop(timeout=1)
        runtime.stop()
        store.close_database()


@pytest.fixture
def acme(live):
    org = store.Org.create(name="acme", guid=uuid.uuid4().hex)
    return org


def connect(live, acme, name: str, **script) -> FakeNode:
    principal = live.add_principal("client", name, acme)
    node = FakeNode(live, principal)
    for k, v in script.items():
        setattr(node, k, v)
    blocking(node.start)
    return node


@pytest.fixture
def nodes():
    made: list[FakeNode] = []
    yield made
    for n in made:
        blocking(n.stop)


def available(live, name: str) -> bool:
    return live.runtime.node_state("acme", name)["availability"] == "available"


def test_first_contact_abort_then_available(live, acme, nodes):
    n = connect(live, acme, "web1")
    nodes.append(n)
    gwait(lambda: n.count("abort") >= 1, message="abort on first contact")
    gwait(lambda: available(live, "web1"), message="node idle after aborted")
    assert live.runtime.node_states("acme") == [{"node_name": "web1", "availability": "available"}]
    assert live.runtime.node_fsm_count() == 1
    assert live.runtime.node_state("acme", "nosuch") == {
        "node_name": "nosuch", "status": "offline", "availability": "unavailable"}


def test_rehab_resends_abort_until_aborted(live, acme, nodes):
    n = connect(live, acme, "web1", auto_abort=False)
    nodes.append(n)
    gwait(lambda: n.count("abort") >= 3, message="abort re-sent every rehab_timer")
    assert live.runtime.node_state("acme", "web1") == {
        "node_name": "web1", "status": "online", "availability": "unavailable"}
    n.send("aborted", job_id=None)
    gwait(lambda: available(live, "web1"))


def test_server_heartbeats_are_rsa_signed_and_counted(live, acme, nodes):
    n = connect(live, acme, "web1")
    nodes.append(n)
    gwait(lambda: len(n.server_heartbeats) >= 3, message="server heartbeats")
    bodies = [r.body for r in n.server_heartbeats]
    assert {b["incarnation_id"] for b in bodies} == {live.runtime.incarnation_id}
    seqs = [b["sequence"] for b in bodies]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert bodies[0]["type"] == "heartbeat" and "server" in bodies[0]
    assert not [r for r in n.rejected if r.startswith("heartbeat")]


@pytest.mark.parametrize(
    "reason,make_frames",
    [
        ("bad_signature", lambda n: n.sign(n.body("heartbeat", job_state="idle"), key=b"\x01" * 32)),
        ("stale", lambda n: n.sign({**n.body("heartbeat", job_state="idle"),
                                    "timestamp": http_date(time.time() - 3600)})),
        ("body_too_big", lambda n: n.sign({**n.body("heartbeat"), "pad": "x" * 70000})),
        ("frame_count", lambda n: [b"garbage"]),
        ("frame_count", lambda n: n.sign(n.body("heartbeat")) + [b"extra"]),
        ("bad_header", lambda n: [b"Version:9.9;SigningMethod:hmac_sha256;Signature:AAAA", b"{}"]),
        ("header_too_big", lambda n: [b"Version:2.0;" + b"x" * 3000, b"{}"]),
        ("bad_json", lambda n: [signing.encode_frames(b"{not json", signing.HMAC_SHA256, n.session_key)[0],
                                b"{not json"]),
        ("bad_signature", lambda n: signing.encode_frames(
            json.dumps({**n.body("heartbeat"), "node": "ghost"}).encode(), signing.HMAC_SHA256, n.session_key)),
    ],
    ids=["forged", "stale", "oversize", "one-frame", "three-frames", "bad-version", "huge-header",
         "garbage-json", "unknown-node"],
)
def test_bad_messages_dropped_and_counted(live, acme, nodes, reason, make_frames):
    n = connect(live, acme, "web1")
    nodes.append(n)
    gwait(lambda: available(live, "web1"))
    before = live.runtime.drop_counts[reason]
    aborts = n.count("abort")
    n.call(lambda node: node._dealer.send_multipart(make_frames(node)))
    gwait(lambda: live.runtime.drop_counts[reason] == before + 1, message=f"drop counted as {reason}")
    # no state was created for anyone else, the node is untouched and still served
    assert live.runtime.node_fsm_count() == 1
    assert n.count("abort") == aborts
    seen = len(n.server_heartbeats)
    gwait(lambda: len(n.server_heartbeats) > seen, message="heartbeats continue")
    assert available(live, "web1")


def test_message_for_another_node_on_a_bound_connection_is_dropped_s7(live, acme, nodes):
    n1 = connect(live, acme, "web1")
    n2 = connect(live, acme, "web2", heartbeats=False, auto_abort=False)
    nodes += [n1, n2]
    gwait(lambda: available(live, "web1"))
    # web2's valid, correctly signed message travelling on web1's connection
    body = {**n2.body("heartbeat", job_state="idle")}
    frames = n2.sign(body)
    n1.send_frames(frames)
    gwait(lambda: live.runtime.drop_counts["node_mismatch"] == 1, message="node_mismatch drop")
    assert live.runtime.node_state("acme", "web2")["status"] == "offline"


def test_new_connection_gets_ack_and_rebinds(live, acme, nodes):
    n = connect(live, acme, "web1")
    nodes.append(n)
    gwait(lambda: available(live, "web1"))
    blocking(n.stop)
    # the same client process on a new connection (same incarnation, same curve
    # keys): a new routing id for a known node
    again = FakeNode(live, n.principal)
    again.incarnation_id = n.incarnation_id
    again.curve_public, again.curve_secret = n.curve_public, n.curve_secret
    blocking(again.start)
    nodes.append(again)
    gwait(lambda: again.count("ack") >= 1, message="ack on the new connection")
    assert again.count("abort") == 0, "same incarnation: the node stays idle"
    assert available(live, "web1")
    assert live.runtime.node_fsm_count() == 1


def test_incarnation_change_restarts_the_node_fsm(live, acme, nodes):
    n = connect(live, acme, "web1")
    nodes.append(n)
    gwait(lambda: available(live, "web1"))
    aborts = n.count("abort")
    n.incarnation_id = str(uuid.uuid4())  # the client process "restarted"
    gwait(lambda: n.count("abort") > aborts, message="abort after incarnation change")
    gwait(lambda: available(live, "web1"))


def test_zap_refuses_unknown_curve_keys(live, acme, nodes):
    n = connect(live, acme, "web1")
    nodes.append(n)
    gwait(lambda: available(live, "web1"))
    ctx = zmq.Context.instance()
    d = ctx.socket(zmq.DEALER)
    d.linger = 0
    pub, sec = curve_keypair()  # never announced in a config request
    d.curve_serverkey = live.runtime.curve_public_key.encode()
    d.curve_publickey, d.curve_secretkey = pub.encode(), sec.encode()
    d.connect(live.settings.zeromq_listen_address + f":{live.settings.command_port}")
    d.send_multipart(n.sign(n.body("heartbeat", job_state="idle")))
    gwait(lambda: live.runtime.broker.zap_denied >= 1, message="ZAP refusal")
    d.close()
    assert live.runtime.node_fsm_count() == 1


def test_liveness_scanner_declares_a_silent_node_offline(live, acme, nodes):
    n = connect(live, acme, "web1")
    nodes.append(n)
    gwait(lambda: available(live, "web1"))
    n.heartbeats = False
    gwait(lambda: live.runtime.node_state("acme", "web1")["status"] == "offline", timeout=5,
          message="node offline after missed heartbeats")
    assert live.runtime.node_fsm_count() == 0


@pytest.mark.parametrize("live_overrides", [{"disable_curve_encryption": True}])
def test_curve_disabled_plain_dealer_works(live, acme, nodes):
    assert live.runtime.curve_public_key is None
    n = connect(live, acme, "web1", curve=False)
    nodes.append(n)
    assert "curve_public_key" not in n.config, "S6: no curve key advertised when curve is disabled"
    gwait(lambda: available(live, "web1"), message="plain-text node available")
    assert live.runtime.broker.zap is None


def test_zap_allow_list_expiry_and_purge(live):
    rt = live.runtime
    key = b"k" * 32
    rt.allow_curve_key(key, now=100.0)
    assert rt.curve_key_allowed(key, now=100.0 + live.settings.zap_key_lifetime - 1)
    assert not rt.curve_key_allowed(key, now=100.0 + live.settings.zap_key_lifetime)
    assert rt.purge_curve_keys(now=50.0) == 0
    assert rt.purge_curve_keys(now=100.0 + live.settings.zap_key_lifetime) == 1
    assert not rt.curve_key_allowed(key, now=100.0)


def test_heartbeat_naming_an_unknown_job_is_rehabbed_but_a_bogus_aborted_is_not(live, acme, nodes):
    n = connect(live, acme, "web1")
    nodes.append(n)
    gwait(lambda: available(live, "web1"))
    n.heartbeats = False
    aborts = n.count("abort")
    received = live.runtime.registry.received
    # aborted naming a job that does not exist: FSM event only, no rehab (§7.2)
    n.send("aborted", job_id="b" * 32)
    gwait(lambda: live.runtime.registry.received > received, message="aborted processed")
    gevent.sleep(0.3)  # longer than a rehab round trip: an abort would have arrived
    assert n.count("abort") == aborts and available(live, "web1")
    n.heartbeats = True
    # a job message for an unknown job → rehab (abort)
    n.send("ack_commit", job_id="c" * 32)
    gwait(lambda: n.count("abort") > aborts, message="rehab after a message for an unknown job")
    gwait(lambda: available(live, "web1"))
    aborts = n.count("abort")
    # a heartbeat that names a job the server does not run → rehab
    n.call(lambda node: node._dealer.send_multipart(
        node.sign(node.body("heartbeat", job_id="d" * 32, job_state="running"))))
    gwait(lambda: n.count("abort") > aborts, message="rehab after a heartbeat naming a dead job")
    gwait(lambda: available(live, "web1"))


def test_unknown_message_type_is_counted_and_ignored(live, acme, nodes):
    n = connect(live, acme, "web1")
    nodes.append(n)
    gwait(lambda: available(live, "web1"))
    n.send("started", job_id=None)  # a 1.x design-doc message that does not exist in 2.x
    gwait(lambda: live.runtime.drop_counts["unknown_type"] == 1, message="unknown type counted")
    assert available(live, "web1")
