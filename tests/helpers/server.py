"""End-to-end harness: a real `push-jobs-server` subprocess, its ctl and a signed HTTP client.

Every end-to-end test of the project (server, agent, CLI, demo) starts its
server through this module, so that there is exactly one way to do it and one
place to fix when it changes. It is registered as a pytest plugin by the root
`conftest.py`; its fixtures are available everywhere without an import.

Quick start::

    def test_something(server):                     # fresh SQLite server per test
        org = server.create_org("acme")
        alice = server.create_user("alice", org="acme", admin=True)
        web1 = server.create_client("web1", org="acme")
        http = server.client(alice)                  # signs with v1.1 by default
        r = http.post("jobs", json={"command": "chef-client", "nodes": ["web1"]})
        assert r.status_code == 201

    @pytest.fixture(scope="module")
    def srv(module_server_factory):                  # one server per test module (fast)
        return module_server_factory(heartbeat_interval=150, settings={"voting_timeout": 2})

    def test_on_postgres(server_factory, postgres_url):   # PostgreSQL instead of SQLite
        s = server_factory(database_url=postgres_url)

What a `ServerProcess` does on `start()`:

1. writes `push-jobs-server.rb` in its directory: `data_dir` (a `data/`
   sub-directory), `server_name "127.0.0.1"`, `zeromq_listen_address
   "tcp://127.0.0.1"`, `api_listen_address "127.0.0.1"`, three free loopback
   ports (`api_port`, `server_heartbeat_port`, `command_port`),
   `heartbeat_interval` (ms, default 150), `log_level "debug"`, optionally
   `database_url`, plus whatever `settings={...}` adds or overrides;
2. runs `push-jobs-server-ctl -c FILE init` (once per ServerProcess);
3. starts `push-jobs-server -c FILE` in its own process group, stdout and
   stderr appended to `server.log` in its directory;
4. polls `GET /pushy/_status` until it answers 200 (deadline; if the process
   dies or the deadline passes, `ServerStartError` carries the log's tail).

When a test fails while servers are running, the tail of each live server's
log is attached to the pytest report (section "push-jobs-server log").

Identities are created with the real ctl (`create_org`, `create_user`,
`create_client`, `add_to_group`, `ctl(...)`); users and clients get a fresh
private key written by `--key-out` (mode 0600) that `Principal.private_key`
loads. `server.client(principal, version="1.3")` returns a `SignedClient`
whose paths are relative to `/organizations/ORG/pushy/` unless they start with
`/`; `client.signed_headers(...)` exposes the raw Chef headers so auth tests
can tamper with them.

API summary (see each docstring):

| ServerProcess | |
|---|---|
| `start()`, `wait_ready()`, `stop() -> rc`, `kill()`, `restart()`, `signal(sig)` | process control (SIGTERM on stop; SIGKILL of the group on kill) |
| `ctl(*args, check=True)`, `init()` | run `push-jobs-server-ctl -c FILE ...` |
| `create_org`, `create_user(name, org, admin=)`, `create_client(name, org)`, `add_to_group`, `remove_from_group` | identities through the ctl; users/clients return a `Principal` |
| `client(principal, version="1.1", org=None)` | a `SignedClient` (paths relative to `/organizations/ORG/pushy/`) |
| `status()` | `GET /pushy/_status` as a dict |
| `base_url`, `out_addr`, `command_addr`, `api_port`, `server_heartbeat_port`, `command_port` | where it listens |
| `config_path`, `data_dir`, `log_path`, `keys_dir`, `server_public_key_path`, `verify` | files; `verify` is what `requests` should verify HTTPS with |
| `log_text()`, `log_tail()`, `wait_log(needle)` | the server's stdout+stderr |

| SignedClient | |
|---|---|
| `get/post/put/delete/request(path, json=, body=, params=, headers=, version=, sign=, drop=, override=, timestamp=, user_id=)` | signed request (tamper knobs for auth tests) |
| `signed_headers(method, path, body)` | the raw Chef headers |
| `create_job(command, nodes, **fields) -> id`, `job(id)`, `wait_job(id, statuses, timeout)` | job shortcuts |

Fixtures: `server` (fresh per test), `server_factory` (function scope),
`module_server_factory` (one per module). `wait_for(predicate, timeout)` is
the polling helper.

Nothing here sleeps for luck: every wait is a poll with a deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import pytest
import requests

BIN_DIR = Path(sys.executable).parent
SERVER_BIN = str(BIN_DIR / "push-jobs-server")
CTL_BIN = str(BIN_DIR / "push-jobs-server-ctl")

#: Default server heartbeat for tests, in ms (PROTOCOL.md settings keep the original's unit).
DEFAULT_HEARTBEAT_MS = 150
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LOG_TAIL_CHARS = 12000

# Every ServerProcess that is currently running, so a failing test's report
# can show their logs (see pytest_runtest_makereport below).
_LIVE: "set[ServerProcess]" = set()


class ServerStartError(RuntimeError):
    """The server did not come up; the message carries the tail of its log."""


class CtlError(RuntimeError):
    """`push-jobs-server-ctl` exited non-zero; the message carries its output."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (held open together while choosing, so no duplicates)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def render_setting(value: Any) -> str:
    """A Python value as a literal of the Ruby-style settings file (parsed, never evaluated)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render_setting(v) for v in value) + "]"
    return json.dumps(str(value))


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
             message: str = "condition") -> Any:
    """Poll `predicate` until it returns a truthy value (returned) or `timeout` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last error
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


# --------------------------------------------------------------------------------------
# Principals and the signed HTTP client


@dataclass
class Principal:
    """A user or client created through the ctl, with the path of its private key."""

    name: str
    kind: str  # "user" | "client"
    org: Optional[str]
    key_path: Path

    @property
    def key_pem(self) -> str:
        return self.key_path.read_text()

    @property
    def private_key(self):
        """The cryptography RSA private key object (loaded once, cached)."""
        cached = getattr(self, "_pk", None)
        if cached is None:
            from pushjobs.protocol.keys import load_private_key

            cached = load_private_key(self.key_pem)
            object.__setattr__(self, "_pk", cached)
        return cached

    def __hash__(self) -> int:
        return hash((self.name, self.kind, self.org))


class SignedClient:
    """A `requests` session that Chef-signs every request as one principal.

    Paths not starting with `/` are relative to `/organizations/ORG/pushy/`.
    Keyword arguments of `request` beyond requests' own:

    * `version`: signing protocol ("1.0", "1.1", "1.3"); default the client's.
    * `sign=False`: send no Chef headers at all.
    * `drop=("X-Ops-Sign", ...)`: remove those signed headers (auth tests).
    * `override={"X-Ops-Timestamp": ...}`: replace signed headers after signing.
    * `timestamp`: passed to `sign_request` (to sign with a skewed clock).
    * `body`: raw bytes to send (signed as is); `json=` serializes compactly.
    """

    def __init__(self, base_url: str, principal: Principal, *, org: Optional[str] = None,
                 version: str = "1.1", verify: Any = False, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.principal = principal
        self.org = org if org is not None else principal.org
        self.version = version
        self.timeout = timeout
        self.session = requests.Session()
        self.session.verify = verify

    def url_path(self, path: str) -> str:
        if path.startswith("/"):
            return path
        return f"/organizations/{self.org}/pushy/{path}"

    def signed_headers(self, method: str, path: str, body: bytes = b"", *,
                       version: Optional[str] = None, timestamp: Any = None,
                       user_id: Optional[str] = None) -> dict[str, str]:
        """The Chef authentication headers for a request (path without query string)."""
        from pushjobs.protocol.chef_auth import sign_request

        kwargs: dict[str, Any] = {"version": version or self.version}
        if timestamp is not None:
            kwargs["timestamp"] = timestamp
        return dict(sign_request(self.principal.private_key, user_id or self.principal.name,
                                 method.upper(), self.url_path(path).split("?", 1)[0], body,
                                 **kwargs))

    def request(self, method: str, path: str, *, json: Any = dataclasses.MISSING,
                body: Optional[bytes] = None, headers: Optional[Mapping[str, str]] = None,
                params: Optional[Mapping[str, Any]] = None, version: Optional[str] = None,
                sign: bool = True, drop: tuple[str, ...] = (),
                override: Optional[Mapping[str, str]] = None, timestamp: Any = None,
                user_id: Optional[str] = None, **kw: Any) -> requests.Response:
        method = method.upper()
        full_path = self.url_path(path)
        hdrs: dict[str, str] = {"Accept": default_accept(full_path)}
        if json is not dataclasses.MISSING:
            body = _json_bytes(json)
            hdrs["Content-Type"] = "application/json"
        data = body if body is not None else b""
        if sign:
            signed = self.signed_headers(method, full_path, data, version=version,
                                         timestamp=timestamp, user_id=user_id)
            lower_drop = {d.lower() for d in drop}
            hdrs.update({k: v for k, v in signed.items() if k.lower() not in lower_drop})
        if override:
            hdrs.update(override)
        if headers:
            hdrs.update(headers)
        kw.setdefault("timeout", self.timeout)
        # explicit: a request-level verify wins over REQUESTS_CA_BUNDLE, a session-level one does not
        kw.setdefault("verify", self.session.verify)
        return self.session.request(method, self.base_url + full_path, data=data or None,
                                    headers=hdrs, params=params, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> requests.Response:
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.request("DELETE", path, **kw)

    def create_job(self, command: str, nodes: list[str], **fields: Any) -> str:
        """POST a job; assert 201; return its id."""
        r = self.post("jobs", json={"command": command, "nodes": nodes, **fields})
        assert r.status_code == 201, (r.status_code, r.text)
        return r.json()["id"]

    def job(self, job_id: str, **kw: Any) -> dict:
        r = self.get(f"jobs/{job_id}", **kw)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    def wait_job(self, job_id: str, statuses: tuple[str, ...] = (
            "complete", "quorum_failed", "aborted", "timed_out", "crashed"),
            timeout: float = 20.0) -> dict:
        """Poll GET jobs/ID until its status is one of `statuses`; return the job."""
        return wait_for(lambda: (lambda j: j if j["status"] in statuses else None)(self.job(job_id)),
                        timeout=timeout, message=f"job {job_id} to reach {statuses}")

    def close(self) -> None:
        self.session.close()


_OUTPUT_PATH = re.compile(r"/pushy/jobs/[^/]+/output/[^/]+/[^/?]+(?:\?.*)?$")


def default_accept(path: str) -> str:
    """The `Accept` a well-behaved client sends for `path`, as the CLI does: the output
    endpoint answers application/octet-stream (406 for `Accept: application/json`),
    everything else JSON. SSE feeds need an explicit `text/event-stream`."""
    return "application/octet-stream" if _OUTPUT_PATH.search(path) else "application/json"


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# --------------------------------------------------------------------------------------
# The server process


@dataclass(eq=False)
class ServerProcess:
    """One push-jobs-server instance living in `directory` (see the module docstring)."""

    directory: Path
    database_url: Optional[str] = None
    heartbeat_interval: int = DEFAULT_HEARTBEAT_MS
    settings: dict[str, Any] = field(default_factory=dict)
    ssl: bool = False
    api_port: int = 0
    server_heartbeat_port: int = 0
    command_port: int = 0
    proc: Optional[subprocess.Popen] = None
    _initialized: bool = False
    _log_file: Any = None
    _clients: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.api_port and self.server_heartbeat_port and self.command_port):
            self.api_port, self.server_heartbeat_port, self.command_port = free_ports(3)

    # --- paths ------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.directory / "push-jobs-server.rb"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    @property
    def keys_dir(self) -> Path:
        return self.directory / "keys"

    @property
    def scheme(self) -> str:
        return "https" if self.ssl or self.settings.get("ssl_certificate") else "http"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.api_port}"

    @property
    def verify(self) -> Any:
        """What `requests` should verify the server with: the test certificate under HTTPS."""
        if self.ssl:
            return str(self.directory / "tls" / "server.crt")
        return self.settings.get("ssl_certificate", True)

    @property
    def out_addr(self) -> str:
        return f"tcp://127.0.0.1:{self.server_heartbeat_port}"

    @property
    def command_addr(self) -> str:
        return f"tcp://127.0.0.1:{self.command_port}"

    @property
    def server_public_key_path(self) -> Path:
        return self.data_dir / "pushy_pub.pem"

    # --- settings file ----------------------------------------------------
    def effective_settings(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "data_dir": str(self.data_dir),
            "server_name": "127.0.0.1",
            "zeromq_listen_address": "tcp://127.0.0.1",
            "api_listen_address": "127.0.0.1",
            "api_port": self.api_port,
            "server_heartbeat_port": self.server_heartbeat_port,
            "command_port": self.command_port,
            "heartbeat_interval": self.heartbeat_interval,
            "log_level": "debug",
        }
        if self.database_url:
            values["database_url"] = self.database_url
        if self.ssl:
            values["ssl_certificate"] = str(self.directory / "tls" / "server.crt")
            values["ssl_certificate_key"] = str(self.directory / "tls" / "server.key")
        values.update(self.settings)
        return values

    def write_settings(self) -> Path:
        """(Re)write the settings file from the current attributes; returns its path."""
        lines = ["# written by tests/helpers/server.py"]
        lines += [f"{k} {render_setting(v)}" for k, v in self.effective_settings().items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    # --- ctl ----------------------------------------------------------------
    def ctl(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run `push-jobs-server-ctl -c FILE ARGS...`; raise CtlError when `check` and rc != 0."""
        if not self.config_path.exists():
            self.write_settings()
        cmd = [CTL_BIN, "-c", str(self.config_path), *map(str, args)]
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self._env())
        if check and cp.returncode != 0:
            raise CtlError(f"{' '.join(cmd)} -> rc {cp.returncode}\nstdout: {cp.stdout}\nstderr: {cp.stderr}")
        return cp

    def init(self) -> None:
        """Write the settings file and run `ctl init` (directories, schema, server keys)."""
        self.write_settings()
        if self.ssl:
            make_self_signed_certificate(self.directory / "tls")
        self.ctl("init")
        self._initialized = True

    def create_org(self, name: str) -> str:
        self.ctl("org-create", name)
        return name

    def create_user(self, name: str, org: Optional[str] = None, *, admin: bool = False) -> Principal:
        """`user-create NAME --org ORG [--admin] --key-out KEYS/NAME.pem`."""
        self.keys_dir.mkdir(exist_ok=True)
        key_path = self.keys_dir / f"user-{name}.pem"
        args = ["user-create", name]
        if org:
            args += ["--org", org]
        if admin:
            args.append("--admin")
        args += ["--key-out", str(key_path)]
        self.ctl(*args)
        return Principal(name=name, kind="user", org=org, key_path=key_path)

    def create_client(self, name: str, org: str) -> Principal:
        """`client-create NAME --org ORG --key-out KEYS/ORG-NAME.pem`."""
        self.keys_dir.mkdir(exist_ok=True)
        key_path = self.keys_dir / f"client-{org}-{name}.pem"
        self.ctl("client-create", name, "--org", org, "--key-out", str(key_path))
        return Principal(name=name, kind="client", org=org, key_path=key_path)

    def add_to_group(self, org: str, group: str, principal: str) -> None:
        self.ctl("group-add", org, group, principal)

    def remove_from_group(self, org: str, group: str, principal: str) -> None:
        self.ctl("group-remove", org, group, principal)

    # --- HTTP -------------------------------------------------------------
    def client(self, principal: Principal, *, version: str = "1.1", org: Optional[str] = None) -> SignedClient:
        """A signed HTTP client acting as `principal` (closed when the server stops)."""
        c = SignedClient(self.base_url, principal, org=org, version=version, verify=self.verify)
        self._clients.append(c)
        return c

    def status(self, timeout: float = 5.0) -> dict:
        """GET /pushy/_status (unauthenticated); asserts 200."""
        r = requests.get(self.base_url + "/pushy/_status", timeout=timeout, verify=self.verify)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    # --- process ----------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = START_TIMEOUT) -> "ServerProcess":
        """Init (first time), start the process and wait until /pushy/_status answers."""
        if self.running:
            return self
        if not self._initialized:
            self.init()
        else:
            self.write_settings()
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n===== starting push-jobs-server at {time.strftime('%H:%M:%S')} =====\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen([SERVER_BIN, "-c", str(self.config_path)],
                                     stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self._env(),
                                     start_new_session=True)
        _LIVE.add(self)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> dict:
        """Poll /pushy/_status until 200; ServerStartError (with the log tail) otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                rc = None if self.proc is None else self.proc.returncode
                raise ServerStartError(f"push-jobs-server exited (rc {rc}) before it was ready\n{self.log_tail()}")
            try:
                r = requests.get(self.base_url + "/pushy/_status", timeout=1.0, verify=self.verify)
                if r.status_code == 200:
                    return r.json()
            except requests.RequestException:
                pass
            if time.monotonic() >= deadline:
                raise ServerStartError(f"push-jobs-server not ready after {timeout}s\n{self.log_tail()}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        """Send a signal to the gunicorn master (the process we started)."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        """SIGTERM the master and wait for it; kill the group if it overstays. Returns the exit code."""
        if self.proc is None:
            return None
        self.close_clients()  # tidy (the server itself closes idle keep-alive connections on SIGTERM)
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
        """SIGKILL the server's whole process group (master and worker): a crash."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        # the worker may outlive the master for an instant: wait for the group to vanish
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not _group_alive(self.proc.pid), timeout=5, message="process group exit")
        self._after_exit()

    def restart(self, timeout: float = START_TIMEOUT) -> "ServerProcess":
        """stop() then start() on the same directory, database and ports."""
        self.stop()
        return self.start(timeout)

    def _after_exit(self) -> None:
        _LIVE.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def close_clients(self) -> None:
        """Close the HTTP sessions handed out by `client()` (they stay usable: requests reconnects)."""
        for c in self._clients:
            c.close()

    def close(self) -> None:
        """Stop the server and close the HTTP sessions handed out."""
        self.stop()
        self._clients.clear()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        text = self.log_text()
        return f"--- {self.log_path} (last {chars} chars) ---\n{text[-chars:]}"

    def wait_log(self, needle: str, timeout: float = 10.0) -> None:
        """Wait until `needle` appears in the server log."""
        wait_for(lambda: needle in self.log_text(), timeout=timeout, message=f"{needle!r} in server log")

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PUSHJOBS_SERVER_CONFIG", None)
        return env

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def make_self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for `host` (HTTPS tests); returns (cert, key).

    Made by the ctl's own `write_self_signed_certificate` (what `init --tls`
    writes), so the tests exercise the certificate operators get: one that
    requests/urllib3 2.x and Ruby accept as a CA file with verification on."""
    from pushjobs.server.ctl import write_self_signed_certificate

    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    for p in (cert_path, key_path):
        p.unlink(missing_ok=True)
    write_self_signed_certificate(host, str(cert_path), str(key_path), days=2)
    return cert_path, key_path


# --------------------------------------------------------------------------------------
# pytest fixtures


class ServerFactory:
    """Creates started ServerProcesses under one base directory and stops them all at the end."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.servers: list[ServerProcess] = []

    def __call__(self, *, start: bool = True, **kwargs: Any) -> ServerProcess:
        """`factory(database_url=..., heartbeat_interval=..., settings={...}, ssl=False, start=True)`."""
        directory = self.base / f"server{len(self.servers)}"
        s = ServerProcess(directory, **kwargs)
        self.servers.append(s)
        if start:
            s.start()
        return s

    def close(self) -> None:
        for s in self.servers:
            with contextlib.suppress(Exception):
                s.close()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Function-scoped: `server_factory(**ServerProcess kwargs)` -> a started server."""
    factory = ServerFactory(tmp_path / "pushjobs-servers")
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Module-scoped factory: start one server per test module and share it (keeps suites fast)."""
    factory = ServerFactory(tmp_path_factory.mktemp("pushjobs-servers"))
    yield factory
    factory.close()


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    """A fresh, started SQLite server for one test (use module_server_factory when you can share)."""
    return server_factory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Attach the log tail of every live server to the report of a failing test."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _LIVE:
        for s in list(_LIVE):
            rep.sections.append((f"push-jobs-server log ({s.directory})", s.log_tail()))
