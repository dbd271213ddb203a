"""The stock push-jobs client's wire behaviour (Ruby emulation, real Chef libraries) against our server.

tests/compat/ruby/stock_client.rb speaks to a real push-jobs-server the way
opscode-pushy-client 3.0.13 does (config GET signed by mixlib-authentication,
session key decrypted with OpenSSL, SUB + CurveZMQ DEALER through ffi-rzmq on
Debian's libzmq5, the original's message bodies, HMAC/RSA checks, heartbeat
and reconfigure rules). These tests start it as a subprocess and check the
server through its REST API: the node becomes available, jobs run to
`complete` with the captured output, aborts and refusals are answered as the
original does, and a server restart (new incarnation) is survived.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from typing import Any, Callable, Optional

import pytest

from tests.compat.rubytools import STOCK_CLIENT, requires_ruby
from tests.helpers.server import wait_for

pytestmark = [pytest.mark.e2e, requires_ruby]

ORG = "acme"
HEARTBEAT_MS = 4000
WHITELIST = {
    "hello": "echo 'héllo from stock' && echo 'to stderr' >&2",
    "fail": "sh -c 'echo nope; exit 3'",
    "sleepy": {"command_line": "sleep 30"},
    "big": "head -c 70000 /dev/zero | tr '\\0' x",
    "where": "pwd; echo \"$CHEF_PUSH_NODE_NAME $CHEF_PUSH_JOB_ID $GREETING\"",
}


class StockClientProcess:
    """The Ruby emulation as a child process; its JSON-line reports collected by a thread."""

    def __init__(self, server: Any, principal: Any, *, hostname: Optional[str] = None,
                 sign_version: str = "1.1", whitelist: Optional[dict] = None,
                 allow_unencrypted: bool = False):
        args = ["ruby", str(STOCK_CLIENT),
                "--chef-server-url", f"{server.base_url}/organizations/{principal.org}",
                "--node-name", principal.name, "--client-key", str(principal.key_path),
                "--whitelist", json.dumps(whitelist if whitelist is not None else WHITELIST),
                "--sign-version", sign_version]
        if hostname:
            args += ["--hostname", hostname]
        if allow_unencrypted:
            args.append("--allow-unencrypted")
        if server.ssl:
            args += ["--ca-file", str(server.verify)]
        self.events: list[dict] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._threads = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"ev": "garbage", "line": line}
            with self._cond:
                self.events.append(ev)
                self._cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def of(self, name: str, **match: Any) -> list[dict]:
        with self._cond:
            return [e for e in self.events if e["ev"] == name
                    and all(e.get(k) == v for k, v in match.items())]

    def sent(self, mtype: Optional[str] = None) -> list[dict]:
        """Bodies the client sent (parsed), optionally of one type."""
        out = [json.loads(e["body"]) for e in self.of("sent")]
        return [b for b in out if mtype is None or b["type"] == mtype]

    def received(self, mtype: str) -> list[dict]:
        return [e["body"] for e in self.of("received") if e["type"] == mtype]

    def wait(self, predicate: Callable[[], Any], timeout: float = 15.0, message: str = "event") -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate_value(predicate)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    if self.proc.poll() is None:  # ask for its threads' backtraces (USR1)
                        self.proc.send_signal(signal.SIGUSR1)
                        self._cond.wait(1.0)
                    value = predicate_value(predicate)
                    if value:
                        return value
                    raise AssertionError(f"stock client: timed out waiting for {message}; rc={self.proc.poll()}\n"
                                         f"last events:\n{self.digest()}\nstderr: {''.join(self.stderr)[-3000:]}")
                self._cond.wait(min(left, 0.2))

    def digest(self, n: int = 25) -> str:
        """The last `n` events, one short line each (for failure messages)."""
        lines = []
        for e in self.events[-n:]:
            if e["ev"] == "thread":
                lines.append(f"  thread {e['status']}: " + " <- ".join(e["backtrace"]))
                continue
            extra = {k: v for k, v in e.items() if k not in ("ev", "t", "header")}
            if "body" in extra and isinstance(extra["body"], str) and extra["body"].startswith("{"):
                b = json.loads(extra["body"])
                extra = {"type": b.get("type"), "seq": b.get("sequence"), "job_id": b.get("job_id")}
            elif e["ev"] == "received":
                extra = {"socket": e["socket"], "type": e["type"], "seq": e["body"].get("sequence")}
            lines.append(f"  {e['t']:.3f} {e['ev']} {json.dumps(extra)[:200]}")
        return "\n".join(lines)

    def close(self) -> Optional[int]:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(5)
            except (subprocess.TimeoutExpired, OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


def predicate_value(predicate: Callable[[], Any]) -> Any:
    try:
        return predicate()
    except (IndexError, KeyError):
        return None


@pytest.fixture(scope="module")
def env(module_server_factory):
    # 4 s heartbeats: the production ratio of heartbeat interval to restart and
    # scheduling delays (see test_06); jobs themselves never wait on heartbeats
    srv = module_server_factory(heartbeat_interval=HEARTBEAT_MS, settings={"voting_timeout": 5})
    srv.create_org(ORG)
    alice = srv.create_user("alice", org=ORG, admin=True)
    node = srv.create_client("web1", org=ORG)
    http = srv.client(alice)
    client = StockClientProcess(srv, node, hostname="shorthost")
    yield {"srv": srv, "http": http, "client": client, "node": node}
    client.close()


def available(http, name: str) -> bool:
    r = http.get(f"node_states/{name}")
    return r.status_code == 200 and r.json() == {"node_name": name, "status": "online", "availability": "available"}


def test_01_node_becomes_available(env):
    client, http = env["client"], env["http"]
    wait_for(lambda: available(http, "web1"), timeout=20, message="web1 available")
    lib = client.of("libraries")[0]
    assert lib["libzmq"].startswith("4.") and lib["curve"] == 1 and lib["mixlib_authentication"].startswith("3.")
    cfg = client.of("config")[0]
    assert cfg["using_curve"] is True and cfg["interval"] == HEARTBEAT_MS / 1000
    # the server answered on the command port (abort on FSM creation), so the
    # stock 3-loop check did not fire, and every server message verified
    client.wait(lambda: client.received("abort"), message="abort from the server")
    client.wait(lambda: client.received("heartbeat"), message="a server heartbeat (RSA-verified)")
    assert all(e["method"] == "rsa2048_sha1" for e in client.of("received", socket="heartbeat"))
    assert client.of("invalid") == [] and client.of("no_command_messages") == []
    assert client.sent("aborted")[0]["job_id"] is None  # the reply to an abort when no job ran


def test_02_legacy_body_fields_are_tolerated(env):
    """What the stock client puts in its bodies and our server must live with."""
    client = env["client"]
    hb = client.wait(lambda: client.sent("heartbeat"), message="a heartbeat")[0]
    assert list(hb) == ["node", "client", "protocol_version", "org", "type", "sequence", "timestamp",
                        "incarnation_id", "job_state", "job_id"]
    assert hb["client"] == "shorthost" != hb["node"]     # Ohai short hostname, not the node name
    assert hb["protocol_version"] == "2.0" and hb["job_state"] == "idle" and hb["job_id"] is None
    seqs = [b["sequence"] for b in client.sent()]
    assert seqs == list(range(1, len(seqs) + 1))           # per-connection counter from 1
    header = client.of("sent")[0]["header"]
    assert header.startswith("Version:2.0;SigningMethod:hmac_sha256;Signature:") and "\n" not in header


def test_03_job_runs_with_captured_output(env):
    client, http = env["client"], env["http"]
    wait_for(lambda: available(http, "web1"), timeout=20, message="web1 available")
    job_id = http.create_job("hello", ["web1"], capture_output=True)
    job = http.wait_job(job_id, ("complete", "failed", "aborted", "timed_out", "quorum_failed"), timeout=20)
    assert job["status"] == "complete" and job["nodes"] == {"succeeded": ["web1"]}, job
    out = http.get(f"jobs/{job_id}/output/web1/stdout")
    err = http.get(f"jobs/{job_id}/output/web1/stderr")
    assert out.status_code == 200 and out.content.decode() == "héllo from stock\n"
    assert err.status_code == 200 and err.content == b"to stderr\n"
    types = [b["type"] for b in client.sent() if b.get("job_id") == job_id and b["type"] != "heartbeat"]
    assert types == ["ack_commit", "ack_run", "succeeded"], types
    done = client.sent("succeeded")[-1]
    assert list(done)[-2:] == ["stdout", "stderr"]
    # while the job ran, the heartbeats said so (job_state as a string, job id set)
    states = {(b["job_state"], b["job_id"]) for b in client.sent("heartbeat")}
    assert ("idle", None) in states


def test_04_failed_command_and_options(env, tmp_path):
    client, http = env["client"], env["http"]
    wait_for(lambda: available(http, "web1"), timeout=20, message="web1 available")
    job_id = http.create_job("fail", ["web1"], capture_output=True)
    job = http.wait_job(job_id, timeout=20)
    assert job["nodes"] == {"failed": ["web1"]}, (job, client.events[-20:])
    assert http.get(f"jobs/{job_id}/output/web1/stdout").content == b"nope\n"

    wait_for(lambda: available(http, "web1"), timeout=20, message="web1 available")
    job_id = http.create_job("where", ["web1"], capture_output=True, dir=str(tmp_path),
                             env={"GREETING": "hi"})
    job = http.wait_job(job_id, timeout=20)
    assert job["nodes"] == {"succeeded": ["web1"]}, (job, client.events[-20:])
    commit = [m for m in client.received("commit") if m["job_id"] == job_id][0]
    assert commit["capture"] is True and commit["dir"] == str(tmp_path) and commit["env"] == {"GREETING": "hi"}
    assert http.get(f"jobs/{job_id}/output/web1/stdout").content.decode() == f"{tmp_path}\nweb1 {job_id} hi\n"


def test_05_not_whitelisted_is_nacked_and_abort_is_answered(env):
    client, http = env["client"], env["http"]
    wait_for(lambda: available(http, "web1"), timeout=20, message="web1 available")
    job_id = http.create_job("rm -rf /", ["web1"])
    job = http.wait_job(job_id, ("complete", "quorum_failed"), timeout=20)
    assert job["status"] == "quorum_failed" and job["nodes"] == {"nacked": ["web1"]}, job
    assert [b["type"] for b in client.sent() if b.get("job_id") == job_id] == ["nack_commit"]

    wait_for(lambda: available(http, "web1"), timeout=20, message="web1 available")
    job_id = http.create_job("sleepy", ["web1"])
    client.wait(lambda: [b for b in client.sent("ack_run") if b["job_id"] == job_id], message="ack_run")
    running = client.wait(lambda: [b for b in client.sent("heartbeat") if b["job_id"] == job_id
                                   and b["job_state"] == "running"], message="a heartbeat while running")
    assert running[0]["job_state"] == "running"
    r = http.post(f"jobs/{job_id}/abort", json={})
    assert r.status_code in (200, 202), (r.status_code, r.text)
    job = http.wait_job(job_id, ("aborted", "complete"), timeout=20)
    assert job["status"] == "aborted", job
    aborted = client.wait(lambda: [b for b in client.sent("aborted") if b["job_id"] == job_id], message="aborted")
    assert aborted[0]["job_id"] == job_id
    wait_for(lambda: available(http, "web1"), timeout=20, message="web1 available again")


def test_05b_oversized_output_is_dropped_by_the_client(env):
    """Over 63000 bytes the stock client sends `succeeded` without stdout/stderr."""
    client, http = env["client"], env["http"]
    wait_for(lambda: available(http, "web1"), timeout=20, message="web1 available")
    job_id = http.create_job("big", ["web1"], capture_output=True)
    job = http.wait_job(job_id, timeout=20)
    assert job["status"] == "complete" and job["nodes"] == {"succeeded": ["web1"]}, (job, client.events[-10:])
    done = [b for b in client.sent("succeeded") if b["job_id"] == job_id][0]
    assert "stdout" not in done and client.of("output_dropped")[0]["bytes"] == 70000
    assert http.get(f"jobs/{job_id}/output/web1/stdout").status_code == 404


def test_06_server_restart_is_survived(env):
    """New incarnation → the stock client re-fetches its config and reconnects; jobs run again.

    The stock client keeps heartbeating into its DEALER while the server is
    away and until it reconfigures (after a random splay of up to one
    interval); with SNDHWM 3 its fourth queued message blocks the sending
    thread for good (the new server has a new CURVE key and ZAP allow-list,
    so the queue never drains; see tests/compat/README.md). With production's
    10 s heartbeats a quick restart stays under that, and so does this
    module's 4 s; 150 ms heartbeats would not.
    """
    client, srv = env["client"], env["srv"]
    http = env["http"]
    wait_for(lambda: available(http, "web1"), timeout=20, message="web1 available")
    before = client.of("config")[-1]["server_incarnation"]
    configs = len(client.of("config"))
    # restart right after a client heartbeat went out: the next three fit in
    # the DEALER's queue (SNDHWM 3) for up to ~12 s of downtime + detection
    beats = len(client.sent("heartbeat"))
    client.wait(lambda: len(client.sent("heartbeat")) > beats, message="a client heartbeat")
    srv.restart()
    client.wait(lambda: client.of("restart_detected"), timeout=20, message="incarnation change seen")
    client.wait(lambda: len(client.of("config")) > configs, timeout=20, message="config re-fetched")
    assert client.of("config")[-1]["server_incarnation"] != before
    client.wait(lambda: client.of("reconfigured"), timeout=20, message="sockets reopened on the new config")
    http = srv.client(http.principal)
    wait_for(lambda: available(http, "web1"), timeout=20, message="web1 available after the restart")
    job_id = http.create_job("hello", ["web1"], capture_output=True)
    job = http.wait_job(job_id, timeout=20)
    assert job["status"] == "complete" and job["nodes"] == {"succeeded": ["web1"]}, job
    assert http.get(f"jobs/{job_id}/output/web1/stdout").content.decode() == "héllo from stock\n"
    assert client.proc.poll() is None
    assert client.of("no_command_messages") == []
    # after the reconfigure the per-connection sequence starts again at 1
    seen = client.of("restart_detected")[0]["t"]
    assert 1 in [json.loads(e["body"])["sequence"] for e in client.of("sent") if e["t"] > seen]


def test_07_unknown_client_exits_1(env, tmp_path):
    """A 401 on the config request ends the stock client with status 1."""
    from pushjobs.protocol.keys import generate_rsa_key, write_private_key
    from tests.helpers.server import Principal

    key = tmp_path / "ghost.pem"
    write_private_key(key, generate_rsa_key())
    ghost = StockClientProcess(env["srv"], Principal("ghost", "client", ORG, key))
    try:
        ghost.proc.wait(20)
        assert ghost.proc.returncode == 1
        err = ghost.of("config_error")[0]
        assert err["status"] == 401 and "ghost" in err["body"]
    finally:
        ghost.close()


def test_08_server_without_curve_over_https(module_server_factory):
    """`disable_curve_encryption`: the stock client refuses unless `allow_unencrypted`, then works in legacy mode.

    The server also serves HTTPS (the test certificate, verified by Ruby's
    OpenSSL as Chef's HTTP client does with trusted_certs).
    """
    srv = module_server_factory(heartbeat_interval=HEARTBEAT_MS, ssl=True,
                                settings={"disable_curve_encryption": True})
    srv.create_org(ORG)
    alice = srv.create_user("alice", org=ORG, admin=True)
    node = srv.create_client("web3", org=ORG)
    http = srv.client(alice)
    refusing = StockClientProcess(srv, node)
    try:
        refusing.proc.wait(20)
        assert refusing.proc.returncode == 1
        assert "allow_unencrypted" in refusing.of("config_error")[0]["body"]
    finally:
        refusing.close()
    client = StockClientProcess(srv, node, allow_unencrypted=True)
    try:
        wait_for(lambda: available(http, "web3"), timeout=20, message="web3 available (no CURVE)")
        assert client.of("config")[0]["using_curve"] is False
        job_id = http.create_job("hello", ["web3"], capture_output=True)
        job = http.wait_job(job_id, timeout=20)
        assert job["status"] == "complete" and job["nodes"] == {"succeeded": ["web3"]}, (job, client.digest())
        assert http.get(f"jobs/{job_id}/output/web3/stderr").content == b"to stderr\n"
        assert client.of("invalid") == []
    finally:
        client.close()
