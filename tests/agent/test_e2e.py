"""End to end: the real server and several real push-jobs-client processes.

Each agent is its own process with its own node name, client key, settings
file and whitelist. Most tests share one server per module (fast); the
restart/before-server tests get their own.
"""
import os
import shutil
import signal
import tempfile

import pytest

from tests.helpers.server import wait_for

pytestmark = pytest.mark.e2e

ORG = "acme"


@pytest.fixture(scope="module")
def srv(module_server_factory):
    s = module_server_factory(settings={"voting_timeout": 3})
    s.create_org(ORG)
    s.admin = s.create_user("alice", org=ORG, admin=True)
    return s


@pytest.fixture
def http(srv):
    return srv.client(srv.admin)


_names = iter(range(1000))


def node_name(prefix="node"):
    return f"{prefix}{next(_names)}"


def output(http, job_id, node, channel="stdout"):
    r = http.get(f"jobs/{job_id}/output/{node}/{channel}")
    assert r.status_code == 200, r.text
    return r.text


def pid_dead(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def read_pid(path, timeout=10):
    wait_for(lambda: os.path.exists(path) and open(path).read().strip(), timeout=timeout,
             message=f"pid file {path}")
    return int(open(path).read().strip())


@pytest.fixture
def shared_dir():
    """A directory every user can traverse (pytest's tmp dirs are 0700 root)."""
    d = tempfile.mkdtemp(prefix="pushjobs-e2e-")
    os.chmod(d, 0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


EVERYTHING = ('echo "user=$(id -un) groups=$(id -G) cwd=$(pwd) foo=$FOO path_set=${PATH:+yes} '
              'id=$CHEF_PUSH_JOB_ID pid_alias=$PUSHY_JOB_ID node=$CHEF_PUSH_NODE_NAME '
              'node_alias=$PUSHY_NODE_NAME file=$CHEF_PUSH_JOB_FILE mode=$(stat -c %a '
              '"$CHEF_PUSH_JOB_FILE") owner=$(stat -c %U "$CHEF_PUSH_JOB_FILE")"; '
              'cat "$CHEF_PUSH_JOB_FILE"; echo oops >&2; exit 3')


def test_whitelisted_job_with_capture_and_every_option(srv, http, agent_factory, shared_dir):
    user = "nobody" if os.geteuid() == 0 else None
    names = [node_name(), node_name()]
    agents = [agent_factory(srv, ORG, n, whitelist={"everything": EVERYTHING},
                            settings={"file_dir": os.path.join(shared_dir, n), "roles": ["web"],
                                      "environment": "prod", "tags": [f"t-{n}"]})
              for n in names]
    for a in agents:
        a.wait_available(http)
    # node facts reached the server: Chef node shape, searchable
    node = http.get(f"/organizations/{ORG}/nodes/{names[0]}").json()
    assert node["run_list"] == ["role[web]"] and node["chef_environment"] == "prod"
    assert node["normal"]["tags"] == [f"t-{names[0]}"]
    assert node["automatic"]["kernel"]["name"] == "Linux" and node["automatic"]["platform_family"]
    found = http.get(f"/organizations/{ORG}/search/node", params={"q": f"role:web AND tags:t-{names[1]}"})
    assert [r["name"] for r in found.json()["rows"]] == [names[1]], found.text
    fields = dict(capture_output=True, dir="/", env={"FOO": "bar baz", "CHEF_PUSH_JOB_ID": "evil"},
                  file="raw:the payload\n")
    if user:
        fields["user"] = user
    job_id = http.create_job("everything", names, **fields)
    job = http.wait_job(job_id)
    assert job["status"] == "complete" and sorted(job["nodes"]["failed"]) == sorted(names), job
    for n in names:
        out = output(http, job_id, n)
        first, payload = out.split("\n", 1)
        kv = dict(item.split("=", 1) for item in first.split(" ") if "=" in item)
        assert kv["cwd"] == "/" and kv["path_set"] == "yes"
        assert "foo=bar baz" in first
        assert kv["id"] == kv["pid_alias"] == job_id
        assert kv["node"] == kv["node_alias"] == n
        assert kv["file"].startswith(os.path.join(shared_dir, n, "pushy_file"))
        assert kv["mode"] == "600"
        if user:
            assert kv["user"] == "nobody" and kv["owner"] == "nobody"
        assert payload == "the payload\n"
        assert output(http, job_id, n, "stderr") == "oops\n"
        assert not os.path.exists(kv["file"]), "job file must be removed after the job"


def test_not_whitelisted_is_nacked_and_regex_entry_runs(srv, http, agent_factory):
    n = node_name()
    agent = agent_factory(srv, ORG, n, whitelist={
        "/^restart-(\\w+)$/": "echo restarting \\1",
        "/^say (.+)$/": "echo said: \\1 | cat",
    })
    agent.wait_available(http)
    job = http.wait_job(http.create_job("rm -rf /", [n]))
    assert job["nodes"].get("nacked") == [n], job
    agent.wait_log("not in the whitelist")

    job_id = http.create_job("restart-nginx", [n], capture_output=True)
    assert http.wait_job(job_id)["nodes"].get("succeeded") == [n]
    assert output(http, job_id, n) == "restarting nginx\n"

    job = http.wait_job(http.create_job("restart-x; rm -rf /", [n]))
    assert job["nodes"].get("nacked") == [n]

    marker = os.path.join(agent.directory, "pwned")
    job_id = http.create_job(f"say $(touch {marker}); touch {marker}", [n], capture_output=True)
    assert http.wait_job(job_id)["nodes"].get("succeeded") == [n]
    assert output(http, job_id, n) == f"said: $(touch {marker}); touch {marker}\n"
    assert not os.path.exists(marker)


def test_whitelist_reload_in_place_and_by_rename_never_under_a_running_job(srv, http, agent_factory):
    n = node_name()
    agent = agent_factory(srv, ORG, n, whitelist={"long": "sleep 30"})
    agent.wait_available(http)
    assert http.wait_job(http.create_job("new1", [n]))["nodes"].get("nacked") == [n]

    agent.set_whitelist({"long": "sleep 30", "new1": "true"}, rename=True)
    agent.wait_log("whitelist reloaded", count=1)
    assert http.wait_job(http.create_job("new1", [n]))["nodes"].get("succeeded") == [n]

    agent.set_whitelist({"long": "sleep 30", "new1": "true", "new2": "true"}, rename=False)
    agent.wait_log("whitelist reloaded", count=2)
    assert http.wait_job(http.create_job("new2", [n]))["nodes"].get("succeeded") == [n]

    # a change while a job runs waits until the job is over
    long_job = http.create_job("long", [n])
    wait_for(lambda: http.job(long_job)["status"] == "running", message="long job running")
    agent.wait_log("started 'sleep 30'")
    agent.set_whitelist({"new3": "true"})
    agent.wait_log("applies when it ends")
    assert agent.log_text().count("whitelist reloaded") == 2
    r = http.post(f"jobs/{long_job}/abort")
    assert r.status_code in (200, 202), r.text
    http.wait_job(long_job)
    agent.wait_log("whitelist reloaded", count=3)
    assert http.wait_job(http.create_job("new3", [n]))["nodes"].get("succeeded") == [n]
    assert http.wait_job(http.create_job("long", [n]))["nodes"].get("nacked") == [n]

    # a broken file is refused, the previous whitelist stays
    agent.settings_path.write_text("whitelist: [unclosed\n")
    agent.wait_log("settings not reloaded")
    assert http.wait_job(http.create_job("new3", [n]))["nodes"].get("succeeded") == [n]


TREE = 'trap "" TERM; sleep 1000 & echo $! > "$PIDFILE"; wait; wait'


def test_abort_kills_the_process_tree(srv, http, agent_factory):
    n = node_name()
    agent = agent_factory(srv, ORG, n, whitelist={"tree": TREE})
    agent.wait_available(http)
    pidfile = os.path.join(agent.directory, "child.pid")
    job_id = http.create_job("tree", [n], env={"PIDFILE": pidfile})
    child = read_pid(pidfile)
    assert not pid_dead(child)
    r = http.post(f"jobs/{job_id}/abort")
    assert r.status_code in (200, 202), r.text
    job = http.wait_job(job_id)
    assert job["status"] == "aborted", job
    wait_for(lambda: pid_dead(child), timeout=5, message="TERM-ignoring child killed")
    agent.wait_available(http)


def test_run_timeout_kills_the_process_tree(srv, http, agent_factory):
    n = node_name()
    agent = agent_factory(srv, ORG, n, whitelist={"tree": TREE})
    agent.wait_available(http)
    pidfile = os.path.join(agent.directory, "child.pid")
    job_id = http.create_job("tree", [n], env={"PIDFILE": pidfile}, run_timeout=1)
    child = read_pid(pidfile)
    job = http.wait_job(job_id)
    assert job["status"] == "timed_out", job
    wait_for(lambda: pid_dead(child), timeout=8, message="child killed after the run timeout")
    agent.wait_available(http)


def test_agent_killed_mid_job_is_crashed(srv, http, agent_factory):
    n = node_name()
    agent = agent_factory(srv, ORG, n, whitelist={"long": 'sleep 1000 & echo $! > "$PIDFILE"; wait'})
    agent.wait_available(http)
    pidfile = os.path.join(agent.directory, "child.pid")
    job_id = http.create_job("long", [n], env={"PIDFILE": pidfile})
    child = read_pid(pidfile)
    try:
        agent.kill()
        job = http.wait_job(job_id, timeout=20)
        assert job["nodes"].get("crashed") == [n], job
    finally:
        try:
            os.killpg(os.getpgid(child), signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_agent_stops_cleanly_on_term_and_kills_its_job(srv, http, agent_factory):
    n = node_name()
    agent = agent_factory(srv, ORG, n, whitelist={"tree": TREE})
    agent.wait_available(http)
    pidfile = os.path.join(agent.directory, "child.pid")
    http.create_job("tree", [n], env={"PIDFILE": pidfile})
    child = read_pid(pidfile)
    assert agent.stop() == 0
    assert pid_dead(child)
    assert "received SIGTERM, shutting down" in agent.log_text()


def test_server_restart_agents_come_back_without_operator_action(server_factory, agent_factory):
    """Over HTTPS (the agents verify the server's certificate with ca_file)."""
    srv = server_factory(ssl=True)
    srv.create_org(ORG)
    admin = srv.create_user("alice", org=ORG, admin=True)
    http = srv.client(admin)  # verifies with the server's certificate (verify= on every request)
    ca = str(srv.directory / "tls" / "server.crt")
    agents = [agent_factory(srv, ORG, f"r{i}", whitelist={"hi": "echo hi"},
                            settings={"ca_file": ca}) for i in range(2)]
    assert agents[0].chef_server_url.startswith("https://")
    for a in agents:
        a.wait_available(http)
    srv.restart()
    for a in agents:
        a.wait_connected(after=1)
        a.wait_available(http)
    job = http.wait_job(http.create_job("hi", [a.node_name for a in agents]))
    assert sorted(job["nodes"].get("succeeded", [])) == ["r0", "r1"], job


def test_agent_started_before_the_server_waits_and_connects_also_unencrypted(server_factory,
                                                                             agent_factory):
    """Two scenarios on one server start (keeps the suite fast): agents started before
    their server, and the legacy mode against a server with encryption disabled."""
    srv = server_factory(start=False, settings={"disable_curve_encryption": True})
    srv.init()
    srv.create_org(ORG)
    admin = srv.create_user("alice", org=ORG, admin=True)
    early = agent_factory(srv, ORG, "early", whitelist={"hi": "echo hi"}, wait=False,
                          settings={"allow_unencrypted": True})
    strict = agent_factory(srv, ORG, "strict", whitelist={"hi": "echo hi"}, wait=False)
    early.wait_log("could not get the push jobs config", count=2)
    assert early.running
    srv.start()
    early.wait_connected()
    assert "UNENCRYPTED legacy mode" in early.log_text()
    http = srv.client(admin)
    early.wait_available(http)
    assert http.wait_job(http.create_job("hi", ["early"]))["nodes"].get("succeeded") == ["early"]
    # without allow_unencrypted the agent refuses the server, says why, and keeps trying
    strict.wait_log("set allow_unencrypted to connect without encryption")
    assert strict.running and strict.connect_count() == 0


def test_bad_settings_file_stops_with_one_line(tmp_path):
    import subprocess

    from tests.helpers.agents import AGENT_BIN

    bad = tmp_path / "push-jobs-client.yml"
    bad.write_text("chef_server_url: https://x/organizations/o\nmax_body_size: -1\n")
    cp = subprocess.run([AGENT_BIN, "-c", str(bad)], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 1
    assert cp.stderr.strip() == f"{bad}:2: max_body_size: expected a positive integer, got -1"
    cp = subprocess.run([AGENT_BIN, "-v"], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0 and cp.stdout.startswith("Push Client: ")


def test_sighup_and_sigusr1_reconfigure_without_killing_the_running_job(srv, http, agent_factory):
    n = node_name()
    agent = agent_factory(srv, ORG, n, whitelist={"slow": 'sleep 2; echo "done $CHEF_PUSH_JOB_ID"'})
    agent.wait_available(http)
    job_id = http.create_job("slow", [n], capture_output=True)
    agent.wait_log("started 'sleep 2;")
    before = agent.connect_count()
    agent.signal(signal.SIGHUP)
    agent.wait_connected(after=before)
    agent.signal(signal.SIGUSR1)
    agent.wait_connected(after=before + 1)
    job = http.wait_job(job_id)
    assert job["nodes"].get("succeeded") == [n], job
    assert output(http, job_id, n) == f"done {job_id}\n"
    assert "received HUP" in agent.log_text()
    agent.wait_available(http)
