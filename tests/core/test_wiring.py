"""The three FSMs wired together by a toy in-memory shell: an executable
example of how the server and agent shells are meant to carry out actions
(and a check that the seams fit). No I/O: messages are dicts passed by hand."""

from __future__ import annotations

import heapq

from pushjobs.core.actions import (
    ArmTimer,
    CancelTimer,
    Emit,
    Finished,
    ForwardToJob,
    KillProcess,
    Rebind,
    Rehab,
    ReleaseLock,
    Send,
    SetAvailability,
    SetJobStatus,
    SetNodeStatus,
    StartProcess,
    StoreOutput,
    Terminate,
)
from pushjobs.core.agent import AgentFSM, JobOptions
from pushjobs.core.job import JobFSM, JobSpec
from pushjobs.core.node import NodeFSM

JOB = "f" * 32


class World:
    def __init__(self, names, exit_status=0):
        self.now = 0.0
        self.timers: list = []  # (when, seq, owner, name)
        self.armed: dict = {}
        self.seq = 0
        self.nodes: dict[str, NodeFSM] = {}
        self.agents = {n: AgentFSM(n) for n in names}
        self.jobs: dict[str, JobFSM] = {}
        self.events: list[tuple[str, dict]] = []
        self.db: dict = {"job": None, "nodes": {}, "output": {}}
        self.processes: dict[str, str] = {}  # node -> job id
        self.exit_status = exit_status
        self.finished = None
        self.online = set(names)

    # --- agent side -----------------------------------------------------------
    def agent_send(self, node, fields_type, fields):
        if node not in self.online:
            return
        body = {"node": node, "org": "acme", "type": fields_type, "incarnation_id": "inc-" + node, **fields}
        fsm = self.nodes.get(node)
        if fsm is None:
            fsm = self.nodes[node] = NodeFSM(node, "inc-" + node, node.encode(), rehab_timer=1.0, interval=1.0)
        self.server(fsm.message(body, node.encode(), self.now, live_jobs=self.jobs), owner=("node", node))

    def agent(self, node, actions):
        for a in actions:
            if isinstance(a, Send):
                self.agent_send(a.node, a.type, a.fields)
            elif isinstance(a, StartProcess):
                self.processes[node] = a.job_id
            elif isinstance(a, KillProcess):
                self.processes.pop(node, None)
            elif isinstance(a, ReleaseLock):
                pass
            else:  # pragma: no cover
                raise AssertionError(a)

    def deliver_to_agent(self, node, type_, fields):
        if node not in self.online:
            return
        ag = self.agents[node]
        if type_ == "abort":
            self.agent(node, ag.abort(self.now))
        elif type_ == "commit":
            opts = JobOptions.from_commit(fields)
            self.agent(node, ag.commit(fields["job_id"], fields["command"], opts, self.now))
        elif type_ == "run":
            self.agent(node, ag.run(fields["job_id"], self.now))

    # --- server side ------------------------------------------------------------
    def server(self, actions, owner):
        for a in actions:
            if isinstance(a, Send):
                if a.node in self.nodes:  # undeliverable without a node FSM
                    self.deliver_to_agent(a.node, a.type, a.fields)
            elif isinstance(a, Emit):
                self.events.append((a.name, a.data))
            elif isinstance(a, ArmTimer):
                self.seq += 1
                self.armed[(owner, a.name)] = self.seq
                heapq.heappush(self.timers, (self.now + a.delay, self.seq, owner, a.name))
            elif isinstance(a, CancelTimer):
                self.armed.pop((owner, a.name), None)
            elif isinstance(a, SetJobStatus):
                self.db["job"] = a.status
            elif isinstance(a, SetNodeStatus):
                self.db["nodes"][a.node] = a.status
            elif isinstance(a, StoreOutput):
                self.db["output"][a.node] = (a.stdout, a.stderr)
            elif isinstance(a, Rehab):
                if a.node in self.nodes:
                    self.server(self.nodes[a.node].rehab(self.now), owner=("node", a.node))
            elif isinstance(a, Finished):
                self.finished = a.status
            elif isinstance(a, (SetAvailability, Rebind)):
                pass
            elif isinstance(a, ForwardToJob):
                job = self.jobs.get(a.job_id)
                if job is not None:
                    self.server(job.message(a.node, a.type, a.body, self.now), owner=("job", a.job_id))
            elif isinstance(a, Terminate):
                del self.nodes[a.node]
                for jid, job in list(self.jobs.items()):
                    self.server(job.down(a.node, self.now), owner=("job", jid))
            else:  # pragma: no cover
                raise AssertionError(a)

    def fire_timers(self, until):
        while self.timers and self.timers[0][0] <= until:
            when, seq, owner, name = heapq.heappop(self.timers)
            if self.armed.get((owner, name)) != seq:
                continue
            del self.armed[(owner, name)]
            self.now = when
            kind, key = owner
            fsm = self.nodes.get(key) if kind == "node" else self.jobs.get(key)
            if fsm is not None:
                self.server(fsm.on_timer(name, self.now), owner)
        self.now = until

    def exit_processes(self):
        for node, job_id in list(self.processes.items()):
            del self.processes[node]
            status = self.exit_status
            self.agent(node, self.agents[node].process_exited(job_id, status, f"hello from {node}\n", "", self.now))


def connect(world):
    for n in world.agents:  # the agent speaks first: a heartbeat creates the node FSM
        world.agent_send(n, "heartbeat", world.agents[n].heartbeat_fields())
    assert all(f.available for f in world.nodes.values())


def test_happy_path_through_all_three_machines():
    w = World(["a", "b"])
    connect(w)
    job = w.jobs[JOB] = JobFSM(JobSpec(JOB, "chef-client", ("a", "b"), 300, "admin", capture=True))
    w.server(job.start({n for n, f in w.nodes.items() if f.available}, w.now), owner=("job", JOB))
    assert sorted(w.processes) == ["a", "b"]
    w.exit_processes()
    assert w.finished == "complete"
    assert [e for e, _ in w.events] == [
        "start",
        "quorum_vote",
        "quorum_vote",
        "quorum_succeeded",
        "run_start",
        "run_start",
        "run_complete",
        "run_complete",
        "job_complete",
    ]
    assert w.db == {
        "job": "complete",
        "nodes": {"a": "succeeded", "b": "succeeded"},
        "output": {"a": ("hello from a\n", ""), "b": ("hello from b\n", "")},
    }
    assert all(ag.state == "idle" for ag in w.agents.values())


def test_offline_node_and_abort_path():
    w = World(["a", "b"])
    connect(w)
    w.online.discard("b")
    job = w.jobs[JOB] = JobFSM(JobSpec(JOB, "chef-client", ("a", "b"), 300, "admin", quorum=1))
    w.server(job.start({"a", "b"}, w.now), owner=("job", JOB))
    assert job.status == "voting"  # b never answers
    w.fire_timers(60.0)
    assert job.status == "running" and w.processes == {"a": JOB}
    w.server(job.abort(w.now), owner=("job", JOB))
    assert w.finished == "aborted" and w.processes == {}
    assert w.db["nodes"] == {"a": "aborted", "b": "unavailable"}
    assert w.agents["a"].state == "idle"


def test_node_going_silent_is_reported_down_to_its_running_job():
    w = World(["a"])
    connect(w)
    job = w.jobs[JOB] = JobFSM(JobSpec(JOB, "sleep", ("a",), 300, "admin"))
    w.server(job.start({"a"}, w.now), owner=("job", JOB))
    assert job.nodes == {"a": "running"}
    w.online.discard("a")
    w.now = 10.0  # 10 silent 1-s intervals, then the scanner runs
    w.server(w.nodes["a"].check(w.now), owner=("node", "a"))
    assert "a" not in w.nodes
    assert w.finished == "complete" and job.nodes == {"a": "crashed"}
    assert [e for e, _ in w.events][-3:] == ["rehab", "run_complete", "job_complete"]
