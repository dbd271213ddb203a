"""The scale benchmarks of issue #8: steady state, fan-out, API, reconnect storm.

    .venv/bin/python -m tests.perf.bench suite --nodes 1000 --db sqlite --steady 300
    .venv/bin/python -m tests.perf.bench suite --nodes 10000 --db postgresql --steady 120 --runs 5

One `suite` starts one server (SQLite or a throwaway PostgreSQL), creates the
clients with `ctl client-create --count N`, starts `pushjobs-fleet` and then
measures, in this order (the restart comes last because it ends the run):

1. steady state: N nodes heartbeating at 1 s for `--steady` seconds: server
   CPU (cores) and RSS, command messages/s, false "down" transitions (a node
   FSM re-created on the server = an extra `abort` seen by the fleet, or a
   fleet reconfigure; must be 0), the lowest online/available counts;
2. fan-out: a trivial job on all N nodes, POST → `complete` as seen by a
   client polling GET /jobs (and the server-side duration created → complete),
   median and p95 over `--runs` runs;
3. API: requests/s and p50/p99 latency of GET jobs/ID (the N-node job) and
   GET node_states, `--api-threads` client threads for `--api-seconds`;
4. reconnect storm: restart the server with N nodes connected; seconds until
   every node is available again.

Each prints its table and appends it to docs/performance.md with the
command, the machine and the date (PUSHJOBS_BENCH_NO_DOC=1 to skip the doc).
With py-spy installed in the venv (`pip install py-spy`; not a runtime
dependency) the server is profiled during the steady state and the fan-out,
and the top entries go into the same section.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import requests

from tests.perf import procstat
from tests.perf.collapsed import report as profile_report
from tests.perf.harness import Bench, HeartbeatWatch, append_result, median, pct, start_profile, table

TERMINAL = ("complete", "quorum_failed", "timed_out", "crashed", "aborted")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------
# 1. steady state


def steady_state(b: Bench, seconds: float, profile_dir: Optional[Path], hb: HeartbeatWatch) -> dict[str, Any]:
    worker = b.worker_pid
    time.sleep(5)  # let the start-up transients settle
    hb.take()
    wall0 = time.time()
    m0, c0 = b.metrics(), b.fleet_counters()
    s0 = procstat.sample(worker)
    f0 = [procstat.sample(p) for p in b.fleet_pids()]
    min_online = min_avail = b.nodes
    max_rss = s0.rss
    prof = None
    if profile_dir is not None:
        prof = start_profile(worker, min(30.0, seconds / 2), profile_dir / "steady-server.txt")
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        time.sleep(min(5.0, max(0.0, t_end - time.monotonic())))
        m = b.metrics()
        if m:
            min_online = min(min_online, int(m.get("pushjobs_nodes_online", 0)))
            min_avail = min(min_avail, int(m.get("pushjobs_nodes_available", 0)))
        max_rss = max(max_rss, procstat.sample(worker).rss)
    s1 = procstat.sample(worker)
    m1 = b.metrics()
    f1 = [procstat.sample(p) for p in b.fleet_pids()]
    time.sleep(5.5)  # the fleet writes its counters every 5 s
    c1 = b.fleet_counters()
    if prof is not None:
        prof.wait(120)
    dt = s1.at - s0.at
    key = "pushjobs_command_messages_received_total"
    msgs = (m1.get(key, 0) - m0.get(key, 0)) / (s1.at - s0.at)
    extra_aborts = c1.get("received_abort", 0) - c0.get("received_abort", 0)
    dead_key = 'pushjobs_nodes_offline_total{reason="dead"}'
    server_dead = m1.get(dead_key, 0) - m0.get(dead_key, 0)
    reconfigures = c1.get("reconfigures", 0) - c0.get("reconfigures", 0)
    fleet_cpu = sum(procstat.cpu_share(a, z) for a, z in zip(f0, f1))
    res = {
        "seconds": round(dt), "server_cpu": procstat.cpu_share(s0, s1), "server_rss_mib": max_rss / 2**20,
        "msgs_per_s": msgs, "cpu_us_per_msg": 1e6 * procstat.cpu_share(s0, s1) / msgs if msgs else float("nan"),
        "false_downs": server_dead, "extra_aborts": extra_aborts, "fleet_reconfigures": reconfigures,
        "min_online": min_online, "min_available": min_avail, "fleet_cpu": fleet_cpu,
        "max_heartbeat_gap": hb.take(), "fleet_lag": b.fleet_lag_max(wall0 + 5),
        "dropped": {k: v for k, v in m1.items() if k.startswith("pushjobs_messages_dropped_total")},
        "profile": str(profile_dir / "steady-server.txt") if prof is not None else None,
    }
    log(f"steady: {json.dumps(res)}")
    return res


# --------------------------------------------------------------------------------------
# 2. fan-out


def fanout(b: Bench, runs: int, profile_dir: Optional[Path], hb: HeartbeatWatch,
           avail_timeout: float = 120.0) -> dict[str, Any]:
    assert b.admin is not None
    try:
        b.wait_all_available(timeout=avail_timeout, poll=0.5)
    except TimeoutError:
        pass
    time.sleep(5.5)
    c0 = b.fleet_counters()
    hb.take()
    wall0 = time.time()
    names = [f"{b.prefix}{i}" for i in range(1, b.nodes + 1)]
    observed, server_side, post_times, statuses = [], [], [], []
    node_counts: list[dict[str, int]] = []
    job_ids = []
    worker = b.worker_pid
    not_ready: list[str] = []
    for run in range(runs):
        try:
            b.wait_all_available(timeout=avail_timeout, poll=0.5)
        except TimeoutError as exc:  # measure anyway, and say so
            not_ready.append(f"run {run + 1}: {exc}")
            log(f"fan-out run {run + 1}: {exc}; running it anyway")
        m0 = b.metrics()
        prof = None
        if profile_dir is not None and run == runs - 1:
            prof = start_profile(worker, 10, profile_dir / "fanout-server.txt")
            time.sleep(1.0)
        cpu0 = procstat.sample(worker).cpu, sum(procstat.sample(p).cpu for p in b.fleet_pids())
        # the fleet process doing the work (the busiest: with --processes K the parent only supervises)
        fleet_main = max(b.fleet_pids(), key=lambda p: procstat.sample(p).cpu, default=None)
        sched0 = schedstat(worker), schedstat(fleet_main, threads=True)
        w0 = time.time()
        t0 = time.monotonic()
        r = b.admin.post("jobs", json={"command": "chef-client", "nodes": names, "run_timeout": 600})
        t_post = time.monotonic() - t0
        if r.status_code != 201:
            raise RuntimeError(f"POST jobs: {r.status_code} {r.text[:300]}")
        job_id = r.json()["id"]
        job_ids.append(job_id)
        status = None
        while time.monotonic() - t0 < 300:
            lr = b.admin.get("jobs")
            if lr.status_code == 200:
                st = {j["id"]: j["status"] for j in lr.json()}
                status = st.get(job_id)
                if status in TERMINAL:
                    break
            time.sleep(0.05 if b.nodes <= 1000 else 0.2)  # polling costs the server CPU too
        elapsed = time.monotonic() - t0
        cpu1 = procstat.sample(worker).cpu, sum(procstat.sample(p).cpu for p in b.fleet_pids())
        sched1 = schedstat(worker), schedstat(fleet_main, threads=True)
        phases = server_phases(b, job_id) if b.server_settings.get("log_level") in ("info", "debug") else {}
        if phases:
            client = {"post_sent": w0, "post_returned": w0 + t_post, "seen": w0 + elapsed}
            log(f"fan-out run {run + 1} phases (s since POST sent): " + " ".join(
                f"{k} +{v - w0:.3f}" for k, v in sorted({**phases, **client}.items(), key=lambda kv: kv[1]))
                + f"; CPU s meanwhile: server {cpu1[0] - cpu0[0]:.2f}, fleet {cpu1[1] - cpu0[1]:.2f}"
                + "".join(f"; {who}: running {r1 - r0:.2f} s, runnable but not running {w1 - w0:.2f} s"
                          + (f", waiting {elapsed - (r1 - r0) - (w1 - w0):.2f} s" if one else "")
                          for who, one, (r0, w0), (r1, w1) in zip(("server loop thread", "fleet (all threads)"),
                                                                  (True, False), sched0, sched1) if r0 or r1))
        jr = b.admin.get(f"jobs/{job_id}")
        if jr.status_code == 200:
            node_counts.append({k: len(v) for k, v in jr.json().get("nodes", {}).items()})
        m1 = b.metrics()
        key = 'pushjobs_job_duration_seconds_sum{status="complete"}'
        server_side.append(m1.get(key, 0) - m0.get(key, 0))
        observed.append(elapsed)
        post_times.append(t_post)
        statuses.append(status)
        log(f"fan-out run {run + 1}: {status} in {elapsed:.2f}s (POST {t_post:.2f}s, server-side {server_side[-1]:.2f}s)")
        if prof is not None:
            prof.wait(60)
    gap = hb.take()
    time.sleep(5.5)
    c1 = b.fleet_counters()
    res = {
        "max_heartbeat_gap": gap, "fleet_lag": b.fleet_lag_max(wall0 + 5),
        "fleet_reconfigures": c1.get("reconfigures", 0) - c0.get("reconfigures", 0),
        "aborts": c1.get("received_abort", 0) - c0.get("received_abort", 0),
        "runs": runs, "statuses": statuses, "node_counts": node_counts, "not_ready": not_ready, "median": median(observed), "p95": pct(observed, 95),
        "server_median": median(server_side), "server_p95": pct(server_side, 95),
        "post_median": median(post_times), "observed": observed, "job_ids": job_ids,
        "profile": str(profile_dir / "fanout-server.txt") if profile_dir is not None else None,
    }
    log(f"fan-out: {json.dumps({k: v for k, v in res.items() if k != 'job_ids'})}")
    return res


def schedstat(pid: Optional[int], threads: bool = False) -> tuple[float, float]:
    """(seconds running on a CPU, seconds runnable but waiting for one) of a process's main
    thread (the server's event loop), or summed over all its threads (`threads`)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task") if threads else [str(pid)]
        run = wait = 0
        for tid in tids:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                run_ns, wait_ns = fh.read().split()[:2]
            run, wait = run + int(run_ns), wait + int(wait_ns)
        return run / 1e9, wait / 1e9
    except (OSError, ValueError, TypeError):
        return 0.0, 0.0


def server_phases(b: Bench, job_id: str, timeout: float = 5.0) -> dict[str, float]:
    """The job's milestones (time.time()) from the server's "phases" log line; {} when the
    server does not log at INFO (`--server-log-level info`) or the line does not come."""
    assert b.server is not None
    needle = f"job {job_id}: phases: at "
    deadline = time.monotonic() + timeout
    while True:
        text = b.server.log_text()
        at = text.rfind(needle)
        if at >= 0:
            line, _, cpu = text[at + len(needle):].splitlines()[0].partition(";")
            words = line.split()
            base = float(words[0])
            marks = {words[i]: base + float(words[i + 1]) for i in range(1, len(words) - 1, 2)}
            if cpu.split() and "finished" in marks and "start_job" in marks:
                # busy share of the loop thread between start_job and finished
                busy = float(cpu.split()[-2]) / max(1e-9, marks["finished"] - marks["start_job"])
                log(f"job {job_id}: server loop thread busy {100 * busy:.0f} % from start_job to finished")
            return marks
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.1)


# --------------------------------------------------------------------------------------
# 3. API


def api_load(b: Bench, path: str, seconds: float, threads: int, hb: HeartbeatWatch,
             as_client: Any = None, query: str = "", profile_to: Optional[Path] = None) -> dict[str, Any]:
    """`threads` clients hammering GET path for `seconds`; headers signed once per client
    (the server verifies every request; re-signing would measure the client's RSA).
    `as_client`: a SignedClient to sign with (default the admin user); `query` is appended."""
    assert b.admin is not None and b.server is not None
    signer = as_client or b.admin
    worker = b.worker_pid
    url = b.server.base_url + signer.url_path(path) + query
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        nonlocal errors
        s = requests.Session()
        s.trust_env = False
        headers = {"Accept": "application/json", **signer.signed_headers("GET", path)}
        mine, bad = [], 0
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                r = s.get(url, headers=headers, timeout=30)
                ok = r.status_code == 200
            except requests.RequestException:
                ok = False
            mine.append(time.perf_counter() - t0)
            bad += not ok
        s.close()
        with lock:
            latencies.extend(mine)
            errors += bad

    hb.take()
    prof = start_profile(worker, max(1.0, seconds - 2), profile_to) if profile_to is not None else None
    s0 = procstat.sample(worker)
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        for f in [ex.submit(client) for _ in range(threads)]:
            f.result()
    s1 = procstat.sample(worker)
    if prof is not None:
        prof.wait(60)
    dt = s1.at - s0.at
    res = {"path": path, "profile": str(profile_to) if prof is not None and profile_to.exists() else None, "requests": len(latencies), "errors": errors, "rps": len(latencies) / dt,
           "p50_ms": 1000 * pct(latencies, 50), "p99_ms": 1000 * pct(latencies, 99),
           "server_cpu": procstat.cpu_share(s0, s1), "max_heartbeat_gap": hb.take()}
    log(f"api: {json.dumps(res)}")
    return res


# --------------------------------------------------------------------------------------
# 4. reconnect storm


def reconnect_storm(b: Bench, timeout: float) -> dict[str, Any]:
    assert b.server is not None
    c0 = b.fleet_counters()
    t0 = time.monotonic()
    b.server.stop()
    t_stopped = time.monotonic() - t0
    b.server.start(timeout=120)
    t_up = time.monotonic() - t0
    worker = b.worker_pid
    s0 = procstat.sample(worker)
    progress: list[tuple[float, int]] = []
    try:
        t_all = b.wait_all_available(timeout=timeout, poll=1.0,
                                     on_poll=lambda e, n: progress.append((round(t_up + e, 1), n)))
        ok = True
    except TimeoutError:
        t_all, ok = float("nan"), False
    s1 = procstat.sample(worker)
    time.sleep(5.5)
    c1 = b.fleet_counters()
    res = {"ok": ok, "stop_s": t_stopped, "up_s": t_up, "all_available_after_up_s": t_all,
           "all_available_total_s": t_up + t_all, "server_cpu_during": procstat.cpu_share(s0, s1),
           "server_cpu_ms_per_node": 1000 * (s1.cpu - s0.cpu) / b.nodes,
           "config_fetches": c1.get("config_fetches", 0) - c0.get("config_fetches", 0),
           "config_failures": c1.get("config_failures", 0) - c0.get("config_failures", 0),
           "progress": progress[:: max(1, len(progress) // 12)]}
    log(f"reconnect: {json.dumps(res)}")
    return res


# --------------------------------------------------------------------------------------
# the suite


def _seconds_left(stop_by: Optional[str]) -> float:
    if not stop_by:
        return float("inf")
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    hh, mm = (int(x) for x in stop_by.split(":"))
    end = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    return (end - now).total_seconds()


def suite(a: argparse.Namespace) -> int:
    b = Bench(a.nodes, db=a.db, fleet_processes=a.fleet_processes, sub_mode=a.sub,
              server_settings={"log_level": a.server_log_level})
    profile_dir = b.workdir / "profiles" if a.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True)
    notes: list[str] = []
    sections: list[str] = []
    ramp = a.ramp if a.ramp is not None else max(5.0, a.nodes / 200.0)
    hb: Optional[HeartbeatWatch] = None
    try:
        log(f"server ({a.db}) in {b.workdir}")
        b.start_server()
        log(f"{a.nodes} clients created in {b.clients_seconds:.1f}s")
        cmd = b.start_fleet(ramp=ramp, duration=a.max_seconds,
                            extra=(() if a.fast_heartbeats else ("--agent-heartbeats",)) + tuple(a.fleet_args.split()))
        log("fleet: " + " ".join(cmd))
        t0 = time.monotonic()
        s_start0 = procstat.sample(b.worker_pid)
        try:
            t_start = b.wait_all_available(timeout=ramp + a.startup_timeout, poll=2.0,
                                           on_poll=lambda e, n: log(f"  start-up: {n}/{a.nodes} available")
                                           if int(e) % 10 < 2 else None)
        except TimeoutError as exc:
            notes.append(f"start-up: {exc}")
            raise
        hb = HeartbeatWatch(b.server.out_addr)
        s_start1 = procstat.sample(b.worker_pid)
        rss = s_start1.rss
        startup_cpu_ms = 1000 * (s_start1.cpu - s_start0.cpu) / a.nodes
        log(f"all {a.nodes} available after {t_start:.1f}s (ramp {ramp:.0f}s)")
        sections.append(table(["nodes", "db", "fleet processes", "SUB", "ramp s", "all available after s",
                               "server CPU ms per node start (handshake + first messages)", "server RSS MiB"],
                              [[a.nodes, a.db, b.fleet_processes, b.sub_mode, ramp, t_start, startup_cpu_ms,
                                rss / 2**20]]))

        def fits(phase: str, need: float) -> bool:
            left = _seconds_left(a.stop_by)
            if left >= need:
                return True
            notes.append(f"{phase} skipped: {left:.0f}s left before {a.stop_by} UTC, it needs ~{need:.0f}s")
            log(notes[-1])
            return False

        if a.steady > 0 and fits("steady state", a.steady + 30):
            st = steady_state(b, a.steady, profile_dir, hb)
            sections.append("**Steady state** (1 s heartbeat)\n\n" + table(
                ["seconds", "server CPU (cores)", "server RSS MiB (max)", "msgs/s in", "CPU µs/msg",
                 "false downs (server: dead)", "aborts received by the fleet", "fleet reconfigures", "min online", "min available", "fleet CPU (cores)",
                 "max server heartbeat gap s", "max simulator timer lag s"],
                [[st["seconds"], st["server_cpu"], st["server_rss_mib"], st["msgs_per_s"], st["cpu_us_per_msg"],
                  st["false_downs"], st["extra_aborts"], st["fleet_reconfigures"], st["min_online"], st["min_available"],
                  st["fleet_cpu"], st["max_heartbeat_gap"], st["fleet_lag"]]]))
            if st["dropped"]:
                sections.append(f"dropped: `{json.dumps(st['dropped'])}`")
            if st["profile"] and os.path.exists(st["profile"]):
                sections.append("<details><summary>server profile, steady state (py-spy)</summary>\n\n"
                                + profile_report(st["profile"], 12) + "\n\n</details>")

        job_id = None
        if a.runs > 0 and fits("fan-out", 60 + a.runs * 30):
            fo = fanout(b, a.runs, profile_dir, hb, a.avail_timeout)
            job_id = fo["job_ids"][-1]
            sections.append("**Fan-out** (`chef-client` on all nodes, POST → complete)\n\n" + table(
                ["runs", "statuses", "median s", "p95 s", "server-side median s", "server-side p95 s",
                 "POST median s", "all runs s", "max server heartbeat gap s", "max simulator timer lag s",
                 "fleet reconfigures",
                 "aborts received (rehab or re-registration)"],
                [[fo["runs"], " ".join(map(str, fo["statuses"])), fo["median"], fo["p95"],
                  fo["server_median"], fo["server_p95"], fo["post_median"],
                  " ".join(f"{x:.2f}" for x in fo["observed"]), fo["max_heartbeat_gap"], fo["fleet_lag"],
                  fo["fleet_reconfigures"], fo["aborts"]]]))
            if any(st != "complete" for st in fo["statuses"]) or any(
                    set(c) != {"succeeded"} for c in fo["node_counts"]):
                sections.append("job nodes by status, per run: " + "; ".join(
                    f"run {i + 1} {st}: {json.dumps(c, sort_keys=True)}"
                    for i, (st, c) in enumerate(zip(fo["statuses"], fo["node_counts"]))))
            if fo["not_ready"]:
                sections.append("not every node was available before: " + "; ".join(fo["not_ready"]))
            if fo["profile"] and os.path.exists(fo["profile"]):
                sections.append("<details><summary>server profile, last fan-out run (py-spy)</summary>\n\n"
                                + profile_report(fo["profile"], 12) + "\n\n</details>")

        if a.api_seconds > 0 and fits("API", 2 * a.api_seconds + 20):
            rows = []
            paths = ["node_states"] + ([f"jobs/{job_id}"] if job_id else [])
            profiles = []
            for path in paths:
                r = api_load(b, path, a.api_seconds, a.api_threads, hb,
                             profile_to=profile_dir / "api-node_states.txt"
                             if profile_dir is not None and path == "node_states" else None)
                if r["profile"]:
                    profiles.append(("GET node_states", r["profile"]))
                rows.append([path.replace(job_id or "-", "ID"), a.api_threads, r["requests"], r["errors"], r["rps"],
                             r["p50_ms"], r["p99_ms"], r["server_cpu"], r["max_heartbeat_gap"]])
            # the config handshake of one node (what every node does at start and after a restart)
            from urllib.parse import quote

            from pushjobs.protocol.keys import curve_keypair
            from tests.helpers.server import Principal

            node = Principal(name=f"{b.prefix}1", kind="client", org=b.org, key_path=b.key_path)
            ccpk = quote(curve_keypair()[0], safe="")
            r = api_load(b, f"config/{b.prefix}1", a.api_seconds, a.api_threads, hb,
                         as_client=b.server.client(node), query=f"?ccpk={ccpk}&version=2.0",
                         profile_to=profile_dir / "api-config.txt" if profile_dir is not None else None)
            if r["profile"]:
                profiles.append(("GET config/NODE", r["profile"]))
            rows.append(["config/NODE (handshake)", a.api_threads, r["requests"], r["errors"], r["rps"],
                         r["p50_ms"], r["p99_ms"], r["server_cpu"], r["max_heartbeat_gap"]])
            sections.append("**API** (pre-signed GETs, keep-alive)\n\n" + table(
                ["endpoint", "client threads", "requests", "errors", "req/s", "p50 ms", "p99 ms",
                 "server CPU", "max server heartbeat gap s"], rows))
            for title, path in profiles:
                sections.append(f"<details><summary>server profile, {title} under load (py-spy)</summary>\n\n"
                                + profile_report(path, 12) + "\n\n</details>")

        if a.restart and fits("reconnect storm", 90):
            rc = reconnect_storm(b, min(a.reconnect_timeout, max(60.0, _seconds_left(a.stop_by) - 30)))
            sections.append("**Reconnect storm** (server restarted with all nodes connected)\n\n" + table(
                ["stop s", "back up s", "all available after up s", "total s", "server CPU meanwhile (cores)",
                 "server CPU ms per node", "config fetches", "config failures"],
                [[rc["stop_s"], rc["up_s"], rc["all_available_after_up_s"], rc["all_available_total_s"],
                  rc["server_cpu_during"], rc["server_cpu_ms_per_node"], rc["config_fetches"],
                  rc["config_failures"]]])
                + "\n\nprogress (s since stop, available): " + " ".join(f"{t}:{n}" for t, n in rc["progress"]))
        return 0
    except (Exception, KeyboardInterrupt) as exc:  # record the miss too
        notes.append(f"run aborted: {exc.__class__.__name__}: {exc}")
        log(notes[-1])
        return 1
    finally:
        if hb is not None:
            hb.close()
        if b.fleet_proc is not None:
            notes.append("fleet: `" + " ".join(b.fleet_cmd[1:]).replace(str(b.key_path), "KEY") + "`")
        b.stop()
        body = "\n\n".join(sections + [f"- {n}" for n in notes])
        append_result(f"suite: {a.nodes} nodes, {a.db}", body)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.perf.bench")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("suite", help="steady state, fan-out, API and reconnect storm for one N and database")
    s.add_argument("--nodes", type=int, required=True)
    s.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    s.add_argument("--steady", type=float, default=300.0, help="steady-state seconds (0: skip)")
    s.add_argument("--runs", type=int, default=5, help="fan-out runs (0: skip)")
    s.add_argument("--api-seconds", type=float, default=10.0, help="seconds per API endpoint (0: skip)")
    s.add_argument("--api-threads", type=int, default=4)
    s.add_argument("--no-restart", dest="restart", action="store_false", help="skip the reconnect storm")
    s.add_argument("--ramp", type=float, default=None, help="fleet start-up spread (default N/200 s)")
    s.add_argument("--startup-timeout", type=float, default=600.0)
    s.add_argument("--reconnect-timeout", type=float, default=300.0)
    s.add_argument("--fleet-processes", type=int, default=None)
    s.add_argument("--sub", choices=("per-node", "shared"), default=None)
    s.add_argument("--max-seconds", type=float, default=3600.0, help="the fleet stops by itself after this")
    s.add_argument("--no-profile", dest="profile", action="store_false")
    s.add_argument("--fleet-args", default="", help="extra pushjobs-fleet arguments, e.g. '--http-threads 2'")
    s.add_argument("--server-log-level", default="warning",
                   help="the server's log_level; 'info' also prints each fan-out's phases (the server's "
                        "job milestones next to the client's POST and first `complete` seen)")
    s.add_argument("--avail-timeout", type=float, default=120.0,
                   help="seconds to wait for every node before each fan-out run (then it runs anyway)")
    s.add_argument("--stop-by", metavar="HH:MM", default=None,
                   help="UTC time by which the suite must end: phases that would not fit are skipped")
    s.add_argument("--agent-heartbeats", dest="fast_heartbeats", action="store_false",
                   help="let the fleet encode heartbeats with the agent's message objects "
                        "(default: template heartbeats, same bytes, less simulator CPU)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    import signal

    def on_term(signum: int, frame: Any) -> None:  # stop cleanly and still write the section
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    a = build_parser().parse_args(argv)
    if a.cmd == "suite":
        return suite(a)
    return 2


if __name__ == "__main__":
    sys.exit(main())
