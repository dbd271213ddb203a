"""GET /pushy/_metrics against a real push-jobs-server subprocess and a protocol-level node.

Scrapes the Prometheus text, parses it with prometheus-client's own parser,
and checks that the families are there and that their values move when a
node connects, sends a forged message and runs a job.
"""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.fakenode import FakeNode
from tests.helpers.server import wait_for

pytestmark = pytest.mark.e2e

FAMILIES = {
    "pushjobs_nodes_online", "pushjobs_nodes_available", "pushjobs_node_fsm_states",
    "pushjobs_command_messages_received", "pushjobs_messages_dropped", "pushjobs_server_heartbeats_sent",
    "pushjobs_zap_denied", "pushjobs_jobs_live", "pushjobs_db_write_queue", "pushjobs_jobs",
    "pushjobs_job_duration_seconds", "process_cpu_seconds", "process_resident_memory_bytes",
    # the runtime counters of metrics.OPTIONAL_RUNTIME_COUNTERS, and the event loop's health
    "pushjobs_messages_received_by_type", "pushjobs_messages_sent_by_type", "pushjobs_heartbeat_processing_seconds",
    "pushjobs_event_loop_lag_seconds", "pushjobs_event_loop_stalls", "pushjobs_event_loop_stalled_seconds",
    "pushjobs_command_router_full_batches",
    "pushjobs_command_router_wait_timeouts",
    "pushjobs_nodes_offline",
}


def scrape(server) -> dict[str, dict[tuple, float]]:
    """{family: {(sample name, sorted labels): value}} of one scrape (asserts 200 + content type)."""
    r = requests.get(server.base_url + "/pushy/_metrics", timeout=5)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(r.text):
        samples = out.setdefault(fam.name, {})
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, family: str, sample: str | None = None, **labels: str) -> float:
    return m[family].get((sample or family, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def srv(module_server_factory):
    s = module_server_factory(heartbeat_interval=150, settings={"log_level": "info"})
    s.create_org("acme")
    return s


def test_metrics_is_unauthenticated_prometheus_text_with_every_family(srv):
    m = scrape(srv)
    missing = FAMILIES - set(m)
    assert not missing, f"families missing: {sorted(missing)}"
    assert value(m, "pushjobs_nodes_online") == 0
    for status in ("new", "voting", "running", "complete", "quorum_failed", "crashed"):
        assert ("pushjobs_jobs", (("status", status),)) in m["pushjobs_jobs"]
    assert value(m, "process_resident_memory_bytes") > 10 * 1024 * 1024
    # the server heartbeat counter advances by itself (150 ms heartbeat)
    first = value(m, "pushjobs_server_heartbeats_sent", "pushjobs_server_heartbeats_sent_total")
    wait_for(lambda: value(scrape(srv), "pushjobs_server_heartbeats_sent",
                           "pushjobs_server_heartbeats_sent_total") > first, timeout=5,
             message="server heartbeat counter to advance")


def test_metrics_rejects_other_methods(srv):
    r = requests.post(srv.base_url + "/pushy/_metrics", timeout=5)
    assert r.status_code == 405


def test_values_move_with_a_node_a_forged_message_and_a_job(srv):
    alice = srv.create_user("alice", org="acme", admin=True)
    http = srv.client(alice)
    node = FakeNode(srv, srv.create_client("m1", org="acme"))
    before = scrape(srv)
    node.start()
    try:
        node.wait_idle_on_server(http)
        m = scrape(srv)
        assert value(m, "pushjobs_nodes_online") == 1
        assert value(m, "pushjobs_nodes_available") == 1
        assert value(m, "pushjobs_node_fsm_states", state="idle") == 1
        received = "pushjobs_command_messages_received_total"
        assert value(m, "pushjobs_command_messages_received", received) > \
            value(before, "pushjobs_command_messages_received", received)

        # messages in and out by type: the node's first heartbeat got an abort, its aborted made it idle
        by_type = "pushjobs_messages_received_by_type"
        m = wait_for(lambda: (lambda s: s if value(s, by_type, by_type + "_total", type="heartbeat") >= 3
                              else None)(scrape(srv)), timeout=5, message="heartbeats counted by type")
        assert value(m, by_type, by_type + "_total", type="aborted") >= 1
        assert value(m, "pushjobs_messages_sent_by_type", "pushjobs_messages_sent_by_type_total", type="abort") >= 1
        assert value(m, by_type, by_type + "_total", type="unknown") == 0
        # heartbeat processing time: a summary (count, sum) fed by the registry itself
        hb = "pushjobs_heartbeat_processing_seconds"
        count, total = value(m, hb, hb + "_count"), value(m, hb, hb + "_sum")
        assert count >= 3 and count <= value(m, by_type, by_type + "_total", type="heartbeat")
        assert 0 < total / count < 0.05, f"{total / count:.6f} s per heartbeat"
        # an idle test server: the loop is not stalled (the gauge is the largest lag of the last minute)
        assert 0 <= value(m, "pushjobs_event_loop_lag_seconds") < 5
        assert value(m, "pushjobs_event_loop_stalls", "pushjobs_event_loop_stalls_total") >= 0

        # a heartbeat signed with the wrong key: dropped and counted as bad_signature
        dropped = "pushjobs_messages_dropped_total"
        bad_before = value(m, "pushjobs_messages_dropped", dropped, reason="bad_signature")
        node.call(lambda n: n.send_frames(n.sign(n.body("heartbeat", job_state="idle"), key=b"\x00" * 32)))
        wait_for(lambda: value(scrape(srv), "pushjobs_messages_dropped", dropped,
                               reason="bad_signature") == bad_before + 1,
                 timeout=5, message="bad_signature drop to be counted")
        # a validly signed message of a type that does not exist: counted as "unknown", not by its name
        node.send("no_such_type", job_id=None)
        wait_for(lambda: value(scrape(srv), "pushjobs_messages_received_by_type",
                               "pushjobs_messages_received_by_type_total", type="unknown") == 1,
                 timeout=5, message="unknown message type counted")
        assert not any("no_such_type" in str(k) for k in scrape(srv)["pushjobs_messages_received_by_type"])

        # a job: jobs{status=complete} and the duration histogram move
        job_id = http.create_job("chef-client", ["m1"])
        assert http.wait_job(job_id)["status"] == "complete"
        m = wait_for(lambda: (lambda s: s if value(s, "pushjobs_jobs", status="complete") >= 1 else None)(scrape(srv)),
                     timeout=5, message="jobs{status=complete}")
        assert value(m, "pushjobs_job_duration_seconds", "pushjobs_job_duration_seconds_count",
                     status="complete") >= 1
        total = value(m, "pushjobs_job_duration_seconds", "pushjobs_job_duration_seconds_sum", status="complete")
        assert 0 <= total < 30
        # observed once: a second scrape does not count the same job again
        m2 = scrape(srv)
        assert value(m2, "pushjobs_job_duration_seconds", "pushjobs_job_duration_seconds_count",
                     status="complete") == value(m, "pushjobs_job_duration_seconds",
                                                 "pushjobs_job_duration_seconds_count", status="complete")
    finally:
        node.stop()
    # the node goes silent: the liveness scanner takes it offline and the gauge follows
    wait_for(lambda: value(scrape(srv), "pushjobs_nodes_online") == 0, timeout=10,
             message="nodes_online back to 0 after the node stopped")
