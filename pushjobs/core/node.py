"""The server's node state machine: PROTOCOL.md §7 (and §6.3, §6.5).

Rules of this file:

* One `NodeFSM` per `(org, node name)` with a live connection. It is pure:
  every method takes `now` and returns a list of actions
  (`pushjobs.core.actions`); it never touches sockets or the database.
* The transitions are the table `TRANSITIONS`, a copy of §7.3; `_apply` is
  the few lines that run a row. Message routing (§7.2: which message becomes
  which event, what is forwarded to a job) is in `message`.
* Signature/timestamp validation (§4.5) happens in the shell *before* the
  message reaches the FSM (S7: the shell verifies before creating state).
* The FSM cannot know which jobs are live; `message` takes `live_jobs`, any
  container supporting `job_id in live_jobs` (the coordinator's dict of live
  job FSMs), and returns `ForwardToJob` for the jobs found there.

States: `post_init` → `rehab` → `idle` (↔ `rehab`), and `terminated` (the
FSM is gone: the shell drops it; every further call returns nothing).
"""

from __future__ import annotations

import logging
from typing import Any, Container, Mapping, Optional

from pushjobs.core.actions import (
    Action,
    ArmTimer,
    CancelTimer,
    ForwardToJob,
    Rebind,
    Send,
    SetAvailability,
    Terminate,
)
from pushjobs.core.liveness import Liveness

log = logging.getLogger(__name__)

__all__ = [
    "NodeFSM",
    "POST_INIT",
    "REHAB",
    "IDLE",
    "TERMINATED",
    "REHAB_TIMER",
    "CLIENT_MESSAGE_TYPES",
    "TRANSITIONS",
    "normalize_job_id",
]

POST_INIT = "post_init"
REHAB = "rehab"
IDLE = "idle"
TERMINATED = "terminated"

#: name of the node FSM's only timer
REHAB_TIMER = "rehab"

#: the eight client message types of §5.1; anything else is logged and ignored
CLIENT_MESSAGE_TYPES = frozenset(
    ["heartbeat", "ack_commit", "nack_commit", "ack_run", "nack_run", "succeeded", "failed", "aborted"]
)

#: job ids longer than this (bytes) never match a job (§5.1)
MAX_JOB_ID_BYTES = 64

# Steps of a transition row.
SEND_ABORT = "send_abort"  # Send(node, "abort", {})
ARM = "arm_rehab_timer"  # ArmTimer("rehab", rehab_timer); the resend count starts over
ARM_BACKOFF = "arm_rehab_backoff"  # ArmTimer("rehab", rehab_timer x 2^resends, at most x REHAB_BACKOFF_MAX)
CANCEL = "cancel_rehab_timer"  # CancelTimer("rehab")
AVAILABLE = "available"  # SetAvailability(node, True)
UNAVAILABLE = "unavailable"  # SetAvailability(node, False)

#: Deviation from §7.3 (docs/compatibility.md): the reference re-sent `abort`
#: every `rehab_timer` for as long as no `aborted` was processed. On a server
#: that has fallen behind, each resend costs an `aborted` more to process, and
#: 5,000 nodes in rehab on 2 cores sent 399,131 aborts for 136,489 processed
#: `aborted` without recovering (docs/performance.md). Resends now wait
#: rehab_timer x 1, 2, 4, 8, 8, ... A node that answers is unaffected.
REHAB_BACKOFF_MAX = 8

# Events of the table (§7.3): "start" = creation / first message; "aborted" =
# an `aborted` message; "timer" = the rehab timer fired; "rehab" = a rehab
# request (from a job, a heartbeat naming a dead job, a message for an
# unknown job). The "any → down" row is `_terminate`.
#: (state, event) -> (steps, next state). Missing (state, event): ignored.
TRANSITIONS: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    (POST_INIT, "start"): ((SEND_ABORT, ARM), REHAB),
    (REHAB, "aborted"): ((CANCEL, AVAILABLE), IDLE),
    (REHAB, "timer"): ((SEND_ABORT, ARM_BACKOFF), REHAB),
    (REHAB, "rehab"): ((), REHAB),
    (IDLE, "rehab"): ((UNAVAILABLE, SEND_ABORT, ARM), REHAB),
    (IDLE, "aborted"): ((), IDLE),
}


def normalize_job_id(value: Any) -> Optional[str]:
    """The job id a client message names, per §5.1: JSON null or the string
    "null" → None; a non-string or a string over 64 bytes → "" (an invalid id
    that never matches a job, but is still "non-null")."""
    if value is None or value == "null":
        return None
    if not isinstance(value, str) or len(value.encode("utf-8", "surrogatepass")) > MAX_JOB_ID_BYTES:
        return ""
    return value


class NodeFSM:
    """Server view of one connected node.

    `rehab_timer` is in **seconds** (the setting is ms: divide by 1000);
    `interval`, `decay_window`, `down_threshold` configure the liveness
    tracker (§6.3), which is created at the first heartbeat.
    """

    __slots__ = (
        "node",
        "incarnation_id",
        "routing_id",
        "state",
        "rehab_timer",
        "interval",
        "decay_window",
        "down_threshold",
        "liveness",
        "rehab_resends",
    )

    def __init__(
        self,
        node: str,
        incarnation_id: Optional[str],
        routing_id: bytes,
        *,
        rehab_timer: float = 1.0,
        interval: float = 1.0,
        decay_window: float = 4,
        down_threshold: float = 0.6,
    ):
        self.node = node
        self.incarnation_id = incarnation_id
        self.routing_id = routing_id
        self.state = POST_INIT
        self.rehab_timer = rehab_timer
        self.interval = interval
        self.decay_window = decay_window
        self.down_threshold = down_threshold
        self.liveness: Optional[Liveness] = None
        self.rehab_resends = 0  # aborts re-sent since the node entered rehab

    # --- queries ------------------------------------------------------------

    @property
    def available(self) -> bool:
        """`available` iff idle (S9); a job uses the node only if so at its start."""
        return self.state == IDLE

    @property
    def alive(self) -> bool:
        return self.state != TERMINATED

    # --- events -------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Leave `post_init`: send `abort`, arm the rehab timer (§7.3 row 1).
        Called by the shell right after creating the FSM; `message` does it
        implicitly if the shell did not."""
        return self._apply("start")

    def message(
        self,
        body: Mapping[str, Any],
        routing_id: bytes,
        now: float,
        live_jobs: Container[str] = (),
    ) -> list[Action]:
        """A validated client message (its decoded body) arrived on `routing_id`.

        §7.2 in order: a first message first moves `post_init` → `rehab`
        (sending `abort`); a new routing id → `Rebind` + `ack`; then by
        `type`: a `heartbeat` naming a job not in `live_jobs` → rehab, then
        incarnation and liveness (→ `Terminate`); `aborted` → FSM event
        `aborted` and forwarded to its job if that job is live; any other
        recognized type → forwarded to its job if live, else rehab. Unknown or
        missing types are logged and ignored. Non-heartbeat messages are not
        checked against the incarnation (S11 left as the reference).
        """
        if self.state == TERMINATED:
            return []
        actions: list[Action] = []
        if self.state == POST_INIT:
            actions += self._apply("start")
        if routing_id != self.routing_id:
            self.routing_id = routing_id
            actions.append(Rebind(self.node, routing_id))
            actions.append(Send(self.node, "ack", {}))
        mtype = body.get("type")
        if not isinstance(mtype, str) or mtype not in CLIENT_MESSAGE_TYPES:
            log.info("node %s: ignoring message with type %r", self.node, mtype)
            return actions
        job_id = normalize_job_id(body.get("job_id"))
        if mtype == "heartbeat":
            if job_id is not None and job_id not in live_jobs:
                actions += self._apply("rehab")
            if body.get("incarnation_id") != self.incarnation_id:
                log.info(
                    "node %s: heartbeat from incarnation %r, expected %r: terminating",
                    self.node,
                    body.get("incarnation_id"),
                    self.incarnation_id,
                )
                actions += self._terminate("incarnation")
                return actions
            if self.liveness is None:
                self.liveness = Liveness(now, self.interval, self.decay_window, self.down_threshold)
            elif not self.liveness.heartbeat(now):
                log.info("node %s: liveness average %.3f below threshold: dead", self.node, self.liveness.avg)
                actions += self._terminate("dead")
            return actions
        if mtype == "aborted":
            actions += self._apply("aborted")
            if job_id and job_id in live_jobs:
                actions.append(ForwardToJob(job_id, self.node, mtype, dict(body)))
            return actions
        if job_id and job_id in live_jobs:
            actions.append(ForwardToJob(job_id, self.node, mtype, dict(body)))
        else:
            log.info("node %s: %s for job %r which is not live: rehab", self.node, mtype, job_id)
            actions += self._apply("rehab")
        return actions

    def rehab(self, now: float) -> list[Action]:
        """A rehab request (from a job's `Rehab` action)."""
        if self.state == POST_INIT:
            # The FSM is about to abort the node anyway (§7.3 row 1).
            return self._apply("start")
        return self._apply("rehab")

    def on_timer(self, name: str, now: float) -> list[Action]:
        """The shell's timer `name` fired; a late or unknown timer is ignored."""
        if name != REHAB_TIMER:
            return []
        return self._apply("timer")

    def check(self, now: float) -> list[Action]:
        """The offline scanner (every `interval × detect_offline_nodes_interval`):
        `Terminate` if the liveness average has decayed below the threshold.
        A node that never sent a heartbeat has no record yet and is kept, as
        in the reference."""
        if self.state == TERMINATED or self.liveness is None:
            return []
        if self.liveness.check(now):
            return []
        log.info("node %s: liveness average %.3f below threshold at scan: dead", self.node, self.liveness.avg)
        return self._terminate("dead")

    # --- the few lines that apply the table ------------------------------------

    def _apply(self, event: str) -> list[Action]:
        row = TRANSITIONS.get((self.state, event))
        if row is None:
            log.debug("node %s: %s ignored in state %s", self.node, event, self.state)
            return []
        steps, self.state = row
        out: list[Action] = []
        for step in steps:
            if step == SEND_ABORT:
                out.append(Send(self.node, "abort", {}))
            elif step == ARM:
                self.rehab_resends = 0
                out.append(ArmTimer(REHAB_TIMER, self.rehab_timer))
            elif step == ARM_BACKOFF:
                self.rehab_resends += 1
                factor = min(1 << min(self.rehab_resends, 16), REHAB_BACKOFF_MAX)
                out.append(ArmTimer(REHAB_TIMER, self.rehab_timer * factor))
            elif step == CANCEL:
                out.append(CancelTimer(REHAB_TIMER))
            elif step == AVAILABLE:
                out.append(SetAvailability(self.node, True))
            elif step == UNAVAILABLE:
                out.append(SetAvailability(self.node, False))
        return out

    def _terminate(self, reason: str) -> list[Action]:
        """§7.3 "any → heartbeat with other incarnation / liveness dead"."""
        was = self.state
        self.state = TERMINATED
        self.liveness = None
        out: list[Action] = []
        if was == REHAB:
            out.append(CancelTimer(REHAB_TIMER))
        out.append(Terminate(self.node, reason))
        return out
