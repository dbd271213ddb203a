"""Prometheus metrics of one live server (`GET /pushy/_metrics`).

Rules of this file:
* One `CollectorRegistry` per runtime (never prometheus-client's global
  one), so tests and tools can build many apps in one process.
* Nothing here touches the hot path. The `RuntimeCollector` READS the live
  server's own counters and state at scrape time: node FSMs by state, the
  drop counters by reason, the ROUTER message count, messages in/out by
  type, heartbeat processing time, the event loop's lag and stalls, server
  heartbeats published, ZAP refusals, the database writer's backlog; jobs by status
  come from the store. Counters the runtime does not keep (yet) are simply
  absent from the output; see `OPTIONAL_RUNTIME_COUNTERS` for the attribute
  names read when they exist.
* Job durations are a histogram fed incrementally from the store at scrape
  time (terminal jobs whose `updated_at` is newer than the last one seen), so
  a scrape costs one indexed query, not a scan of the whole job history.
* A scrape never raises: a failing part is logged and left out.

Why a collector instead of counters incremented by the server: the server
already counts (`Runtime.drop_counts`, `NodeRegistry.received`, ...); reading
those at scrape time costs nothing per message.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Job statuses always reported (0 when none), so dashboards see every series.
JOB_STATUSES = ("new", "voting", "running", "complete", "quorum_failed", "timed_out", "crashed", "aborted")
TERMINAL_JOB_STATUSES = ("complete", "quorum_failed", "timed_out", "crashed", "aborted")
#: Node FSM states (PROTOCOL.md §7.1) always reported.
NODE_STATES = ("post_init", "rehab", "idle")

#: Attributes of the runtime's parts read when present (the names the server
#: code is asked to provide; see docs/performance.md "Metrics"):
#:   registry.received_by_type   Mapping[type, int]  valid messages in, by type
#:   registry.sent_by_type       Mapping[type, int]  messages out on the ROUTER, by type
#:   registry.offline_by_reason  Mapping[reason, int] node FSMs ended, by reason
#:   registry.heartbeat_seconds  float               total time spent processing client heartbeats
#:   registry.heartbeats_processed int               how many client heartbeats were processed
OPTIONAL_RUNTIME_COUNTERS = ("received_by_type", "sent_by_type", "heartbeat_seconds", "heartbeats_processed")

#: Buckets of the job duration histogram, seconds (POST to terminal status).
JOB_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
#: At most this many job rows are read per scrape (the rest next time).
JOB_SCAN_LIMIT = 10000


def _to_epoch(value: Any) -> Optional[float]:
    """A store timestamp (naive UTC datetime, or text from SQLite) as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.timestamp()
    return None


class JobDurationTracker:
    """Feeds a histogram with the duration (created → last status change) of finished jobs.

    Reads only the terminal jobs updated since the previous scrape (by
    `updated_at`, then id to break ties), so each job is observed once."""

    def __init__(self, registry: CollectorRegistry):
        self.histogram = Histogram(
            "pushjobs_job_duration_seconds",
            "Time from job creation to its terminal status (seconds), by final status",
            ["status"], buckets=JOB_DURATION_BUCKETS, registry=registry,
        )
        self._mark: Optional[tuple[Any, str]] = None
        self._lock = threading.Lock()

    def update(self) -> None:
        from pushjobs.server import store

        if store.db.obj is None:
            return
        Job = store.Job
        with self._lock:
            q = (Job.select(Job.id, Job.status, Job.created_at, Job.updated_at)
                 .where(Job.status.in_(TERMINAL_JOB_STATUSES))
                 .order_by(Job.updated_at, Job.id).limit(JOB_SCAN_LIMIT))
            if self._mark is not None:
                at, jid = self._mark
                q = q.where((Job.updated_at > at) | ((Job.updated_at == at) & (Job.id > jid)))
            for row in q.tuples():
                jid, status, created, updated = row
                t0, t1 = _to_epoch(created), _to_epoch(updated)
                if t0 is not None and t1 is not None:
                    self.histogram.labels(status).observe(max(0.0, t1 - t0))
                self._mark = (updated, jid)


class RuntimeCollector(Collector):
    """Reads a `pushjobs.server.runtime.Runtime` at scrape time."""

    def __init__(self, runtime: Any):
        self.runtime = runtime

    def collect(self) -> Iterator[Any]:
        for part in (self._nodes, self._messages, self._loop, self._broker, self._jobs_live, self._jobs_db):
            try:
                yield from part()
            except Exception:  # a scrape must never fail because one part did
                log.exception("metrics: %s failed", part.__name__)

    # --- nodes ---------------------------------------------------------------
    def _nodes(self) -> Iterator[Any]:
        reg = getattr(self.runtime, "registry", None)
        entries = list(getattr(reg, "entries", {}).values()) if reg is not None else []
        by_state = dict.fromkeys(NODE_STATES, 0)
        available = 0
        for e in entries:
            fsm = e.fsm
            by_state[fsm.state] = by_state.get(fsm.state, 0) + 1
            available += bool(fsm.available)
        g = GaugeMetricFamily("pushjobs_nodes_online", "Nodes with a live node FSM (connected), all orgs")
        g.add_metric([], len(entries))
        yield g
        g = GaugeMetricFamily("pushjobs_nodes_available", "Online nodes whose FSM is idle (available for jobs)")
        g.add_metric([], available)
        yield g
        g = GaugeMetricFamily("pushjobs_node_fsm_states", "Node FSMs by state (PROTOCOL.md §7.1)", labels=["state"])
        for state, n in sorted(by_state.items()):
            g.add_metric([state], n)
        yield g

    # --- command-channel messages ------------------------------------------------
    def _messages(self) -> Iterator[Any]:
        rt = self.runtime
        reg = getattr(rt, "registry", None)
        received = getattr(reg, "received", None)
        if isinstance(received, int):
            c = CounterMetricFamily("pushjobs_command_messages_received",
                                    "Messages received on the command ROUTER (valid or not)")
            c.add_metric([], received)
            yield c
        drops = getattr(rt, "drop_counts", None)
        if isinstance(drops, Mapping):
            c = CounterMetricFamily("pushjobs_messages_dropped",
                                    "Command messages dropped by the receive pipeline, by reason",
                                    labels=["reason"])
            for reason, n in sorted(drops.items()):
                c.add_metric([str(reason)], n)
            yield c
        for attr, name, doc in (
            ("received_by_type", "pushjobs_messages_received_by_type", "Valid messages received, by type"),
            ("sent_by_type", "pushjobs_messages_sent_by_type", "Messages sent on the command ROUTER, by type"),
        ):
            counts = getattr(reg, attr, None)
            if isinstance(counts, Mapping):
                c = CounterMetricFamily(name, doc, labels=["type"])
                for mtype, n in sorted(counts.items()):
                    c.add_metric([str(mtype)], n)
                yield c
        offline = getattr(reg, "offline_by_reason", None)
        if isinstance(offline, Mapping):
            c = CounterMetricFamily("pushjobs_nodes_offline",
                                    "Node FSMs the server ended, by reason (dead: heartbeats stopped; "
                                    "incarnation: the node restarted)", labels=["reason"])
            for reason, n in sorted(offline.items()):
                c.add_metric([str(reason)], n)
            yield c
        hb_sum = getattr(reg, "heartbeat_seconds", None)
        hb_count = getattr(reg, "heartbeats_processed", None)
        if isinstance(hb_sum, (int, float)) and isinstance(hb_count, int):
            s = SummaryMetricFamily("pushjobs_heartbeat_processing_seconds",
                                    "Time spent processing client heartbeats")
            s.add_metric([], count_value=hb_count, sum_value=float(hb_sum))
            yield s

    # --- the worker's event loop ---------------------------------------------------
    def _loop(self) -> Iterator[Any]:
        lag = getattr(getattr(self.runtime, "registry", None), "lag", None)
        if lag is None:
            return
        g = GaugeMetricFamily("pushjobs_event_loop_lag_seconds",
                              "Largest lateness of the loop-lag monitor's wake-ups (ticks every heartbeat "
                              "interval / 4) over the last 1-2 minutes")
        g.add_metric([], lag.recent_max_lag())
        yield g
        c = CounterMetricFamily("pushjobs_event_loop_stalls",
                                "Loop-lag monitor wake-ups later than one heartbeat interval")
        c.add_metric([], lag.stalls)
        yield c
        c = CounterMetricFamily("pushjobs_event_loop_stalled_seconds",
                                "Seconds the event loop was stalled beyond jitter: not counted against "
                                "node liveness (the node FSMs' clock skips them)")
        c.add_metric([], lag.stalled)
        yield c
        backlogged = getattr(lag, "backlogged", None)
        if isinstance(backlogged, float):
            c = CounterMetricFamily("pushjobs_command_backlog_seconds",
                                    "Seconds the command ROUTER had a backlog (beyond one monitor tick): "
                                    "heartbeats processed late; the node FSMs' clock runs slower meanwhile")
            c.add_metric([], backlogged)
            yield c

    def _broker(self) -> Iterator[Any]:
        broker = getattr(self.runtime, "broker", None)
        if broker is None:
            return
        seq = getattr(broker, "heartbeat_sequence", None)
        if isinstance(seq, int):
            c = CounterMetricFamily("pushjobs_server_heartbeats_sent", "Server heartbeats published (PUB)")
            c.add_metric([], seq)
            yield c
        yields = getattr(broker, "router_yields", None)
        if isinstance(yields, int):
            c = CounterMetricFamily("pushjobs_command_router_full_batches",
                                    "Times the ROUTER loop had a full batch queued and yielded before "
                                    "reading on (a sign of a message flood)")
            c.add_metric([], yields)
            yield c
        waits = getattr(broker, "router_wait_timeouts", None)
        if isinstance(waits, int):
            c = CounterMetricFamily("pushjobs_command_router_wait_timeouts",
                                    "Waits of the ROUTER loop ended by its 1 s safety timer, not by input "
                                    "(idle periods; rising while nodes are connected = missed wake-ups)")
            c.add_metric([], waits)
            yield c
        denied = getattr(broker, "zap_denied", None)
        if isinstance(denied, int):
            c = CounterMetricFamily("pushjobs_zap_denied", "CurveZMQ connections refused by the ZAP handler")
            c.add_metric([], denied)
            yield c

    # --- jobs --------------------------------------------------------------------
    def _jobs_live(self) -> Iterator[Any]:
        jobs = getattr(self.runtime, "jobs", None)
        if jobs is None:
            return
        live = getattr(jobs, "live", None)
        if live is not None:
            g = GaugeMetricFamily("pushjobs_jobs_live", "Job FSMs in memory (running or lingering)")
            g.add_metric([], len(live))
            yield g
        writer = getattr(jobs, "writer", None)
        queue = getattr(writer, "queue", None)
        if queue is not None:
            g = GaugeMetricFamily("pushjobs_db_write_queue", "Database writes queued by the job coordinator")
            g.add_metric([], queue.qsize())
            yield g
        errors = getattr(writer, "errors", None)
        if isinstance(errors, int):
            c = CounterMetricFamily("pushjobs_db_write_errors", "Database writes that failed and were dropped")
            c.add_metric([], errors)
            yield c

    def _jobs_db(self) -> Iterator[Any]:
        from pushjobs.server import store

        if store.db.obj is None:
            return
        import peewee as pw

        Job = store.Job
        counts = dict.fromkeys(JOB_STATUSES, 0)
        for status, n in Job.select(Job.status, pw.fn.COUNT(Job.id)).group_by(Job.status).tuples():
            counts[status] = n
        g = GaugeMetricFamily("pushjobs_jobs", "Jobs in the database, by status", labels=["status"])
        for status, n in counts.items():
            g.add_metric([status], n)
        yield g


class ServerMetrics:
    """The registry of one runtime: the runtime collector, job durations, process stats."""

    def __init__(self, runtime: Any):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RuntimeCollector(runtime))
        self.job_durations = JobDurationTracker(self.registry)
        # process_cpu_seconds_total, process_resident_memory_bytes, open fds... (Linux /proc)
        ProcessCollector(registry=self.registry)
        self.scrapes = 0

    def render(self) -> bytes:
        """The Prometheus text exposition of everything, now."""
        started = time.perf_counter()
        try:
            self.job_durations.update()
        except Exception:
            log.exception("metrics: job durations update failed")
        out = generate_latest(self.registry)
        self.scrapes += 1
        log.debug("metrics scrape took %.1f ms", (time.perf_counter() - started) * 1000)
        return out


_ATTR = "_pushjobs_metrics"
_create_lock = threading.Lock()


def metrics_for(runtime: Any) -> ServerMetrics:
    """The `ServerMetrics` of `runtime`, created on first use and kept on it."""
    m = getattr(runtime, _ATTR, None)
    if m is None:
        with _create_lock:
            m = getattr(runtime, _ATTR, None)
            if m is None:
                m = ServerMetrics(runtime)
                setattr(runtime, _ATTR, m)
    return m
