"""Port of oc-pushy-pedant spec/pushy/integration/sse_spec.rb, plus the org feed the Ruby
suite could not test (its HTTP clients could not close a never-ending stream).

Real server, real agents DONKEY and FIONA (whitelists in e2e_support.py), FakeNodes
FAKE_DONKEY / FAKE_FIONA where the spec monkey-patched PushyClient (`commit` or `run`
swallowed, `nack_run` sent, `ack_run` + `nack_run`, `ack_commit` + `nack_run`).
Every job feed is checked as pedant's validate_events does (ids unique, timestamps
parsable, unique and strictly increasing) and, ours, ids consecutive `job-1..N` and every
event terminated by a blank line (PROTOCOL.md §17.2 S2).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.helpers.fakenode import SseReader
from tests.helpers.server import wait_for
from tests.pedant.e2e_support import ADMIN, NON_ASCII, ORG, Event, PedantEnv
from tests.pedant.e2e_support import SERVER_SETTINGS as SETTINGS
from tests.pedant.e2e_support import (expect_job_complete, expect_node_event, expect_start, job_feed,
                                      shared_env, sse_time, validate_events)

pytestmark = pytest.mark.e2e

PUSHJOBS = str(Path(sys.executable).parent / "pushjobs")

COMMAND = "sleep 1"  # the spec's default job: sleep 1, quorum 1, run_timeout 2
RUN_TIMEOUT = 2
FINISHED = {}  # test name -> job id, for the summary test at the end


@pytest.fixture(scope="module")
def env(request):
    """The shared pedant server and agents (e2e_support.shared_env)."""
    return shared_env(request)


@pytest.fixture
def fakes(env: PedantEnv):
    """FakeNodes of one test, stopped and waited offline afterwards: a FakeNode of the same
    name in the next test must not be mistaken for the old, still-known, node."""
    yield env
    names = [f.name for f in env.fakes]
    env.stop_fakes()
    if names:
        env.wait_node_status("offline", *names)


def do_complete_job(env: PedantEnv, nodes: list[str], command: str = COMMAND,
                    run_timeout: int = RUN_TIMEOUT, **extra) -> str:
    jid = env.start_job(command, nodes, run_timeout=run_timeout, **extra)
    env.wait_job(jid)
    return jid


def feed(env: PedantEnv, jid: str, n: int) -> list[Event]:
    """The pedant's expect_valid_response on the job feed of a just-finished job."""
    evs = job_feed(env, jid)
    validate_events(n, evs)
    assert len(evs) == n, [e.name for e in evs]
    assert [e.id for e in evs] == [f"job-{i}" for i in range(1, n + 1)]
    return evs


def split_by_node(a: Event, b: Event, node: str) -> tuple[Event, Event]:
    return (a, b) if a.json["node"] == node else (b, a)


# --- with no job ------------------------------------------------------------------------


def test_no_job_nonexistent_job_is_404(env):
    r = env.http.get("job_status_feed/nonexistent", headers={"Accept": "text/event-stream"})
    assert r.status_code == 404


def test_no_job_post_is_405(env):
    r = env.http.post("job_status_feed/nonexistent", headers={"Accept": "text/event-stream"})
    assert r.status_code == 405


def test_no_job_invalid_user_is_401(env):
    r = env.http.get("job_status_feed/nonexistent", headers={"Accept": "text/event-stream"},
                     user_id="no_such_user")
    assert r.status_code == 401


# --- a job with one nonexistent node -------------------------------------------------------


def test_one_nonexistent_node_start_down_rehab_quorum_failed(env):
    jid = do_complete_job(env, ["nonexistent"])
    evs = feed(env, jid, 4)
    expect_start(evs[0], COMMAND, RUN_TIMEOUT, 1, 1, ADMIN)
    expect_node_event(evs[1], "quorum_vote", "nonexistent", "down")
    expect_node_event(evs[2], "rehab", "nonexistent")
    expect_job_complete(evs[3], "quorum_failed")


# --- a job with one node ---------------------------------------------------------------------


def test_one_node_success_non_event_stream_request_is_406(env):
    env.ensure_agents("DONKEY")
    jid = do_complete_job(env, ["DONKEY"])
    FINISHED["success"] = jid
    r = env.http.get(f"job_status_feed/{jid}")  # Accept: application/json
    assert r.status_code == 406


def test_one_node_success_events(env):
    env.ensure_agents("DONKEY")
    jid = do_complete_job(env, ["DONKEY"])
    evs = feed(env, jid, 6)
    expect_start(evs[0], COMMAND, RUN_TIMEOUT, 1, 1, ADMIN)
    expect_node_event(evs[1], "quorum_vote", "DONKEY", "success")
    assert evs[2].name == "quorum_succeeded"
    expect_node_event(evs[3], "run_start", "DONKEY")
    expect_node_event(evs[4], "run_complete", "DONKEY", "success")
    expect_job_complete(evs[5], "complete")
    # the original's start event carries `capture` always (§11.3); no options were given.
    # Exact fields, `timestamp` first (§11.2-11.3)
    assert evs[0].json["capture"] is False
    assert [list(e.json) for e in evs] == [
        ["timestamp", "command", "run_timeout", "quorum", "node_count", "user", "capture"],
        ["timestamp", "node", "status"], ["timestamp"], ["timestamp", "node"],
        ["timestamp", "node", "status"], ["timestamp", "status"]]


def test_one_node_command_fails_events(env):
    env.ensure_agents("DONKEY")
    jid = do_complete_job(env, ["DONKEY"], "this_oughta_fail")
    evs = feed(env, jid, 6)
    expect_start(evs[0], "this_oughta_fail", RUN_TIMEOUT, 1, 1, ADMIN)
    expect_node_event(evs[1], "quorum_vote", "DONKEY", "success")
    assert evs[2].name == "quorum_succeeded"
    expect_node_event(evs[3], "run_start", "DONKEY")
    expect_node_event(evs[4], "run_complete", "DONKEY", "failure")
    expect_job_complete(evs[5], "complete")


def test_one_node_nacks_the_quorum_events(env):
    env.ensure_agents("DONKEY")
    jid = do_complete_job(env, ["DONKEY"], "bad command")
    evs = feed(env, jid, 3)
    expect_start(evs[0], "bad command", RUN_TIMEOUT, 1, 1, ADMIN)
    expect_node_event(evs[1], "quorum_vote", "DONKEY", "failure")
    expect_job_complete(evs[2], "quorum_failed")


def test_one_node_ignores_the_quorum_voting_timeout(fakes):
    env = fakes
    env.fake("FAKE_DONKEY", commit_reply=None)
    jid = do_complete_job(env, ["FAKE_DONKEY"])
    evs = feed(env, jid, 3)
    expect_start(evs[0], COMMAND, RUN_TIMEOUT, 1, 1, ADMIN)
    expect_node_event(evs[1], "quorum_vote", "FAKE_DONKEY", "voting_timeout")
    expect_job_complete(evs[2], "quorum_failed")
    gap = sse_time(evs[1].json["timestamp"]) - sse_time(evs[0].json["timestamp"])
    assert gap >= dt.timedelta(seconds=SETTINGS["voting_timeout"] - 0.1)


def test_one_node_nacks_the_run_events(fakes):
    env = fakes
    env.fake("FAKE_DONKEY", run_reply="nack")
    jid = do_complete_job(env, ["FAKE_DONKEY"])
    evs = feed(env, jid, 6)
    expect_start(evs[0], COMMAND, RUN_TIMEOUT, 1, 1, ADMIN)
    expect_node_event(evs[1], "quorum_vote", "FAKE_DONKEY", "success")
    assert evs[2].name == "quorum_succeeded"
    expect_node_event(evs[3], "rehab", "FAKE_DONKEY")
    expect_node_event(evs[4], "run_complete", "FAKE_DONKEY", "run_nacked")
    expect_job_complete(evs[5], "complete")
    assert env.get_job(jid)["nodes"] == {"failed": ["FAKE_DONKEY"]}


def test_one_node_command_times_out_events(fakes):
    env = fakes
    env.fake("FAKE_DONKEY", run_reply=None)
    jid = do_complete_job(env, ["FAKE_DONKEY"], run_timeout=1)
    evs = feed(env, jid, 4)
    expect_start(evs[0], COMMAND, 1, 1, 1, ADMIN)
    expect_node_event(evs[1], "quorum_vote", "FAKE_DONKEY", "success")
    assert evs[2].name == "quorum_succeeded"
    expect_job_complete(evs[3], "timed_out")
    assert env.get_job(jid)["nodes"] == {"timed_out": ["FAKE_DONKEY"]}


def test_one_node_buggy_client_nack_run_while_running_events(fakes):
    env = fakes
    node = env.fake("FAKE_DONKEY", run_reply=None)
    jid = env.start_job(COMMAND, ["FAKE_DONKEY"], run_timeout=RUN_TIMEOUT)
    node.wait_for("run", where=lambda b: b["job_id"] == jid)
    node.send("ack_run", job_id=jid)
    node.send("nack_run", job_id=jid)
    env.wait_job(jid)
    evs = feed(env, jid, 7)
    expect_start(evs[0], COMMAND, RUN_TIMEOUT, 1, 1, ADMIN)
    expect_node_event(evs[1], "quorum_vote", "FAKE_DONKEY", "success")
    assert evs[2].name == "quorum_succeeded"
    expect_node_event(evs[3], "run_start", "FAKE_DONKEY")
    expect_node_event(evs[4], "rehab", "FAKE_DONKEY")
    expect_node_event(evs[5], "run_complete", "FAKE_DONKEY", "run_nacked_while_running")
    expect_job_complete(evs[6], "complete")


# --- a job with two nodes ------------------------------------------------------------------


TWO = ["DONKEY", "FIONA"]


def two_node_trace(evs: list[Event], command: str, run_status: dict) -> None:
    expect_start(evs[0], command, RUN_TIMEOUT, 2, 2, ADMIN)
    assert sorted(expect_node_event(e, "quorum_vote", None, "success") for e in evs[1:3]) == TWO
    assert evs[3].name == "quorum_succeeded"
    assert sorted(expect_node_event(e, "run_start") for e in evs[4:6]) == TWO
    for e in evs[6:8]:
        expect_node_event(e, "run_complete", None, run_status[e.json["node"]])
    assert sorted(e.json["node"] for e in evs[6:8]) == TWO
    expect_job_complete(evs[8], "complete")


def test_two_nodes_command_succeeds_on_both(env):
    env.ensure_agents(*TWO)
    jid = do_complete_job(env, TWO, quorum=2)
    two_node_trace(feed(env, jid, 9), COMMAND, {"DONKEY": "success", "FIONA": "success"})


def test_two_nodes_command_fails_on_both(env):
    env.ensure_agents(*TWO)
    jid = do_complete_job(env, TWO, "this_oughta_fail", quorum=2)
    two_node_trace(feed(env, jid, 9), "this_oughta_fail", {"DONKEY": "failure", "FIONA": "failure"})


def test_two_nodes_command_fails_on_one(env):
    env.ensure_agents(*TWO)
    jid = do_complete_job(env, TWO, "fail-on-donkey", quorum=2)
    two_node_trace(feed(env, jid, 9), "fail-on-donkey", {"DONKEY": "failure", "FIONA": "success"})


def cli_start(env: PedantEnv, quorum: str, command: str, nodes: list[str]) -> str:
    """Start a job with the real CLI (`-q N%` is converted to a count client-side, as knife-push
    does: PROTOCOL.md §9.3); returns its id once finished."""
    cfg = {k: v for k, v in os.environ.items() if not k.startswith("PUSHJOBS_")}
    cfg.update(HOME=str(env.dir), PUSHJOBS_SERVER_URL=f"{env.server.base_url}/organizations/{ORG}",
               PUSHJOBS_USER=ADMIN, PUSHJOBS_KEY=str(env.http.principal.key_path))
    cp = subprocess.run([PUSHJOBS, "job", "start", "-b", "-F", "json", "--timeout", str(RUN_TIMEOUT),
                         "-q", quorum, command, *nodes], capture_output=True, text=True, env=cfg, timeout=60)
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    jid = json.loads(cp.stdout)["id"]
    env.wait_job(jid)
    return jid


def test_two_nodes_one_rejects_the_quorum_of_100_percent(env):
    env.ensure_agents(*TWO)
    jid = cli_start(env, "100%", "not-on-donkey", TWO)  # not whitelisted on DONKEY
    evs = feed(env, jid, 4)
    expect_start(evs[0], "not-on-donkey", RUN_TIMEOUT, 2, 2, ADMIN)
    de, fe = split_by_node(evs[1], evs[2], "DONKEY")
    expect_node_event(de, "quorum_vote", "DONKEY", "failure")
    expect_node_event(fe, "quorum_vote", "FIONA", "success")
    expect_job_complete(evs[3], "quorum_failed")
    assert env.get_job(jid)["nodes"] == {"nacked": ["DONKEY"], "was_ready": ["FIONA"]}


def test_two_nodes_one_rejects_the_quorum_of_50_percent(env):
    env.ensure_agents(*TWO)
    jid = cli_start(env, "50%", "not-on-donkey", TWO)
    evs = feed(env, jid, 7)
    expect_start(evs[0], "not-on-donkey", RUN_TIMEOUT, 1, 2, ADMIN)
    de, fe = split_by_node(evs[1], evs[2], "DONKEY")
    expect_node_event(de, "quorum_vote", "DONKEY", "failure")
    expect_node_event(fe, "quorum_vote", "FIONA", "success")
    assert evs[3].name == "quorum_succeeded"
    expect_node_event(evs[4], "run_start", "FIONA")
    expect_node_event(evs[5], "run_complete", "FIONA", "success")
    expect_job_complete(evs[6], "complete")


def test_two_nodes_buggy_client_nack_run_during_the_vote_rehab_and_fail(fakes):
    env = fakes
    donkey = env.fake("FAKE_DONKEY", commit_reply=None)
    fiona = env.fake("FAKE_FIONA", commit_reply=None)
    jid = env.start_job(COMMAND, ["FAKE_DONKEY", "FAKE_FIONA"], run_timeout=RUN_TIMEOUT)
    donkey.wait_for("commit", where=lambda b: b["job_id"] == jid)
    donkey.send("ack_commit", job_id=jid)
    donkey.send("nack_run", job_id=jid)
    # FIONA votes late (the spec sleeps 1 s): once DONKEY has been sent to rehab
    wait_for(lambda: env.http.job(jid)["nodes"].get("unavailable") == ["FAKE_DONKEY"], timeout=10,
             message="FAKE_DONKEY unavailable")
    fiona.wait_for("commit", where=lambda b: b["job_id"] == jid)
    fiona.send("ack_commit", job_id=jid)
    env.wait_job(jid)
    evs = feed(env, jid, 5)
    expect_start(evs[0], COMMAND, RUN_TIMEOUT, 2, 2, ADMIN)
    expect_node_event(evs[1], "quorum_vote", "FAKE_DONKEY", "success")
    expect_node_event(evs[2], "rehab", "FAKE_DONKEY")
    expect_node_event(evs[3], "quorum_vote", "FAKE_FIONA", "success")
    expect_job_complete(evs[4], "quorum_failed")
    assert env.get_job(jid)["nodes"] == {"unavailable": ["FAKE_DONKEY"], "was_ready": ["FAKE_FIONA"]}


# --- non-ASCII ---------------------------------------------------------------------------------


def test_non_ascii_command_events_are_cleanly_encoded(env):
    env.ensure_agents("DONKEY")
    jid = do_complete_job(env, ["DONKEY"], NON_ASCII, capture_output=True)
    r = env.http.get(f"job_status_feed/{jid}", headers={"Accept": "text/event-stream"})
    r.content.decode("utf-8")  # valid UTF-8 on the wire
    evs = feed(env, jid, 6)
    expect_start(evs[0], NON_ASCII, RUN_TIMEOUT, 1, 1, ADMIN)
    expect_node_event(evs[1], "quorum_vote", "DONKEY", "success")
    assert evs[2].name == "quorum_succeeded"
    expect_node_event(evs[3], "run_start", "DONKEY")
    expect_node_event(evs[4], "run_complete", "DONKEY", "success")
    expect_job_complete(evs[5], "complete")
    out = env.http.get(f"jobs/{jid}/output/DONKEY/stdout")
    assert out.status_code == 200 and out.content.decode("utf-8") == "\u0110ONKEY\n"


# --- reading an event stream (one job, several readers) -------------------------------------------


class Streams:
    jid: str
    first: SseReader        # opened right after POST
    another: SseReader      # "an additional stream also works"
    bleah: SseReader        # Last-Event-ID: bleah
    resumed: SseReader      # Last-Event-ID: the first reader's 4th id
    first_four: list
    live_at_four: bool


@pytest.fixture(scope="module")
def streams(env: PedantEnv):
    """One 'sleep 2' job (keepalive 1 s, so the idle run produces keepalives) read by four streams."""
    env.ensure_agents("DONKEY")
    s = Streams()
    s.jid = env.start_job("sleep 2", ["DONKEY"], run_timeout=5)
    path = f"job_status_feed/{s.jid}"
    s.first = SseReader(env.http, path).start()
    s.another = SseReader(env.http, path).start()
    s.bleah = SseReader(env.http, path, last_event_id="bleah").start()
    s.first.wait(lambda r: len(r.events) >= 4, timeout=15)
    s.first_four = as_events(s.first)[:4]
    s.live_at_four = not s.first.done.is_set()
    s.resumed = SseReader(env.http, path, last_event_id=s.first_four[3].id).start()
    for r in (s.first, s.another, s.bleah, s.resumed):
        assert r.done.wait(20), f"stream {r.headers} never ended"
    yield s
    for r in (s.first, s.another, s.bleah, s.resumed):
        r.close()


def as_events(reader: SseReader) -> list[Event]:
    return [Event(e.event, e.id, e.data) for e in reader.events]


def test_stream_events_become_available_as_they_happen(streams):
    evs = as_events(streams.first)
    assert [e.name for e in streams.first_four] == ["start", "quorum_vote", "quorum_succeeded", "run_start"]
    assert streams.live_at_four, "the first four events arrived while the job was still running"
    validate_events(6, evs)
    expect_start(evs[0], "sleep 2", 5, 1, 1, ADMIN)
    expect_node_event(evs[1], "quorum_vote", "DONKEY", "success")
    expect_node_event(evs[3], "run_start", "DONKEY")
    expect_node_event(evs[4], "run_complete", "DONKEY", "success")
    expect_job_complete(evs[5], "complete")
    assert len(evs) == 6 and streams.first.status == 200
    assert streams.first.response_headers["Content-Type"].startswith("text/event-stream")
    assert streams.first.error is None  # the server ended the stream after job_complete


def test_stream_an_additional_stream_also_works(streams):
    assert [(e.event, e.id, e.data) for e in streams.another.events] == \
        [(e.event, e.id, e.data) for e in streams.first.events]


def test_stream_can_be_resumed_with_last_event_id(streams):
    old, new = streams.first_four, as_events(streams.resumed)
    assert [e.id for e in new] == ["job-5", "job-6"]
    assert [(e.name, e.id, e.json) for e in old + new] == \
        [(e.name, e.id, e.json) for e in as_events(streams.first)]


def test_stream_invalid_last_event_id_produces_the_entire_stream(streams):
    evs = as_events(streams.bleah)
    validate_events(4, evs)
    assert [e.id for e in evs] == [e.id for e in streams.first.events]


def test_stream_keepalives_do_not_corrupt_the_stream(streams):
    # keep_alive_time 1 s and a 2 s run: keepalive comments were interleaved, the events parse
    assert ":keepalive" in streams.first.comments, streams.first.raw
    validate_events(6, as_events(streams.first))
    assert "\n:keepalive\n" in streams.first.raw


# --- optional parameters --------------------------------------------------------------------------


def test_start_event_includes_the_parameters_with_file_specified(env):
    env.ensure_agents("DONKEY")
    out = env.dir / "ruby-opts-params"
    job_env = {"ENV1": "myenv1", "ENV2": "myenv2", "OUT": str(out)}
    jid = env.start_job("ruby-opts", ["DONKEY"], user="root", dir="/tmp", env=job_env, file="raw:foo")
    reader = SseReader(env.http, f"job_status_feed/{jid}").start()
    try:
        reader.wait(lambda r: r.done.is_set(), timeout=20)
    finally:
        reader.close()
    js = reader.events[0].data
    assert reader.events[0].event == "start"
    assert (js["job_user"], js["dir"], js["env"], js["file_specified"]) == ("root", "/tmp", job_env, True)
    assert "file" not in js
    # and the command really ran that way on the node
    assert env.get_job(jid)["nodes"] == {"succeeded": ["DONKEY"]}
    uid, euid, cwd, *envlines = out.read_text().splitlines()
    assert (uid, euid, cwd) == ("0", "0", "/tmp")
    got = dict(line.split("=", 1) for line in envlines if "=" in line)
    assert (got["ENV1"], got["ENV2"], got["CHEF_PUSH_JOB_ID"], got["PUSHY_JOB_ID"],
            got["CHEF_PUSH_NODE_NAME"], got["PUSHY_NODE_NAME"]) == ("myenv1", "myenv2", jid, jid, "DONKEY", "DONKEY")
    assert got["CHEF_PUSH_JOB_FILE"] == got["PUSHY_JOB_FILE"]
    assert (env.dir / "ruby-opts-params.file").read_text() == "foo"


# --- the org feed (ours: the Ruby suite left it to the Erlang unit tests) --------------------------


def test_org_feed_live_events_then_resume_oldest_first_and_start_of_history(env):
    env.ensure_agents("DONKEY")
    live = SseReader(env.http, "job_status_feed").start()
    try:
        wait_for(lambda: live.status == 200, timeout=10, message="org feed open")
        jids = [do_complete_job(env, ["DONKEY"], "this_oughta_succeed") for _ in range(2)]
        live.wait(lambda r: sum(e.event == "job_complete" and e.data["job"] == jids[1]
                                for e in r.events) == 1, timeout=10)
    finally:
        live.close()
    evs = [Event(e.event, e.id, e.data) for e in live.events]
    # no Last-Event-ID: no history, only what happened since (start/job_complete of our two jobs)
    assert [(e.name, e.json["job"]) for e in evs] == [("start", jids[0]), ("job_complete", jids[0]),
                                                     ("start", jids[1]), ("job_complete", jids[1])]
    validate_events(4, evs)
    assert all(e.id.startswith("org-") for e in evs)
    assert list(evs[0].json)[:2] == ["timestamp", "job"]  # `job` right after `timestamp` (§11.3)
    expect_start(evs[0], "this_oughta_succeed", RUN_TIMEOUT, 1, 1, ADMIN, jids[0])
    expect_job_complete(evs[1], "complete", jids[0])

    # Last-Event-ID of the first: the newer retained events, oldest-first (S1, PROTOCOL.md §17.2)
    resumed = SseReader(env.http, "job_status_feed", last_event_id=evs[0].id).start()
    bogus = SseReader(env.http, "job_status_feed", last_event_id="bleah").start()
    try:
        resumed.wait(lambda r: len(r.events) >= 3, timeout=10)
        bogus.wait(lambda r: any(e.id == evs[-1].id for e in r.events), timeout=10)
        assert [e.id for e in resumed.events[:3]] == [e.id for e in evs[1:]]
        # unknown id: start_of_history (id start_id, now - org_feed_expiration), then all retained
        first = bogus.events[0]
        assert (first.event, first.id) == ("start_of_history", "start_id")
        age = dt.datetime.utcnow() - sse_time(first.data["timestamp"])
        assert dt.timedelta(seconds=SETTINGS["org_feed_expiration"] - 10) < age \
            < dt.timedelta(seconds=SETTINGS["org_feed_expiration"] + 10)
        retained = [Event(e.event, e.id, e.data) for e in bogus.events[1:]]
        validate_events(4, retained)
        assert [e.id for e in retained][-4:] == [e.id for e in evs]
        # the org feed never ends on its own: keepalives every keep_alive_time
        bogus.wait(lambda r: ":keepalive" in r.comments, timeout=10)
        assert not bogus.done.is_set()
    finally:
        resumed.close()
        bogus.close()


# --- a job complete for a while --------------------------------------------------------------------


def test_job_complete_for_a_while_feed_is_just_the_summary(env):
    jid = FINISHED.get("success") or do_complete_job(env, ["DONKEY"])
    job = env.http.job(jid)

    def summary():
        evs = job_feed(env, jid)
        return evs if evs and evs[0].name == "summary" else None
    evs = wait_for(summary, timeout=SETTINGS["wait_complete_time"] + 10, interval=0.2,
                   message="the feed to become a summary")
    assert len(evs) == 1 and evs[0].id == "job-1"
    s = evs[0].json
    assert (s["command"], s["status"], s["run_timeout"]) == (COMMAND, "complete", RUN_TIMEOUT)
    assert s["nodes"] == {"succeeded": ["DONKEY"]} and "failed" not in s["nodes"]
    assert sse_time(s["timestamp"])  # every event starts with its timestamp
    assert parsedate_to_datetime(s["updated_at"]) >= parsedate_to_datetime(s["created_at"])
    # the summary is the job as GET /jobs/ID shows it
    assert {k: v for k, v in s.items() if k != "timestamp"} == job
    # Last-Event-ID is ignored for a summary
    assert [e.name for e in job_feed(env, jid, **{"Last-Event-ID": "job-3"})] == ["summary"]
