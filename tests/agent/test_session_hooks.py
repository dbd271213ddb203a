"""`NodeSession.server_heartbeat`: a heartbeat verified elsewhere (a fleet's shared SUB) has the
same effect as one arriving on the session's own SUB socket, and nothing while not connected."""

from __future__ import annotations

import uuid

from pushjobs.agent.connection import ServerConfig
from pushjobs.agent.loop import EventLoop
from pushjobs.agent.session import CONNECTED, WAITING, NodeIdentity, NodeSession


class _Handler:
    def attach(self, session):
        self.session = session

    def heartbeat_fields(self):
        return {"job_state": "idle", "job_id": None}

    def handle(self, msg_type, body, now):
        pass


class _Beats:  # a HeartbeatScheduler that only records
    def schedule(self, session, delay):
        pass

    def cancel(self, session):
        pass


def _connected_session(loop):
    inc = str(uuid.uuid4())
    s = NodeSession(loop, NodeIdentity("n1", "acme", "http://127.0.0.1:1/organizations/acme", None,
                                       client_name="n1"), _Handler(), heartbeats=_Beats())
    s.config = ServerConfig(out_addr="tcp://127.0.0.1:1", command_addr="tcp://127.0.0.1:2", interval=1.0,
                            offline_threshold=3, online_threshold=2, public_key=None, curve_public_key=None,
                            session_key=b"k" * 32, lifetime=3600.0, max_message_skew=300.0,
                            max_body_size=65536, incarnation_id=inc)
    s.server_incarnation = inc
    s.phase = CONNECTED
    return s, inc


def test_server_heartbeat_hook_counts_like_the_sub_socket():
    loop = EventLoop(workers=1)
    try:
        s, inc = _connected_session(loop)
        s._offline_counter = 3
        s.server_heartbeat({"type": "heartbeat", "incarnation_id": inc, "sequence": 7})
        assert s.stats["server_heartbeats"] == 1 and s._offline_counter == 0
        assert "reconfigure" not in s._timers
        # not a heartbeat: ignored
        s._offline_counter = 2
        s.server_heartbeat({"type": "commit", "incarnation_id": inc, "sequence": 8})
        assert s.stats["server_heartbeats"] == 1 and s._offline_counter == 2
        # a new server incarnation: a reconfigure is scheduled, as from the SUB
        s.server_heartbeat({"type": "heartbeat", "incarnation_id": str(uuid.uuid4()), "sequence": 1})
        assert "reconfigure" in s._timers
        # not connected: nothing happens
        s.phase = WAITING
        s.server_heartbeat({"type": "heartbeat", "incarnation_id": inc, "sequence": 9})
        assert s.stats["server_heartbeats"] == 2
    finally:
        for t in list(s._timers.values()):
            t.cancel()
        loop.close()
