"""The CLI's verbs: what each one asks the server and prints.

Layouts follow knife-push 2.x (USERLAND.md §3) in the `text` format; in
`json`/`yaml` the document goes to stdout and progress lines to stderr, so
that a script can parse stdout.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TextIO

from pushjobs.cli.client import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_SERVER_ERROR,
    EXIT_USAGE,
    ApiClient,
    CliError,
    quote_segment,
)
from pushjobs.cli.config import ConfigError, resolve
from pushjobs.cli.output import render
from pushjobs.cli.sse import Event, SSEParser

TERMINAL_JOB = ("complete", "quorum_failed", "timed_out", "aborted", "crashed")
SEARCH_PAGE = 1000
FEED_RETRIES = 3
MAX_FILE_BYTES = 100_000
QUORUM_RE = re.compile(r"^(\d+)(%?)$")
SETTLE_TIMEOUT = 10.0
RECONNECT_TIMEOUT = 30.0
EXIT_INTERRUPTED = 130


def run(args: argparse.Namespace, fmt: str) -> int:
    flags = {
        "server_url": getattr(args, "server_url", None),
        "user": getattr(args, "user", None),
        "key": getattr(args, "key", None),
        "ca_file": getattr(args, "ca_file", None),
        "insecure": True if getattr(args, "insecure", False) else None,
        "config": getattr(args, "config", None),
    }
    # validate local input before touching the network or the key
    prepared = _prepare_start(args) if (args.noun, args.verb) == ("job", "start") else None
    try:
        config = resolve(flags)
    except ConfigError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    api = ApiClient(config)
    out = Output(fmt)
    if prepared is not None:
        return job_start(api, args, out, prepared)
    handler: Callable[[ApiClient, argparse.Namespace, Output], int] = {
        ("job", "list"): job_list,
        ("job", "status"): job_status,
        ("job", "output"): job_output,
        ("job", "abort"): job_abort,
        ("job", "watch"): job_watch,
        ("node", "status"): node_status,
    }[(args.noun, args.verb)]
    return handler(api, args, out)


@dataclass
class Output:
    """Where documents and progress go for a format."""

    fmt: str
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def progress_stream(self) -> TextIO:
        return self.stdout if self.fmt == "text" else self.stderr

    def doc(self, data: Any) -> None:
        self.stdout.write(render(data, self.fmt))
        self.stdout.flush()

    def line(self, text: str) -> None:
        s = self.progress_stream
        s.write(text + "\n")
        s.flush()


# --- job list / status / output / abort ---------------------------------------


def job_list(api: ApiClient, args: argparse.Namespace, out: Output) -> int:
    out.doc(api.get_json("pushy/jobs"))
    return EXIT_OK


def _get_job(api: ApiClient, job_id: str) -> dict:
    try:
        job = api.get_json(f"pushy/jobs/{quote_segment(job_id)}")
    except CliError as e:
        if e.status == 404:
            raise CliError(f"unknown job {job_id} ({e.message})", EXIT_SERVER_ERROR, 404) from None
        raise
    if not isinstance(job, dict):
        raise CliError(f"unexpected answer for job {job_id}", EXIT_SERVER_ERROR)
    return job


def job_status(api: ApiClient, args: argparse.Namespace, out: Output) -> int:
    out.doc(_get_job(api, args.job_id))
    return EXIT_OK


def job_output(api: ApiClient, args: argparse.Namespace, out: Output) -> int:
    rel = f"pushy/jobs/{quote_segment(args.job_id)}/output/{quote_segment(args.node)}/{args.channel}"
    try:
        resp = api.request("GET", rel, accept="application/octet-stream")
    except CliError as e:
        if e.status == 404:
            raise CliError(
                f"no {args.channel} captured for node {args.node} in job {args.job_id} "
                "(unknown job or node, job started without --capture, or node not finished)",
                EXIT_SERVER_ERROR, 404,
            ) from None
        raise
    if out.fmt == "text":
        sys.stdout.flush()
        sys.stdout.buffer.write(resp.content)
        sys.stdout.buffer.flush()
    else:
        out.doc({"job_id": args.job_id, "node": args.node, "channel": args.channel,
                 "output": resp.content.decode("utf-8", errors="replace")})
    return EXIT_OK


def job_abort(api: ApiClient, args: argparse.Namespace, out: Output) -> int:
    _get_job(api, args.job_id)  # a clear "unknown job" first
    try:
        api.request("POST", f"pushy/jobs/{quote_segment(args.job_id)}/abort", json_body={},
                    ok=(200, 201, 202, 204))
    except CliError as e:
        if e.status == 409:
            raise CliError(f"job {args.job_id} cannot be aborted: it has already finished", EXIT_SERVER_ERROR, 409) from None
        raise
    out.doc(_get_job(api, args.job_id))
    return EXIT_OK


# --- node status ----------------------------------------------------------------


def search_node_names(api: ApiClient, query: str) -> list[str]:
    """Every node name matching `query`, all pages (knife-push stopped at the first 1000)."""
    names: list[str] = []
    start = 0
    while True:
        try:
            res = api.get_json("search/node", params={"q": query, "start": start, "rows": SEARCH_PAGE})
        except CliError as e:
            raise CliError(f"search {query!r} failed: {e.message}", e.exit_code, e.status) from None
        rows = res.get("rows", []) if isinstance(res, dict) else []
        for row in rows:
            name = row.get("name") if isinstance(row, dict) else None
            if isinstance(name, str) and name not in names:
                names.append(name)
        start += len(rows)
        total = res.get("total", 0) if isinstance(res, dict) else 0
        if not rows or start >= total:
            return names


def node_status(api: ApiClient, args: argparse.Namespace, out: Output) -> int:
    if not args.nodes:
        states = api.get_json("pushy/node_states")
    else:
        names: list[str] = []
        for arg in args.nodes:
            for n in (search_node_names(api, arg) if ":" in arg else [arg]):
                if n not in names:
                    names.append(n)
        states = [api.get_json(f"pushy/node_states/{quote_segment(n)}") for n in names]
    if out.fmt == "text":
        lines = "".join(f"{s.get('node_name', '')}\t{s.get('availability', '')}\n" for s in states)
        out.stdout.write(lines)
        out.stdout.flush()
    else:
        out.doc(states)
    return EXIT_OK


# --- job start / watch ------------------------------------------------------------


@dataclass
class StartRequest:
    body: dict[str, Any]
    quorum: str
    search: Optional[str]
    nodes: list[str]


def parse_quorum(value: str, node_count: int) -> int:
    """knife-push's rule: `N` or `N%` (percent of the nodes, rounded up)."""
    m = QUORUM_RE.match(value.strip())
    if not m:
        raise CliError(f"invalid quorum {value!r}: expected a count (e.g. 3) or a percentage (e.g. 50%)", EXIT_USAGE)
    n = int(m.group(1))
    if m.group(2):
        if n > 100:
            raise CliError(f"invalid quorum {value!r}: a percentage must be at most 100%", EXIT_USAGE)
        return math.ceil(n / 100 * node_count)
    return n


def _prepare_start(args: argparse.Namespace) -> StartRequest:
    """Validate every local option of `job start` before any request is made."""
    if not QUORUM_RE.match(args.quorum.strip()):
        parse_quorum(args.quorum, 0)  # raises the error
    body: dict[str, Any] = {"command": args.command, "capture_output": bool(args.capture)}
    if args.timeout is not None:
        body["run_timeout"] = args.timeout
    if args.with_env is not None:
        try:
            env = json.loads(args.with_env, object_pairs_hook=_no_dup_pairs)
        except ValueError as e:
            raise CliError(f"invalid --with-env: {e}", EXIT_USAGE) from None
        if not isinstance(env, dict):
            raise CliError("invalid --with-env: expected a JSON object such as '{\"NAME\": \"value\"}'", EXIT_USAGE)
        for k, v in env.items():
            if isinstance(v, (dict, list)) or v is None:
                raise CliError(f"invalid --with-env: the value of {k!r} must be a string", EXIT_USAGE)
        body["env"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in env.items()}
    if args.in_dir is not None:
        body["dir"] = args.in_dir
    if args.as_user is not None:
        body["user"] = args.as_user
    if args.file is not None:
        try:
            with open(args.file, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise CliError(f"cannot read --file {args.file}: {e.strerror}", EXIT_USAGE) from None
        if len(data) > MAX_FILE_BYTES:
            raise CliError(f"--file {args.file} is larger than {MAX_FILE_BYTES} bytes", EXIT_USAGE)
        body["file"] = "base64:" + base64.b64encode(data).decode("ascii")
    if not args.nodes and not args.search:
        raise CliError("No nodes to run job on. Specify nodes as arguments or use --search to specify a search query.",
                       EXIT_USAGE)
    return StartRequest(body, args.quorum, args.search, list(dict.fromkeys(args.nodes)))


def _no_dup_pairs(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def job_start(api: ApiClient, args: argparse.Namespace, out: Output, req: Optional[StartRequest] = None) -> int:
    req = req or _prepare_start(args)
    nodes = list(req.nodes)
    if req.search:
        for n in search_node_names(api, req.search):
            if n not in nodes:
                nodes.append(n)
    if not nodes:
        raise CliError(f"No nodes to run job on: the search {req.search!r} matched no node.", EXIT_USAGE)
    body = dict(req.body, nodes=nodes, quorum=parse_quorum(req.quorum, len(nodes)))
    created = api.post_json("pushy/jobs", body)
    job_id = created.get("id") if isinstance(created, dict) else None
    if not job_id and isinstance(created, dict) and created.get("uri"):
        job_id = str(created["uri"]).rstrip("/")[-32:]
    if not job_id:
        raise CliError("the server accepted the job but did not say its id", EXIT_SERVER_ERROR)
    if args.nowait:
        if out.fmt == "text":
            out.line(f"Started.  Job ID: {job_id}")
        else:
            out.doc({"id": job_id, "uri": created.get("uri")})
        return EXIT_OK
    out.line(f"Started.  Job ID: {job_id}")
    return _follow_and_report(api, job_id, out, args.poll_interval, args.poll)


def job_watch(api: ApiClient, args: argparse.Namespace, out: Output) -> int:
    job = _get_job(api, args.job_id)
    if job.get("status") in TERMINAL_JOB:
        out.line(f"{status_words(job['status'])}.")
        out.doc(job)
        return job_exit_code(job)
    return _follow_and_report(api, args.job_id, out, args.poll_interval, args.poll)


def job_exit_code(job: dict) -> int:
    """0 iff the job completed and every node succeeded (stricter than knife-push, on purpose)."""
    if job.get("status") != "complete":
        return EXIT_JOB_FAILED
    nodes = job.get("nodes") or {}
    if any(bucket != "succeeded" and names for bucket, names in nodes.items()):
        return EXIT_JOB_FAILED
    return EXIT_OK


def _follow_and_report(api: ApiClient, job_id: str, out: Output, poll_interval: float,
                       poll: bool = False) -> int:
    progress = Progress(out, job_id, tty=out.progress_stream.isatty())
    try:
        if poll:
            poll_job(api, job_id, progress, poll_interval)
        else:
            follow_job(api, job_id, progress, poll_interval)
        job = _get_job(api, job_id)
        # job_complete may reach us a moment before the job row says so
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while job.get("status") not in TERMINAL_JOB and time.monotonic() < deadline:
            time.sleep(0.1)
            job = _get_job(api, job_id)
    except KeyboardInterrupt:
        if progress.tty:
            out.progress_stream.write("\n")
        raise CliError(f"interrupted; job {job_id} keeps running (follow it with: pushjobs job watch {job_id})",
                       EXIT_INTERRUPTED) from None
    progress.finish(job)
    out.doc(job)
    return job_exit_code(job)


# --- following a job ----------------------------------------------------------------

VOTE_STATE = {"success": "ready", "failure": "nacked"}
RUN_STATE = {"success": "succeeded", "failure": "failed", "crashed": "crashed",
             "run_nacked": "nacked", "run_nacked_while_running": "nacked",
             "client_died_while_running": "crashed"}


def status_words(status: object) -> str:
    """A job status as human words: `quorum_failed` -> `Quorum failed` (not `Quorum_failed`)."""
    text = str(status).replace("_", " ").strip()
    return text[:1].upper() + text[1:].lower()


class Progress:
    """Live view of a job: one rewritten line on a terminal, plain lines otherwise."""

    def __init__(self, out: Output, job_id: str, tty: bool):
        self.out = out
        self.job_id = job_id
        self.tty = tty
        self.node_count: Optional[int] = None
        self.nodes: dict[str, str] = {}
        self.status = "new"
        self._last_state_line = ""
        self._dirty_tty = False

    # --- counts
    def counts(self) -> dict[str, int]:
        c = {"ready": 0, "running": 0, "succeeded": 0, "failed": 0}
        for s in self.nodes.values():
            if s in c:
                c[s] += 1
            elif s in ("nacked", "crashed", "unavailable", "timed_out", "aborted"):
                c["failed"] += 1
        return c

    def summary_line(self) -> str:
        c = self.counts()
        total = self.node_count if self.node_count is not None else len(self.nodes)
        return (f"{self.status}: {total} node{'s' if total != 1 else ''}, {c['ready']} ready, "
                f"{c['running']} running, {c['succeeded']} succeeded, {c['failed']} failed")

    # --- events
    def on_event(self, ev: Event) -> None:
        d = ev.data
        node = str(d.get("node", ""))
        text = ""
        if ev.name == "start":
            self.node_count = d.get("node_count") if isinstance(d.get("node_count"), int) else None
            self.status = "voting"
            n = self.node_count
            text = f"Voting: {n} node{'' if n == 1 else 's'}, quorum {d.get('quorum')}."
        elif ev.name == "quorum_vote":
            st = str(d.get("status", ""))
            self.nodes[node] = VOTE_STATE.get(st, "unavailable")
            text = f"  {node}: vote {st}"
        elif ev.name == "quorum_succeeded":
            self.status = "running"
            text = "Quorum succeeded: running."
        elif ev.name == "run_start":
            self.nodes[node] = "running"
            text = f"  {node}: running"
        elif ev.name == "run_complete":
            st = str(d.get("status", ""))
            self.nodes[node] = RUN_STATE.get(st, "failed")
            shown = self.nodes[node]
            text = f"  {node}: {shown}" + ("" if st in ("success", "failure", shown) else f" ({st})")
        elif ev.name == "rehab":
            text = f"  {node}: rehab"
        elif ev.name == "job_complete":
            self.status = str(d.get("status", "complete"))
            text = f"{status_words(self.status)}."
        elif ev.name == "summary":
            self.on_job(d)
            return
        else:
            return
        self._show(text)

    def on_job(self, job: dict) -> None:
        """A polled (or summary) job document: derive the state from its node buckets."""
        self.status = str(job.get("status", self.status))
        buckets = job.get("nodes") or {}
        total = 0
        for bucket, names in buckets.items():
            for n in names or []:
                total += 1
                self.nodes[str(n)] = str(bucket)
        self.node_count = total or self.node_count
        line = self._knife_state(job)
        if line != self._last_state_line:
            self._last_state_line = line
            self._show(line)

    @staticmethod
    def _knife_state(job: dict) -> str:
        st = job.get("status")
        if st == "new":
            return "Initialized."
        if st == "voting":
            return "Voting."
        if st == "running":
            buckets = job.get("nodes") or {}
            total = sum(len(v or []) for v in buckets.values())
            busy = sum(len(buckets.get(b) or []) for b in ("new", "voting", "ready", "running"))
            return f"Running ({busy}/{total} in progress) ..."
        return f"{status_words(st)}."

    def _show(self, text: str) -> None:
        stream = self.out.progress_stream
        if self.tty:
            stream.write("\r\x1b[K" + self.summary_line())
            self._dirty_tty = True
        else:
            stream.write(text + "\n")
        stream.flush()

    def note(self, text: str) -> None:
        """A message outside the event flow (lost contact, reconnected)."""
        stream = self.out.progress_stream
        if self.tty:
            stream.write("\r\x1b[K" + text + "\n" + self.summary_line())
        else:
            stream.write(text + "\n")
        stream.flush()

    def finish(self, job: dict) -> None:
        self.status = str(job.get("status", self.status))
        if self.tty:
            stream = self.out.progress_stream
            for bucket, names in (job.get("nodes") or {}).items():
                for n in names or []:
                    self.nodes[str(n)] = str(bucket)
            stream.write("\r\x1b[K" + self.summary_line() + "\n")
            stream.flush()


class _Reconnect:
    """Rides out a server restart or a network blip while following a job: retries an
    unreachable server with backoff for up to RECONNECT_TIMEOUT seconds, then gives up."""

    def __init__(self, progress: "Progress"):
        self.progress = progress
        self.deadline: Optional[float] = None
        self.delay = 0.2

    def failed(self, exc: CliError) -> None:
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + RECONNECT_TIMEOUT
            self.progress.note(f"lost contact with the server ({exc.message}); retrying for "
                               f"up to {RECONNECT_TIMEOUT:.0f}s")
        if now >= self.deadline:
            raise exc
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, 2.0)

    def ok(self) -> None:
        if self.deadline is not None:
            self.progress.note("reconnected")
        self.deadline, self.delay = None, 0.2


def follow_job(api: ApiClient, job_id: str, progress: Progress, poll_interval: float) -> None:
    """Follow the job's SSE feed until it ends; fall back to polling when there is no feed."""
    rel = f"pushy/job_status_feed/{quote_segment(job_id)}"
    last_id: Optional[str] = None
    empty_streams = 0
    reconnect = _Reconnect(progress)
    while empty_streams <= FEED_RETRIES:
        parser = SSEParser()
        got_any = False
        try:
            for chunk in api.stream_lines(rel, last_id):
                reconnect.ok()
                for ev in parser.feed(chunk):
                    got_any = True
                    last_id = ev.id or last_id
                    progress.on_event(ev)
                    if ev.name in ("job_complete", "summary"):
                        return
            for ev in parser.close():
                got_any = True
                last_id = ev.id or last_id
                progress.on_event(ev)
                if ev.name in ("job_complete", "summary"):
                    return
            # the stream ended without job_complete: finished meanwhile, or a dropped connection
            job = _get_job(api, job_id)
            reconnect.ok()
        except CliError as e:
            if e.status in (404, 405, 406, 501):
                break  # no feed on this server: poll like knife-push
            if e.status is None:
                reconnect.failed(e)
                continue
            raise
        if job.get("status") in TERMINAL_JOB:
            return
        empty_streams = 0 if got_any else empty_streams + 1
        time.sleep(min(poll_interval, 0.5))
    poll_job(api, job_id, progress, poll_interval)


def poll_job(api: ApiClient, job_id: str, progress: Progress, poll_interval: float) -> None:
    reconnect = _Reconnect(progress)
    while True:
        try:
            job = _get_job(api, job_id)
        except CliError as e:
            if e.status is None:
                reconnect.failed(e)
                continue
            raise
        reconnect.ok()
        progress.on_job(job)
        if job.get("status") in TERMINAL_JOB:
            return
        time.sleep(poll_interval)
