"""Shared pieces of the pedant end-to-end ports (end_to_end, sse, filedir).

The original oc-pushy-pedant suite ran in-process Ruby PushyClient instances
against a production-timed server (10 s heartbeats, 60 s voting). These ports
run the real `push-jobs-server` and real `push-jobs-client` processes with
test timings (200 ms heartbeats, short voting/linger/keepalive settings), and
FakeNode (tests/helpers/fakenode.py) where a spec monkey-patches a client's
protocol behaviour (a silent commit, a nack_run, a stray message).

The original's whitelist, mapped to our whitelist format (docs/agent.md):
Ruby one-liners become shell lines with the same exit status / effect, and
`/tmp/pushytest` becomes `pushytest` in a per-module directory (`PedantEnv.dir`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from tests.helpers.fakenode import FakeNode
from tests.helpers.server import ServerProcess, SignedClient, wait_for

ORG = "pedant"
ADMIN = "pedant_admin"

#: Server settings: the original's 60 s voting and 5 s linger become test-sized.
SERVER_SETTINGS: dict[str, Any] = {
    "voting_timeout": 3,        # > down detection (~1 s at 200 ms heartbeats), so the two differ
    "rehab_timer": 200,
    "wait_complete_time": 4,    # a finished job's full feed, then its summary
    "keep_alive_time": 1,
    "org_feed_expiration": 60,
}
#: Agent settings: the filedir spec's 2-second expiration (harmless elsewhere: only
#: job files older than that are swept, and jobs with files end within a second).
AGENT_SETTINGS: dict[str, Any] = {"file_dir_expiry": 2}
HEARTBEAT_MS = 200

TERMINAL = ("complete", "quorum_failed", "timed_out", "aborted", "crashed")

ECHO_YAHOO_SCRIPT = """\
echo $$ > "{dir}/pid-$CHEF_PUSH_JOB_ID-$CHEF_PUSH_NODE_NAME"
if [ -n "$1" ]; then sleep "$1"; fi
echo YAHOO >> "{dir}/pushytest"
"""

#: The original's end_to_end command that fails on DONKEY only.
DONKEY_FAILS = "ruby -e \"ENV['PUSHY_NODE_NAME'] == 'DONKEY' ? exit(1) : exit(0)\""
RUBY_EXIT_1 = 'ruby -e "exit 1"'
NON_ASCII = "echo '\u0110ONKEY'"


def whitelist_for(node: str, d: Path) -> dict[str, Any]:
    """The pedant clients' whitelist, in our format; `d` is the module's shared directory."""
    script = d / "echo_yahoo_to_tmp_pushytest"
    echo_yahoo = f"sh {script}"
    wl: dict[str, Any] = {
        echo_yahoo: echo_yahoo,
        "re:^" + re.escape(echo_yahoo) + r" ([0-9]+)$": echo_yahoo + r" \1",
        "chef-client": {"command_line": "echo true", "lock": True},
        DONKEY_FAILS: '[ "$CHEF_PUSH_NODE_NAME" != DONKEY ] && [ "$PUSHY_NODE_NAME" != DONKEY ]',
        RUBY_EXIT_1: "false",
        "sleep 1": "sleep 1",
        "sleep 2": "sleep 2",
        "sleep 5": "sleep 5",
        "sleep 10": "sleep 10",
        "this_oughta_succeed": "true",
        # the original's ruby one-liner took a moment to start: both nodes' run_start come
        # before either run_complete in the SSE spec's two-node traces
        "this_oughta_fail": "sleep 0.5; exit 1",
        # uid, euid, cwd and environment to $OUT (the original's 'ruby-opts'); the job
        # file is copied while the job runs (ours removes it when the job ends).
        "ruby-opts": (f'o="${{OUT:-{d}/ruby-opts-$CHEF_PUSH_NODE_NAME}}"; '
                      '{ id -ru; id -u; pwd; env; } > "$o.tmp"; '
                      'if [ -n "$CHEF_PUSH_JOB_FILE" ]; then cp "$CHEF_PUSH_JOB_FILE" "$o.file"; fi; '
                      'mv "$o.tmp" "$o"'),
        # the SSE spec patches DONKEY's runner to fail / to refuse the commit;
        # with real agents the same job behaves differently on DONKEY
        "fail-on-donkey": 'sleep 1; [ "$CHEF_PUSH_NODE_NAME" != DONKEY ]',
        NON_ASCII: NON_ASCII,
    }
    if node != "DONKEY":
        wl["not-on-donkey"] = "sleep 1"
    return wl


def echo_yahoo(env: "PedantEnv") -> str:
    return f"sh {env.dir / 'echo_yahoo_to_tmp_pushytest'}"


@dataclass
class PedantEnv:
    """One module's server, admin client, shared directory, real agents and spare clients."""

    server: ServerProcess
    http: SignedClient
    dir: Path
    agent_factory: Any
    agents: dict = field(default_factory=dict)
    principals: dict = field(default_factory=dict)
    fakes: list = field(default_factory=list)

    # --- files -------------------------------------------------------------
    @property
    def pushytest(self) -> Path:
        return self.dir / "pushytest"

    def clear_pushytest(self) -> None:
        if self.pushytest.exists():
            self.pushytest.unlink()

    def yahoo_count(self) -> int:
        return self.pushytest.read_text().count("YAHOO\n") if self.pushytest.exists() else 0

    def job_pid(self, jid: str, node: str) -> int:
        p = self.dir / f"pid-{jid}-{node}"
        wait_for(lambda: p.exists() and p.read_text().strip(), timeout=10, message=f"pid file {p}")
        return int(p.read_text().strip())

    # --- agents ------------------------------------------------------------
    def start_agent(self, name: str, **settings: Any) -> Any:
        """Start (or restart) the real agent `name` and wait until the server says available."""
        return self.ensure_agents(name, settings=settings)[0]

    def ensure_agents(self, *names: str, settings: Optional[dict] = None) -> list:
        """The named agents running and available: stopped ones are (re)started together,
        then waited for (agent start-up is the slow part of these tests)."""
        waits = []
        for n in names:
            agent = self.agents.get(n)
            if agent is None:
                principal = self.principals.get(n) or self.server.create_client(n, ORG)
                self.principals[n] = principal
                agent = self.agent_factory(self.server, ORG, n, whitelist=whitelist_for(n, self.dir),
                                           settings={**AGENT_SETTINGS, **(settings or {})},
                                           principal=principal, wait=False)
                self.agents[n] = agent
                waits.append((agent, 0))
            elif not agent.running:
                before = agent.connect_count()
                agent.start(wait=False)
                waits.append((agent, before))
        for agent, before in waits:
            agent.wait_connected(after=before)
        out = [self.agents[n] for n in names]
        for a in out:
            a.wait_available(self.http)
        return out

    def fake(self, name: str, *, wait: bool = True, **script: Any) -> FakeNode:
        """A started FakeNode for client `name` (created once), scripted by `script`."""
        principal = self.principals.get(name)
        if principal is None:
            principal = self.principals[name] = self.server.create_client(name, ORG)
        node = FakeNode(self.server, principal)
        for k, v in script.items():
            setattr(node, k, v)
        node.start()
        self.fakes.append(node)
        if wait:
            node.wait_idle_on_server(self.http, 15)
        return node

    def stop_fakes(self) -> None:
        for f in self.fakes:
            f.stop()
        self.fakes.clear()

    # --- REST ----------------------------------------------------------------
    def node_state(self, name: str) -> dict:
        r = self.http.get(f"node_states/{name}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_node_status(self, status: str, *names: str, timeout: float = 15.0) -> None:
        wait_for(lambda: all(self.node_state(n)["status"] == status for n in names), timeout=timeout,
                 message=f"{names} {status}")

    def node_fsm_count(self) -> int:
        return self.server.status()["node_fsm_count"]

    def start_job(self, command: str, nodes: list[str], **options: Any) -> str:
        return self.http.create_job(command, nodes, **options)

    def get_job(self, jid: str) -> dict:
        """GET the job without its volatile fields, node lists sorted (the pedant's get_job)."""
        job = self.http.job(jid)
        for k in ("id", "created_at", "updated_at"):
            job.pop(k, None)
        job["nodes"] = {k: sorted(v) for k, v in job["nodes"].items()}
        return job

    def wait_job(self, jid: str, statuses: Iterable[str] = TERMINAL, timeout: float = 30.0) -> dict:
        statuses = tuple(statuses)
        wait_for(lambda: self.http.job(jid)["status"] in statuses, timeout=timeout,
                 message=f"job {jid} in {statuses}")
        return self.get_job(jid)

    def job_should_complete(self, jid: str, command: str, nodes: list[str],
                            run_timeout: int = 3600) -> None:
        assert self.wait_job(jid) == {"command": command, "run_timeout": run_timeout,
                                      "nodes": {"succeeded": sorted(nodes)}, "status": "complete"}


def make_env(server_factory: Any, agent_factory: Any, *, settings: Optional[dict] = None) -> PedantEnv:
    srv = server_factory(heartbeat_interval=HEARTBEAT_MS, settings={**SERVER_SETTINGS, **(settings or {})})
    srv.create_org(ORG)
    admin = srv.create_user(ADMIN, org=ORG, admin=True)
    d = Path(tempfile.mkdtemp(prefix="pushjobs-pedant-"))
    os.chmod(d, 0o755)
    (d / "echo_yahoo_to_tmp_pushytest").write_text(ECHO_YAHOO_SCRIPT.format(dir=d))
    return PedantEnv(srv, srv.client(admin), d, agent_factory)


_SHARED: dict[str, PedantEnv] = {}


def shared_env(request: Any) -> PedantEnv:
    """The one server + agents shared by the pedant modules (server and agent start-up
    dominate their run time on a loaded machine); stopped at the end of the session."""
    env = _SHARED.get("env")
    if env is not None and env.server.running:
        return env
    from tests.helpers.agents import AgentFactory
    from tests.helpers.server import ServerFactory

    tmp = request.getfixturevalue("tmp_path_factory")
    servers = ServerFactory(tmp.mktemp("pedant-servers"))
    agents = AgentFactory(tmp.mktemp("pedant-agents"))
    env = make_env(servers, agents)
    _SHARED["env"] = env

    def cleanup() -> None:
        _SHARED.pop("env", None)
        agents.close()
        servers.close()
        close_env(env)
    request.config.add_cleanup(cleanup)
    return env


def close_env(env: PedantEnv) -> None:
    env.stop_fakes()
    shutil.rmtree(env.dir, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


# --- SSE ----------------------------------------------------------------------------


@dataclass
class Event:
    name: str
    id: str
    json: dict


def parse_stream(text: str) -> list[Event]:
    """Parse a (finite) SSE body: events split on blank lines, the last one possibly unterminated."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            k, _, v = line.partition(":")
            fields.setdefault(k, []).append(v[1:] if v.startswith(" ") else v)
        if "event" in fields:
            events.append(Event(fields["event"][0], fields.get("id", [""])[0],
                                json.loads("\n".join(fields.get("data", ["{}"])))))
    return events


def sse_time(ts: str) -> _dt.datetime:
    return _dt.datetime.strptime(ts, "%Y-%m-%d %H:%M:%S.%fZ")


def validate_events(n: int, evs: list) -> None:
    """The pedant's validate_events: >= n events, unique ids, unique strictly increasing timestamps."""
    assert len(evs) >= n, [e.name for e in evs]
    ids = [e.id for e in evs]
    assert len(set(ids)) == len(ids), ids
    ts = [sse_time(e.json["timestamp"]) for e in evs]
    assert all(a < b for a, b in zip(ts, ts[1:])), ts


def job_feed(env: PedantEnv, jid: str, **headers: str) -> list[Event]:
    r = env.http.get(f"job_status_feed/{jid}", headers={"Accept": "text/event-stream", **headers})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/event-stream")
    # S2 (PROTOCOL.md §17.2): every event ends with a blank line, the last one too
    assert r.text.endswith("\n\n"), repr(r.text[-80:])
    return parse_stream(r.text)


def expect_start(e: Event, command: str, run_timeout: int, quorum: int, node_count: int,
                 user: str = ADMIN, job: Optional[str] = None) -> None:
    assert e.name == "start", e
    assert (e.json["command"], e.json["run_timeout"], e.json["quorum"], e.json["node_count"],
            e.json["user"]) == (command, run_timeout, quorum, node_count, user), e.json
    if job is not None:
        assert e.json["job"] == job


def expect_node_event(e: Event, name: str, node: Any = None, status: Optional[str] = None) -> str:
    assert e.name == name, (e.name, name, e.json)
    if status is not None:
        assert e.json["status"] == status, e.json
    if node is not None:
        assert e.json["node"] == node, e.json
    return e.json["node"]


def expect_job_complete(e: Event, status: str, job: Optional[str] = None) -> None:
    assert e.name == "job_complete" and e.json["status"] == status, e
    if job is not None:
        assert e.json["job"] == job


def brief(evs: list) -> list[str]:
    return [e.name + (f":{e.json['status']}" if "status" in e.json else "") for e in evs]


