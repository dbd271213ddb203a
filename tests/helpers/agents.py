"""End-to-end harness: real `push-jobs-client` subprocesses against a ServerProcess.

Each `AgentProcess` is its own OS process with its own node name, client key
(created with the server's ctl), settings file (YAML, the cookbook's format)
and log file, all in its own directory. Registered as a pytest plugin by the
root `conftest.py`.

Quick start::

    def test_job(server, agent_factory):
        server.create_org("acme")
        admin = server.create_user("alice", org="acme", admin=True)
        agent = agent_factory(server, "acme", "node1",
                              whitelist={"hello": "echo hello"})    # started, waits until connected
        http = server.client(admin)
        agent.wait_available(http)
        job = http.wait_job(http.create_job("hello", ["node1"]))

Intervals are shrunk for tests (reconnect backoff 0.1-0.5 s, restart splay
0.3 s, settings file polled every 0.2 s, TERM->KILL grace 0.5 s); pass
`settings={...}` to override any agent setting. `start(wait=False)` starts
without waiting (e.g. before the server exists). On a failing test the log
tail of every live agent is attached to the report.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import yaml

from tests.helpers.server import Principal, ServerProcess, SignedClient, wait_for

BIN_DIR = Path(sys.executable).parent
AGENT_BIN = str(BIN_DIR / "push-jobs-client")
LOG_TAIL_CHARS = 8000

#: Agent settings that keep end-to-end tests fast.
FAST_SETTINGS: dict[str, Any] = {
    "reconnect_min_delay": 0.1,
    "reconnect_max_delay": 0.5,
    "restart_splay": 0.3,
    "whitelist_poll_interval": 0.2,
    "term_grace_period": 0.5,
    "http_timeout": 2.0,
    "log_level": "debug",
}

_LIVE: "set[AgentProcess]" = set()


@dataclass(eq=False)
class AgentProcess:
    """One push-jobs-client process; `directory` holds its settings, key copy and log."""

    directory: Path
    node_name: str
    org: str
    server_url: str  # http://127.0.0.1:PORT (the org path is added)
    key_path: Path
    whitelist: dict[str, Any] = field(default_factory=lambda: {"chef-client": "chef-client"})
    settings: dict[str, Any] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    proc: Optional[subprocess.Popen] = None
    _log_file: Any = None

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    # --- paths -------------------------------------------------------------
    @property
    def settings_path(self) -> Path:
        return self.directory / "push-jobs-client.yml"

    @property
    def log_path(self) -> Path:
        return self.directory / "agent.log"

    @property
    def file_dir(self) -> Path:
        return self.directory / "files"

    @property
    def chef_server_url(self) -> str:
        return f"{self.server_url}/organizations/{self.org}"

    # --- settings ----------------------------------------------------------
    def effective_settings(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "chef_server_url": self.chef_server_url,
            "node_name": self.node_name,
            "client_key": str(self.key_path),
            "file_dir": str(self.file_dir),
            "lockfile": str(self.directory / "chef-client-running.pid"),
            **FAST_SETTINGS,
            "whitelist": self.whitelist,
        }
        values.update(self.settings)
        return values

    def write_settings(self, *, rename: bool = True) -> Path:
        """(Re)write the YAML settings file; by rename (as Chef writes files) or in place."""
        text = "# written by tests/helpers/agents.py\n" + yaml.safe_dump(
            self.effective_settings(), default_flow_style=False, sort_keys=False)
        if rename:
            tmp = self.settings_path.with_suffix(".yml.tmp")
            tmp.write_text(text)
            os.replace(tmp, self.settings_path)
        else:
            with open(self.settings_path, "r+" if self.settings_path.exists() else "w") as fh:
                fh.seek(0)
                fh.write(text)
                fh.truncate()
        return self.settings_path

    def set_whitelist(self, whitelist: dict[str, Any], *, rename: bool = True) -> None:
        self.whitelist = whitelist
        self.write_settings(rename=rename)

    # --- process -------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> "AgentProcess":
        if self.running:
            return self
        self.write_settings()
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n===== starting push-jobs-client at {time.strftime('%H:%M:%S')} =====\n".encode())
        self._log_file.flush()
        env = dict(os.environ)
        env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen([AGENT_BIN, "-c", str(self.settings_path), *self.extra_args],
                                     stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        _LIVE.add(self)
        if wait:
            self.wait_connected(timeout)
        return self

    def wait_connected(self, timeout: float = 20.0, after: int = 0) -> None:
        """Wait until the agent logged its `connected:` line (the `after`-th+1 one)."""
        def ok() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent {self.node_name} exited rc={self.proc.returncode}\n"
                                     f"{self.log_tail()}")
            return self.log_text().count("] connected: ") > after
        wait_for(ok, timeout=timeout, message=f"agent {self.node_name} to connect")

    def connect_count(self) -> int:
        return self.log_text().count("] connected: ")

    def wait_available(self, http: SignedClient, timeout: float = 20.0) -> None:
        """Wait until the server reports this node `available`."""
        def ok() -> bool:
            r = http.get(f"node_states/{self.node_name}")
            return r.status_code == 200 and r.json().get("availability") == "available"
        wait_for(ok, timeout=timeout, message=f"node {self.node_name} available")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                rc = self.proc.returncode
        self._after_exit()
        return rc

    def kill(self) -> None:
        """SIGKILL the agent only (its jobs, in their own process groups, survive): a crash."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._after_exit()

    def _after_exit(self) -> None:
        _LIVE.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # --- logs ----------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return f"--- {self.log_path} (last {chars} chars) ---\n{self.log_text()[-chars:]}"

    def wait_log(self, needle: str, timeout: float = 10.0, count: int = 1) -> None:
        wait_for(lambda: self.log_text().count(needle) >= count, timeout=timeout,
                 message=f"{needle!r} x{count} in the log of agent {self.node_name}")


class AgentFactory:
    """Creates agents (and their clients on the server); stops them all at the end."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.agents: list[AgentProcess] = []

    def __call__(self, server: ServerProcess, org: str, node_name: str, *,
                 whitelist: Optional[dict[str, Any]] = None, settings: Optional[dict[str, Any]] = None,
                 principal: Optional[Principal] = None, start: bool = True, wait: bool = True,
                 extra_args: Optional[list[str]] = None) -> AgentProcess:
        """A started agent for `node_name` in `org` (its client is created unless given)."""
        if principal is None:
            principal = server.create_client(node_name, org)
        agent = AgentProcess(self.base / f"agent-{node_name}-{len(self.agents)}", node_name, org,
                             server.base_url, principal.key_path,
                             whitelist=dict(whitelist) if whitelist is not None else
                             {"chef-client": "chef-client"},
                             settings=dict(settings or {}), extra_args=list(extra_args or []))
        self.agents.append(agent)
        if start:
            agent.start(wait=wait)
        return agent

    def close(self) -> None:
        for a in self.agents:
            with contextlib.suppress(Exception):
                a.stop()


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[AgentFactory]:
    """Function-scoped: `agent_factory(server, org, node, whitelist=..., settings=...)`."""
    factory = AgentFactory(tmp_path / "pushjobs-agents")
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_agent_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentFactory]:
    factory = AgentFactory(tmp_path_factory.mktemp("pushjobs-agents"))
    yield factory
    factory.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Attach the log tail of every live agent to the report of a failing test."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _LIVE:
        for a in list(_LIVE):
            rep.sections.append((f"push-jobs-client log ({a.node_name})", a.log_tail()))
