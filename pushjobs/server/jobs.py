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
* Database writes go through ONE writer greenlet, in order, batched in a
  transaction: the FSM transition itself never waits for the database (with
  PostgreSQL a query yields to other greenlets), and the writes of one job
  can never be reordered. `flush()` waits for the queue to drain.
* Start-up crash recovery (§9.7, S12): jobs left `new`/`voting`/`running` by a
  previous process become `crashed`, and so do ALL their non-terminal job
  nodes (the reference only marked `running` ones).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import gevent
from gevent.event import Event as GEvent
from gevent.queue import Queue

from pushjobs.core import actions as A
from pushjobs.core.job import NODE_TERMINAL, JobFSM, JobSpec
from pushjobs.server import store
from pushjobs.server.events import EventBus, JobFeed

log = logging.getLogger(__name__)

NodeKey = tuple[str, str]
RECOVER_JOB_STATUSES = ("new", "voting", "running")
ORG_FEED_EVENTS = ("start", "job_complete")


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


class DbWriter:
    """One greenlet that applies database writes in order, a batch per transaction."""

    def __init__(self) -> None:
        self.queue: Queue = Queue()
        self._idle = GEvent()
        self._idle.set()
        self._greenlet: Optional[gevent.Greenlet] = None
        self.errors = 0

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._loop)

    def submit(self, fn: Callable[[], None]) -> None:
        self._idle.clear()
        self.queue.put(fn)

    def flush(self, timeout: float = 10.0) -> bool:
        return self._idle.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=2)
            self._greenlet = None

    def _loop(self) -> None:
        while True:
            fn = self.queue.get()
            batch = [fn]
            while not self.queue.empty() and len(batch) < 500:
                batch.append(self.queue.get_nowait())
            try:
                with store.db.atomic():
                    for f in batch:
                        f()
            except Exception:
                # One bad write must not lose the others: retry them one by one.
                log.exception("database batch failed; retrying %d writes one by one", len(batch))
                for f in batch:
                    try:
                        with store.db.atomic():
                            f()
                    except Exception:
                        self.errors += 1
                        log.exception("database write failed (dropped)")
            if self.queue.empty():
                self._idle.set()


class JobCoordinator:
    def __init__(self, *, settings: Any, registry: Any, bus: EventBus, server_name: str):
        self.settings = settings
        self.registry = registry
        self.bus = bus
        self.server_name = server_name
        self.live: dict[str, LiveJob] = {}
        self.writer = DbWriter()

    # --- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self.writer.start()

    def stop(self) -> None:
        for lj in list(self.live.values()):
            for name in list(lj.timers):
                self._cancel(lj, name)
        self.writer.stop()

    def flush(self, timeout: float = 10.0) -> bool:
        return self.writer.flush(timeout)

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
        job = store.Job.get_or_none(store.Job.id == job_id)
        if job is None:
            raise KeyError(f"job {job_id} not found")
        if job.status != "new":
            log.warning("job %s: start requested in status %s: ignored", job_id, job.status)
            return
        org_name = job.org.name
        nodes = [jn.node_name for jn in store.JobNode.select().where(store.JobNode.job == job).order_by(store.JobNode.id)]
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
            ts = store.utcnow()
            self.writer.submit(lambda: store.Job.update(status="crashed", updated_at=ts)
                               .where(store.Job.id == job_id).execute())
            return
        lj = LiveJob(job_id, org_name, fsm, self.bus.open_job_feed(job_id))
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
        self._execute(lj, lj.fsm.message(key[1], mtype, body, time.time()))

    def node_down(self, key: NodeKey) -> None:
        org, node = key
        for lj in list(self.live.values()):
            if lj.org == org and node in lj.fsm.nodes and not lj.fsm.finished:
                self._execute(lj, lj.fsm.down(node, time.time()))

    def live_job_ids(self) -> list[str]:
        return list(self.live)

    # --- carrying out job FSM actions ----------------------------------------
    def _execute(self, lj: LiveJob, actions: list) -> None:
        for a in actions:
            try:
                self._do(lj, a)
            except Exception:
                log.exception("job %s: action %r failed", lj.job_id, a)

    def _do(self, lj: LiveJob, a: Any) -> None:
        jid = lj.job_id
        if isinstance(a, A.Send):
            self.registry.send_to((lj.org, a.node), a.type, dict(a.fields))
        elif isinstance(a, A.Emit):
            ev = lj.feed.append(a.name, a.data.items())
            seq = len(lj.feed.events)
            data_json = json.dumps(ev.data, separators=(",", ":"))
            self.writer.submit(lambda: store.JobEvent.create(job=jid, seq=seq, name=a.name, data=data_json))
            if a.name in ORG_FEED_EVENTS:
                self.bus.org_feed(lj.org).append(a.name, [("job", jid), *a.data.items()], ev.at)
        elif isinstance(a, A.SetJobStatus):
            status = a.status
            ts = store.utcnow()
            self.writer.submit(
                lambda: store.Job.update(status=status, updated_at=ts).where(store.Job.id == jid).execute())
        elif isinstance(a, A.SetNodeStatus):
            node, status = a.node, a.status
            ts = store.utcnow()
            self.writer.submit(lambda: store.JobNode.update(status=status, updated_at=ts)
                               .where(store.JobNode.job == jid, store.JobNode.node_name == node).execute())
        elif isinstance(a, A.StoreOutput):
            self._store_output(jid, a.node, a.stdout, a.stderr)
        elif isinstance(a, A.Rehab):
            self.registry.rehab((lj.org, a.node))
        elif isinstance(a, A.ArmTimer):
            self._arm(lj, a.name, a.delay)
        elif isinstance(a, A.CancelTimer):
            self._cancel(lj, a.name)
        elif isinstance(a, A.Finished):
            self._finished(lj, a.status)
        else:
            log.warning("job %s: unexpected action %r", jid, a)

    def _store_output(self, jid: str, node: str, stdout: Optional[str], stderr: Optional[str]) -> None:
        limit = int(self.settings.max_output_bytes)
        out, t1 = truncate_output(stdout, limit)
        err, t2 = truncate_output(stderr, limit)
        if t1 or t2:
            log.info("job %s: output of %s truncated at %d bytes", jid, node, limit)

        def write() -> None:
            if store.JobOutput.select().where(store.JobOutput.job == jid, store.JobOutput.node_name == node).exists():
                log.warning("job %s: second output from %s ignored", jid, node)
                return
            store.JobOutput.create(job=jid, node_name=node, stdout=out, stderr=err, truncated=t1 or t2)

        self.writer.submit(write)

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
        lj.finished_at = time.time()
        for name in list(lj.timers):
            self._cancel(lj, name)
        lj.feed.finish()
        gevent.spawn_later(float(self.settings.wait_complete_time), self._forget, lj)

    def _forget(self, lj: LiveJob) -> None:
        if self.live.get(lj.job_id) is lj:
            del self.live[lj.job_id]
        self.bus.close_job_feed(lj.job_id)
