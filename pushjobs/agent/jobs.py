"""The agent's job handler: the I/O shell around `pushjobs.core.agent.AgentFSM`.

The FSM decides replies and states (PROTOCOL.md §8 with the fixes); this
file does the I/O it cannot: resolving the command in the whitelist,
`getpwnam`, the `dir` and `file` checks, taking the whitelist `lock`
(a non-blocking `flock`, file opened without truncation), spawning and
killing the process group, and carrying out the FSM's actions in order.

Extra rules of the shell:

* An abort of a running job is answered (`aborted`) only once the job's
  process group is gone (the FSM's `await_kill`): the server keeps the node
  in rehab, unavailable, until then, so it does not send a commit the node
  would have to refuse. A group that will not die (KILL fails, a process
  stuck in the kernel) cannot wedge the agent: after `kill_timeout` the
  abort is answered anyway, and commits are then refused (`nack_commit`)
  while the old process still runs: the node never runs two jobs at once.
* The whitelist (and the job-related settings) can be replaced at any time
  with `update()`, but the change only takes effect when the runner is idle,
  so a reload never changes what a committed or running job executes.
* Process exits arrive on waiter threads and are handed to the loop thread;
  the FSM is only ever touched on the loop thread.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from pushjobs.agent.runner import (KILL_WAIT, CommitRefused, JobProcess, JobResult, JobSpec,
                                   check_job_options)
from pushjobs.agent.whitelist import Resolved, Whitelist
from pushjobs.core.actions import KillProcess, ReleaseLock, Send, StartProcess
from pushjobs.core.agent import IDLE, AgentFSM, JobOptions

log = logging.getLogger(__name__)

#: Slack beyond TERM grace + KILL wait before an abort is answered although the
#: job's group is not gone (output drain, a loaded machine).
KILL_TIMEOUT_SLACK = 5.0


@dataclass(frozen=True)
class JobSettings:
    """The settings that shape job execution (reloadable with the whitelist)."""

    whitelist: Whitelist
    file_dir: str = "/tmp/chef-push"
    max_output_bytes: int = 1048576
    term_grace_period: float = 5.0
    run_timeout: Optional[float] = 86400.0
    allowed_overwritable_env_vars: Optional[Sequence[str]] = None
    lockfile: str = "/var/chef/cache/chef-client-running.pid"
    #: seconds from an abort until it is answered even if the job's process
    #: group is still alive; None: term_grace_period + KILL_WAIT + KILL_TIMEOUT_SLACK
    kill_timeout: Optional[float] = None

    @property
    def effective_kill_timeout(self) -> float:
        if self.kill_timeout is not None:
            return self.kill_timeout
        return self.term_grace_period + KILL_WAIT + KILL_TIMEOUT_SLACK

    @classmethod
    def from_settings(cls, settings: Any) -> "JobSettings":
        return cls(whitelist=Whitelist.from_mapping(settings.whitelist),
                   file_dir=settings.file_dir, max_output_bytes=settings.max_output_bytes,
                   term_grace_period=settings.term_grace_period, run_timeout=settings.run_timeout,
                   allowed_overwritable_env_vars=settings.allowed_overwritable_env_vars,
                   lockfile=settings.effective_lockfile,
                   kill_timeout=getattr(settings, "kill_timeout", None))


class LockHeld(Exception):
    pass


def acquire_lock(path: str) -> int:
    """Non-blocking exclusive flock on `path`; returns the fd. Never truncates (C1)."""
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockHeld(path) from None
    except OSError:
        os.close(fd)
        raise
    return fd


def release_lock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class AgentJobs:
    """JobHandler for a real node: whitelist + checks + runner + locks around the FSM."""

    def __init__(self, node_name: str, settings: JobSettings, *,
                 process_factory: Callable[..., JobProcess] = JobProcess):
        self.node = node_name
        self.fsm = AgentFSM(node_name, await_kill=True)
        self.settings = settings
        self._pending_settings: Optional[JobSettings] = None
        self._process_factory = process_factory
        self._session: Any = None
        self._resolved: dict[str, Resolved] = {}
        self._locks: dict[str, int] = {}
        self._process: Optional[JobProcess] = None
        self._dying: list[JobProcess] = []
        self._kill_timer: Any = None  # (job_id, timer handle) while an abort waits for its group
        self.history: list[JobResult] = []  # last results, for diagnostics and tests

    # --- JobHandler protocol ------------------------------------------------------
    def attach(self, session: Any) -> None:
        self._session = session

    def heartbeat_fields(self) -> dict[str, Any]:
        return self.fsm.heartbeat_fields()

    def handle(self, msg_type: str, body: dict[str, Any], now: float) -> None:
        if msg_type == "commit":
            self._commit(body, now)
        elif msg_type == "run":
            job_id = body.get("job_id")
            self._execute(self.fsm.run(job_id if isinstance(job_id, str) else None, now))
        elif msg_type == "abort":
            self._execute(self.fsm.abort(now))
        self._maybe_apply_settings()

    # --- settings reload ------------------------------------------------------------
    def update(self, settings: JobSettings) -> bool:
        """Use new job settings as soon as the runner is idle; True if applied now."""
        self._pending_settings = settings
        return self._maybe_apply_settings()

    @property
    def busy(self) -> bool:
        self._dying = [p for p in self._dying if not p.done]
        return self.fsm.state != IDLE or bool(self._dying)

    def _maybe_apply_settings(self) -> bool:
        if self._pending_settings is None or self.busy:
            return False
        self.settings, self._pending_settings = self._pending_settings, None
        log.info("[%s] whitelist reloaded (%d entries)", self.node, len(self.settings.whitelist))
        return True

    # --- commit checks (the I/O the FSM cannot do) ----------------------------------
    def _commit(self, body: dict[str, Any], now: float) -> None:
        job_id = body.get("job_id") if isinstance(body.get("job_id"), str) else None
        command = body.get("command") if isinstance(body.get("command"), str) else None
        refusal: Optional[str] = None
        locked = False
        options: Optional[JobOptions] = None
        if self.fsm.accepts_commit and job_id and command:
            try:
                options = JobOptions.from_commit(body)
            except ValueError as exc:
                refusal = str(exc)
            if refusal is None and self.busy:
                refusal = "the previous job's processes are still being killed"
            resolved = None
            if refusal is None:
                resolved = self.settings.whitelist.resolve(command)
                if resolved is None:
                    refusal = self.settings.whitelist.why_not(command)
            if refusal is None and options is not None:
                try:
                    check_job_options(options.user, options.dir, options.env or None, options.file)
                except CommitRefused as exc:
                    refusal = exc.reason
            if refusal is None and resolved is not None and resolved.lock is not None:
                path = self.settings.lockfile if resolved.lock is True else str(resolved.lock)
                try:
                    self._locks[job_id] = acquire_lock(path)
                    locked = True
                except LockHeld:
                    refusal = f"lock {path} is held (is chef-client running?)"
                except OSError as exc:
                    refusal = f"cannot open lock {path}: {exc}"
            if refusal is None and resolved is not None:
                self._resolved[job_id] = resolved
        elif not self.fsm.accepts_commit:
            log.info("[%s] commit of job %s refused: busy with job %s (%s)", self.node, job_id,
                     self.fsm.job_id, self.fsm.state)
        if refusal is not None:
            log.warning("[%s] nack_commit for job %s (%r): %s", self.node, job_id, command, refusal)
        elif not job_id or not command:
            log.warning("[%s] nack_commit: commit without %s", self.node,
                        "job_id" if not job_id else "command")
        self._execute(self.fsm.commit(job_id, command, options, now, refusal=refusal, locked=locked))

    # --- actions -----------------------------------------------------------------
    def _execute(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Send):
                if self._session is not None:
                    self._session.send(action.type, dict(action.fields))
            elif isinstance(action, StartProcess):
                self._start(action)
            elif isinstance(action, KillProcess):
                self._kill(action.job_id)
            elif isinstance(action, ReleaseLock):
                fd = self._locks.pop(action.job_id, None)
                if fd is not None:
                    release_lock(fd)
            else:
                log.error("[%s] unexpected action %r", self.node, action)
        # a refused commit may have resolved; keep only the current job's entry
        current = self.fsm.job_id
        for job_id in [j for j in self._resolved if j != current]:
            del self._resolved[job_id]

    def _start(self, action: StartProcess) -> None:
        resolved = self._resolved.get(action.job_id) or self.settings.whitelist.resolve(action.command)
        opts: JobOptions = action.options
        if resolved is None:  # cannot happen (resolved at commit); report, never hang
            self._post(lambda: self._execute(self.fsm.process_error(action.job_id, "not whitelisted",
                                                                    self._now())))
            return
        spec = JobSpec(job_id=action.job_id, node_name=self.node, argv=resolved.argv,
                       command_line=resolved.command_line, user=opts.user, dir=opts.dir,
                       env=dict(opts.env or {}), file=opts.file, capture=opts.capture,
                       timeout=self.settings.run_timeout)
        s = self.settings
        proc = self._process_factory(
            spec, on_exit=lambda result: self._post(lambda: self._exited(result)),
            file_dir=s.file_dir, max_output_bytes=s.max_output_bytes,
            term_grace=s.term_grace_period,
            allowed_overwritable_env_vars=s.allowed_overwritable_env_vars)
        self._process = proc
        proc.start()

    def _kill(self, job_id: str) -> None:
        proc = self._process
        if proc is not None and proc.spec.job_id == job_id:
            log.info("[%s] job %s: aborting; killing its process group (aborted once it is gone)",
                     self.node, job_id)
            proc.abort()
            self._dying.append(proc)
            self._process = None
        if self.fsm.state != IDLE and self.fsm.job_id == job_id:
            # The FSM waits for the exit (or the error) of the job; never forever.
            self._arm_kill_timer(job_id, self.settings.effective_kill_timeout)

    def _arm_kill_timer(self, job_id: str, delay: float) -> None:
        self._cancel_kill_timer()
        fire = lambda: self._kill_timed_out(job_id)  # noqa: E731
        loop = self._session.loop if self._session is not None else None
        if loop is not None and hasattr(loop, "call_later"):
            handle: Any = loop.call_later(delay, fire)
        else:  # no loop: a thread hands the timeout to wherever _post runs it
            handle = threading.Timer(delay, lambda: self._post(fire))
            handle.daemon = True
            handle.start()
        self._kill_timer = (job_id, handle)

    def _cancel_kill_timer(self, job_id: Optional[str] = None) -> None:
        if self._kill_timer is not None and (job_id is None or self._kill_timer[0] == job_id):
            self._kill_timer[1].cancel()
            self._kill_timer = None

    def _kill_timed_out(self, job_id: str) -> None:
        if self._kill_timer is not None and self._kill_timer[0] == job_id:
            self._kill_timer = None
        actions = self.fsm.kill_timeout(job_id, self._now())
        if actions:
            pids = [p.pid for p in self._dying if not p.done and p.spec.job_id == job_id]
            log.warning("[%s] job %s: process group %s still alive %.1f s after the abort; "
                        "answering aborted anyway; commits are refused until it is gone",
                        self.node, job_id, pids[0] if pids else "?",
                        self.settings.effective_kill_timeout)
            self._execute(actions)
            self._maybe_apply_settings()

    def _exited(self, result: JobResult) -> None:
        self.history.append(result)
        del self.history[:-20]
        if self._process is not None and self._process.spec.job_id == result.job_id:
            self._process = None
        self._cancel_kill_timer(result.job_id)
        if result.survivors:
            log.warning("[%s] job %s: processes of its group survived SIGKILL; the node is "
                        "considered free anyway", self.node, result.job_id)
        if result.exit_code is not None:
            status = result.exit_code
        elif result.signal is not None:
            status = -result.signal
        else:
            status = 127  # never started (C12: report failed, go idle)
        self._execute(self.fsm.process_exited(result.job_id, status, result.stdout, result.stderr,
                                              self._now()))
        self._maybe_apply_settings()

    # --- helpers -------------------------------------------------------------------
    def _post(self, fn: Callable[[], None]) -> None:
        session = self._session
        if session is not None:
            session.loop.call_soon_threadsafe(fn)
        else:
            fn()

    def _now(self) -> float:
        session = self._session
        return session.loop.clock() if session is not None else 0.0

    def shutdown(self, grace: Optional[float] = None) -> None:
        """Kill the running job (agent stopping), wait (bounded) for the groups
        of aborted jobs still dying (their killer threads die with the agent),
        and release every lock."""
        self._cancel_kill_timer()
        proc = self._process
        if proc is not None and not proc.done:
            proc.term_grace = grace if grace is not None else proc.term_grace
            proc.abort("agent stopping")
            proc.wait(proc.term_grace + KILL_WAIT + 1)
        for dying in self._dying:
            if not dying.done:
                dying.wait(dying.term_grace + KILL_WAIT + 1)
        for fd in self._locks.values():
            release_lock(fd)
        self._locks.clear()
