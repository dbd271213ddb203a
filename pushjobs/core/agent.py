"""The node agent's job runner state machine: PROTOCOL.md §8, with the fixes
of §8.2 and §17.3 (C1, C2, C4, C6, C12).

Rules of this file:

* Pure: methods take the event and `now`, return actions; the agent shell
  (`pushjobs.agent`) performs them in order. The transitions are the table
  `TRANSITIONS`, `(state, event) -> (steps, next state)`, a copy of §8.2 with
  the fixes; `_apply` is the few lines that run a row.
* The split with the shell. Everything that needs the machine is I/O and
  stays in the shell: resolving the command in the whitelist, `getpwnam`,
  the `dir` check, the `file` prefix check and taking the whitelist `lock`
  (a non-blocking `flock`). The shell does these checks for a `commit` when
  `accepts_commit` is true and passes the verdict: `refusal` (None = all
  checks passed, else a short reason for the log) and `locked` (it now holds
  a lock for this job id). The FSM decides the reply and the state, and
  tells the shell when to release the lock (`ReleaseLock`: once, when the job
  leaves `committed`, or at once if a lock-holding commit is refused).
* Each committed job keeps its own options (C2): a refused `commit` while
  busy never touches them.
* `abort` of a running job (C6). The reference answers `aborted` at once;
  a shell whose kill is asynchronous (a real process group: TERM, grace,
  KILL) builds the FSM with `await_kill=True`. Then the abort only kills and
  the FSM waits in `aborting` (reported as `running` with the job id) until
  the shell reports the process gone (`process_exited`/`process_error`) or
  gives up (`kill_timeout`); only then does it answer `aborted`, once per
  `abort` received meanwhile (the first names the job, the others `null`,
  as if the aborts had been processed one after the other). Why: the server
  holds the node in `rehab` (unavailable, §7.1) until `aborted` arrives, so
  answering early lets it send a `commit` the node must refuse while the old
  group still dies (seen under load). `aborted` means "reset", and a node
  still killing its job has not reset yet. Shells whose kill is immediate
  (the fleet simulator) keep the default and the reference's single row.
* `Send.node` is this agent's node name; the destination is the server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from pushjobs.core.actions import Action, KillProcess, ReleaseLock, Send, StartProcess

log = logging.getLogger(__name__)

__all__ = ["AgentFSM", "JobOptions", "IDLE", "COMMITTED", "RUNNING", "ABORTING", "TRANSITIONS"]

IDLE = "idle"
COMMITTED = "committed"
RUNNING = "running"
ABORTING = "aborting"  # killed, waiting for the process group to be gone (await_kill only)

# Steps of a row:
ACK_COMMIT = "ack_commit"  # remember the new job, Send ack_commit
NACK_COMMIT = "nack_commit"  # Send nack_commit for the *incoming* job id
DROP_NEW_LOCK = "drop_new_lock"  # ReleaseLock(incoming job) if the shell locked for it
RELEASE_LOCK = "release_lock"  # ReleaseLock(current job) if it holds one
START = "start"  # StartProcess(current job)
ACK_RUN = "ack_run"
NACK_RUN = "nack_run"  # for the incoming run's job id
KILL = "kill"  # KillProcess(current job)
REPORT_EXIT = "report_exit"  # succeeded / failed (+ output if capture)
REPORT_FAILED = "report_failed"  # failed, no output (C12)
ABORTED = "aborted"  # Send aborted with the current job id (or None)
DEFER_ABORTED = "defer_aborted"  # count an abort, answered once the group is gone
ABORTED_DEFERRED = "aborted_deferred"  # Send the counted aborteds: the job id first, then None
FORGET = "forget"  # drop the current job

# Events: commit_ok / commit_refused (idle; the shell's verdict or a malformed
# commit), commit_busy (a commit while committed/running), run (for the
# committed job), run_other (any other run), exit (the running job's process
# ended), error (an exception spawning/waiting for it, C12), abort,
# abort_await_kill (an abort of the running job when the FSM has await_kill),
# kill_timeout (await_kill: the shell gave up waiting for the group to die).
#: (state, event) -> (steps, next state). Missing rows: the event is ignored.
TRANSITIONS: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    (IDLE, "commit_ok"): ((ACK_COMMIT,), COMMITTED),
    (IDLE, "commit_refused"): ((DROP_NEW_LOCK, NACK_COMMIT), IDLE),
    (COMMITTED, "commit_busy"): ((DROP_NEW_LOCK, NACK_COMMIT), COMMITTED),  # C2: options untouched
    (RUNNING, "commit_busy"): ((DROP_NEW_LOCK, NACK_COMMIT), RUNNING),
    (COMMITTED, "run"): ((RELEASE_LOCK, START, ACK_RUN), RUNNING),
    (IDLE, "run_other"): ((NACK_RUN,), IDLE),
    (COMMITTED, "run_other"): ((NACK_RUN,), COMMITTED),
    (RUNNING, "run_other"): ((NACK_RUN,), RUNNING),
    (RUNNING, "exit"): ((REPORT_EXIT, FORGET), IDLE),
    (RUNNING, "error"): ((KILL, REPORT_FAILED, FORGET), IDLE),  # C12
    (IDLE, "abort"): ((ABORTED,), IDLE),
    (COMMITTED, "abort"): ((RELEASE_LOCK, ABORTED, FORGET), IDLE),
    (RUNNING, "abort"): ((KILL, ABORTED, FORGET), IDLE),  # C6: kill the process group
    # await_kill: `aborted` once the killed group is gone (or the kill timed out)
    (RUNNING, "abort_await_kill"): ((KILL, DEFER_ABORTED), ABORTING),
    (ABORTING, "abort"): ((DEFER_ABORTED,), ABORTING),
    (ABORTING, "commit_busy"): ((DROP_NEW_LOCK, NACK_COMMIT), ABORTING),
    (ABORTING, "run_other"): ((NACK_RUN,), ABORTING),
    (ABORTING, "exit"): ((ABORTED_DEFERRED, FORGET), IDLE),
    (ABORTING, "error"): ((ABORTED_DEFERRED, FORGET), IDLE),
    (ABORTING, "kill_timeout"): ((ABORTED_DEFERRED, FORGET), IDLE),
}


@dataclass(frozen=True)
class JobOptions:
    """The options of one committed job (§5.2.3 / §12.2). `env` maps str → str."""

    user: Optional[str] = None
    dir: Optional[str] = None
    env: dict[str, str] = field(default_factory=dict)
    file: Optional[str] = None
    capture: bool = False

    @classmethod
    def from_commit(cls, body: Mapping[str, Any]) -> "JobOptions":
        """Copy `user`, `dir`, `env`, `file`, `capture` from a commit body when
        truthy (§5.4). Wrong types raise ValueError (the shell answers
        `nack_commit`)."""
        user, dir_, env, file_ = body.get("user"), body.get("dir"), body.get("env"), body.get("file")
        for name, v in (("user", user), ("dir", dir_), ("file", file_)):
            if v and not isinstance(v, str):
                raise ValueError(f"commit field {name!r} must be a string")
        if env and not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
            raise ValueError("commit field 'env' must be an object of strings")
        return cls(user=user or None, dir=dir_ or None, env=dict(env or {}), file=file_ or None, capture=bool(body.get("capture")))


@dataclass
class _Job:
    job_id: str
    command: str
    options: JobOptions
    locked: bool = False
    aborts: int = 0  # aborts received while its group dies (await_kill)


class AgentFSM:
    """The agent's job runner: `idle` → `committed` → `running` → `idle`
    (with `await_kill`, an abort goes `running` → `aborting` → `idle`)."""

    def __init__(self, node: str, *, await_kill: bool = False):
        self.node = node
        self.await_kill = await_kill
        self.state = IDLE
        self._job: Optional[_Job] = None

    # --- queries ------------------------------------------------------------

    @property
    def job_id(self) -> Optional[str]:
        """The current job (None when idle)."""
        return self._job.job_id if self._job else None

    @property
    def options(self) -> Optional[JobOptions]:
        """The current job's options (None when idle)."""
        return self._job.options if self._job else None

    @property
    def accepts_commit(self) -> bool:
        """True when a commit could be accepted: the shell runs its checks
        (and takes a lock) only then."""
        return self.state == IDLE

    def heartbeat_fields(self) -> dict[str, Any]:
        """The heartbeat's `job_state`/`job_id` (§5.1). `aborting` is not a
        wire state: the job's processes still exist, so it says `running`.
        The server holds the node in `rehab` meanwhile, where a heartbeat
        naming a job that is no longer live (a rehab request) is ignored."""
        state = RUNNING if self.state == ABORTING else self.state
        return {"job_state": state, "job_id": self.job_id}

    # --- events -------------------------------------------------------------

    def commit(
        self,
        job_id: Optional[str],
        command: Optional[str],
        options: Optional[JobOptions],
        now: float,
        *,
        refusal: Optional[str] = None,
        locked: bool = False,
    ) -> list[Action]:
        """A `commit` from the server. A missing `job_id` → `nack_commit` with
        a null job id; a missing `command` → `nack_commit` with the commit's
        job id (C4). `refusal`/`locked` are the shell's verdict (see the
        module docstring); `options` None means "none set"."""
        incoming = _Job(job_id or "", command or "", options or JobOptions(), locked)
        if self.state != IDLE:
            event = "commit_busy"
        elif not job_id or not command or refusal is not None:
            event = "commit_refused"
            log.info("commit of job %r refused: %s", job_id, refusal or "missing job_id or command")
        else:
            event = "commit_ok"
        return self._apply(event, incoming=incoming, reply_job_id=job_id or None)

    def run(self, job_id: Optional[str], now: float) -> list[Action]:
        """A `run` from the server: starts the committed job if it is the one named."""
        if self.state == COMMITTED and job_id and job_id == self.job_id:
            return self._apply("run")
        return self._apply("run_other", reply_job_id=job_id or None)

    def process_exited(
        self,
        job_id: str,
        exit_status: int,
        stdout: Optional[str],
        stderr: Optional[str],
        now: float,
    ) -> list[Action]:
        """The process of `job_id` ended with `exit_status` (0 = success;
        negative = killed by a signal). Output is attached only if the job
        asked for capture; keeping the message under `max_body_size` (C7) is
        the shell's job. Ignored unless that job is the one running (or, with
        `await_kill`, being aborted: then the group is gone and the deferred
        `aborted` goes out)."""
        if self.state not in (RUNNING, ABORTING) or job_id != self.job_id:
            log.info("exit of job %r ignored (current %r, %s)", job_id, self.job_id, self.state)
            return []
        return self._apply("exit", exit_status=exit_status, stdout=stdout, stderr=stderr)

    def process_error(self, job_id: str, error: str, now: float) -> list[Action]:
        """Spawning or waiting for the process of `job_id` raised (C12): kill
        what may remain, report `failed`, go idle. While `aborting` it ends
        the wait like an exit."""
        if self.state not in (RUNNING, ABORTING) or job_id != self.job_id:
            return []
        log.warning("job %s: runner error: %s", job_id, error)
        return self._apply("error")

    def abort(self, now: float) -> list[Action]:
        """`abort` from the server: whatever the state, reset to idle and
        answer `aborted` with the job that was current (or None). With
        `await_kill`, a running job is killed first and the answer waits
        until its group is gone (see the module docstring)."""
        if self.state == RUNNING and self.await_kill:
            return self._apply("abort_await_kill")
        return self._apply("abort")

    def kill_timeout(self, job_id: str, now: float) -> list[Action]:
        """The shell waited its kill timeout for the aborted job's group and
        it is still there (unkillable, or the waiter is stuck): answer the
        deferred `aborted` now so the agent is never wedged; keeping new
        jobs away from the survivors is then the shell's business."""
        if self.state != ABORTING or job_id != self.job_id:
            return []
        log.warning("job %s: kill timeout; answering aborted with its processes still alive", job_id)
        return self._apply("kill_timeout")

    # --- the few lines that apply the table ------------------------------------

    def _apply(
        self,
        event: str,
        *,
        incoming: Optional[_Job] = None,
        reply_job_id: Optional[str] = None,
        exit_status: int = 0,
        stdout: Optional[str] = None,
        stderr: Optional[str] = None,
    ) -> list[Action]:
        row = TRANSITIONS.get((self.state, event))
        if row is None:
            return []
        steps, next_state = row
        cur = self._job
        out: list[Action] = []
        for step in steps:
            if step == ACK_COMMIT:
                assert incoming is not None
                self._job = cur = incoming
                out.append(Send(self.node, "ack_commit", {"job_id": incoming.job_id}))
            elif step == NACK_COMMIT:
                out.append(Send(self.node, "nack_commit", {"job_id": reply_job_id}))
            elif step == DROP_NEW_LOCK:
                if incoming is not None and incoming.locked:
                    out.append(ReleaseLock(incoming.job_id))
            elif step == RELEASE_LOCK:
                if cur is not None and cur.locked:
                    cur.locked = False
                    out.append(ReleaseLock(cur.job_id))
            elif step == START:
                assert cur is not None
                out.append(StartProcess(cur.job_id, cur.command, cur.options))
            elif step == ACK_RUN:
                assert cur is not None
                out.append(Send(self.node, "ack_run", {"job_id": cur.job_id}))
            elif step == NACK_RUN:
                out.append(Send(self.node, "nack_run", {"job_id": reply_job_id}))
            elif step == KILL:
                assert cur is not None
                out.append(KillProcess(cur.job_id))
            elif step == REPORT_EXIT:
                assert cur is not None
                fields: dict[str, Any] = {"job_id": cur.job_id}
                if cur.options.capture:
                    fields["stdout"] = stdout or ""
                    fields["stderr"] = stderr or ""
                out.append(Send(self.node, "succeeded" if exit_status == 0 else "failed", fields))
            elif step == REPORT_FAILED:
                assert cur is not None
                out.append(Send(self.node, "failed", {"job_id": cur.job_id}))
            elif step == ABORTED:
                out.append(Send(self.node, "aborted", {"job_id": cur.job_id if cur else None}))
            elif step == DEFER_ABORTED:
                assert cur is not None
                cur.aborts += 1
            elif step == ABORTED_DEFERRED:
                assert cur is not None
                for i in range(max(1, cur.aborts)):
                    out.append(Send(self.node, "aborted", {"job_id": cur.job_id if i == 0 else None}))
            elif step == FORGET:
                self._job = None
        self.state = next_state
        return out
