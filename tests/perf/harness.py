"""Benchmark harness: a real server, a real fleet, /proc sampling, and the performance log.

Everything runs on this machine, on 127.0.0.1 only: the server is a
`ServerProcess` (tests/helpers/server.py), the nodes are `pushjobs-fleet`
worker processes, the database is the server's SQLite file or a throwaway
PostgreSQL cluster (tests/helpers/postgres.py).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import requests

from pushjobs.tools.fleet import parse_metrics_text
from tests.helpers.server import BIN_DIR, ServerProcess, SignedClient, wait_for
from tests.perf import procstat

REPO = Path(__file__).resolve().parents[2]
PERF_DOC = REPO / "docs" / "performance.md"
#: The server's open-file limit here is 20,000 (hard, not raisable in this sandbox); every node
#: with its own SUB holds two TCP connections to the server, so above this many nodes the
#: fleet shares one SUB per worker process (see docs/performance.md).
PER_NODE_SUB_MAX = 8000
NODES_PER_FLEET_PROCESS = 3400


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Postgres:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl in a temp dir), for one benchmark run."""

    def __init__(self) -> None:
        from tests.helpers.postgres import start_cluster

        self.cluster = start_cluster()

    def new_database(self) -> str:
        return self.cluster.create_database()

    def close(self) -> None:
        self.cluster.stop()


@dataclass
class Bench:
    """One server + clients + (later) one fleet, in a temp directory."""

    nodes: int
    db: str = "sqlite"  # sqlite | postgresql
    heartbeat_ms: int = 1000
    org: str = "bench"
    prefix: str = "n"
    fleet_processes: Optional[int] = None
    sub_mode: Optional[str] = None
    server_settings: dict[str, Any] = field(default_factory=dict)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pushjobs-bench-")))
    server: Optional[ServerProcess] = None
    fleet_proc: Optional[subprocess.Popen] = None
    fleet_cmd: list[str] = field(default_factory=list)
    admin: Optional[SignedClient] = None
    key_path: Optional[Path] = None
    _pg: Optional[Postgres] = None

    def __post_init__(self) -> None:
        if self.fleet_processes is None:
            self.fleet_processes = max(1, -(-self.nodes // NODES_PER_FLEET_PROCESS))
        if self.sub_mode is None:
            self.sub_mode = "per-node" if self.nodes <= PER_NODE_SUB_MAX else "shared"

    # --- server -------------------------------------------------------------
    def start_server(self) -> ServerProcess:
        url = None
        if self.db == "postgresql":
            self._pg = Postgres()
            url = self._pg.new_database()
        settings = {"log_level": "warning", **self.server_settings}
        self.server = ServerProcess(self.workdir / "server", database_url=url,
                                    heartbeat_interval=self.heartbeat_ms, settings=settings)
        self.server.start(timeout=60)
        self.server.create_org(self.org)
        admin = self.server.create_user("benchadmin", org=self.org, admin=True)
        self.admin = self.server.client(admin)
        self.admin.timeout = 60.0
        self.server.keys_dir.mkdir(exist_ok=True)
        self.key_path = self.server.keys_dir / "fleet.pem"
        t0 = time.monotonic()
        self.server.ctl("client-create", "--org", self.org, "--count", str(self.nodes), "--prefix", self.prefix,
                        "--key-out", str(self.key_path), timeout=600)
        self.clients_seconds = time.monotonic() - t0
        return self.server

    @property
    def worker_pid(self) -> int:
        """The gunicorn worker (the one process that does the work)."""
        assert self.server is not None and self.server.pid is not None
        kids = wait_for(lambda: procstat.children(self.server.pid), timeout=10, message="gunicorn worker")
        return kids[0]

    def metrics(self) -> dict[str, float]:
        assert self.server is not None
        try:
            r = requests.get(self.server.base_url + "/pushy/_metrics", timeout=30)
        except requests.RequestException:
            return {}
        return parse_metrics_text(r.text) if r.status_code == 200 else {}

    def available(self) -> int:
        return int(self.metrics().get("pushjobs_nodes_available", -1))

    # --- fleet --------------------------------------------------------------
    def start_fleet(self, *, ramp: float, duration: float, behaviour: str = "succeed",
                    extra: tuple[str, ...] = ()) -> list[str]:
        assert self.server is not None and self.key_path is not None
        self.fleet_stats = self.workdir / "fleet-stats.jsonl"
        self.fleet_log = self.workdir / "fleet.log"
        self.fleet_cmd = [str(BIN_DIR / "pushjobs-fleet"), "--server-url", self.server.base_url,
                          "--org", self.org, "--prefix", self.prefix, "--count", str(self.nodes),
                          "--key", str(self.key_path), "--processes", str(self.fleet_processes),
                          "--sub", str(self.sub_mode), "--ramp", str(ramp), "--behaviour", behaviour,
                          "--report-interval", "5", "--duration", str(duration),
                          "--stats-file", str(self.fleet_stats), *extra]
        self._fleet_log_fh = open(self.fleet_log, "ab")
        self.fleet_proc = subprocess.Popen(self.fleet_cmd, stdout=self._fleet_log_fh, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
        return self.fleet_cmd

    def fleet_pids(self) -> list[int]:
        if self.fleet_proc is None:
            return []
        return [self.fleet_proc.pid] + procstat.children(self.fleet_proc.pid)

    def fleet_counters(self) -> dict[str, int]:
        """The last stats line the fleet wrote (its counters summed over workers)."""
        try:
            lines = self.fleet_stats.read_text().splitlines()
        except FileNotFoundError:
            return {}
        if not lines:
            return {}
        row = json.loads(lines[-1])
        return {**row["counters"], "connected": row["connected"], "confirmed": row["confirmed"]}

    def fleet_lag_max(self, since_wall: float) -> float:
        """The simulator's worst timer lateness (s) in the reports written after `since_wall`."""
        try:
            rows = [json.loads(x) for x in self.fleet_stats.read_text().splitlines()]
        except FileNotFoundError:
            return float("nan")
        lags = [r["counters"].get("loop_lag_max_ms", 0) for r in rows if r.get("wall", 0) >= since_wall]
        return max(lags) / 1000.0 if lags else float("nan")

    def wait_all_available(self, timeout: float, poll: float = 1.0,
                           on_poll: Optional[Callable[[float, int], None]] = None) -> float:
        """Seconds until the server reports every node available; raises on timeout."""
        t0 = time.monotonic()
        while True:
            n = self.available()
            elapsed = time.monotonic() - t0
            if on_poll is not None:
                on_poll(elapsed, n)
            if n >= self.nodes:
                return elapsed
            if elapsed > timeout:
                raise TimeoutError(f"only {n}/{self.nodes} nodes available after {timeout:.0f}s")
            if self.fleet_proc is not None and self.fleet_proc.poll() is not None:
                raise RuntimeError(f"the fleet exited early (rc {self.fleet_proc.returncode}); see {self.fleet_log}")
            time.sleep(poll)

    def stop(self) -> None:
        if self.fleet_proc is not None and self.fleet_proc.poll() is None:
            self.fleet_proc.terminate()
            try:
                self.fleet_proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.fleet_proc.pid, 9)
                self.fleet_proc.wait(10)
        if self.server is not None:
            self.server.close()
        if self._pg is not None:
            self._pg.close()


# --- the server's heartbeat, as a node sees it -----------------------------------


class HeartbeatWatch:
    """A SUB on the server's heartbeat port in a thread: the largest gap between two server
    heartbeats. A gap of several intervals means the server's one event loop was blocked,
    and every node counts the server offline after 4 missed intervals."""

    def __init__(self, out_addr: str):
        import zmq

        self._zmq = zmq
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(out_addr)
        self.last: Optional[float] = None
        self.max_gap = 0.0
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hb-watch")
        self._thread.start()

    def _run(self) -> None:
        zmq = self._zmq
        while not self._stop.is_set():
            if self.sub.poll(200):
                self.sub.recv_multipart()
                now = time.monotonic()
                if self.last is not None:
                    self.max_gap = max(self.max_gap, now - self.last)
                self.last = now
                self.count += 1

    def take(self) -> float:
        """The largest gap since the last call (seconds), and start a new window."""
        gap, self.max_gap = self.max_gap, 0.0
        if self.last is not None:
            gap = max(gap, time.monotonic() - self.last)
        return gap

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sub.close(0)
        self.ctx.term()


# --- profiling -----------------------------------------------------------------


def py_spy() -> Optional[str]:
    exe = Path(sys.executable).parent / "py-spy"
    return str(exe) if exe.exists() else None


def profile(pid: int, seconds: float, out: Path) -> Optional[Path]:
    """py-spy (if installed in the venv: `pip install py-spy`) → collapsed stacks, or None."""
    exe = py_spy()
    if exe is None:
        return None
    cmd = [exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100", "-f", "raw", "-o", str(out)]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    return out if cp.returncode == 0 and out.exists() else None


def start_profile(pid: int, seconds: float, out: Path) -> Optional[subprocess.Popen]:
    exe = py_spy()
    if exe is None:
        return None
    cmd = [exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100", "-f", "raw", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# --- the performance log -------------------------------------------------------


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, REPO)] + sys.argv)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def append_result(title: str, body: str, *, command: Optional[str] = None) -> str:
    """Print and append one result section to docs/performance.md (never rewrites earlier ones)."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = open("/proc/loadavg").read().split()[:3]
    section = (f"\n### {title}\n\n"
               f"- date: {now}\n- machine: {procstat.machine()}; load average at the end: {' '.join(load)}\n"
               f"- command: `{command or command_line()}`\n\n{body.rstrip()}\n")
    print(section, flush=True)
    if os.environ.get("PUSHJOBS_BENCH_NO_DOC") != "1":
        with open(PERF_DOC, "a") as fh:
            fh.write(section)
    return section
