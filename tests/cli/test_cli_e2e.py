"""The `pushjobs` CLI as a subprocess against a real push-jobs-server.

Nodes are protocol-level FakeNodes (tests/helpers/fakenode.py), scripted per
test so that success, failure, nacks and never-ending runs are all
deterministic; the demo test (tests/test_demo.py) runs real agents.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.helpers.fakenode import FakeNode
from tests.helpers.server import wait_for

pytestmark = pytest.mark.e2e

PUSHJOBS = str(Path(sys.executable).parent / "pushjobs")
NODES = ("web1", "web2", "db1")


class Env:
    def __init__(self, server: Any, home: Path):
        self.server = server
        self.home = home
        self.alice = server.create_user("alice", org="acme", admin=True)
        self.bob = server.create_user("bob", org="acme")  # member, not a writer
        self.http = server.client(self.alice)
        self.fakes: dict[str, FakeNode] = {}
        for name in NODES:
            fake = FakeNode(server, server.create_client(name, org="acme"))
            fake.start()
            self.fakes[name] = fake
        for name in NODES:
            self.fakes[name].wait_idle_on_server(self.http, timeout=15)
        inventory = {"web1": (["role[web]"], "debian"), "web2": (["role[web]"], "ubuntu"),
                     "db1": (["role[db]"], "debian")}
        for name, (run_list, platform) in inventory.items():
            r = self.http.put(f"/organizations/acme/nodes/{name}", json={
                "name": name, "run_list": run_list, "automatic": {"platform": platform}})
            assert r.status_code in (200, 201), r.text

    def reset(self) -> None:
        for f in self.fakes.values():
            f.commit_reply, f.run_reply, f.run_delay = "ack", "ack", 0.0
            f.run_result = ("succeeded", "", "")
        for name, f in self.fakes.items():
            f.wait_idle_on_server(self.http, timeout=15)

    @property
    def url(self) -> str:
        return f"{self.server.base_url}/organizations/acme"

    def env(self, user: str = "alice", **extra: str) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if not k.startswith("PUSHJOBS_")}
        key = self.alice.key_path if user == "alice" else self.bob.key_path
        e.update(HOME=str(self.home), PUSHJOBS_SERVER_URL=self.url, PUSHJOBS_USER=user,
                 PUSHJOBS_KEY=str(key))
        e.update(extra)
        return e

    def cli(self, *args: str, user: str = "alice", env: dict | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([PUSHJOBS, *args], capture_output=True, text=True,
                              env=env or self.env(user), timeout=timeout)


@pytest.fixture(scope="module")
def env(module_server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    server = module_server_factory(heartbeat_interval=150, settings={"voting_timeout": 3})
    server.create_org("acme")
    home = tmp_path_factory.mktemp("home")
    e = Env(server, home)
    yield e
    for f in e.fakes.values():
        f.stop()


@pytest.fixture
def fresh(env: Env) -> Env:
    env.reset()
    return env


def one_error(cp: subprocess.CompletedProcess) -> str:
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), cp.stderr
    assert "Traceback" not in cp.stderr
    return lines[0]


def started_id(stdout: str) -> str:
    for line in stdout.splitlines():
        if line.startswith("Started.  Job ID: "):
            return line.split(": ", 1)[1].strip()
    raise AssertionError(f"no job id in {stdout!r}")


# --- job start ------------------------------------------------------------------------


def test_start_waits_prints_summary_and_output_is_captured(fresh: Env) -> None:
    fresh.fakes["web1"].run_result = ("succeeded", "hello from web1\n", "warn1\n")
    fresh.fakes["web2"].run_result = ("succeeded", "hello from web2\n", "")
    cp = fresh.cli("job", "start", "--capture", "chef-client", "web1", "web2")
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    job_id = started_id(cp.stdout)
    assert len(job_id) == 32
    out = cp.stdout
    assert "Complete." in out
    assert "capture_output: true\n" in out
    assert "command:        chef-client\n" in out
    assert "status:         complete\n" in out
    assert "nodes:\n  succeeded:\n    web1\n    web2\n" in out or "nodes:\n  succeeded:\n    web2\n    web1\n" in out
    # plain progress lines when stdout is not a terminal
    assert "  web1: succeeded" in out and "Quorum succeeded" in out

    cp = fresh.cli("job", "output", job_id, "web1")
    assert cp.returncode == 0 and cp.stdout == "hello from web1\n"  # exactly the bytes, nothing added
    cp = fresh.cli("job", "output", job_id, "web1", "--channel", "stderr")
    assert cp.returncode == 0 and cp.stdout == "warn1\n"
    cp = fresh.cli("job", "output", job_id, "web2", "-F", "json")
    assert json.loads(cp.stdout) == {"job_id": job_id, "node": "web2", "channel": "stdout",
                                     "output": "hello from web2\n"}


def test_start_json_document_on_stdout_progress_on_stderr(fresh: Env) -> None:
    cp = fresh.cli("job", "start", "uptime", "web1", "-F", "json")
    assert cp.returncode == 0, cp.stderr
    job = json.loads(cp.stdout)
    assert job["status"] == "complete" and job["nodes"] == {"succeeded": ["web1"]}
    assert "Started.  Job ID: " + job["id"] in cp.stderr


def test_start_yaml_before_the_verb(fresh: Env) -> None:
    cp = fresh.cli("--format", "yaml", "job", "start", "uptime", "web2")
    assert cp.returncode == 0, cp.stderr
    job = yaml.safe_load(cp.stdout)
    assert job["status"] == "complete" and job["command"] == "uptime"


def test_start_every_option_reaches_the_job(fresh: Env, tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"\x00\xffbinary payload")
    cp = fresh.cli("job", "start", "--timeout", "120", "-q", "1", "--with-env", '{"A":"1","B":"two"}',
                   "--in-dir", "/srv", "--file", str(payload), "--capture", "--as-user", "deploy",
                   "deploy.sh", "web1", "-F", "json")
    assert cp.returncode == 0, cp.stderr
    job = json.loads(cp.stdout)
    assert job["run_timeout"] == 120
    assert job["env"] == {"A": "1", "B": "two"}
    assert job["dir"] == "/srv" and job["user"] == "deploy"
    assert job["file_specified"] is True and job["capture_output"] is True
    commit = next(c.body for c in reversed(fresh.fakes["web1"].commands) if c.type == "commit")
    assert commit["job_id"] == job["id"]
    r = fresh.http.get(f"jobs/{job['id']}?include_file=true")
    import base64

    assert r.json()["file"] == "base64:" + base64.b64encode(b"\x00\xffbinary payload").decode()


def test_start_search_resolves_nodes(fresh: Env) -> None:
    cp = fresh.cli("job", "start", "uptime", "--search", "role:web AND platform:debian", "-F", "json")
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["nodes"] == {"succeeded": ["web1"]}
    cp = fresh.cli("job", "start", "uptime", "-s", "role:web", "-F", "json")
    assert sorted(json.loads(cp.stdout)["nodes"]["succeeded"]) == ["web1", "web2"]


def test_start_search_matching_nothing(fresh: Env) -> None:
    cp = fresh.cli("job", "start", "uptime", "--search", "role:nosuchrole")
    assert cp.returncode == 2
    assert "matched no node" in one_error(cp)


def test_start_malformed_search_names_the_position(fresh: Env) -> None:
    cp = fresh.cli("job", "start", "uptime", "--search", "role:(web")
    assert cp.returncode == 4
    line = one_error(cp)
    assert "400" in line and "at position 9" in line


def test_failed_node_exits_1(fresh: Env) -> None:
    fresh.fakes["db1"].run_result = ("failed", "", "boom\n")
    cp = fresh.cli("job", "start", "false", "web1", "db1")
    assert cp.returncode == 1, cp.stdout
    assert "  failed:    db1\n  succeeded: web1\n" in cp.stdout and "status:      complete" in cp.stdout


def test_quorum_failure_exits_1(fresh: Env) -> None:
    fresh.fakes["web2"].commit_reply = "nack"
    cp = fresh.cli("job", "start", "uptime", "web1", "web2", "-F", "json")
    assert cp.returncode == 1
    assert json.loads(cp.stdout)["status"] == "quorum_failed"


def test_quorum_percent_met_but_a_node_nacked_exits_1(fresh: Env) -> None:
    fresh.fakes["web2"].commit_reply = "nack"
    cp = fresh.cli("job", "start", "uptime", "web1", "web2", "-q", "50%", "-F", "json")
    job = json.loads(cp.stdout)
    assert job["status"] == "complete" and job["nodes"]["nacked"] == ["web2"]
    assert cp.returncode == 1  # knife-push exited 0 here


def test_nowait_then_watch_and_status(fresh: Env) -> None:
    fresh.fakes["web1"].run_delay = 3.0
    cp = fresh.cli("job", "start", "-b", "sleep 3", "web1")
    assert cp.returncode == 0
    job_id = started_id(cp.stdout)
    assert cp.stdout.strip() == f"Started.  Job ID: {job_id}"
    cp = fresh.cli("job", "watch", job_id)
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    assert "  web1: succeeded\nComplete.\n" in cp.stdout and "status:      complete" in cp.stdout
    cp = fresh.cli("job", "status", job_id)
    assert cp.returncode == 0 and f"id:          {job_id}" in cp.stdout
    cp = fresh.cli("job", "status", job_id, "-F", "yaml")
    assert yaml.safe_load(cp.stdout)["id"] == job_id
    cp = fresh.cli("job", "watch", job_id, "-F", "json")  # already finished: summary at once
    assert cp.returncode == 0 and json.loads(cp.stdout)["id"] == job_id


def test_poll_like_knife_push(fresh: Env) -> None:
    fresh.fakes["web1"].run_delay = 1.5
    cp = fresh.cli("job", "start", "--poll", "--poll-interval", "0.2", "sleep 1", "web1")
    assert cp.returncode == 0, cp.stderr
    assert "Running (1/1 in progress) ...\nComplete.\n" in cp.stdout
    job_id = started_id(cp.stdout)
    cp = fresh.cli("job", "watch", "--poll", job_id, "-F", "json")
    assert cp.returncode == 0 and json.loads(cp.stdout)["status"] == "complete"
    cp = fresh.cli("job", "start", "--poll-interval", "0", "uptime", "web1")
    assert cp.returncode == 2 and "--poll-interval" in one_error(cp)


def test_verbose_logs_requests(fresh: Env) -> None:
    cp = fresh.cli("-V", "job", "list")
    assert cp.returncode == 0 and "GET http://127.0.0.1" in cp.stderr


def test_nowait_json(fresh: Env) -> None:
    cp = fresh.cli("-F", "json", "job", "start", "--nowait", "uptime", "web1")
    doc = json.loads(cp.stdout)
    assert cp.returncode == 0 and len(doc["id"]) == 32 and doc["uri"].endswith(doc["id"])
    fresh.http.wait_job(doc["id"])


def test_abort_and_watch_of_aborted_job(fresh: Env) -> None:
    fresh.fakes["web1"].run_result = None  # runs forever
    cp = fresh.cli("job", "start", "--nowait", "sleep 999", "web1")
    job_id = started_id(cp.stdout)
    wait_for(lambda: fresh.http.job(job_id)["status"] == "running", timeout=10, message="running")
    cp = fresh.cli("job", "abort", job_id, "-F", "json")
    assert cp.returncode == 0, cp.stderr
    fresh.http.wait_job(job_id)
    cp = fresh.cli("job", "watch", job_id, "-F", "json")
    assert cp.returncode == 1
    assert json.loads(cp.stdout)["status"] == "aborted"
    cp = fresh.cli("job", "abort", job_id)  # finished already
    assert cp.returncode == 4 and "already finished" in one_error(cp)


def test_ctrl_c_while_following_leaves_the_job_running(fresh: Env) -> None:
    import signal

    fresh.fakes["web1"].run_result = None  # runs until aborted
    proc = subprocess.Popen([PUSHJOBS, "job", "start", "sleep 999", "web1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=fresh.env())
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        job_id = started_id(first)
        wait_for(lambda: fresh.http.job(job_id)["status"] == "running", timeout=10, message="running")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert err.strip().splitlines() == [
        f"ERROR: interrupted; job {job_id} keeps running (follow it with: pushjobs job watch {job_id})"]
    assert fresh.http.job(job_id)["status"] == "running"
    assert fresh.http.post(f"jobs/{job_id}/abort").status_code in (200, 202)
    fresh.http.wait_job(job_id)


def test_following_rides_out_a_server_crash_and_restart(server_factory: Any, tmp_path: Path) -> None:
    srv = server_factory(heartbeat_interval=150)
    srv.create_org("acme")
    alice = srv.create_user("alice", org="acme", admin=True)
    http = srv.client(alice)
    fake = FakeNode(srv, srv.create_client("r1", org="acme"))
    fake.run_result = None  # still running when the server goes away
    fake.start()
    try:
        fake.wait_idle_on_server(http, timeout=15)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHJOBS_")}
        env.update(HOME=str(tmp_path), PUSHJOBS_SERVER_URL=f"{srv.base_url}/organizations/acme",
                   PUSHJOBS_USER="alice", PUSHJOBS_KEY=str(alice.key_path))
        proc = subprocess.Popen([PUSHJOBS, "job", "start", "sleep 999", "r1"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout is not None
            job_id = started_id(proc.stdout.readline())
            wait_for(lambda: http.job(job_id)["status"] == "running", timeout=10, message="running")
            srv.kill()  # a crash: quicker than a graceful stop, and the harder case
            srv.start()
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        fake.stop()
    assert proc.returncode == 1, (out, err)
    assert "lost contact with the server" in out and "reconnected" in out
    assert "status:         crashed" in out or "status:      crashed" in out, out
    assert err == ""


# --- job list / status / output errors ---------------------------------------------------


def test_job_list_formats(fresh: Env) -> None:
    job_id = fresh.http.create_job("uptime", ["web1"])
    fresh.http.wait_job(job_id)
    cp = fresh.cli("job", "list")
    assert cp.returncode == 0 and f"id:          {job_id}" in cp.stdout
    assert "\n\n" in cp.stdout or cp.stdout.count("id:") == 1  # blocks separated by a blank line
    jobs = json.loads(fresh.cli("job", "list", "-F", "json").stdout)
    assert job_id in [j["id"] for j in jobs] and "nodes" not in jobs[0]
    jobs = yaml.safe_load(fresh.cli("job", "list", "--format=yaml").stdout)
    assert job_id in [j["id"] for j in jobs]


def test_unknown_job(fresh: Env) -> None:
    for verb in ("status", "watch", "abort"):
        cp = fresh.cli("job", verb, "0" * 32)
        assert cp.returncode == 4
        assert f"unknown job {'0' * 32}" in one_error(cp)
    cp = fresh.cli("job", "output", "0" * 32, "web1")
    assert cp.returncode == 4 and "no stdout captured" in one_error(cp)


# --- node status ------------------------------------------------------------------------


def test_node_status(fresh: Env) -> None:
    cp = fresh.cli("node", "status")
    assert cp.returncode == 0
    lines = set(cp.stdout.splitlines())
    assert {"web1\tavailable", "web2\tavailable", "db1\tavailable"} <= lines
    cp = fresh.cli("node", "status", "web1", "ghost")
    assert cp.stdout.splitlines() == ["web1\tavailable", "ghost\tunavailable"]
    cp = fresh.cli("node", "status", "role:web", "-F", "json")
    states = json.loads(cp.stdout)
    assert sorted(s["node_name"] for s in states) == ["web1", "web2"]
    assert all(s["status"] == "online" for s in states)
    cp = fresh.cli("-F", "yaml", "node", "status", "db1")
    assert yaml.safe_load(cp.stdout)[0]["availability"] == "available"


# --- errors and configuration ----------------------------------------------------------


def test_403_shows_the_servers_message(fresh: Env) -> None:
    cp = fresh.cli("job", "start", "uptime", "web1", user="bob")
    assert cp.returncode == 4
    line = one_error(cp)
    assert "403" in line and "'bob' does not have access" in line


def test_401_bad_key(fresh: Env) -> None:
    env = fresh.env(PUSHJOBS_KEY=str(fresh.bob.key_path))  # alice signing with bob's key
    cp = fresh.cli("job", "list", env=env)
    assert cp.returncode == 4
    line = one_error(cp)
    assert "401" in line and "Invalid signature" in line


def test_404_unknown_org(fresh: Env) -> None:
    env = fresh.env(PUSHJOBS_SERVER_URL=f"{fresh.server.base_url}/organizations/nope")
    cp = fresh.cli("job", "list", env=env)
    assert cp.returncode == 4
    assert "organization 'nope' does not exist" in one_error(cp)


def test_flags_beat_environment(fresh: Env) -> None:
    env = fresh.env(PUSHJOBS_SERVER_URL="http://127.0.0.1:9/organizations/acme", PUSHJOBS_USER="nobody")
    cp = fresh.cli("--server-url", fresh.url, "--user", "alice", "--key", str(fresh.alice.key_path),
                   "job", "list", env=env)
    assert cp.returncode == 0, cp.stderr
    cp = fresh.cli("job", "list", "--server-url", fresh.url, "-u", "alice", env=env)  # after the verb too
    assert cp.returncode == 0, cp.stderr


def test_config_files(fresh: Env, tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUSHJOBS_")}
    home = tmp_path / "h1"
    (home / ".chef").mkdir(parents=True)
    (home / ".chef" / "alice.pem").write_text(fresh.alice.key_pem)
    (home / ".chef" / "knife.rb").write_text(
        "current_dir = File.dirname(__FILE__)\n"
        'node_name "alice"\n'
        'client_key "#{current_dir}/alice.pem"\n'
        f'chef_server_url "{fresh.url}"\n')
    cp = fresh.cli("job", "list", env=dict(base, HOME=str(home)))
    assert cp.returncode == 0, cp.stderr
    home2 = tmp_path / "h2"
    (home2 / ".pushjobs").mkdir(parents=True)
    (home2 / ".pushjobs" / "config.yml").write_text(
        f"server_url: {fresh.url}\nuser: alice\nkey: {fresh.alice.key_path}\n")
    cp = fresh.cli("node", "status", env=dict(base, HOME=str(home2)))
    assert cp.returncode == 0 and "web1\t" in cp.stdout
    cp = fresh.cli("-c", str(home / ".chef" / "knife.rb"), "job", "list", env=dict(base, HOME=str(tmp_path)))
    assert cp.returncode == 0, cp.stderr


def test_tls_verification(server_factory: Any, agent_factory: Any, tmp_path: Path) -> None:
    """HTTPS with the certificate `push-jobs-server-ctl init --tls` makes, verification ON:
    the CLI trusts it with --ca-file / PUSHJOBS_CA_FILE, an agent with ca_file."""
    tls = tmp_path / "tls"
    srv = server_factory(start=False, settings={"ssl_certificate": str(tls / "server.crt"),
                                                "ssl_certificate_key": str(tls / "server.key")})
    srv.init()
    assert "generated self-signed TLS certificate" in srv.ctl("init", "--tls").stdout
    srv.start()
    assert srv.base_url.startswith("https://")
    srv.create_org("tls")
    user = srv.create_user("tina", org="tls", admin=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUSHJOBS_")}
    base.update(HOME=str(tmp_path), PUSHJOBS_SERVER_URL=f"{srv.base_url}/organizations/tls",
                PUSHJOBS_USER="tina", PUSHJOBS_KEY=str(user.key_path))
    run = lambda *a, **kw: subprocess.run([PUSHJOBS, *a], capture_output=True, text=True,  # noqa: E731
                                          env=dict(base, **kw), timeout=30)
    cp = run("job", "list")
    assert cp.returncode == 3
    assert "TLS" in one_error(cp) and "--ca-file" in cp.stderr
    cert = tls / "server.crt"
    assert run("--ca-file", str(cert), "job", "list").returncode == 0
    assert run("job", "list", PUSHJOBS_CA_FILE=str(cert)).returncode == 0
    agent = agent_factory(srv, "tls", "tls-node", whitelist={"hi": "echo hi"}, settings={"ca_file": str(cert)})
    http = srv.client(user)  # verifies with the same certificate
    agent.wait_available(http)
    job = http.wait_job(http.create_job("hi", ["tls-node"]))
    assert job["nodes"].get("succeeded") == ["tls-node"], job
    assert run("--insecure", "job", "list").returncode == 0
    assert run("job", "list", PUSHJOBS_INSECURE="1").returncode == 0
