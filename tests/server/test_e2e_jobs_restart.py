"""End to end: the server restarts while jobs are voting and running (§9.7, S12).

After the restart the unfinished jobs are `crashed` with ALL their open job nodes
(`running` and `new`/`ready` alike), and the nodes come back to `available` on their
own: they see the new server incarnation in the heartbeat, fetch the config again
(new session key, new server curve key), and the new node FSM aborts what they were
doing. No operator action.
"""

from __future__ import annotations

import pytest

from tests.helpers.fakenode import FakeNode
from tests.helpers.server import wait_for

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_restart_mid_job_crashes_jobs_and_nodes_recover(request, server_factory, backend):
    kwargs: dict = {}
    if backend == "postgresql":
        kwargs["database_url"] = request.getfixturevalue("postgres_cluster").create_database()
    srv = server_factory(heartbeat_interval=150, settings={"voting_timeout": 30, "rehab_timer": 200,
                                                           "wait_complete_time": 1}, **kwargs)
    srv.create_org("acme")
    http = srv.client(srv.create_user("alice", org="acme", admin=True))
    n1 = FakeNode(srv, srv.create_client("n1", org="acme"))
    n2 = FakeNode(srv, srv.create_client("n2", org="acme"))
    n1.run_result = None  # runs forever
    n2.commit_reply = None  # never votes: its job stays voting
    nodes = [n1.start(), n2.start()]
    try:
        for n in nodes:
            n.wait_idle_on_server(http)
        running = http.create_job("sleep 1000", ["n1"])
        n1.wait_for("run", 5)
        wait_for(lambda: http.job(running)["status"] == "running", message="job running")
        voting = http.create_job("uptime", ["n2", "n3"])  # n3 was never seen: unavailable
        n2.wait_for("commit", 5)
        wait_for(lambda: http.job(voting)["nodes"] == {"new": ["n2"], "unavailable": ["n3"]},
                 message="second job voting")
        old_incarnation = srv.status()["incarnation_id"]

        srv.restart()

        assert srv.status()["incarnation_id"] != old_incarnation
        job = http.job(running)
        assert (job["status"], job["nodes"]) == ("crashed", {"crashed": ["n1"]})
        job = http.job(voting)
        assert job["status"] == "crashed"
        assert job["nodes"] == {"crashed": ["n2"], "unavailable": ["n3"]}, "S12: new/ready nodes crashed too"
        # the nodes recover by themselves
        for n in nodes:
            n.wait_idle_on_server(http, timeout=15)
            assert n.reconfigures >= 1
        assert n1.job_state == "idle", "the new node FSM aborted the orphaned run"
        assert srv.status()["job_processes"] == []
        # the crashed job's feed is a summary; new jobs run
        r = http.get(f"job_status_feed/{running}", headers={"Accept": "text/event-stream"})
        assert r.status_code == 200 and "event: summary" in r.text and '"status":"crashed"' in r.text
        n1.run_result = ("succeeded", "", "")
        n2.commit_reply = "ack"
        jid = http.create_job("uptime", ["n1", "n2"])
        job = http.wait_job(jid, timeout=10)
        assert (job["status"], job["nodes"]) == ("complete", {"succeeded": ["n1", "n2"]})
    finally:
        for n in nodes:
            n.stop()
