"""The job coordinator: the I/O shell of `pushjobs.core.job.JobFSM`.

Rules of this file:
* `POST /jobs` stores the job and its job nodes (`new`) and calls
  `start_job`; from then on this module owns every write to `Job.status`,
  `JobNode.status`, `JobEvent` and `JobOutput` (docs/architecture.md).
* The FSM decides, the coordinator carries out its actions in list order:
  `Send` through the node registry, `Emit` into the in-memory job feed (and
  the org feed for `start`/`job_complete`) AND the `JobEvent` audit trail,
  `Set*Status`/`StoreOutput` into the database, `Rehab` to the node FSM,
  timers as gevent greenlets, `Finished` → linger `wait_complete_time`.
* Database writes go through ONE writer greenlet as typed records
  (`NodeStatusWrite`, `JobStatusWrite`, `EventWrite`, `OutputWrite`, or a
  callable), applied in order, a batch per transaction: the FSM transition
  itself never waits for the database, and the writes of one job can never
  be reordered. A batch is coalesced into a few statements (one `UPDATE …
  IN (…)` per job and status, `insert_many` for events and outputs): since a
  batch is one transaction, only its end state is visible, and in it a
  node's last status wins. Batches are sized to take ~`BATCH_SECONDS` and
  the writer yields between them (SQLite calls never yield: a 10,000-node
  fan-out must not hold the loop, and the heartbeat publisher, for seconds).
  One bad write never loses the others (the batch is retried one by one).
  `flush()` waits until every action carried out so far is in the database.
* Actions are carried out per job in FSM order, yielding every
  `YIELD_EVERY` actions (a 10,000-node `start` is 10,000 sends); actions that
  arrive for a job while it is yielded queue behind the ones in progress.
* Start-up crash recovery (§9.7, S12): jobs left `new`/`voting`/`running` by a
  previous process become `crashed`, and so do ALL their non-terminal job
  nodes (the reference only marked `running` ones).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence, Union

import gevent
import peewee as pw
from gevent.event import Event as GEvent

from pushjobs.core import actions as A
from pushjobs.core.job import JOB_TERMINAL, NODE_TERMINAL, JobFSM, JobSpec
from pushjobs.server import store
from pushjobs.server.broker import yield_to_loop
from pushjobs.server.events import EventBus, JobFeed

log = logging.getLogger(__name__)

NodeKey = tuple[str, str]
RECOVER_JOB_STATUSES = ("new", "voting", "running")
ORG_FEED_EVENTS = ("start", "job_complete")

#: carry out this many actions of one job, then let the other greenlets run
YIELD_EVERY = 200
#: names per `UPDATE … WHERE node_name IN (…)` and rows per `insert_many`
IN_CHUNK = 500
#: target duration of one writer transaction (SQLite holds the loop meanwhile)
BATCH_SECONDS = 0.02
MIN_BATCH, MAX_BATCH = 50, 5_000
#: records per transaction where the database does not hold the loop (PostgreSQL)
COOPERATIVE_BATCH = 2_000
#: PostgreSQL: send the statements gathered so far once they carry this many parameters
#: (psycopg2 interpolates them in C without yielding: ~10 ms per 10,000)
STATEMENT_PARAMS = 10_000
#: output bytes per writer transaction (outputs are up to 2 x max_output_bytes each)
BATCH_OUTPUT_BYTES = 8 << 20


def truncate_output(text: Optional[str], limit: int) -> tuple[bytes, bool]:
    """Output as bytes, cut at `limit` bytes with a visible marker (never dropped)."""
    if text is None:
        return b"", False
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)
    if limit is None or limit < 0 or len(data) <= limit:
        return data, False
    marker = f"\n[pushjobs: output truncated at {limit} bytes]\n".encode()
    return data[:limit] + marker, True


@dataclass(eq=False)
class LiveJob:
    job_id: str
    org: str
    fsm: JobFSM
    feed: JobFeed
    timers: dict[str, gevent.Greenlet] = field(default_factory=dict)
    finished_at: Optional[float] = None
    #: actions returned by the FSM and not carried out yet (FSM order)
    backlog: deque = field(default_factory=deque)
    executing: bool = False
    #: time.time() of the last job status carried out (the `updated_at` of the live view)
    status_at: Optional[float] = None
    #: the last non-final status carried out and its time: what the live view shows
    #: of a finished job until its writes are stored
    live_status: str = "new"
    live_status_at: Optional[float] = None
    #: the writer's `submitted` count once `Finished` was carried out: every write of
    #: the job is in the database when the writer's `committed` count reaches it
    done_mark: Optional[int] = None
    #: time.time() of the job's milestones (`PHASES`): where a fan-out's time goes
    marks: dict[str, float] = field(default_factory=dict)
    #: CPU seconds of the worker's event-loop thread (all greenlets): at start_job, then
    #: the difference at `Finished` (busy time vs. wall time: CPU-bound or waiting?)
    thread_cpu: float = 0.0


#: the milestones of a job, in the order they normally happen (`LiveJob.marks`, logged at the end)
PHASES = ("created", "start_job", "first_commit", "last_commit", "first_ack_commit", "last_ack_commit",
          "running", "first_run", "last_run", "first_ack_run", "last_ack_run", "first_succeeded",
          "last_succeeded", "finished", "stored")
_FIRST = {t: ("first_" + t, "last_" + t) for t in ("ack_commit", "ack_run", "succeeded")}


def phase_line(marks: dict[str, float]) -> str:
    """`at EPOCH` (the job's creation, or its first milestone) then `name +seconds` for each
    milestone reached: a log line that the fan-out benchmark reads."""
    t0 = marks.get("created", min(marks.values(), default=0.0))
    return f"at {t0:.6f} " + " ".join(f"{p} +{marks[p] - t0:.3f}" for p in PHASES if p in marks)


@dataclass(frozen=True)
class LiveView:
    """What `GET /jobs/ID` shows of a live job, from memory (`JobCoordinator.live_view`)."""

    status: str
    updated_at: Optional[float]  # time.time(); None: not changed since the job row was written
    nodes: dict[str, list[str]]  # job-node status -> names, in the job's node order


# --- database writes ------------------------------------------------------------
# Records are NamedTuples: tens of thousands are made per big job, and a tuple
# is the cheapest immutable record to build.


class NodeStatusWrite(NamedTuple):
    job_id: str
    node: str
    status: str
    at: float  # time.time() of the change -> updated_at


class JobStatusWrite(NamedTuple):
    job_id: str
    status: str
    at: float


class EventWrite(NamedTuple):
    job_id: str
    seq: int
    name: str
    data: str  # JSON object text
    at: float


class OutputWrite(NamedTuple):
    job_id: str
    node: str
    stdout: bytes
    stderr: bytes
    truncated: bool


Write = Union[NodeStatusWrite, JobStatusWrite, EventWrite, OutputWrite, Callable[[], None]]


_EPOCH = _dt.datetime(1970, 1, 1)


def utc_datetime(t: float) -> _dt.datetime:
    """A time.time() reading as the store's naive UTC datetime (`store.utcnow()`'s shape).

    Epoch + timedelta: the same value as `fromtimestamp(t, utc).replace(tzinfo=None)`
    in a third of the time (the aware path costs ~4 us; a 1,000-node job converts
    3,000 event times)."""
    return _EPOCH + _dt.timedelta(seconds=t)


def _chunks(seq: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


# Bulk statements, written against the models' metadata (table, columns, and each
# field's `db_value`) but not built by peewee's query builder: building a
# 500-row INSERT or a 500-name IN list costs peewee ~50 us a value, more than
# the database takes to run it.


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Statements:
    """Runs statements of one transaction: SQLite one by one (no round trips);
    PostgreSQL sent together in one `execute` at `run()` (psycopg2 accepts
    several `;`-separated statements; each round trip is also a wait for the
    event loop, which dominated the writer's time)."""

    def __init__(self, *, params_limit: Optional[int] = STATEMENT_PARAMS) -> None:
        self.database = store.db.obj
        self.sqlite = isinstance(self.database, pw.SqliteDatabase)
        self.sql: list[str] = []
        self.params: list[Any] = []
        self.params_limit = params_limit  # None: everything in one `execute` at `run()`

    def add(self, sql: str, params: Sequence[Any]) -> None:
        if self.sqlite:
            self.database.execute_sql(sql, params)
        else:
            self.sql.append(sql)
            self.params.extend(params)
            if self.params_limit is not None and len(self.params) >= self.params_limit:
                self.run()

    def run(self) -> None:
        if self.sql:
            self.database.execute_sql(";\n".join(self.sql), self.params)
            self.sql, self.params = [], []


def bulk_insert(model: Any, fields: Sequence[Any], rows: Sequence[Sequence[Any]], chunk: int = IN_CHUNK,
                statements: Optional[_Statements] = None) -> None:
    """`INSERT INTO model (fields) VALUES (...), (...)` for `rows` (tuples in `fields` order), `chunk` rows a
    statement. Works on SQLite and PostgreSQL; run it inside a transaction."""
    if not rows:
        return
    own = statements is None
    stmts = _Statements() if statements is None else statements
    database = stmts.database
    p = database.param
    convert = [f.db_value for f in fields]
    width = len(fields)
    head = (f"INSERT INTO {_quoted(model._meta.table_name)} ("
            + ", ".join(_quoted(f.column_name) for f in fields) + ") VALUES ")
    one = "(" + ", ".join([p] * width) + ")"
    # sqlite3 adapts a datetime with a Python function per parameter; do it
    # here, once per distinct object, to the very same text (isoformat(" ")).
    sqlite = isinstance(database, pw.SqliteDatabase)
    # Columns often repeat one object (the job id, `now`): convert it once.
    last: list[Any] = [object()] * width
    done: list[Any] = [None] * width
    for part in _chunks(rows, chunk):
        params: list[Any] = []
        for row in part:
            for i, v in enumerate(row):
                if v is not last[i]:
                    last[i] = v
                    c = convert[i](v)
                    done[i] = c.isoformat(" ") if sqlite and type(c) is _dt.datetime else c
                params.append(done[i])
        stmts.add(head + ", ".join([one] * len(part)), params)
    if own:
        stmts.run()


def _update_job_nodes(stmts: _Statements, job_id: str, names: Sequence[str], status: str,
                      ts: _dt.datetime) -> None:
    """`UPDATE job_node SET status, updated_at WHERE job = job_id AND node_name IN (names)`, chunked."""
    p = stmts.database.param
    jn = store.JobNode
    head = (f"UPDATE {_quoted(jn._meta.table_name)} SET {_quoted(jn.status.column_name)} = {p}, "
            f"{_quoted(jn.updated_at.column_name)} = {p} WHERE {_quoted(jn.job.column_name)} = {p} "
            f"AND {_quoted(jn.node_name.column_name)} IN (")
    for part in _chunks(names, IN_CHUNK):
        stmts.add(head + ", ".join([p] * len(part)) + ")", [status, jn.updated_at.db_value(ts), job_id, *part])


def _update_job(stmts: _Statements, job_id: str, status: str, ts: _dt.datetime) -> None:
    p = stmts.database.param
    j = store.Job
    stmts.add(f"UPDATE {_quoted(j._meta.table_name)} SET {_quoted(j.status.column_name)} = {p}, "
              f"{_quoted(j.updated_at.column_name)} = {p} WHERE {_quoted(j.id.column_name)} = {p}",
              [status, j.updated_at.db_value(ts), job_id])


def apply_writes(writes: Sequence[Write]) -> None:
    """Carry out `writes` as if one by one, in a few statements; call inside a transaction.

    Within one transaction only the end state is visible, so node statuses
    are coalesced (a node's last status in the batch wins) and grouped per
    (job, status); job statuses are written in order; a callable is a
    barrier (everything before it is written first)."""
    nodes: dict[tuple[str, str], NodeStatusWrite] = {}
    jobs: list[JobStatusWrite] = []
    events: list[EventWrite] = []
    outputs: list[OutputWrite] = []
    for w in writes:
        t = type(w)
        if t is NodeStatusWrite:
            nodes[(w.job_id, w.node)] = w  # type: ignore[union-attr]
        elif t is EventWrite:
            events.append(w)  # type: ignore[arg-type]
        elif t is JobStatusWrite:
            jobs.append(w)  # type: ignore[arg-type]
        elif t is OutputWrite:
            outputs.append(w)  # type: ignore[arg-type]
        else:
            _write_groups(nodes, jobs, events, outputs)
            nodes, jobs, events, outputs = {}, [], [], []
            w()  # type: ignore[operator]
    _write_groups(nodes, jobs, events, outputs)


def apply_in_one_round_trip(writes: Sequence[Write]) -> bool:
    """PostgreSQL, outside a transaction: carry out `writes` (statuses and events only) as ONE
    `execute` of several statements, which PostgreSQL runs as one implicit transaction (all
    or nothing); False, with nothing done, when the batch holds anything else (outputs read
    before they insert; a callable is a barrier).

    Why: through `atomic()` a batch is three round trips (BEGIN, the statements, COMMIT),
    each a wait for a busy event loop (measured: a 1,000-node job's last writes stored
    100-140 ms after it finished, SQLite 7-12 ms)."""
    nodes: dict[tuple[str, str], NodeStatusWrite] = {}
    jobs: list[JobStatusWrite] = []
    events: list[EventWrite] = []
    for w in writes:
        t = type(w)
        if t is NodeStatusWrite:
            nodes[(w.job_id, w.node)] = w  # type: ignore[union-attr]
        elif t is EventWrite:
            events.append(w)  # type: ignore[arg-type]
        elif t is JobStatusWrite:
            jobs.append(w)  # type: ignore[arg-type]
        else:
            return False
    stmts = _Statements(params_limit=None)
    if stmts.sqlite or stmts.database.in_transaction():
        return False
    _write_groups(nodes, jobs, events, [], stmts)
    return True


def _write_groups(nodes: dict[tuple[str, str], NodeStatusWrite], jobs: list[JobStatusWrite],
                  events: list[EventWrite], outputs: list[OutputWrite],
                  statements: Optional[_Statements] = None) -> None:
    stmts = _Statements() if statements is None else statements
    if nodes:
        groups: dict[tuple[str, str], tuple[list[str], list[float]]] = {}
        for w in nodes.values():
            names, at = groups.setdefault((w.job_id, w.status), ([], [w.at]))
            names.append(w.node)
            if w.at > at[0]:
                at[0] = w.at
        for (jid, status), (names, at) in groups.items():
            _update_job_nodes(stmts, jid, names, status, utc_datetime(at[0]))
    if events:
        je = store.JobEvent
        bulk_insert(je, [je.job, je.seq, je.name, je.data, je.created_at],
                    [(e.job_id, e.seq, e.name, e.data, utc_datetime(e.at)) for e in events], statements=stmts)
    for j in jobs:
        _update_job(stmts, j.job_id, j.status, utc_datetime(j.at))
    stmts.run()
    if outputs:
        _write_outputs(outputs)


def _write_outputs(outputs: list[OutputWrite]) -> None:
    """Insert outputs; a node's second output (in this batch or already stored) is ignored."""
    seen: set[tuple[str, str]] = set()
    by_job: dict[str, list[OutputWrite]] = {}
    for o in outputs:
        if (o.job_id, o.node) in seen:
            log.warning("job %s: second output from %s ignored", o.job_id, o.node)
            continue
        seen.add((o.job_id, o.node))
        by_job.setdefault(o.job_id, []).append(o)
    fresh: list[OutputWrite] = []
    for jid, outs in by_job.items():
        stored: set[str] = set()
        for chunk in _chunks([o.node for o in outs], IN_CHUNK):
            q = (store.JobOutput.select(store.JobOutput.node_name)
                 .where(store.JobOutput.job == jid, store.JobOutput.node_name.in_(list(chunk))))
            stored.update(name for (name,) in q.tuples())
        for o in outs:
            if o.node in stored:
                log.warning("job %s: second output from %s ignored", jid, o.node)
            else:
                fresh.append(o)
    now = store.utcnow()
    jo = store.JobOutput
    bulk_insert(jo, [jo.job, jo.node_name, jo.stdout, jo.stderr, jo.truncated, jo.created_at],
                [(o.job_id, o.node, o.stdout, o.stderr, o.truncated, now) for o in fresh], chunk=50)


class _Pending(deque):
    """The writer's queue: a deque (O(1), no greenlet switch per write) that
    also answers `qsize()` like the gevent queue it replaced (metrics read it)."""

    def qsize(self) -> int:
        return len(self)


class DbWriter:
    """One greenlet that applies database writes in order, a batch per transaction.

    SQLite holds the whole event loop while it works: there the batch size
    adapts so that a transaction takes about `BATCH_SECONDS`. PostgreSQL
    (psycogreen) yields while a statement runs, so the wall time of a batch
    is mostly other greenlets' turns: there batches are `COOPERATIVE_BATCH`
    records sent in one or two round trips (each a wait for the loop); the
    Python side of such a batch is ~20-30 ms. `busy_seconds`, `batches`, `written` and
    `longest_batch` are statistics (benchmarks, metrics)."""

    def __init__(self, *, batch_seconds: float = BATCH_SECONDS) -> None:
        self.queue: _Pending = _Pending()
        self._idle = GEvent()
        self._idle.set()
        self._wake = GEvent()
        self._greenlet: Optional[gevent.Greenlet] = None
        self.errors = 0
        self.batch_seconds = batch_seconds
        self.batch_size = 500
        self._blocking = True  # the database holds the loop while it works (SQLite)
        self.batches = 0
        self.written = 0
        self.submitted = 0  # records ever submitted; `committed` catches up, in order
        self.committed = 0
        self._waiters: list[tuple[int, GEvent]] = []
        self.busy_seconds = 0.0
        self.longest_batch = 0.0

    def start(self) -> None:
        self._blocking = store.db.obj is None or isinstance(store.db.obj, pw.SqliteDatabase)
        if not self._blocking:
            self.batch_size = COOPERATIVE_BATCH
        self._greenlet = gevent.spawn(self._loop)

    def submit(self, write: Write) -> None:
        """Queue a write record (or a callable run inside the writer's transaction)."""
        self.queue.append(write)
        self.submitted += 1
        if self._idle.is_set():
            self._idle.clear()
        if not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout: float = 10.0) -> bool:
        return bool(self._idle.wait(timeout))

    def wait_committed(self, mark: int, timeout: float) -> bool:
        """Wait until the first `mark` records submitted are applied (or failed); False on timeout."""
        if self.committed >= mark:
            return True
        ev = GEvent()
        self._waiters.append((mark, ev))
        try:
            return bool(ev.wait(timeout))
        finally:
            if not ev.is_set():
                self._waiters = [w for w in self._waiters if w[1] is not ev]

    def _wake_waiters(self) -> None:
        keep = []
        for mark, ev in self._waiters:
            if self.committed >= mark:
                ev.set()
            else:
                keep.append((mark, ev))
        self._waiters = keep

    def stop(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=2)
            self._greenlet = None

    def _take(self) -> list[Write]:
        q = self.queue
        n = min(len(q), self.batch_size)
        batch: list[Write] = []
        out_bytes = 0
        while len(batch) < n:
            w = q.popleft()
            batch.append(w)
            if type(w) is OutputWrite:
                out_bytes += len(w.stdout) + len(w.stderr)  # type: ignore[union-attr]
                if out_bytes >= BATCH_OUTPUT_BYTES:
                    break
        return batch

    def _loop(self) -> None:
        while True:
            if not self.queue:
                self._idle.set()
                self._wake.clear()
                self._wake.wait()
                continue
            batch = self._take()
            t0 = time.perf_counter()
            self._apply(batch)
            dt = time.perf_counter() - t0
            self.committed += len(batch)  # applied, or failed and counted in `errors`
            if self._waiters:
                self._wake_waiters()
            self._account(len(batch), dt)
            yield_to_loop()  # the heartbeat publisher, the router, the API get their turn

    def _account(self, n: int, dt: float) -> None:
        self.batches += 1
        self.written += n
        self.busy_seconds += dt
        self.longest_batch = max(self.longest_batch, dt)
        if not self._blocking:
            return
        if dt > self.batch_seconds and n > MIN_BATCH:
            self.batch_size = max(MIN_BATCH, int(n * self.batch_seconds / dt))
        elif dt < self.batch_seconds / 2 and n >= self.batch_size:
            self.batch_size = min(MAX_BATCH, self.batch_size * 2)

    def _apply(self, batch: list[Write]) -> None:
        try:
            if not self._blocking and apply_in_one_round_trip(batch):
                return
            with store.db.atomic():
                apply_writes(batch)
            return
        except Exception:
            log.exception("database batch failed; retrying %d writes one by one", len(batch))
        # One bad write must not lose the others.
        for i, w in enumerate(batch):
            try:
                with store.db.atomic():
                    apply_writes([w])
            except Exception:
                self.errors += 1
                log.exception("database write failed (dropped): %r", _describe(w))
            if i % 50 == 49:
                yield_to_loop()


def _describe(w: Write) -> str:
    if isinstance(w, OutputWrite):
        return f"OutputWrite(job_id={w.job_id!r}, node={w.node!r}, {len(w.stdout) + len(w.stderr)} bytes)"
    return repr(w)


class JobCoordinator:
    def __init__(self, *, settings: Any, registry: Any, bus: EventBus, server_name: str):
        self.settings = settings
        self.registry = registry
        self.bus = bus
        self.server_name = server_name
        self.live: dict[str, LiveJob] = {}
        self.writer = DbWriter()
        self._executing = 0  # jobs whose actions are being carried out (possibly yielded)
        self._exec_idle = GEvent()
        self._exec_idle.set()

    # --- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self.writer.start()

    def stop(self) -> None:
        for lj in list(self.live.values()):
            for name in list(lj.timers):
                self._cancel(lj, name)
        self.writer.stop()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every action returned so far is carried out and in the database."""
        deadline = time.monotonic() + timeout
        if not self._exec_idle.wait(timeout):
            return False
        return self.writer.flush(max(0.0, deadline - time.monotonic()))

    # --- crash recovery (§9.7) ---------------------------------------------
    def recover(self) -> list[str]:
        """Jobs a previous process left unfinished become `crashed` with all their open nodes."""
        now = store.utcnow()
        with store.db.atomic():
            ids = [j.id for j in store.Job.select(store.Job.id).where(store.Job.status.in_(RECOVER_JOB_STATUSES))]
            if ids:
                store.Job.update(status="crashed", updated_at=now).where(store.Job.id.in_(ids)).execute()
                (store.JobNode.update(status="crashed", updated_at=now)
                 .where(store.JobNode.job.in_(ids), store.JobNode.status.not_in(list(NODE_TERMINAL)))
                 .execute())
        for jid in ids:
            log.warning("job %s was unfinished when the previous server stopped: crashed", jid)
        return ids

    # --- jobs --------------------------------------------------------------
    def start_job(self, job_id: str) -> None:
        """Run a stored `new` job: build its FSM and carry out `start`."""
        if job_id in self.live:
            return
        t_start = time.time()
        job = store.Job.get_or_none(store.Job.id == job_id)
        if job is None:
            raise KeyError(f"job {job_id} not found")
        if job.status != "new":
            log.warning("job %s: start requested in status %s: ignored", job_id, job.status)
            return
        org_name = job.org.name
        nodes = [name for (name,) in store.JobNode.select(store.JobNode.node_name)
                 .where(store.JobNode.job == job).order_by(store.JobNode.id).tuples()]
        created = job.created_at.replace(tzinfo=_dt.timezone.utc).timestamp() if job.created_at else t_start
        if len(nodes) > YIELD_EVERY and time.time() - created > BATCH_SECONDS:
            # the POST's insert and this read of a big job held the loop a while: let it run.
            # Not otherwise: a hub iteration here (a router batch, a writer batch) only
            # delays the first `commit`, while the nodes sit idle (1,000 nodes: 10-40 ms).
            yield_to_loop()
            if job_id in self.live:
                return
        env = None
        if job.env:
            try:
                env = json.loads(job.env)
            except ValueError:
                log.warning("job %s: stored env is not JSON; ignored", job_id)
        spec = JobSpec(
            job_id=job.id, command=job.command, nodes=nodes, run_timeout=job.run_timeout,
            requestor=job.requestor, quorum=job.quorum, user=job.user or None, dir=job.dir or None,
            env=env or None, file=job.file or None, capture=bool(job.capture_output),
        )
        try:
            fsm = JobFSM(spec, voting_timeout=float(self.settings.voting_timeout), server_name=self.server_name)
        except ValueError as e:
            # The API validates jobs; should one slip through, it must not stay `new`.
            log.error("job %s cannot start: %s; marked crashed", job_id, e)
            self.writer.submit(JobStatusWrite(job_id, "crashed", time.time()))
            return
        lj = LiveJob(job_id, org_name, fsm, self.bus.open_job_feed(job_id))
        lj.marks["start_job"] = t_start
        lj.marks["created"] = created
        lj.thread_cpu = time.thread_time()
        self.live[job_id] = lj
        available = {n for n in nodes if self.registry.is_available((org_name, n))}
        log.info("job %s: starting on %d nodes (%d available), quorum %d", job_id, len(nodes), len(available), fsm.quorum)
        self._execute(lj, fsm.start(available, time.time()))

    def abort_job(self, job_id: str, requestor: str) -> bool:
        lj = self.live.get(job_id)
        if lj is None or lj.fsm.finished:
            return False
        log.info("job %s: aborted by %s", job_id, requestor)
        self._execute(lj, lj.fsm.abort(time.time()))
        return True

    def node_message(self, job_id: str, key: NodeKey, mtype: str, body: dict) -> None:
        lj = self.live.get(job_id)
        if lj is None or lj.org != key[0]:
            return
        now = time.time()
        names = _FIRST.get(mtype)
        if names is not None:
            marks = lj.marks
            if names[0] not in marks:
                marks[names[0]] = now
            marks[names[1]] = now
        self._execute(lj, lj.fsm.message(key[1], mtype, body, now))

    def node_down(self, key: NodeKey) -> None:
        org, node = key
        for lj in list(self.live.values()):
            if lj.org == org and node in lj.fsm.nodes and not lj.fsm.finished:
                self._execute(lj, lj.fsm.down(node, time.time()))

    def live_job_ids(self) -> list[str]:
        return list(self.live)

    def live_view(self, job_id: str, wait: float = 5.0, nodes: bool = True) -> Optional[LiveView]:
        """The job's status and job nodes as the FSM has them, for `GET /jobs`
        and `GET /jobs/ID`; None when the job is not live here.

        While the job runs, memory is ahead of the database by the writer's
        lag (the SSE feeds are memory too). A final status is shown only once
        every write of the job is in the database, so that a client that sees
        it also finds every output and event: for a finished job whose writes
        are still queued this waits for them up to `wait` s, and until then
        shows the status the job had before it ended. `nodes=False` leaves
        the job nodes out (the job list)."""
        lj = self.live.get(job_id)
        if lj is None:
            return None
        fsm = lj.fsm
        status, at = fsm.status, lj.status_at
        if fsm.finished and not self._stored(lj, wait):
            status, at = lj.live_status, lj.live_status_at
        groups: dict[str, list[str]] = {}
        if nodes:
            for name, st in fsm.nodes.items():
                g = groups.get(st)
                if g is None:
                    g = groups[st] = []
                g.append(name)
        return LiveView(status, at, groups)

    def _stored(self, lj: LiveJob, wait: float) -> bool:
        """Are all the writes of the finished job `lj` in the database (waiting up to `wait` s)?"""
        deadline = time.monotonic() + wait
        while lj.done_mark is None:  # `Finished` not carried out yet (a yielded drain)
            if time.monotonic() >= deadline:
                return False
            gevent.sleep(0.005)
        return self.writer.wait_committed(lj.done_mark, max(0.0, deadline - time.monotonic()))

    # --- carrying out job FSM actions ----------------------------------------
    def _execute(self, lj: LiveJob, actions: list) -> None:
        """Carry out `actions` after the job's earlier ones, in order, yielding
        every `YIELD_EVERY` actions.

        If the job's actions are already being carried out (a yielded `start`
        of 10,000 sends), `actions` queue behind them and this returns at once.
        The caller carries out only as many actions as it brought: what others
        queued meanwhile goes to a greenlet of its own, so that `POST /jobs`
        (or the router) is not kept busy with the rest of the job."""
        lj.backlog.extend(actions)
        if lj.executing:
            return
        lj.executing = True
        self._executing += 1
        self._exec_idle.clear()
        self._drain(lj, len(lj.backlog))

    def _drain(self, lj: LiveJob, limit: Optional[int]) -> None:
        """Carry out up to `limit` (None: all) queued actions of `lj`; `lj.executing` is set and counted."""
        handed_off = False
        try:
            done = 0
            backlog = lj.backlog
            while backlog:
                if limit is not None and done >= limit:
                    gevent.spawn(self._drain, lj, None)
                    handed_off = True
                    return
                a = backlog.popleft()
                try:
                    self._do(lj, a)
                except Exception:
                    log.exception("job %s: action %r failed", lj.job_id, a)
                done += 1
                if done % YIELD_EVERY == 0 and backlog:
                    yield_to_loop()
        finally:
            if not handed_off:
                lj.executing = False
                self._executing -= 1
                if not self._executing:
                    self._exec_idle.set()

    def _do(self, lj: LiveJob, a: Any) -> None:
        jid = lj.job_id
        t = type(a)
        if t is A.Emit:
            ev = lj.feed.append(a.name, a.data.items())
            self.writer.submit(EventWrite(jid, len(lj.feed.events), a.name, ev.data_json, ev.at))
            if a.name in ORG_FEED_EVENTS:
                self.bus.org_feed(lj.org).append(a.name, [("job", jid), *a.data.items()], ev.at)
        elif t is A.SetNodeStatus:
            self.writer.submit(NodeStatusWrite(jid, a.node, a.status, time.time()))
        elif t is A.Send:
            self.registry.send_to((lj.org, a.node), a.type, dict(a.fields))
            if a.type in ("commit", "run"):
                marks, now = lj.marks, time.time()
                first = "first_" + a.type
                if first not in marks:
                    marks[first] = now
                marks["last_" + a.type] = now
        elif t is A.SetJobStatus:
            lj.status_at = time.time()
            if a.status == "running":
                lj.marks["running"] = lj.status_at
            if a.status not in JOB_TERMINAL:
                lj.live_status, lj.live_status_at = a.status, lj.status_at
            self.writer.submit(JobStatusWrite(jid, a.status, lj.status_at))
        elif t is A.StoreOutput:
            self._store_output(jid, a.node, a.stdout, a.stderr)
        elif t is A.Rehab:
            self.registry.rehab((lj.org, a.node))
        elif t is A.ArmTimer:
            self._arm(lj, a.name, a.delay)
        elif t is A.CancelTimer:
            self._cancel(lj, a.name)
        elif t is A.Finished:
            self._finished(lj, a.status)
        else:
            log.warning("job %s: unexpected action %r", jid, a)

    def _store_output(self, jid: str, node: str, stdout: Optional[str], stderr: Optional[str]) -> None:
        limit = int(self.settings.max_output_bytes)
        out, t1 = truncate_output(stdout, limit)
        err, t2 = truncate_output(stderr, limit)
        if t1 or t2:
            log.info("job %s: output of %s truncated at %d bytes", jid, node, limit)
        self.writer.submit(OutputWrite(jid, node, out, err, t1 or t2))

    def _arm(self, lj: LiveJob, name: str, delay: float) -> None:
        self._cancel(lj, name)
        lj.timers[name] = gevent.spawn_later(max(0.0, float(delay)), self._fire, lj, name)

    def _cancel(self, lj: LiveJob, name: str) -> None:
        g = lj.timers.pop(name, None)
        if g is not None and g is not gevent.getcurrent():
            g.kill(block=False)

    def _fire(self, lj: LiveJob, name: str) -> None:
        if lj.timers.get(name) is gevent.getcurrent():
            del lj.timers[name]
        if self.live.get(lj.job_id) is not lj:
            return
        log.info("job %s: %s timer fired", lj.job_id, name)
        self._execute(lj, lj.fsm.on_timer(name, time.time()))

    def _finished(self, lj: LiveJob, status: str) -> None:
        """§9.6: end live streams, linger `wait_complete_time`, then forget the job."""
        log.info("job %s: finished (%s)", lj.job_id, status)
        lj.finished_at = lj.marks["finished"] = time.time()
        lj.thread_cpu = time.thread_time() - lj.thread_cpu
        lj.done_mark = self.writer.submitted
        gevent.spawn(self._log_phases, lj)
        for name in list(lj.timers):
            self._cancel(lj, name)
        lj.feed.finish()
        gevent.spawn_later(float(self.settings.wait_complete_time), self._forget, lj)

    def _log_phases(self, lj: LiveJob) -> None:
        """Once the finished job's writes are stored: one line with its milestones (docs/performance.md)."""
        if lj.done_mark is not None and self.writer.wait_committed(lj.done_mark, 60.0):
            lj.marks["stored"] = time.time()
        log.info("job %s: phases: %s; loop thread CPU start_job..finished %.3f s", lj.job_id,
                 phase_line(lj.marks), lj.thread_cpu)

    def _forget(self, lj: LiveJob) -> None:
        if self.live.get(lj.job_id) is lj:
            del self.live[lj.job_id]
        self.bus.close_job_feed(lj.job_id)
