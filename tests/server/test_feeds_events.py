"""The SSE histories (pushjobs.server.events): wire format, resume, org feed order (S1), pruning."""

import json
import re

from pushjobs.server.events import START_OF_HISTORY_ID, EventBus, JobFeed, OrgFeed, format_event, sse_timestamp

TS = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}Z$")


def parse(wire: str) -> tuple[str, str, dict]:
    assert wire.endswith("\n\n"), "every event ends with a blank line (S2)"
    lines = wire[:-2].split("\n")
    assert [l.split(":", 1)[0] for l in lines] == ["event", "id", "data"]
    return lines[0][7:], lines[1][4:], json.loads(lines[2][6:])


def test_sse_timestamp_format():
    assert sse_timestamp(1404969464.995958) == "2014-07-10 05:17:44.995958Z"
    assert TS.match(sse_timestamp(0.0))


def test_format_event_exact_bytes():
    assert format_event("start", "job-1", '{"timestamp":"x"}') == 'event: start\nid: job-1\ndata: {"timestamp":"x"}\n\n'


def test_job_feed_ids_timestamps_and_field_order():
    f = JobFeed("j1")
    t = 1000.0
    f.append("start", [("command", "uptime"), ("run_timeout", 5)], now=t)
    f.append("quorum_vote", {"node": "n1", "status": "success"}.items(), now=t)  # same instant
    f.append("quorum_succeeded", (), now=t - 1)  # clock went backwards
    parsed = [parse(e.wire) for e in f.events]
    assert [p[1] for p in parsed] == ["job-1", "job-2", "job-3"]
    assert list(parsed[0][2]) == ["timestamp", "command", "run_timeout"]
    stamps = [p[2]["timestamp"] for p in parsed]
    assert all(TS.match(s) for s in stamps)
    assert stamps == sorted(stamps) and len(set(stamps)) == 3, "strictly increasing timestamps"


def test_job_feed_resume_and_live_subscription_is_atomic():
    f = JobFeed("j1")
    for name in ("start", "quorum_vote", "quorum_succeeded"):
        f.append(name, ())
    hist, q = f.subscribe("job-2")
    assert [e.id for e in hist] == ["job-3"]
    hist_all, q2 = f.subscribe(None)
    assert [e.id for e in hist_all] == ["job-1", "job-2", "job-3"]
    hist_bogus, q3 = f.subscribe("nonsense")
    assert len(hist_bogus) == 3
    f.append("run_start", {"node": "n"}.items())
    assert q.get_nowait().id == "job-4" and q2.get_nowait().id == "job-4"
    f.finish()
    assert q.get_nowait() is None  # end of stream marker
    # after the end: finite history, no queue
    hist_done, q_done = f.subscribe("job-3")
    assert [e.id for e in hist_done] == ["job-4"] and q_done is None


def test_org_feed_without_last_event_id_has_no_history():
    o = OrgFeed("acme", expiration=60)
    o.append("start", [("job", "a")], now=100.0)
    hist, q = o.subscribe(None, now=101.0)
    assert hist == []
    o.append("job_complete", [("job", "a"), ("status", "complete")], now=102.0)
    ev = q.get_nowait()
    name, eid, data = parse(ev.wire)
    assert (name, eid, list(data)) == ("job_complete", "org-2", ["timestamp", "job", "status"])


def test_org_feed_replays_oldest_first_s1():
    o = OrgFeed("acme", expiration=60)
    for i, name in enumerate(["start", "start", "job_complete", "job_complete"]):
        o.append(name, [("job", f"j{i}")], now=100.0 + i)
    hist, _ = o.subscribe("org-1", now=105.0)
    assert [e.id for e in hist] == ["org-2", "org-3", "org-4"]


def test_org_feed_unknown_id_gives_start_of_history_then_all_retained():
    o = OrgFeed("acme", expiration=10)
    o.append("start", [("job", "old")], now=100.0)
    o.append("start", [("job", "new")], now=108.0)
    hist, _ = o.subscribe("org-999", now=112.0)  # org-1 expired (older than 10 s)
    name, eid, data = parse(hist[0].wire)
    assert (name, eid) == ("start_of_history", START_OF_HISTORY_ID)
    assert data["timestamp"] == sse_timestamp(102.0)
    assert [e.id for e in hist[1:]] == ["org-2"]


def test_event_bus_feeds():
    bus = EventBus(60)
    f = bus.open_job_feed("j")
    assert bus.job_feed("j") is f and bus.open_job_feed("j") is f
    _, q = f.subscribe(None)
    bus.close_job_feed("j")
    assert bus.job_feed("j") is None and q.get_nowait() is None
    assert bus.org_feed("a") is bus.org_feed("a")


def test_sse_timestamp_cache_of_the_current_second_is_never_stale():
    import time

    values = [1404969464.995958, 1404969465.000001, 1404969464.25, 0.0, 1404969464.9999996, 1700000000.5]
    for t in values + values[::-1]:
        secs = int(t) + (1 if round((t - int(t)) * 1e6) >= 1e6 else 0)
        assert sse_timestamp(t).startswith(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs)) + ".")
