"""The .deb packages installed into a real Debian 12 root, end to end.

One root per module (debroot.py: a cached debootstrap of bookworm with
python3 and python3-venv). In order:

1. `dpkg -i` both packages in a fresh network namespace (provably offline):
   the maintainer scripts create the push-jobs user, build the private
   virtualenvs from the carried wheels with Debian's python3, run
   `push-jobs-server-ctl init` as push-jobs and record the unit enablement.
2. The server's ExecStart command runs as push-jobs; the ctl creates an
   organization, an admin user and a client; an agent runs from the client
   package with settings rendered by the cookbook's template; a job signed
   by the user (pushjobs.protocol.chef_auth, from the host) runs on it to
   completion, then one started with the packaged `pushjobs` CLI; a
   re-rendered whitelist is picked up by the same agent process.
3. Reinstalling (the upgrade path) keeps the edited settings and the data.
4. `dpkg -r` keeps data, settings and the user; `dpkg -P` removes them.

systemd does not run in a chroot: the test starts the unit's ExecStart line
itself, with the unit's User=.
"""

from __future__ import annotations

import configparser
import os
import shlex
import stat
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.helpers.server import Principal, SignedClient, free_ports
from tests.packaging.conftest import require
from tests.packaging.debroot import DebianRoot
from tests.packaging.test_cookbook import merged, render

# A cold first run builds the packages and debootstraps the root inside the
# first test's setup (minutes on a loaded 2-core machine): above the suite's
# default per-test timeout.
pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
SERVER_CONF = "/etc/push-jobs-server/push-jobs-server.rb"
CLIENT_CONF = "/etc/push-jobs-client/push-jobs-client.yml"
ORG = "lab"
NODE = "node1"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def wait_while_running(predicate, procs: dict, timeout: float, message: str) -> None:
    """Poll `predicate` until true; fail at once (with the logs) if one of
    `procs` ({name: (Popen, log_path)}) exits, or when `timeout` passes."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        for name, (proc, log_path) in procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode} while waiting for "
                                     f"{message}:\n{log_path.read_text()[-6000:]}")
        try:
            if predicate():
                return
        except Exception as exc:  # noqa: BLE001 - not ready yet; keep the last error
            last = exc
        if time.monotonic() >= deadline:
            logs = "".join(f"\n--- {n} log ---\n{lp.read_text()[-5000:]}"
                           for n, (_, lp) in procs.items())
            raise AssertionError(f"timed out after {timeout}s waiting for {message} "
                                 f"(last error: {last!r}){logs}")
        time.sleep(0.2)


def write_cookbook_settings(root: DebianRoot, work: Path, base_url: str,
                            whitelist: dict) -> None:
    """Render the agent settings with the cookbook's template (as a Chef run
    would, see test_cookbook.py) and put them in place atomically."""
    work.mkdir()
    attrs = merged(whitelist=whitelist, file_dir="/tmp/chef-push", logging_level="debug",
                   chef={"chef_server_url": f"{base_url}/organizations/{ORG}", "node_name": NODE,
                         "client_key_path": "/etc/push-jobs-client/node1.pem"})
    res, out, _ = render(attrs, work, fallback={})
    assert res.returncode == 0, res.stderr
    target = root.host_path(CLIENT_CONF)
    tmp = target.with_name(".push-jobs-client.yml.new")
    tmp.write_text(out.read_text())
    os.replace(tmp, target)


def unit_exec_start(name: str) -> list[str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(ROOT / "systemd" / name)
    return shlex.split(parser["Service"]["ExecStart"])


@pytest.fixture(scope="module")
def installed(built_packages, bookworm_tarball) -> Iterator[DebianRoot]:
    root = DebianRoot(bookworm_tarball, parent=Path("/var/tmp"))
    try:
        debs = []
        for name in ("push-jobs-server", "push-jobs-client"):
            deb = built_packages[(name, "deb")]
            (root.host_path("/tmp") / deb.name).write_bytes(deb.read_bytes())
            debs.append("/tmp/" + deb.name)
        res = root.run(["dpkg", "-i", *debs], network=False, timeout=600)
        assert "dpkg: error" not in res.stderr, res.stderr
        yield root
    finally:
        root.close()


def test_install_runs_the_post_install_steps(installed: DebianRoot) -> None:
    root = installed
    status = root.run(["dpkg-query", "-W", "-f", "${Package} ${Status}\n",
                       "push-jobs-server", "push-jobs-client"]).stdout
    assert "push-jobs-server install ok installed" in status
    assert "push-jobs-client install ok installed" in status

    # the service user and its directories
    uid, gid = root.ids("push-jobs")
    passwd = [l for l in root.read("/etc/passwd").splitlines() if l.startswith("push-jobs:")][0]
    assert passwd.endswith("nologin")
    for d in ("/var/lib/push-jobs-server", "/var/log/push-jobs-server"):
        p = root.host_path(d)
        assert (p.stat().st_uid, p.stat().st_gid) == (uid, gid), d
    # ctl init ran as push-jobs: everything it made belongs to that user,
    # the server's private key is 0600
    data = root.host_path("/var/lib/push-jobs-server")
    created = list(data.iterdir())
    assert created, "push-jobs-server-ctl init created nothing"
    for p in created:
        assert p.stat().st_uid == uid, p
    private = [p for p in created if p.name.endswith(".pem") and "priv" in p.name]
    assert private and all(_mode(p) == 0o600 for p in private), private
    # the settings may hold a database password: readable by the service only
    conf = root.host_path(SERVER_CONF)
    assert conf.stat().st_gid == gid and _mode(conf) == 0o640
    # the private virtualenvs, built on Debian's own python3, and the /usr/bin links
    for cmd in ("push-jobs-server", "push-jobs-server-ctl", "push-jobs-client", "pushjobs"):
        assert root.run(["test", "-x", f"/usr/bin/{cmd}"], check=False).returncode == 0, cmd
    base = root.run(["/opt/push-jobs-server/bin/python", "-c",
                     "import sys, pushjobs, gevent, zmq, psycopg2; print(sys.base_prefix)"]).stdout
    assert base.strip() == "/usr"
    # the server unit is enabled (recorded without a running systemd); the
    # client's is not: its settings name no server yet
    wants = root.host_path("/etc/systemd/system/multi-user.target.wants")
    assert (wants / "push-jobs-server.service").is_symlink()
    assert not (wants / "push-jobs-client.service").exists()
    # the commands answer
    assert root.run(["push-jobs-client", "--version"]).returncode == 0


def test_installed_units_verify(installed: DebianRoot) -> None:
    """`systemd-analyze verify` of the units as installed, against the root's
    real binaries (systemd's own target units copied in beside them)."""
    require("systemd-analyze")
    root = installed
    unit_dir = root.host_path("/lib/systemd/system")
    subprocess.run(["cp", "-an", "/usr/lib/systemd/system/.", str(unit_dir)], check=True)
    res = subprocess.run(["systemd-analyze", "verify", f"--root={root.path}",
                          "/lib/systemd/system/push-jobs-server.service",
                          "/lib/systemd/system/push-jobs-client.service"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_server_ctl_agent_and_a_job(installed: DebianRoot, tmp_path: Path) -> None:
    root = installed
    api, hb, cmd = free_ports(3)
    # Test ports and fast heartbeats, appended to the packaged settings file
    # (which also proves the shipped, fully commented file parses).
    conf = root.host_path(SERVER_CONF)
    conf.write_text(conf.read_text() + "\n".join([
        "", "# --- test overrides ---",
        'server_name "127.0.0.1"',
        'zeromq_listen_address "tcp://127.0.0.1"',
        'api_listen_address "127.0.0.1"',
        f"api_port {api}", f"server_heartbeat_port {hb}", f"command_port {cmd}",
        "heartbeat_interval 200", 'log_level "debug"', ""]))

    server_log = tmp_path / "server.log"
    server = root.start(unit_exec_start("push-jobs-server.service"), server_log,
                        user="push-jobs", env={"HOME": "/var/lib/push-jobs-server"})
    base_url = f"http://127.0.0.1:{api}"

    procs = {"push-jobs-server": (server, server_log)}
    wait_while_running(
        lambda: requests.get(base_url + "/pushy/_status", timeout=1).status_code == 200,
        procs, timeout=60, message="/pushy/_status")

    # identities with the packaged ctl, as the service user (it owns the database)
    def ctl(*args: str) -> None:
        root.run(["push-jobs-server-ctl", *args], user="push-jobs",
                 env={"HOME": "/var/lib/push-jobs-server"})

    ctl("org-create", ORG)
    ctl("user-create", "alice", "--org", ORG, "--admin", "--key-out", "/tmp/alice.pem")
    ctl("client-create", NODE, "--org", ORG, "--key-out", "/tmp/node1.pem")
    # an admin running the ctl as root (as the README shows) while the server
    # runs: whatever it touches in the data directory stays the service's
    root.run(["push-jobs-server-ctl", "user-create", "bob", "--org", ORG,
              "--key-out", "/root/bob.pem"])
    uid, _ = root.ids("push-jobs")
    for p in root.host_path("/var/lib/push-jobs-server").iterdir():
        assert p.stat().st_uid == uid, p

    # the agent, from the client package, as its unit runs it (root), with
    # settings rendered by the push_jobs cookbook's template
    key = root.host_path("/etc/push-jobs-client/node1.pem")
    key.write_bytes(root.host_path("/tmp/node1.pem").read_bytes())
    key.chmod(0o600)
    whitelist = {"hello": "echo hello from the package", "whoami": "whoami"}
    write_cookbook_settings(root, tmp_path / "render1", base_url, whitelist)
    agent_log = tmp_path / "agent.log"
    agent = root.start(unit_exec_start("push-jobs-client.service"), agent_log)

    alice_key = tmp_path / "alice.pem"
    alice_key.write_bytes(root.host_path("/tmp/alice.pem").read_bytes())
    alice = Principal(name="alice", kind="user", org=ORG, key_path=alice_key)
    http = SignedClient(base_url, alice)
    try:
        procs["push-jobs-client"] = (agent, agent_log)

        def node_up() -> bool:
            r = http.get(f"node_states/{NODE}")
            return r.status_code == 200 and r.json().get("availability") == "available"

        wait_while_running(node_up, procs, timeout=60, message=f"{NODE} available")
        job_id = http.create_job("hello", [NODE], capture_output=True)
        job: dict = {}

        def finished() -> bool:
            job.update(http.job(job_id))
            return job["status"] not in ("new", "voting", "running")

        wait_while_running(finished, procs, timeout=60, message=f"job {job_id} to finish")
        assert job["status"] == "complete", job
        assert job["nodes"] == {"succeeded": [NODE]}, job
        out = http.get(f"jobs/{job_id}/output/{NODE}/stdout")
        assert out.status_code == 200 and "hello from the package" in out.text, out.text

        # the packaged CLI (/usr/bin/pushjobs), inside the root
        cli = root.run(["pushjobs", "--server-url", f"{base_url}/organizations/{ORG}",
                        "-u", "alice", "-k", "/tmp/alice.pem", "job", "start", "whoami", NODE,
                        "--capture", "--poll-interval", "0.2"], check=False, timeout=120)
        assert cli.returncode == 0, cli.stdout + cli.stderr

        # A Chef run that only changes the whitelist: the same agent process
        # picks the new entry up (no restart, as the cookbook promises).
        whitelist["second"] = "echo a new entry"
        write_cookbook_settings(root, tmp_path / "render2", base_url, whitelist)
        outcome: dict = {}

        def second_runs() -> bool:
            jid = http.create_job("second", [NODE])
            outcome.update(http.wait_job(jid, timeout=30))
            return outcome.get("nodes") == {"succeeded": [NODE]}

        wait_while_running(second_runs, procs, timeout=30, message="the reloaded whitelist")
        assert agent.poll() is None
        assert "reloading the whitelist" in agent_log.read_text()
    finally:
        http.close()
        root.stop(agent)
        root.stop(server)


def test_upgrade_keeps_the_edited_settings_and_the_data(installed: DebianRoot,
                                                        built_packages) -> None:
    """Reinstalling (dpkg's upgrade path: preinst upgrade, postinst configure
    OLD) rebuilds the virtualenv but keeps the edited conffile and the data,
    and does not run `ctl init` again."""
    root = installed
    conf = root.host_path(SERVER_CONF)
    conf.write_text(conf.read_text() + "# edited by the operator\n")
    edited = conf.read_text()
    data = root.host_path("/var/lib/push-jobs-server")
    before = {p.name: p.stat().st_mtime_ns for p in data.iterdir() if p.suffix == ".pem"}
    deb = "/tmp/" + built_packages[("push-jobs-server", "deb")].name
    res = root.run(["dpkg", "-i", deb], network=False, timeout=600)
    assert "dpkg: error" not in res.stderr, res.stderr
    assert conf.read_text() == edited
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir() if p.suffix == ".pem"} == before
    assert root.run(["test", "-x", "/opt/push-jobs-server/bin/push-jobs-server"],
                    check=False).returncode == 0
    orgs = root.run(["push-jobs-server-ctl", "org-list"], user="push-jobs",
                    env={"HOME": "/var/lib/push-jobs-server"})
    assert ORG in orgs.stdout  # made by the job test: the database survived


def test_remove_keeps_data_and_purge_removes_it(installed: DebianRoot) -> None:
    root = installed
    uid_gid = root.ids("push-jobs")
    root.run(["dpkg", "-r", "push-jobs-server"], network=False)
    assert not root.host_path("/opt/push-jobs-server").exists()
    assert any(root.host_path("/var/lib/push-jobs-server").iterdir())
    assert root.host_path(SERVER_CONF).exists()
    assert root.ids("push-jobs") == uid_gid
    root.run(["dpkg", "-P", "push-jobs-server", "push-jobs-client"], network=False)
    for gone in ("/var/lib/push-jobs-server", "/var/log/push-jobs-server", "/etc/push-jobs-server",
                 "/opt/push-jobs-client", "/etc/push-jobs-client", "/usr/bin/push-jobs-server"):
        assert not root.host_path(gone).exists(), gone
    with pytest.raises(KeyError):
        root.ids("push-jobs")
