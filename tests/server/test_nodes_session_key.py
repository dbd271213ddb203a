"""The session key used by the receive and send paths is the runtime's current one (#8).

`Runtime._existing_session_key` reads its dict without the lock (the lock cost
~8 % of the server's CPU at 5,000 nodes); nothing caches the key elsewhere, so
a key stored by a handshake is the key of the very next message, both ways.
The reference server never rotates keys (S17: a new config request returns the
same key, checked here with a real handshake); a rotation is emulated by
storing a new key the way `Runtime.session_key` does (under the lock).

In process, like test_broker.py: a real Runtime + Flask app, real ZeroMQ,
real SQLite and a FakeNode (real DEALER/SUB, CurveZMQ, HMAC) in its thread;
the test thread calls `registry.on_frames` directly between two yields to
the hub, so "the next message" is exactly that.
"""

from __future__ import annotations

import os

from tests.server.test_broker import (  # noqa: F401  (fixtures)
    acme,
    available,
    blocking,
    connect,
    gwait,
    live,
    live_overrides,
    nodes,
)


def test_new_config_handshake_keeps_the_key_and_messages_verify(live, acme, nodes):
    n = connect(live, acme, "web1")
    nodes.append(n)
    gwait(lambda: available(live, "web1"))
    reg, rt = live.runtime.registry, live.runtime
    old = n.session_key
    blocking(n.fetch_config)  # a real second handshake (S17: same key)
    assert n.session_key == old == rt._existing_session_key("acme", "web1")
    rid = reg.entries[("acme", "web1")].bound_id
    hb = reg.heartbeats_processed
    reg.on_frames(rid, n.sign(n.body("heartbeat", job_state="idle")))
    assert reg.heartbeats_processed == hb + 1
    assert live.runtime.drop_counts["bad_signature"] == 0


def test_a_new_session_key_is_seen_by_the_next_message_both_ways(live, acme, nodes):
    n = connect(live, acme, "web1")
    nodes.append(n)
    gwait(lambda: available(live, "web1"))
    reg, rt = live.runtime.registry, live.runtime
    rid = reg.entries[("acme", "web1")].bound_id
    old, new = n.session_key, os.urandom(32)
    assert rt._existing_session_key("acme", "web1") == old

    # what a rotating handshake would do: store the node's new key (writer, under the lock)
    with rt._lock:
        rt._session_keys[("acme", "web1")] = new
    n.session_key = new  # the node's own later messages and its verification of ours
    bad = rt.drop_counts["bad_signature"]
    hb = reg.heartbeats_processed

    reg.on_frames(rid, n.sign(n.body("heartbeat", job_state="idle"), key=old))
    assert rt.drop_counts["bad_signature"] == bad + 1, "the old key is refused at once"
    assert reg.heartbeats_processed == hb

    reg.on_frames(rid, n.sign(n.body("heartbeat", job_state="idle"), key=new))
    assert reg.heartbeats_processed == hb + 1, "the new key is accepted at once"
    assert rt.drop_counts["bad_signature"] == bad + 1

    # the send side signs with the new key too: the node verifies the `ack` with it
    acks = n.count("ack")
    assert reg.send_to(("acme", "web1"), "ack", {})
    gwait(lambda: n.count("ack") > acks, message="ack signed with the new key")
    # and the node's own heartbeats (signed with the new key) keep it available
    hb = reg.heartbeats_processed
    gwait(lambda: reg.heartbeats_processed >= hb + 3, message="heartbeats with the new key")
    assert available(live, "web1")


def test_unknown_node_has_no_key_and_creates_no_state(live, acme, nodes):
    """S7 still holds without the lock: no handshake, no key, nothing created."""
    n = connect(live, acme, "web1")
    nodes.append(n)
    gwait(lambda: available(live, "web1"))
    reg, rt = live.runtime.registry, live.runtime
    assert rt._existing_session_key("acme", "ghost") is None
    body = n.body("heartbeat", job_state="idle")
    body["node"] = body["client"] = "ghost"
    bad = rt.drop_counts["bad_signature"]
    reg.on_frames(b"\x00ghost", n.sign(body))
    assert rt.drop_counts["bad_signature"] == bad + 1
    assert ("acme", "ghost") not in reg.entries
