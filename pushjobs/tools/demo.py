"""`make demo`: the whole system on one machine, end to end, in well under a minute.

What it does, in a fresh temporary directory:

1. writes a server settings file (SQLite, the embedded default, in the
   directory; loopback ports picked free), runs `push-jobs-server-ctl init`;
2. creates an org, an admin user and three clients (nodes) with the ctl;
3. starts `push-jobs-server` and three real `push-jobs-client` agents with a
   small whitelist, and waits until every node is available;
4. runs a job with `--capture` through the `pushjobs` CLI (a subprocess, as a
   person would), then shows `node status`, `job status` and each node's
   captured output, and a search;
5. tears everything down: every process it started is stopped (TERM, then
   KILL) and the directory removed, also on failure and on Ctrl-C.

Exit status: 0 when the job succeeded on every node, 1 otherwise. `--keep`
leaves the directory (logs) in place for a look afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

ORG = "demo"
USER = "alice"
NODES = ("node1", "node2", "node3")
ROLES = {"node1": ["web"], "node2": ["web"], "node3": ["db"]}
WHITELIST = {
    "hello": 'echo "hello from $CHEF_PUSH_NODE_NAME (job $CHEF_PUSH_JOB_ID)"; uname -s',
    "uptime": "uptime",
}
HEARTBEAT_MS = 200
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
BIN = Path(sys.executable).parent


def _bin(name: str) -> str:
    p = BIN / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if not found:
        raise DemoError(f"cannot find the `{name}` program (is the package installed? try `make venv`)")
    return found


class DemoError(Exception):
    pass


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Optional[BaseException] = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except DemoError:
            raise
        except Exception as e:  # noqa: BLE001 - keep polling, report the last error
            last = e
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({last})" if last else ""))
        time.sleep(interval)


@dataclass
class Demo:
    root: Path
    out: Any = field(default_factory=lambda: sys.stdout)
    t0: float = field(default_factory=time.monotonic)
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)

    # --- output ------------------------------------------------------------
    def say(self, text: str) -> None:
        self.out.write(f"==> [{time.monotonic() - self.t0:4.1f}s] {text}\n")
        self.out.flush()

    # --- paths and settings -------------------------------------------------
    @property
    def server_config(self) -> Path:
        return self.root / "server" / "push-jobs-server.rb"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    def write_server_settings(self) -> None:
        self.api_port, hb_port, cmd_port = free_ports(3)
        (self.root / "server").mkdir(parents=True)
        settings = {
            "data_dir": str(self.root / "server" / "data"),
            "server_name": "127.0.0.1",
            "api_listen_address": "127.0.0.1",
            "zeromq_listen_address": "tcp://127.0.0.1",
            "api_port": self.api_port,
            "server_heartbeat_port": hb_port,
            "command_port": cmd_port,
            "heartbeat_interval": HEARTBEAT_MS,
            "log_level": "info",
        }
        lines = ["# written by `make demo` (pushjobs.tools.demo)"]
        for k, v in settings.items():
            lines.append(f"{k} {v!r}" if isinstance(v, int) else f'{k} "{v}"')
        self.server_config.write_text("\n".join(lines) + "\n")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def server_url(self) -> str:
        return f"{self.base_url}/organizations/{ORG}"

    # --- processes ----------------------------------------------------------
    def run(self, argv: Sequence[str], what: str) -> subprocess.CompletedProcess:
        cp = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, env=self.env())
        if cp.returncode != 0:
            detail = (cp.stderr or cp.stdout).strip().splitlines()
            raise DemoError(f"{what} failed (exit {cp.returncode}): {detail[-1] if detail else ''}")
        return cp

    def ctl(self, *args: str) -> None:
        self.run([_bin("push-jobs-server-ctl"), "-c", str(self.server_config), *args], f"push-jobs-server-ctl {args[0]}")

    def spawn(self, name: str, argv: Sequence[str], log: Path) -> subprocess.Popen:
        fh = open(log, "ab")
        self.logs.append(fh)
        proc = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.env(), start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHJOBS_")}
        env.update(
            HOME=str(self.root / "home"),  # the CLI must not pick up the user's ~/.chef
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONUNBUFFERED="1",
        )
        if hasattr(self, "api_port"):
            env.update(PUSHJOBS_SERVER_URL=self.server_url, PUSHJOBS_USER=USER,
                       PUSHJOBS_KEY=str(self.keys / f"{USER}.pem"))
        return env

    def teardown(self) -> None:
        """TERM every process group we started, KILL what is left after STOP_TIMEOUT."""
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for _name, proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        for _name, proc in self.procs:
            # the group may hold children (gunicorn worker, a job) even after the leader left
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT)
        for fh in self.logs:
            fh.close()
        self.logs.clear()

    # --- the steps ------------------------------------------------------------
    def start_server(self) -> None:
        self.write_server_settings()
        self.ctl("init")
        self.ctl("org-create", ORG)
        self.keys.mkdir()
        (self.root / "home").mkdir()
        self.ctl("user-create", USER, "--org", ORG, "--admin", "--key-out", str(self.keys / f"{USER}.pem"))
        # one ctl call for the three clients (node1..node3); they share a key pair, which
        # keeps the demo quick. A real fleet gets one key per node (`client-create NODE`).
        self.ctl("client-create", "--org", ORG, "--count", str(len(NODES)), "--prefix", "node",
                 "--key-out", str(self.keys / "nodes.pem"))
        self.say(f"created org '{ORG}', admin user '{USER}' and clients {', '.join(NODES)}")
        proc = self.spawn("push-jobs-server", [_bin("push-jobs-server"), "-c", str(self.server_config)],
                          self.root / "server" / "server.log")

        def up() -> bool:
            if proc.poll() is not None:
                raise DemoError(f"push-jobs-server exited with {proc.returncode}; see {self.root}/server/server.log"
                                + self._tail(self.root / "server" / "server.log"))
            import requests

            return requests.get(f"{self.base_url}/pushy/_status", timeout=1).status_code == 200

        wait_for("push-jobs-server to answer /pushy/_status", up, START_TIMEOUT)
        self.say(f"push-jobs-server is up at {self.base_url} (SQLite database in {self.root}/server/data)")

    def start_agents(self) -> None:
        import yaml

        for node in NODES:
            d = self.root / "agents" / node
            d.mkdir(parents=True)
            settings = {
                "chef_server_url": self.server_url,
                "node_name": node,
                "client_key": str(self.keys / "nodes.pem"),
                "file_dir": str(d / "files"),
                "lockfile": str(d / "chef-client-running.pid"),
                "reconnect_min_delay": 0.1,
                "reconnect_max_delay": 0.5,
                "restart_splay": 0.3,
                "log_level": "info",
                "roles": ROLES[node],
                "environment": ORG,
                "whitelist": WHITELIST,
            }
            (d / "push-jobs-client.yml").write_text(yaml.safe_dump(settings, sort_keys=False))
            self.spawn(f"push-jobs-client {node}",
                       [_bin("push-jobs-client"), "-c", str(d / "push-jobs-client.yml")], d / "agent.log")
        self.say(f"started {len(NODES)} agents (push-jobs-client); whitelist: "
                 + ", ".join(f"{k!r}" for k in WHITELIST))
        api = self.api()

        def all_available() -> bool:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    node = name.split()[-1]
                    raise DemoError(f"{name} exited with {proc.returncode}"
                                    + self._tail(self.root / "agents" / node / "agent.log"))
            states = {s["node_name"]: s["availability"] for s in api.get_json("pushy/node_states")}
            return all(states.get(n) == "available" for n in NODES)

        try:
            wait_for("the nodes to become available", all_available, START_TIMEOUT, 0.2)
        finally:
            api.session.close()  # an idle keep-alive connection would slow the server's shutdown
        self.say("all nodes are available")

    def api(self) -> Any:
        from pushjobs.cli.client import ApiClient
        from pushjobs.cli.config import Config

        return ApiClient(Config(self.server_url, USER, str(self.keys / f"{USER}.pem")), timeout=5)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Run the CLI as a person would and show its command line and output."""
        self.out.write(f"\n$ pushjobs {' '.join(_shell_quote(a) for a in args)}\n")
        self.out.flush()
        cp = subprocess.run([sys.executable, "-m", "pushjobs.cli.main", *args], capture_output=True,
                            text=True, timeout=60, env=self.env())
        self.out.write(cp.stdout)
        if cp.stderr:
            self.out.write(cp.stderr)
        self.out.write(f"(exit status {cp.returncode})\n")
        self.out.flush()
        return cp

    def run_job(self) -> int:
        cp = self.cli("job", "start", "--capture", "hello", *NODES)
        job_id = ""
        for line in cp.stdout.splitlines():
            if line.startswith("Started.  Job ID: "):
                job_id = line.split(": ", 1)[1].strip()
        if not job_id:
            raise DemoError("the CLI did not start the job")
        self.cli("node", "status")
        self.cli("job", "status", job_id)
        for node in NODES:
            self.cli("job", "output", job_id, node)
        self.search_example()
        return cp.returncode

    def search_example(self) -> None:
        api = self.api()

        def inventory() -> bool:
            res = api.get_json("search/node", params={"q": f"chef_environment:{ORG}"})
            return res.get("total") == len(NODES)

        try:
            wait_for("the node inventory", inventory, 10, 0.2)
        except DemoError:
            self.say("the agents have not reported their node inventory; skipping the search example")
            return
        finally:
            api.session.close()
        self.cli("node", "status", "role:web")

    @staticmethod
    def _tail(path: Path, lines: int = 5) -> str:
        try:
            text = path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        return "".join(f"\n    {t}" for t in text)


def _shell_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pushjobs.tools.demo", description=__doc__.splitlines()[0])
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) afterwards")
    args = p.parse_args(argv)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="pushjobs-demo-"))
    demo = Demo(root)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    demo.say(f"pushjobs demo in {root} (removed at the end)")
    rc = 1
    try:
        demo.start_server()
        demo.start_agents()
        rc = 0 if demo.run_job() == 0 else 1
    except DemoError as e:
        sys.stdout.flush()
        sys.stderr.write(f"ERROR: {e}\n")
        rc = 1
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        rc = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        demo.say("stopping the agents and the server")
        demo.teardown()
        if args.keep:
            demo.say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    demo.say(f"demo {'succeeded' if rc == 0 else 'FAILED'} in {time.monotonic() - started:.1f}s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
