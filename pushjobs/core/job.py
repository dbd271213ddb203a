"""The server's job state machine: PROTOCOL.md §9, plus the `aborted` path.

Rules of this file:

* One `JobFSM` per live job. Pure: every method takes `now` and returns a
  list of actions (`pushjobs.core.actions`) that the coordinator carries out
  in order. The FSM never sleeps, reads the clock or touches I/O.
* The §9.4 (voting) and §9.5 (running) tables are the data tables `VOTING`
  and `RUNNING`: `(event, column) -> steps`, where the column is the node's
  job status (`new`, `ready`, `running`) or `terminal`, and a step is one of
  the small tuples below, applied in order. The order of the steps *is* the
  SSE event order of §9.4/§9.5 ("quorum_vote before rehab for down", ...).
  `_run_steps` is the few lines that apply a cell.
* A terminal job-node status never changes (§9.2); the tables never set one,
  and `_run_steps` refuses to.
* "Rehab" = `Rehab(node)` + `Emit("rehab")`; "bulk rehab" = `Rehab(node,
  bulk=True)` and no event (S15).
* Quorum is an absolute count, evaluated only when no node is `new` (S19: no
  early start).
* Every node message costs O(1), whatever the job's size: `_set_node` is the
  ONE place that changes a job-node status, and it keeps a count per status,
  so "is any node still `new`?" / "is any node ready or running?" are
  lookups, not scans (a scan per message made a 10,000-node job 10^8 steps).
  `nodes` is a read-only view for the same reason.

Job statuses: `new` → `voting` → `running` → `complete` | `timed_out`;
`voting` → `quorum_failed`; `voting`/`running` → `aborted` (ours, D9);
any live status → `crashed` (`crash`, §9.7).
After finishing the FSM is `finished` and ignores everything (the shell
lingers `wait_complete_time`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Container, Mapping, Optional, Sequence

from pushjobs.core.actions import (
    Action,
    ArmTimer,
    CancelTimer,
    Emit,
    Finished,
    Rehab,
    Send,
    SetJobStatus,
    SetNodeStatus,
    StoreOutput,
)

log = logging.getLogger(__name__)

__all__ = [
    "JobSpec",
    "JobFSM",
    "VOTING",
    "RUNNING",
    "VOTING_TIMER",
    "RUN_TIMER",
    "JOB_TERMINAL",
    "NODE_TERMINAL",
]

# --- job statuses (§9.1) ------------------------------------------------------
NEW = "new"
VOTING_S = "voting"
RUNNING_S = "running"
COMPLETE = "complete"
QUORUM_FAILED = "quorum_failed"
TIMED_OUT = "timed_out"
CRASHED = "crashed"
ABORTED = "aborted"
JOB_TERMINAL = frozenset([COMPLETE, QUORUM_FAILED, TIMED_OUT, CRASHED, ABORTED])

# --- job-node statuses (§9.2) -------------------------------------------------
N_NEW = "new"
N_READY = "ready"
N_RUNNING = "running"
N_SUCCEEDED = "succeeded"
N_FAILED = "failed"
N_ABORTED = "aborted"
N_UNAVAILABLE = "unavailable"
N_NACKED = "nacked"
N_WAS_READY = "was_ready"
N_CRASHED = "crashed"
N_TIMED_OUT = "timed_out"
NODE_TERMINAL = frozenset(
    [N_SUCCEEDED, N_FAILED, N_ABORTED, N_UNAVAILABLE, N_NACKED, N_WAS_READY, N_CRASHED, N_TIMED_OUT, "faulty"]
)
TERMINAL = "terminal"  # the table column of every terminal node status

VOTING_TIMER = "voting"
RUN_TIMER = "run"

# --- steps of a table cell ----------------------------------------------------
# ("set", status)        SetNodeStatus (never on a terminal node)
# ("vote", status)       Emit quorum_vote {node, status}
# ("rehab",)             Rehab(node) + Emit rehab {node}
# ("run_start",)         Emit run_start {node}
# ("complete", status)   Emit run_complete {node, status}
# ("store",)             StoreOutput if the message carries stdout or stderr
REHAB = ("rehab",)
STORE = ("store",)
RUN_START = ("run_start",)


def _set(status: str) -> tuple[str, str]:
    return ("set", status)


def _vote(status: str) -> tuple[str, str]:
    return ("vote", status)


def _complete(status: str) -> tuple[str, str]:
    return ("complete", status)


Cell = tuple[tuple[str, ...], ...]

# The node messages that are "any other node message" in §9.4.
_OTHER_VOTING = ("ack_run", "nack_run", "succeeded", "failed", "aborted")

#: §9.4 voting phase: (event, column) -> steps. Columns: new, ready, terminal.
VOTING: dict[tuple[str, str], Cell] = {
    ("ack_commit", N_NEW): (_set(N_READY), _vote("success")),
    ("ack_commit", N_READY): (_vote("unexpected_commit"),),
    ("ack_commit", TERMINAL): (REHAB, _vote("client_died_while_voting")),
    ("nack_commit", N_NEW): (_set(N_NACKED), _vote("failure")),
    ("nack_commit", N_READY): (_set(N_UNAVAILABLE), REHAB, _vote("lost_availibility")),  # sic (S14)
    ("nack_commit", TERMINAL): (REHAB, _vote("client_died_while_voting")),
    ("down", N_NEW): (_vote("down"), _set(N_UNAVAILABLE), REHAB),
    ("down", N_READY): (_vote("down"), _set(N_UNAVAILABLE), REHAB),
    ("down", TERMINAL): (_vote("down"), REHAB),
}
for _ev in _OTHER_VOTING:
    VOTING[(_ev, N_NEW)] = (_set(N_UNAVAILABLE), REHAB)
    VOTING[(_ev, N_READY)] = (_set(N_UNAVAILABLE), REHAB)
    VOTING[(_ev, TERMINAL)] = (REHAB,)

_DIED = _complete("client_died_while_running")

#: §9.5 running phase: (event, column) -> steps. Columns: ready, running, terminal.
RUNNING: dict[tuple[str, str], Cell] = {
    ("ack_run", N_READY): (_set(N_RUNNING), RUN_START),
    ("ack_run", N_RUNNING): (),
    ("ack_run", TERMINAL): (_DIED, REHAB),  # the one run_complete-before-rehab cell
    ("nack_run", N_READY): (_set(N_FAILED), REHAB, _complete("run_nacked")),
    ("nack_run", N_RUNNING): (_set(N_FAILED), REHAB, _complete("run_nacked_while_running")),
    ("nack_run", TERMINAL): (REHAB, _DIED),
    ("succeeded", N_READY): (STORE, _set(N_CRASHED), REHAB, _complete("crashed")),
    ("succeeded", N_RUNNING): (STORE, _set(N_SUCCEEDED), _complete("success")),
    ("succeeded", TERMINAL): (STORE, REHAB, _DIED),
    ("failed", N_READY): (STORE, _set(N_CRASHED), REHAB, _complete("crashed")),
    ("failed", N_RUNNING): (STORE, _set(N_FAILED), _complete("failure")),
    ("failed", TERMINAL): (STORE, REHAB, _DIED),
}
for _ev in ("down", "ack_commit", "nack_commit", "aborted"):
    RUNNING[(_ev, N_READY)] = (_set(N_CRASHED), REHAB, _complete("crashed"))
    RUNNING[(_ev, N_RUNNING)] = (_set(N_CRASHED), REHAB, _complete("crashed"))
    RUNNING[(_ev, TERMINAL)] = (REHAB, _DIED)  # S13 kept: a terminal node going down adds an event
del _ev


@dataclass(frozen=True)
class JobSpec:
    """What a job is, as stored by `POST /jobs` (§10.5, §12.1).

    `requestor` is the user who started the job (the `user` of the SSE
    `start` event); `user` is the run-as user (`job_user` in SSE, `user` in
    `commit`). `quorum` None means "all nodes". `file` is the submitted
    `raw:`/`base64:` string.
    """

    job_id: str
    command: str
    nodes: Sequence[str]
    run_timeout: int
    requestor: str
    quorum: Optional[int] = None
    user: Optional[str] = None
    dir: Optional[str] = None
    env: Optional[Mapping[str, str]] = None
    file: Optional[str] = None
    capture: bool = False

    @property
    def effective_quorum(self) -> int:
        return len(self.nodes) if self.quorum is None else self.quorum

    def commit_fields(self, server_name: str) -> dict[str, Any]:
        """The `commit` body fields of §5.2.3: `capture` always, the options
        only when set."""
        f: dict[str, Any] = {"job_id": self.job_id, "server": server_name, "command": self.command}
        if self.user:
            f["user"] = self.user
        if self.dir:
            f["dir"] = self.dir
        if self.env:
            f["env"] = dict(self.env)
        if self.file:
            f["file"] = self.file
        f["capture"] = bool(self.capture)
        return f

    def start_event(self) -> dict[str, Any]:
        """The SSE `start` data of §11.3 (without `timestamp`/`job`)."""
        d: dict[str, Any] = {
            "command": self.command,
            "run_timeout": self.run_timeout,
            "quorum": self.effective_quorum,
            "node_count": len(self.nodes),
            "user": self.requestor,
        }
        if self.user:
            d["job_user"] = self.user
        if self.dir:
            d["dir"] = self.dir
        if self.env:
            d["env"] = dict(self.env)
        if self.file:
            d["file_specified"] = True
        d["capture"] = bool(self.capture)
        return d


class JobFSM:
    """One job, from `start` to `Finished`.

    Drive it with `start(available, now)` once, then `message` (node messages
    forwarded by the node FSMs), `down` (a watched node FSM terminated),
    `on_timer`, and `abort`. `voting_timeout` is in seconds; `server_name`
    goes into `commit`.
    """

    def __init__(self, spec: JobSpec, *, voting_timeout: float = 60.0, server_name: str = ""):
        if len(set(spec.nodes)) != len(spec.nodes):
            raise ValueError(f"job {spec.job_id}: duplicate node names")
        self.spec = spec
        self.job_id = spec.job_id
        self.voting_timeout = voting_timeout
        self.server_name = server_name
        self.status = NEW
        self._nodes: dict[str, str] = {n: N_NEW for n in spec.nodes}
        self._counts: Counter[str] = Counter({N_NEW: len(self._nodes)} if self._nodes else {})

    # --- queries ------------------------------------------------------------

    @property
    def nodes(self) -> Mapping[str, str]:
        """Job-node statuses in the job's node order (read-only: `_set_node`
        changes them, so that the per-status counts stay right)."""
        return MappingProxyType(self._nodes)

    def count(self, status: str) -> int:
        """How many of the job's nodes have job-node status `status` (O(1))."""
        return self._counts[status]

    @property
    def counts(self) -> dict[str, int]:
        """Job-node status -> number of nodes, without zero entries."""
        return {k: v for k, v in self._counts.items() if v}

    @property
    def finished(self) -> bool:
        return self.status in JOB_TERMINAL

    @property
    def quorum(self) -> int:
        return self.spec.effective_quorum

    # --- events -------------------------------------------------------------

    def start(self, available: Container[str], now: float) -> list[Action]:
        """§9.3: emit `start`, status `voting`, send `commit` to every node
        (even unavailable ones: the shell drops what it cannot route), arm the
        voting timer, then process a `down` for every node not in `available`
        (the names of nodes whose FSM is idle at this instant)."""
        if self.status != NEW:
            return []
        out: list[Action] = [Emit("start", self.spec.start_event())]
        self.status = VOTING_S
        out.append(SetJobStatus(VOTING_S))
        fields = self.spec.commit_fields(self.server_name)
        for n in self._nodes:
            out.append(Send(n, "commit", dict(fields)))
        out.append(ArmTimer(VOTING_TIMER, self.voting_timeout))
        down = [n for n in self._nodes if n not in available]
        for n in down:
            if self.status != VOTING_S:
                break
            out += self._voting_event(n, "down")
        if self.status == VOTING_S:
            out += self._check_votes()
        return out

    def message(self, node: str, type: str, body: Mapping[str, Any], now: float) -> list[Action]:
        """A node message (`ack_commit`, `nack_commit`, `ack_run`, `nack_run`,
        `succeeded`, `failed`, `aborted`) forwarded to this job. Messages from
        nodes outside the job, of other types, or after the job finished are
        ignored."""
        if node not in self._nodes:
            log.info("job %s: %s from %s, which is not in the job: ignored", self.job_id, type, node)
            return []
        if self.status == VOTING_S:
            if (type, N_NEW) not in VOTING:
                return []
            return self._voting_event(node, type, body) + self._check_votes()
        if self.status == RUNNING_S:
            if (type, N_READY) not in RUNNING:
                return []
            return self._running_event(node, type, body) + self._check_done()
        return []

    def down(self, node: str, now: float) -> list[Action]:
        """The node FSM of `node` terminated (offline)."""
        return self.message(node, "down", {}, now)

    def on_timer(self, name: str, now: float) -> list[Action]:
        """The voting timer (§9.4 last row) or the run timer (§9.5); late ones
        are ignored."""
        if name == VOTING_TIMER and self.status == VOTING_S:
            out: list[Action] = []
            for n in [n for n, st in self._nodes.items() if st == N_NEW]:
                out.append(Emit("quorum_vote", {"node": n, "status": "voting_timeout"}))
                out.append(self._set_node(n, N_UNAVAILABLE))
                out.append(Rehab(n, bulk=True))
            return out + self._check_votes()
        if name == RUN_TIMER and self.status == RUNNING_S:
            out = []
            for n in [n for n, st in self._nodes.items() if st in (N_READY, N_RUNNING)]:
                out.append(self._set_node(n, N_TIMED_OUT))
                out.append(Rehab(n, bulk=True))
            return out + self._finish(TIMED_OUT)
        return []

    def abort(self, now: float) -> list[Action]:
        """A user aborts the job (ours; D9): every non-terminal node is sent
        `abort` and becomes `aborted`; the job ends `aborted`. Returns nothing
        once the job has finished."""
        if self.finished:
            return []
        out: list[Action] = []
        for n in [n for n, st in self._nodes.items() if st not in NODE_TERMINAL]:
            if self.status != NEW:  # nothing was sent to the nodes yet
                out.append(Send(n, "abort", {}))
            out.append(self._set_node(n, N_ABORTED))
        return out + self._finish(ABORTED)

    def crash(self, now: float) -> list[Action]:
        """The coordinator hit an unexpected error driving this job (§9.7, the
        "job process died abnormally" case): the job becomes `crashed`, every
        node is reset (bulk rehab), and non-terminal job nodes become
        `crashed` too (the reference left them as they were, S12). No
        `job_complete` event: live SSE streams just end (§11.4). Safe to call
        whatever state an exception left the FSM in."""
        if self.finished:
            return []
        was = self.status
        self.status = CRASHED
        out: list[Action] = [SetJobStatus(CRASHED)]
        if was == VOTING_S:
            out.append(CancelTimer(VOTING_TIMER))
        elif was == RUNNING_S:
            out.append(CancelTimer(RUN_TIMER))
        for n in list(self._nodes):
            if self._nodes[n] not in NODE_TERMINAL:
                out.append(self._set_node(n, N_CRASHED))
            out.append(Rehab(n, bulk=True))
        out.append(Finished(CRASHED))
        return out

    # --- the few lines that apply the tables --------------------------------

    def _set_node(self, node: str, status: str) -> SetNodeStatus:
        """THE place a job-node status changes: the map, the counts, the action."""
        self._counts[self._nodes[node]] -= 1
        self._counts[status] += 1
        self._nodes[node] = status
        return SetNodeStatus(node, status)

    def _column(self, node: str) -> str:
        st = self._nodes[node]
        return TERMINAL if st in NODE_TERMINAL else st

    def _voting_event(self, node: str, event: str, body: Optional[Mapping[str, Any]] = None) -> list[Action]:
        cell = VOTING[(event, self._column(node))]
        return self._run_steps(node, cell, body or {})

    def _running_event(self, node: str, event: str, body: Mapping[str, Any]) -> list[Action]:
        col = self._column(node)
        cell = RUNNING.get((event, col))
        if cell is None:  # a `new` node cannot exist while running
            log.warning("job %s: %s from %s in status %s while running: ignored", self.job_id, event, node, col)
            return []
        return self._run_steps(node, cell, body)

    def _run_steps(self, node: str, cell: Cell, body: Mapping[str, Any]) -> list[Action]:
        out: list[Action] = []
        for step in cell:
            kind = step[0]
            if kind == "set":
                if self._nodes[node] in NODE_TERMINAL:  # §9.2: terminal never changes
                    continue
                out.append(self._set_node(node, step[1]))
            elif kind == "vote":
                out.append(Emit("quorum_vote", {"node": node, "status": step[1]}))
            elif kind == "rehab":
                out.append(Rehab(node))
                out.append(Emit("rehab", {"node": node}))
            elif kind == "run_start":
                out.append(Emit("run_start", {"node": node}))
            elif kind == "complete":
                out.append(Emit("run_complete", {"node": node, "status": step[1]}))
            elif kind == "store":
                stdout, stderr = body.get("stdout"), body.get("stderr")
                if stdout is not None or stderr is not None:
                    out.append(StoreOutput(node, _text(stdout), _text(stderr)))
        return out

    def _check_votes(self) -> list[Action]:
        """After every voting event: decide once no node is `new`."""
        if self.status != VOTING_S or self._counts[N_NEW]:
            return []
        # Reached once per job (the status changes below): one scan is fine.
        ready = [n for n, st in self._nodes.items() if st == N_READY]
        out: list[Action] = []
        if len(ready) >= self.quorum:
            out.append(Emit("quorum_succeeded", {}))
            out.append(CancelTimer(VOTING_TIMER))
            self.status = RUNNING_S
            out.append(SetJobStatus(RUNNING_S))
            for n in ready:
                out.append(Send(n, "run", {"job_id": self.job_id}))
            out.append(ArmTimer(RUN_TIMER, max(0, self.spec.run_timeout)))
            return out + self._check_done()
        for n in ready:
            out.append(self._set_node(n, N_WAS_READY))
            out.append(Rehab(n, bulk=True))
        return out + self._finish(QUORUM_FAILED)

    def _check_done(self) -> list[Action]:
        """After every running event: complete once no node is ready/running."""
        if self.status != RUNNING_S or self._counts[N_READY] or self._counts[N_RUNNING]:
            return []
        return self._finish(COMPLETE)

    def _finish(self, status: str) -> list[Action]:
        """§9.6: `job_complete`, DB status, then the shell lingers."""
        was = self.status
        self.status = status
        out: list[Action] = [Emit("job_complete", {"status": status}), SetJobStatus(status)]
        if was == VOTING_S:
            out.append(CancelTimer(VOTING_TIMER))
        elif was == RUNNING_S:
            out.append(CancelTimer(RUN_TIMER))
        out.append(Finished(status))
        return out


def _text(value: Any) -> Optional[str]:
    """Output fields are strings on the wire; keep None, coerce anything else."""
    if value is None or isinstance(value, str):
        return value
    return str(value)
