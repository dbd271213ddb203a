"""A job handler that runs nothing: for simulating many nodes in one process.

The fleet simulator (issue 8) drives hundreds of `NodeSession`s on one loop;
spawning real processes for each would measure the machine, not the server.
`SimulatedJobs` uses the real agent FSM (so the protocol replies are exactly
the agent's) and "runs" a job by arming a loop timer: after `duration`
seconds it reports `succeeded` (or `failed` with `exit_status`), with a short
output when capture was asked. Commands outside `commands` (when given) are
nacked like a whitelist miss.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from pushjobs.core.actions import KillProcess, ReleaseLock, Send, StartProcess
from pushjobs.core.agent import AgentFSM, JobOptions


class SimulatedJobs:
    """JobHandler whose jobs are timers on the session's loop."""

    def __init__(self, node_name: str, *, duration: float | Callable[[str], float] = 0.0,
                 exit_status: int | Callable[[str], int] = 0,
                 commands: Optional[set[str]] = None):
        self.node = node_name
        self.fsm = AgentFSM(node_name)
        self.duration = duration
        self.exit_status = exit_status
        self.commands = commands
        self.session: Any = None
        self._timer: Any = None
        self.completed = 0

    def attach(self, session: Any) -> None:
        self.session = session

    def heartbeat_fields(self) -> dict[str, Any]:
        return self.fsm.heartbeat_fields()

    def handle(self, msg_type: str, body: dict[str, Any], now: float) -> None:
        if msg_type == "commit":
            job_id = body.get("job_id") if isinstance(body.get("job_id"), str) else None
            command = body.get("command") if isinstance(body.get("command"), str) else None
            refusal = None
            options = None
            try:
                options = JobOptions.from_commit(body)
            except ValueError as exc:
                refusal = str(exc)
            if refusal is None and self.commands is not None and command not in self.commands:
                refusal = f"{command!r} is not in the whitelist"
            self._execute(self.fsm.commit(job_id, command, options, now, refusal=refusal))
        elif msg_type == "run":
            job_id = body.get("job_id")
            self._execute(self.fsm.run(job_id if isinstance(job_id, str) else None, now))
        elif msg_type == "abort":
            self._execute(self.fsm.abort(now))

    def _value(self, v: Any, command: str) -> Any:
        return v(command) if callable(v) else v

    def _execute(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.session.send(action.type, dict(action.fields))
            elif isinstance(action, StartProcess):
                job_id, command = action.job_id, action.command
                delay = float(self._value(self.duration, command))
                self._timer = self.session.loop.call_later(delay, lambda: self._finish(job_id, command))
            elif isinstance(action, KillProcess):
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            elif isinstance(action, ReleaseLock):
                pass

    def _finish(self, job_id: str, command: str) -> None:
        self._timer = None
        status = int(self._value(self.exit_status, command))
        self.completed += 1
        out = f"simulated {command}\n"
        self._execute(self.fsm.process_exited(job_id, status, out, "", self.session.loop.clock()))
