"""Jobs: POST/GET …/pushy/jobs, GET …/jobs/ID, POST …/jobs/ID/abort (PROTOCOL.md §10.5–§10.7).

Rules of this file:
* `validate_job(body)` is pure and runs before authentication (the
  original's order, §10.2). It follows the original's checks, order and
  messages (`{"error": "<msg>"}`, a string), and closes the original's 500s
  (§17.2 S10): malformed JSON, non-object bodies, duplicate node names,
  fractional/negative numbers, oversized values each get a 400 naming the
  field. Nothing reaches the database before it passes.
* The job and all its job nodes are written in one transaction (`store_job`:
  multi-row INSERTs, a 10,000-node job in tens of milliseconds), then the
  coordinator is told (`runtime.start_job`). After that only the coordinator
  writes job/job-node statuses.
* Documents keep the original's shape: optional keys only when set, RFC 1123
  GMT times formatted from the UTC column (S16).
* `GET /jobs/ID` (and the job list) of a live job takes its status and job
  nodes from the coordinator's memory (`runtime.jobs.live_view`), like the
  SSE feeds: the database lags by the writer's queue, and reading 10,000
  job-node rows per poll is the costly part of the request. A final status
  is shown only once the job's writes are all stored (outputs can be
  fetched): `GET /jobs/ID` waits for them, the list shows the status before
  the end meanwhile. Everything else, and every job that is not live, comes
  from the database.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import logging
import math
import secrets
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

from flask import Blueprint, Response, current_app, g, request

from pushjobs.server.api.errors import error, json_response, validation_error
from pushjobs.server.auth import signed_request

log = logging.getLogger(__name__)

bp = Blueprint("jobs", __name__, url_prefix="/organizations/<org>/pushy")

MAX_FILE_BYTES = 100_000
MAX_NAME_LENGTH = 255  # node names and run-as user: the store's column width
MAX_INT = 2**31 - 1  # quorum and run_timeout are 32-bit integer columns
ALLOWED_KEYS = ("command", "nodes", "run_timeout", "quorum", "user", "dir", "env", "file", "capture_output")
FINISHED = ("complete", "quorum_failed", "aborted", "timed_out", "crashed")


@dataclass(frozen=True)
class JobSpec:
    """A validated job request."""

    command: str
    nodes: tuple[str, ...]
    quorum: Optional[int]
    run_timeout: Optional[int]
    user: Optional[str]
    dir: Optional[str]
    env: Optional[dict]
    file: Optional[str]
    capture_output: bool


class _Pairs(dict):
    """A JSON object that remembers keys it saw twice (the stdlib keeps the last silently)."""

    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _Pairs:
    obj = _Pairs()
    dups = []
    for k, v in pairs:
        if k in obj:
            dups.append(k)
        obj[k] = v
    obj.duplicates = tuple(dups)
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _non_negative_int(name: str, v: Any) -> int:
    if isinstance(v, float):
        if not math.isfinite(v) or v != int(v):
            raise validation_error(f"invalid value supplied for {name} (expected a non-negative integer)")
        v = int(v)
    if v < 0 or v > MAX_INT:
        raise validation_error(f"invalid value supplied for {name} (expected a non-negative integer)")
    return v


def _wrong_type(name: str, expected: str) -> Any:
    return validation_error(f"invalid type supplied for {name} (expected {expected})")


def _no_nul(name: str, s: str) -> None:
    if "\x00" in s:
        raise validation_error(f"invalid value supplied for {name} (contains a NUL character)")


def validate_job(body: bytes) -> JobSpec:
    """Parse and check a POST /jobs body; ApiError(400, {"error": msg}) on the first problem."""
    try:
        text = body.decode("utf-8")
        data = json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise validation_error(f"invalid JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise validation_error("invalid job: the body must be a JSON object")
    if data.duplicates:
        raise validation_error(f"invalid key supplied: '{data.duplicates[0]}' appears twice")

    # Type checks, in the original's field order; the first failure wins.
    command = data.get("command")
    if not isinstance(command, str):
        raise validation_error("invalid command supplied")
    nodes = data.get("nodes")
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise validation_error("at least one node must be supplied")
    if "run_timeout" in data and not _is_number(data["run_timeout"]):
        raise _wrong_type("run_timeout", "a number")
    if "quorum" in data and not _is_number(data["quorum"]):
        raise _wrong_type("quorum", "a number")
    for name in ("user", "dir"):
        if name in data and not isinstance(data[name], str):
            raise _wrong_type(name, "a string")
    if "env" in data:
        env = data["env"]
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise _wrong_type("env", "an object of strings")
    if "file" in data and not isinstance(data["file"], str):
        raise _wrong_type("file", "a string")
    if "capture_output" in data and not isinstance(data["capture_output"], bool):
        raise _wrong_type("capture_output", "a boolean")
    for key in data:
        if key not in ALLOWED_KEYS:
            raise validation_error(f"invalid key supplied: '{key}'")

    if not nodes:
        raise validation_error("at least one node must be supplied")
    env = data.get("env")
    if env is not None and getattr(env, "duplicates", ()):
        raise validation_error("invalid environment value (duplicate key)")
    file = data.get("file")
    if file is not None:
        if file.startswith("raw:"):
            payload_len = len(file[4:].encode("utf-8"))
        elif file.startswith("base64:"):
            try:
                payload_len = len(base64.b64decode(file[7:], validate=True))
            except (binascii.Error, ValueError):
                raise validation_error("invalid file contents (couldn't decode base64 string)") from None
        else:
            raise validation_error("invalid file contents (expected 'base64:...' or 'raw:...')")
        if payload_len > MAX_FILE_BYTES:
            raise validation_error(f"invalid file size (must be <= {MAX_FILE_BYTES} bytes)")

    # Ours (§17.2 S10 and the store's limits): 400 where the original failed with a 500.
    seen: set[str] = set()
    for n in nodes:
        if not n or len(n) > MAX_NAME_LENGTH or "\x00" in n:
            raise validation_error(f"invalid node name in nodes: {n[:64]!r} (1 to {MAX_NAME_LENGTH} characters)")
        if n in seen:
            raise validation_error(f"duplicate node name in nodes: '{n}'")
        seen.add(n)
    run_timeout = _non_negative_int("run_timeout", data["run_timeout"]) if "run_timeout" in data else None
    quorum = _non_negative_int("quorum", data["quorum"]) if "quorum" in data else None
    user = data.get("user")
    if user is not None and len(user) > MAX_NAME_LENGTH:
        raise validation_error(f"invalid value supplied for user (at most {MAX_NAME_LENGTH} characters)")
    _no_nul("command", command)
    for name in ("user", "dir", "file"):
        if data.get(name) is not None:
            _no_nul(name, data[name])
    if env is not None:
        for k, v in env.items():
            _no_nul("env", k)
            _no_nul("env", v)
    return JobSpec(
        command=command,
        nodes=tuple(nodes),
        quorum=quorum,
        run_timeout=run_timeout,
        user=user,
        dir=data.get("dir"),
        env=dict(env) if env is not None else None,
        file=file,
        capture_output=bool(data.get("capture_output", False)),
    )


# --------------------------------------------------------------------------------------
# documents


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_time(value: _dt.datetime) -> str:
    """RFC 1123 GMT of a naive UTC datetime (formatted as UTC: §17.2 S16).

    Formatted by hand (English names, not the locale's): the same text as
    `email.utils.format_datetime(..., usegmt=True)` in a third of the time;
    every job document has two, and clients poll the job list."""
    if value.tzinfo is not None:
        value = value.astimezone(_dt.timezone.utc)
    return "%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[value.weekday()], value.day, _MONTHS[value.month - 1], value.year,
        value.hour, value.minute, value.second)


def job_document(job: Any, *, include_file: bool = False) -> dict:
    """The §10.6 job shape (no `nodes`): optional keys only when set."""
    doc: dict[str, Any] = {
        "id": job.id,
        "command": job.command,
        "status": job.status,
        "run_timeout": job.run_timeout,
        "created_at": http_time(job.created_at),
        "updated_at": http_time(job.updated_at),
    }
    if job.user is not None:
        doc["user"] = job.user.rstrip()
    if job.dir is not None:
        doc["dir"] = job.dir
    if job.env is not None:
        try:
            doc["env"] = json.loads(job.env)
        except ValueError:
            log.warning("job %s: stored env is not JSON", job.id)
    if job.capture_output:
        doc["capture_output"] = True
    if job.file is not None:
        if include_file:
            doc["file"] = job.file
        else:
            doc["file_specified"] = True
    return doc


def job_detail(job: Any, *, include_file: bool = False, live: Any = None) -> dict:
    """§10.7: `nodes` grouped by job-node status (only non-empty groups), then the job.

    `live` (a `pushjobs.server.jobs.LiveView`) replaces the stored status,
    `updated_at` and job nodes of a live job."""
    doc = job_document(job, include_file=include_file)
    if live is not None:
        from pushjobs.server.jobs import utc_datetime

        doc["status"] = live.status
        if live.updated_at is not None:
            doc["updated_at"] = http_time(utc_datetime(live.updated_at))
        return {"nodes": {k: list(v) for k, v in live.nodes.items()}, **doc}
    groups: dict[str, list[str]] = {}
    for name, status in job_node_rows(job.id):
        g = groups.get(status)
        if g is None:
            g = groups[status] = []
        g.append(name)
    return {"nodes": groups, **doc}


#: database class -> the job-node statement of `job_node_rows` (one parameter: the job id)
_NODES_SQL: dict[type, str] = {}


def job_node_rows(job_id: str) -> list[tuple[str, str]]:
    """(node name, status) of a job's nodes in the job's order: text columns straight
    from the driver, the statement built by peewee once per database type (a
    10,000-node job without 10,000 model objects or per-value conversions)."""
    from pushjobs.server.store import JobNode, db

    database = db.obj
    q = JobNode.select(JobNode.node_name, JobNode.status).where(JobNode.job == job_id).order_by(JobNode.id)
    sql = _NODES_SQL.get(type(database))
    if sql is None:
        sql, params = q.sql()
        if list(params) != [job_id]:  # not the shape assumed: run it through peewee every time
            return list(q.tuples())
        _NODES_SQL[type(database)] = sql
    return database.execute_sql(sql, [job_id]).fetchall()


def live_view(job_id: str, **kw: Any) -> Any:
    """The coordinator's view of a live job (None when not live or no runtime)."""
    runtime = current_app.extensions["pushjobs"].runtime
    view = getattr(getattr(runtime, "jobs", None), "live_view", None)
    return view(job_id, **kw) if view is not None else None


def store_job(job_id: str, org_id: int, spec: JobSpec, requestor: str, default_run_timeout: int) -> None:
    """Write the job and its job nodes (`new`) in one transaction.

    PostgreSQL: the job row and ALL job nodes in one `execute` (one round trip,
    each a wait for the event loop under gevent), the node names as one array
    parameter unnested in node order (`WITH ORDINALITY ... ORDER BY`, so the
    serial ids still ascend in node order, which GET /jobs/ID relies on).
    psycopg2 interpolates parameters client-side; 5 per row cost more than the
    insert itself (store_job, best of 5: 1,000 nodes 39 -> 15 ms, 10,000 nodes
    392 -> 147 ms). SQLite keeps `bulk_insert` (no round trips there)."""
    import peewee as pw

    from pushjobs.server.jobs import _quoted, bulk_insert
    from pushjobs.server.store import Job, JobNode, db, utcnow

    now = utcnow()
    values = {
        Job.id: job_id,
        Job.org: org_id,
        Job.command: spec.command,
        Job.status: "new",
        Job.run_timeout: spec.run_timeout if spec.run_timeout is not None else default_run_timeout,
        Job.quorum: spec.quorum if spec.quorum is not None else len(spec.nodes),
        Job.requestor: requestor,
        Job.user: spec.user,
        Job.dir: spec.dir,
        Job.env: json.dumps(spec.env, separators=(",", ":")) if spec.env is not None else None,
        Job.file: spec.file,
        Job.capture_output: spec.capture_output,
        Job.created_at: now,
        Job.updated_at: now,
    }
    database = db.obj
    with db.atomic():
        if isinstance(database, pw.PostgresqlDatabase) and spec.nodes:
            p = database.param
            sql = (f"INSERT INTO {_quoted(Job._meta.table_name)} ("
                   + ", ".join(_quoted(f.column_name) for f in values) + ") VALUES ("
                   + ", ".join([p] * len(values)) + ");\n"
                   f"INSERT INTO {_quoted(JobNode._meta.table_name)} ("
                   + ", ".join(_quoted(f.column_name) for f in (JobNode.job, JobNode.node_name, JobNode.status,
                                                                JobNode.created_at, JobNode.updated_at))
                   + f") SELECT {p}, u.name, {p}, {p}, {p} FROM unnest({p}::text[]) WITH ORDINALITY AS u(name, i)"
                   " ORDER BY u.i")
            ts = JobNode.created_at.db_value(now)
            database.execute_sql(sql, [f.db_value(v) for f, v in values.items()]
                                 + [job_id, "new", ts, ts, list(spec.nodes)])
            return
        Job.create(**{f.name: v for f, v in values.items()})
        bulk_insert(JobNode, [JobNode.job, JobNode.node_name, JobNode.status, JobNode.created_at, JobNode.updated_at],
                    [(job_id, n, "new", now, now) for n in spec.nodes])


def find_job(org_id: int, job_id: str) -> Any:
    """The job of this org, or 404 (jobs of other orgs do not exist for this caller)."""
    from pushjobs.server.store import Job

    job = Job.get_or_none((Job.id == job_id) & (Job.org == org_id))
    if job is None:
        raise error(404, f"job '{job_id}' not found")
    return job


def new_job_id(org_guid: str) -> str:
    """§10.5: last 12 hex chars of the org GUID + 20 random hex digits (opaque to clients)."""
    return (org_guid.replace("-", "").lower()[-12:] + secrets.token_hex(10))[-32:].rjust(32, "0")


def job_uri(org: str, job_id: str) -> str:
    """Absolute URI from the request: X-Forwarded-Proto or the connection scheme, Host header."""
    scheme = (request.headers.get("X-Forwarded-Proto") or request.scheme).split(",")[0].strip()
    return f"{scheme}://{request.host}/organizations/{org}/pushy/jobs/{job_id}"


# --------------------------------------------------------------------------------------
# routes


@bp.route("/jobs", methods=["POST"])
@signed_request("write", malformed=validate_job)
def create_job(org: str) -> Response:
    if request.mimetype and request.mimetype != "application/json":
        # webmachine's known_content_type, after authorization as in the original (§10.2)
        raise error(415, f"Content-Type must be application/json, not {request.mimetype}")
    spec: JobSpec = g.parsed
    state = current_app.extensions["pushjobs"]
    requestor = g.requestor
    job_id = new_job_id(requestor.org_guid)
    store_job(job_id, requestor.org_id, spec, requestor.name, state.settings.default_running_timeout)
    log.info("job %s created by %s in %s: %r on %d node(s)", job_id, requestor.name, org, spec.command,
             len(spec.nodes))
    state.runtime.start_job(job_id)
    uri = job_uri(org, job_id)
    return json_response({"id": job_id, "uri": uri}, 201, {"Location": uri})


class JobRow(NamedTuple):
    """The columns `job_document` reads, as the job list fetches them."""

    id: str
    command: str
    status: str
    run_timeout: int
    created_at: _dt.datetime
    updated_at: _dt.datetime
    user: Optional[str]
    dir: Optional[str]
    env: Optional[str]
    capture_output: bool
    file: Optional[str]


#: database class -> the job list's SQL (one parameter: the org id); built once by peewee
_LIST_SQL: dict[type, str] = {}


def org_jobs(org_id: int) -> list[JobRow]:
    """The org's jobs, oldest first. The statement is built by peewee once per database
    type and the rows converted by the fields' own `python_value`: building the query
    and a model per row was most of the list's own cost, and clients poll the list
    (a fan-out benchmark every 50 ms)."""
    from pushjobs.server.store import Job, db

    fields = [getattr(Job, name) for name in JobRow._fields]
    database = db.obj
    sql = _LIST_SQL.get(type(database))
    if sql is None:
        sql, params = Job.select(*fields).where(Job.org == 0).order_by(Job.created_at, Job.id).sql()
        if list(params) != [0]:  # not the shape assumed: run it through peewee every time
            return [JobRow(*row) for row in Job.select(*fields).where(Job.org == org_id)
                    .order_by(Job.created_at, Job.id).tuples()]
        _LIST_SQL[type(database)] = sql
    convert = [f.python_value for f in fields]
    return [JobRow(*[c(v) for c, v in zip(convert, row)]) for row in database.execute_sql(sql, [org_id]).fetchall()]


@bp.route("/jobs", methods=["GET"])
@signed_request("read")
def list_jobs(org: str) -> Response:
    docs = []
    for j in org_jobs(g.requestor.org_id):
        doc = job_document(j)
        live = live_view(j.id, wait=0.0, nodes=False)
        if live is not None:
            from pushjobs.server.jobs import utc_datetime

            doc["status"] = live.status
            if live.updated_at is not None:
                doc["updated_at"] = http_time(utc_datetime(live.updated_at))
        docs.append(doc)
    return json_response(docs)


@bp.route("/jobs/<job_id>", methods=["GET"])
@signed_request("read")
def get_job(org: str, job_id: str) -> Response:
    job = find_job(g.requestor.org_id, job_id)
    return json_response(job_detail(job, include_file=request.args.get("include_file") == "true",
                                    live=live_view(job.id)))


@bp.route("/jobs/<job_id>/abort", methods=["POST"])
@signed_request("write")
def abort_job(org: str, job_id: str) -> Response:
    """Ours (§17.0, D9): abort a live job; its nodes end `aborted`."""
    runtime = current_app.extensions["pushjobs"].runtime
    job = find_job(g.requestor.org_id, job_id)
    if job.status in FINISHED:
        raise error(409, f"job '{job_id}' is already finished (status {job.status})")
    if not runtime.abort_job(job_id, g.requestor.name):
        job = find_job(g.requestor.org_id, job_id)
        raise error(409, f"job '{job_id}' is not running (status {job.status})")
    log.info("job %s abort requested by %s", job_id, g.requestor.name)
    job = find_job(g.requestor.org_id, job_id)
    return json_response(job_detail(job, live=live_view(job.id)), 202)
