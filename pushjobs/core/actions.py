"""The actions every state machine of `pushjobs.core` returns.

Rules of this file:

* An action is a small frozen dataclass that says *what* must happen, never
  *how*. The shells (server broker / job coordinator, node agent) carry the
  actions out **in list order**; the order is meaningful (SSE event order,
  "send then arm the timer", ...).
* No action carries a clock reading: the shell stamps what needs a time
  (message `timestamp`, SSE `timestamp`, `updated_at`).
* `fields` / `data` mappings are plain dicts owned by the action; the shell
  may serialize them but must not mutate them.

Who produces what:

=================  ====================  =====================================
Action             Produced by           The shell ...
=================  ====================  =====================================
Send               node, job, agent      adds sequence/timestamp (and, on the
                                         agent, node/org/client/incarnation),
                                         signs, sends. Undeliverable (no node
                                         FSM / no route) is silently dropped.
Emit               job                   stamps `timestamp` first, appends to
                                         the job feed (id job-N); `start` and
                                         `job_complete` also go to the org
                                         feed with `job` added.
ArmTimer           node, job             (re)arms the FSM's named timer; a
                                         re-arm replaces the previous one.
CancelTimer        node, job             cancels it (no-op if not armed).
SetJobStatus       job                   writes Job.status (+ updated_at).
SetNodeStatus      job                   writes JobNode.status of the node.
StoreOutput        job                   inserts the node's output row.
Rehab              job                   calls `rehab(now)` on the node FSM
                                         of `node` (no-op if none). Never
                                         emits SSE: the job FSM returns the
                                         `rehab` Emit itself where §9 says.
Finished           job                   closes live SSE streams, lingers
                                         `wait_complete_time`, then drops the
                                         job (ignoring its further events).
SetAvailability    node                  updates the node registry's view
                                         (`available` iff idle, S9).
Rebind             node                  re-registers the FSM under the new
                                         routing id (before the `ack` Send).
ForwardToJob       node                  delivers the message to the live job
                                         FSM (`job.message(...)`).
Terminate          node                  drops the node FSM and its routing
                                         entry; calls `down(node, now)` on
                                         every live job watching the node.
StartProcess       agent                 spawns the job's command (§12.2).
KillProcess        agent                 kills the job's process group.
ReleaseLock        agent                 releases the whitelist lock taken
                                         for `job_id` (if any; idempotent).
=================  ====================  =====================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

__all__ = [
    "Action",
    "ArmTimer",
    "CancelTimer",
    "Emit",
    "Finished",
    "ForwardToJob",
    "KillProcess",
    "Rebind",
    "Rehab",
    "ReleaseLock",
    "Send",
    "SetAvailability",
    "SetJobStatus",
    "SetNodeStatus",
    "StartProcess",
    "StoreOutput",
    "Terminate",
]


# --- messages, events, timers (every FSM) ------------------------------------


@dataclass(frozen=True)
class Send:
    """Send a protocol message of `type` with the body `fields`.

    Server side (node and job FSMs): `node` is the destination node name
    within the FSM's org; `fields` holds only the type-specific body fields
    (`job_id`, `command`, ...); the shell adds `type`, `sequence` and
    `timestamp`, signs with the node's session key and routes it.

    Agent side: `node` is this agent's own node name (the sender: the
    destination is always the server); the shell adds the common client fields
    (`node`, `org`, `client`, `protocol_version`, `incarnation_id`,
    `sequence`, `timestamp`). `fields` always holds `job_id` (possibly None,
    sent as JSON null) and, for `succeeded`/`failed` with capture, `stdout`
    and `stderr`.
    """

    node: str
    type: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Emit:
    """Append the SSE event `name` with `data` to the job's feed.

    `data` holds the event-specific fields of PROTOCOL.md §11.3 in wire order,
    without `timestamp` (the shell puts it first) and without `job` (the shell
    adds it for the org feed).
    """

    name: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ArmTimer:
    """Arm (or re-arm, replacing) the FSM's timer `name` to fire after `delay`
    seconds; the shell then calls `fsm.on_timer(name, now)`. A delay of 0
    means "as soon as possible, after the current actions are carried out".
    Timer names are scoped to one FSM instance."""

    name: str
    delay: float


@dataclass(frozen=True)
class CancelTimer:
    """Cancel the FSM's timer `name`; harmless if it is not armed. FSMs also
    ignore late firings, so a cancel that races with a firing is safe."""

    name: str


# --- persistence (job FSM) ---------------------------------------------------


@dataclass(frozen=True)
class SetJobStatus:
    """Persist the job's status (`voting`, `running`, or a terminal one);
    the shell bumps `updated_at`, which changes only with the job status."""

    status: str


@dataclass(frozen=True)
class SetNodeStatus:
    """Persist the job-node status of `node` (§9.2 names: `ready`,
    `running`, `succeeded`, `failed`, `aborted`, `unavailable`, `nacked`,
    `was_ready`, `crashed`, `timed_out`)."""

    node: str
    status: str


@dataclass(frozen=True)
class StoreOutput:
    """Store a node's captured output (§14). Produced on every `succeeded` /
    `failed` in the running phase that carries at least one of the two
    fields, whatever the node's job status; a missing field is None (the
    shell may store it as empty). A second output for the same node is the
    shell's to refuse (unique row)."""

    node: str
    stdout: Optional[str]
    stderr: Optional[str]


# --- job ↔ node FSM coupling -------------------------------------------------


@dataclass(frozen=True)
class Rehab:
    """Ask the node FSM of `node` to reset the node (`NodeFSM.rehab`): it
    sends `abort` if idle and waits for `aborted`. A no-op when the node has
    no FSM (offline).

    `bulk` is informational (logs, metrics): True for the reset requests of
    the voting timeout, of a failed quorum (`was_ready`) and of the run
    timeout, which emit no SSE `rehab` event (S15). The shell never emits SSE
    for this action; where §9 wants a `rehab` event the job FSM returns
    `Emit("rehab", {"node": ...})` right after it.
    """

    node: str
    bulk: bool = False


@dataclass(frozen=True)
class Finished:
    """The job reached the terminal `status` (`complete`, `quorum_failed`,
    `timed_out`, `aborted`, or `crashed`). Always preceded by the
    SetJobStatus, and (except for `crashed`, §11.4) by the `job_complete`
    Emit. The shell ends live SSE streams, keeps the job readable for
    `wait_complete_time` seconds (the FSM ignores all further input), then
    forgets it."""

    status: str


# --- node FSM ---------------------------------------------------------------


@dataclass(frozen=True)
class SetAvailability:
    """The node became available (idle) or unavailable (rehab). A new FSM
    starts unavailable; a terminated FSM is offline and unavailable without
    a separate action."""

    node: str
    available: bool


@dataclass(frozen=True)
class Rebind:
    """The node's messages now arrive from `routing_id` (a new connection):
    re-register the FSM under it; later Sends to the node use it."""

    node: str
    routing_id: bytes


@dataclass(frozen=True)
class ForwardToJob:
    """Deliver a node message to the live job `job_id`:
    `job.message(node, type, body, now)`. Only produced for jobs the shell
    said exist (see `NodeFSM.message`); if the job vanished in between, the
    shell drops it."""

    job_id: str
    node: str
    type: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Terminate:
    """The node FSM is gone (`reason`: `incarnation` — a heartbeat from a
    different client incarnation, or `dead` — liveness). The shell removes it
    and notifies the watching jobs with `down`. The node becomes offline; its
    next message creates a fresh FSM."""

    node: str
    reason: str


# --- agent FSM --------------------------------------------------------------


@dataclass(frozen=True)
class StartProcess:
    """Spawn the job's command in its own process group (§12.2): resolve
    `command` through the whitelist, apply `options` (an
    `pushjobs.core.agent.JobOptions`: user, dir, env, file, capture). When
    the process exits, the shell calls `process_exited(job_id, ...)`; if
    spawning or waiting raises, `process_error(job_id, ...)`."""

    job_id: str
    command: str
    options: Any  # pushjobs.core.agent.JobOptions (Any: avoids an import cycle)


@dataclass(frozen=True)
class KillProcess:
    """Terminate the process group of `job_id` (C6: the reference only
    detached). The shell must not report its exit afterwards; if it does,
    the FSM ignores it."""

    job_id: str


@dataclass(frozen=True)
class ReleaseLock:
    """Release the whitelist lock the shell took while checking the commit
    of `job_id` (C1). Produced exactly once per lock, when the job leaves
    `committed` (to `running`: the command, e.g. chef-client, needs the lock
    itself; or to `idle` on abort), or right away when a lock-holding commit
    is refused."""

    job_id: str


Action = Union[
    Send,
    Emit,
    ArmTimer,
    CancelTimer,
    SetJobStatus,
    SetNodeStatus,
    StoreOutput,
    Rehab,
    Finished,
    SetAvailability,
    Rebind,
    ForwardToJob,
    Terminate,
    StartProcess,
    KillProcess,
    ReleaseLock,
]
