"""push-jobs-server as a process: start-up errors, one gevent worker, SIGTERM, SIGHUP, HTTPS, options.

Each test starts real subprocesses (the gunicorn master and its worker).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from pushjobs.protocol.keys import curve_keypair
from tests.helpers.server import SERVER_BIN, ServerProcess, wait_for

pytestmark = pytest.mark.e2e


def _run_server(config, timeout=30):
    return subprocess.run([SERVER_BIN, "-c", str(config)], capture_output=True, text=True, timeout=timeout)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except FileNotFoundError:
        return []


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# --------------------------------------------------------------------------------------
# start-up errors: one line on stderr, exit 2, no traceback


def test_unknown_setting_exits_2_with_one_line(tmp_path):
    cfg = tmp_path / "push-jobs-server.rb"
    cfg.write_text(f'data_dir "{tmp_path}"\nbogus_setting 12\n')
    cp = _run_server(cfg)
    assert cp.returncode == 2
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1, cp.stderr
    assert "bogus_setting" in lines[0] and str(cfg) in lines[0] and "Traceback" not in cp.stderr


def test_missing_settings_file_exits_2(tmp_path):
    cp = _run_server(tmp_path / "nope.rb")
    assert cp.returncode == 2
    assert len(cp.stderr.strip().splitlines()) == 1 and "nope.rb" in cp.stderr


def test_not_initialized_exits_2(tmp_path):
    s = ServerProcess(tmp_path / "srv")
    s.write_settings()
    cp = _run_server(s.config_path)
    assert cp.returncode == 2
    assert "push-jobs-server-ctl init" in cp.stderr and "Traceback" not in cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1


def test_unreachable_database_exits_2(tmp_path):
    s = ServerProcess(tmp_path / "srv")
    s.init()
    s.database_url = "postgresql://nobody@127.0.0.1:1/nothing"
    s.write_settings()
    cp = _run_server(s.config_path)
    assert cp.returncode == 2, cp.stderr
    assert "Traceback" not in cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("setting", ["api_port", "server_heartbeat_port", "command_port"])
def test_port_in_use_exits_2_with_one_line(tmp_path, setting):
    """Checked in the master before gunicorn starts: no gunicorn retries, no worker traceback."""
    s = ServerProcess(tmp_path / "srv")
    s.init()
    port = getattr(s, setting)
    with socket.socket() as blocker:  # a real occupied port, as another running server leaves it
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        t0 = time.monotonic()
        cp = _run_server(s.config_path, timeout=60)
    assert cp.returncode == 2, cp.stderr
    assert time.monotonic() - t0 < 20
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1, cp.stderr
    assert f"{setting} {port}" in lines[0] and "already in use" in lines[0] and "Traceback" not in cp.stderr


def test_usage():
    cp = subprocess.run([SERVER_BIN, "--help"], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0 and "-c CONFIG" in cp.stdout


# --------------------------------------------------------------------------------------
# the running process


def test_lifecycle_one_worker_sighup_restart_sigterm(server_factory):
    """One server through its whole life (one init, two starts keep the suite fast)."""
    s = server_factory()
    # exactly one worker; it (not the master) binds the ZeroMQ ports
    workers = wait_for(lambda: _children(s.pid), timeout=5, message="the worker")
    assert len(workers) == 1
    with open(f"/proc/{workers[0]}/cmdline") as fh:
        assert "push-jobs-server" in fh.read()
    log = s.log_text()
    assert "Using worker: PushJobsGeventWorker" in log  # gunicorn names its worker class (ours, gevent's)
    assert f"worker {workers[0]} serving the API" in log
    assert not _port_free(s.server_heartbeat_port) and not _port_free(s.command_port)

    s.create_org("acme")
    alice = s.create_user("alice", "acme", admin=True)
    web1 = s.create_client("web1", "acme")
    http = s.client(alice)
    job_id = http.create_job("chef-client", ["web1"])
    first = s.status()["incarnation_id"]

    # SIGHUP: a new worker (new runtime, new incarnation) that binds the ZeroMQ ports again
    s.signal(signal.SIGHUP)
    wait_for(lambda: s.status()["incarnation_id"] != first, timeout=15, message="a new worker")
    assert s.running
    new_workers = wait_for(lambda: _children(s.pid), timeout=5, message="the new worker")
    assert len(new_workers) == 1 and new_workers != workers
    r = s.client(web1).get("config/web1", params={"ccpk": curve_keypair()[0]})
    assert r.status_code == 200 and r.json()["incarnation_id"] != first
    second = r.json()["incarnation_id"]

    # restart: jobs persist, the incarnation changes
    s.restart()
    assert s.status()["incarnation_id"] not in (first, second)
    assert http.job(job_id)["id"] == job_id

    # SIGTERM with an open event stream: exit 0 within seconds, worker gone, ports free
    worker = _children(s.pid)[0]
    got = threading.Event()

    def listen():
        try:
            r = http.get("job_status_feed", headers={"Accept": "text/event-stream"}, stream=True, timeout=30)
            got.set()
            for _ in r.iter_content(64):
                pass
        except requests.RequestException:
            pass

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert got.wait(10)
    t0 = time.monotonic()
    assert s.stop(timeout=15) == 0
    assert time.monotonic() - t0 < 8
    t.join(10)
    assert not os.path.exists(f"/proc/{worker}") or open(f"/proc/{worker}/stat").read().split()[2] == "Z"
    for port in (s.api_port, s.server_heartbeat_port, s.command_port):
        wait_for(lambda: _port_free(port), timeout=5, message=f"port {port} released")


def test_sighup_with_invalid_settings_keeps_the_worker(server_factory):
    """A typo in the settings file must not cost a restart (new incarnation, jobs in flight crash)."""
    s = server_factory()
    workers = wait_for(lambda: _children(s.pid), timeout=5, message="the worker")
    first = s.status()["incarnation_id"]
    good = s.config_path.read_text()
    s.config_path.write_text(good + "bogus_setting 12\n")
    s.signal(signal.SIGHUP)
    wait_for(lambda: "settings not reloaded" in s.log_text(), timeout=10, message="the reload error")
    assert "bogus_setting" in s.log_text()
    time.sleep(0.5)  # give a (wrong) restart the time to show
    assert s.running and _children(s.pid) == workers
    assert s.status()["incarnation_id"] == first
    # a valid file again: SIGHUP restarts the worker as usual
    s.config_path.write_text(good)
    s.signal(signal.SIGHUP)
    wait_for(lambda: s.status()["incarnation_id"] != first, timeout=15, message="a new worker")
    assert s.running


def _worker_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_sigterm_is_prompt_with_idle_keepalive_connections_and_sse_streams(server_factory, tls):
    """SIGTERM ends the worker well under 1.5 s although clients hold idle keep-alive
    connections (one used just before: its 2 s keep-alive timer is fresh) and SSE streams.
    gunicorn's own gevent worker waited for those timers, checking once a second (2-5 s)."""
    s = server_factory(ssl=tls)
    s.create_org("acme")
    alice = s.create_user("alice", "acme", admin=True)
    sessions = [s.client(alice) for _ in range(4)]
    for c in sessions:
        assert c.get("jobs").status_code == 200  # the connection stays open, idle
    opened, ended = threading.Semaphore(0), []

    def listen(c):
        try:
            r = c.get("job_status_feed", headers={"Accept": "text/event-stream"}, stream=True, timeout=30)
            opened.release()
            for _ in r.iter_content(64):
                pass
            ended.append("clean")
        except requests.RequestException as e:
            ended.append(repr(e))

    threads = [threading.Thread(target=listen, args=(s.client(alice),), daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in threads:
        assert opened.acquire(timeout=10)
    worker = _children(s.pid)[0]
    assert sessions[0].get("node_states").status_code == 200
    t0 = time.monotonic()
    s.signal(signal.SIGTERM)
    wait_for(lambda: not _worker_alive(worker), timeout=10, interval=0.01, message="the worker to exit")
    worker_exit = time.monotonic() - t0
    s.proc.wait(10)
    total = time.monotonic() - t0
    assert s.stop() == 0
    assert worker_exit < 1.5, f"worker took {worker_exit:.2f}s"
    assert total < 3.0, f"server took {total:.2f}s"
    for t in threads:
        t.join(5)
    assert ended == ["clean", "clean"]  # the streams ended, not cut
    assert "graceful timeout" not in s.log_text()


def test_https_curve_disabled_client_name_not_validated(server_factory):
    """HTTPS with a certificate; S6: no ccpk needed and no curve_public_key;
    validate_client_node_name false lets a client fetch any node's config."""
    s = server_factory(ssl=True, settings={"disable_curve_encryption": True, "validate_client_node_name": False})
    assert s.base_url.startswith("https://")
    r = requests.get(s.base_url + "/pushy/_status", verify=str(s.directory / "tls" / "server.crt"))
    assert r.status_code == 200
    with pytest.raises(requests.RequestException):
        requests.get(f"http://127.0.0.1:{s.api_port}/pushy/_status", timeout=5)
    s.create_org("acme")
    web1 = s.create_client("web1", "acme")
    http = s.client(web1)
    r = http.get("config/web1")
    assert r.status_code == 200, r.text
    assert "curve_public_key" not in r.json()
    r = http.get("config/web2")
    assert r.status_code == 200 and r.json()["node"] == "web2"
