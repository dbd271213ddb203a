"""Pure state machines: (event, now) -> actions. No zmq, flask, peewee or gevent.

* `liveness.Liveness` — the server's decaying heartbeat average (§6.3).
* `node.NodeFSM` — the server's view of one node (§7).
* `job.JobFSM` / `job.JobSpec` — one job, voting → running → finished (§9).
* `agent.AgentFSM` — the node agent's job runner (§8).
* `actions` — what they return; the shells carry the actions out in order.
"""

from pushjobs.core.actions import *  # noqa: F401,F403
from pushjobs.core.actions import __all__ as _actions_all
from pushjobs.core.agent import AgentFSM, JobOptions
from pushjobs.core.job import JobFSM, JobSpec
from pushjobs.core.liveness import Liveness
from pushjobs.core.node import NodeFSM

__all__ = [*_actions_all, "AgentFSM", "JobOptions", "JobFSM", "JobSpec", "Liveness", "NodeFSM"]
