"""Port of oc-pushy-pedant `jobs_spec.rb` (+ `jobs_util.rb`, `validation_util.rb`): …/pushy/jobs[/ID].

Cases in the original's grouping: HTTP verb validation; access control with
no `pushy_job` groups (org `pedant-testorg-jobs`), with them
(`…-jobs-groups`) and nested (`…-jobs-nested`); request error checking (bogus
org, the job-body validation table of `jobs_util.rb`); the shared "handles
authentication headers correctly" suite on GET /jobs, POST /jobs and GET
/jobs/<name>; timestamps.

Where we answer as PROTOCOL.md says rather than as the original did, the case
says so: POST's 201 body is `{"id","uri"}` (§17.0, D7); an unknown key is
`invalid key supplied: 'KEY'` (docs/compatibility.md). The original's `fails_with_value`
never looked at the response; here each asserts the 400 and its message (a
string, §17.2 S4). The node `DONKEY` never exists, so every job ends
`quorum_failed` with `{"unavailable": ["DONKEY"]}`.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from typing import Any

import pytest

from tests.helpers.server import wait_for
from tests.pedant.conftest import (
    ADMIN_CLIENT, ADMIN_USER, AUTH_CASES, FAILED_TO_AUTHENTICATE_AS_INVALID, NON_ADMIN_CLIENT, NORMAL_USER,
    AuthCase, PedantOrg, PedantWorld, assert_error, auth_case_request, check_auth_case, no_access,
    not_associated, parse_rfc1123)

JOB_TO_RUN = {"command": "sleep 1", "nodes": ["DONKEY"]}
NON_EXISTENT_JOB = "not_a_number"
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
BASE_KEYS = {"id", "command", "status", "run_timeout", "created_at", "updated_at"}


def path_of(uri: str) -> str:
    return urllib.parse.urlsplit(uri).path


@pytest.fixture(scope="module")
def orgs(pedant_world: PedantWorld) -> dict[str, PedantOrg]:
    made = pedant_world.make_orgs({
        "pedant-testorg-jobs": None,
        "pedant-testorg-jobs-groups": [
            ("pushy_job_readers", "user:pedant_user"),
            ("pushy_job_readers", f"client:{NON_ADMIN_CLIENT}"),
            ("pushy_job_writers", "user:pedant_user"),
            ("pushy_job_writers", f"client:{NON_ADMIN_CLIENT}")],
        "pedant-testorg-jobs-nested": [
            ("nested_pushy_job_readers", "user:pedant_user"),
            ("nested_pushy_job_readers", f"client:{NON_ADMIN_CLIENT}"),
            ("nested_pushy_job_writers", "user:pedant_user"),
            ("nested_pushy_job_writers", f"client:{NON_ADMIN_CLIENT}"),
            ("pushy_job_readers", "group:nested_pushy_job_readers"),
            ("pushy_job_writers", "group:nested_pushy_job_writers")],
        "pedant-testorg-jobs-writers-only": [("pushy_job_writers", "user:pedant_user")],
        "pedant-testorg-jobs-readers-only": [("pushy_job_readers", "user:pedant_user")],
    })
    return {"plain": made["pedant-testorg-jobs"], "groups": made["pedant-testorg-jobs-groups"],
            "nested": made["pedant-testorg-jobs-nested"],
            "writers-only": made["pedant-testorg-jobs-writers-only"],
            "readers-only": made["pedant-testorg-jobs-readers-only"]}


def wait_status(org: PedantOrg, path: str, status: str = "quorum_failed", timeout: float = 20) -> dict:
    """The original's `wait_for_job_status`: poll the job until it reaches `status`."""
    http = org.http("admin_user" if org.name == "pedant-testorg-jobs" else "normal_user")

    def done() -> Any:
        r = http.get(path)
        return r.json() if r.status_code == 200 and r.json()["status"] == status else None

    return wait_for(done, timeout=timeout, interval=0.1, message=f"{path} to be {status}")


@pytest.fixture(scope="module")
def job_paths(orgs: dict) -> dict[str, str]:
    """One finished job per org (the original's `job_path`), created by an allowed writer."""
    paths = {}
    for layout, actor in (("plain", "admin_user"), ("groups", "normal_user"), ("nested", "normal_user")):
        r = orgs[layout].http(actor).post("jobs", json=JOB_TO_RUN)
        assert r.status_code == 201, r.text
        paths[layout] = path_of(r.json()["uri"])
    for layout, path in paths.items():
        wait_status(orgs[layout], path)
    return paths


# --- HTTP verb validation --------------------------------------------------------------------


def _send(http: Any, method: str, path: str) -> Any:
    return http.request(method, path, json=JOB_TO_RUN) if method in ("PUT", "POST") else http.request(method, path)


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_jobs_collection_verbs_405(orgs: dict, method: str) -> None:
    """'/organizations/<org>/pushy/jobs/: PUT|DELETE returns a 405 ("Method Not Allowed")'."""
    r = _send(orgs["plain"].http("admin_user"), method, "jobs/")
    assert_error(r, 405)
    assert set(r.headers["Allow"].split(", ")) >= {"GET", "POST"}


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE"])
def test_existing_job_verbs_405(orgs: dict, job_paths: dict, method: str) -> None:
    """'/jobs/<name> with job <name>: PUT|POST|DELETE returns a 405'."""
    r = _send(orgs["plain"].http("admin_user"), method, job_paths["plain"])
    assert_error(r, 405)
    assert "GET" in r.headers["Allow"] and method not in r.headers["Allow"].split(", ")


def test_missing_job_get_404(orgs: dict) -> None:
    """'where <name> does not exist: GET returns a 404 ("Not Found")'."""
    assert_error(orgs["plain"].http("admin_user").get("jobs/name-does-not-exist"), 404)


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE"])
def test_missing_job_verbs_405(orgs: dict, method: str) -> None:
    """'where <name> does not exist: PUT|POST|DELETE returns a 405' (the method is checked first)."""
    assert_error(_send(orgs["plain"].http("admin_user"), method, "jobs/name-does-not-exist"), 405)


# --- access control with no pushy_job groups -------------------------------------------------


@pytest.mark.parametrize("actor", ["admin_user", "normal_user", "non_admin_client"])
def test_no_groups_list_200(orgs: dict, job_paths: dict, actor: str) -> None:
    """'GET /jobs returns a 200 ("OK") for admin, normal user, client'."""
    r = orgs["plain"].http(actor).get("jobs/")
    assert r.status_code == 200, r.text
    assert path_of(job_paths["plain"]).rsplit("/", 1)[1] in [j["id"] for j in r.json()]


@pytest.mark.parametrize("actor", ["admin_user", "normal_user", "non_admin_client"])
def test_no_groups_job_200(orgs: dict, job_paths: dict, actor: str) -> None:
    """'GET /jobs/<name> returns a 200 ("OK") for admin, normal user, client'."""
    r = orgs["plain"].http(actor).get(job_paths["plain"])
    assert r.status_code == 200, r.text


def _paths(job_paths: dict, layout: str) -> list[str]:
    return ["jobs", job_paths[layout]]


@pytest.mark.parametrize("which", [0, 1], ids=["GET jobs", "GET jobs-name"])
def test_no_groups_invalid_outside_bogus(orgs: dict, job_paths: dict, which: int) -> None:
    """'returns a 401 for invalid user' (exact), '403 for outside user' (exact), '401 for bogus client'."""
    org = orgs["plain"]
    path = _paths(job_paths, "plain")[which]
    assert_error(org.http("invalid_user").get(path), 401, FAILED_TO_AUTHENTICATE_AS_INVALID)
    assert_error(org.http("outside_user").get(path), 403, not_associated(org.name))
    assert_error(org.http("bad_client").get(path), 401)


@pytest.mark.parametrize("actor", ["admin_user", "normal_user"])
def test_no_groups_missing_job_404(orgs: dict, actor: str) -> None:
    """'returns a 404 ("Not Found") for missing node_state for admin / normal user'."""
    assert_error(orgs["plain"].http(actor).get(f"jobs/{NON_EXISTENT_JOB}"), 404)


def test_no_groups_post_admin_201(orgs: dict) -> None:
    """'POST /jobs returns a 201 ("OK") for admin'."""
    r = orgs["plain"].http("admin_user").post("jobs/", json=JOB_TO_RUN)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("actor,name", [("normal_user", NORMAL_USER), ("non_admin_client", NON_ADMIN_CLIENT)])
def test_no_groups_post_non_admin_403(orgs: dict, actor: str, name: str) -> None:
    """'POST /jobs returns a 403 ("Forbidden") for normal user / client' (exact): without
    pushy_job_writers only `admins` write."""
    assert_error(orgs["plain"].http(actor).post("jobs/", json=JOB_TO_RUN), 403, no_access(name))


def test_no_groups_post_invalid_outside_bogus(orgs: dict) -> None:
    """POST: '401 for invalid user' (exact), '403 for outside user' (exact), '401 for bogus client'."""
    org = orgs["plain"]
    assert_error(org.http("invalid_user").post("jobs", json=JOB_TO_RUN), 401, FAILED_TO_AUTHENTICATE_AS_INVALID)
    assert_error(org.http("outside_user").post("jobs", json=JOB_TO_RUN), 403, not_associated(org.name))
    assert_error(org.http("bad_client").post("jobs", json=JOB_TO_RUN), 401)


# --- access control with pushy_job groups, plain and nested --------------------------------------


@pytest.mark.parametrize("layout", ["groups", "nested"])
@pytest.mark.parametrize("which", [0, 1], ids=["GET jobs", "GET jobs-name"])
@pytest.mark.parametrize("actor", ["normal_user", "non_admin_client"])
def test_groups_reader_member_200(orgs: dict, job_paths: dict, layout: str, which: int, actor: str) -> None:
    """'GET /jobs[/<name>] with [nested] pushy_job_readers returns a 200 for member / member client'."""
    r = orgs[layout].http(actor).get(_paths(job_paths, layout)[which])
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("layout", ["groups", "nested"])
@pytest.mark.parametrize("which", [0, 1], ids=["GET jobs", "GET jobs-name"])
@pytest.mark.parametrize("actor,name", [("admin_user", ADMIN_USER), ("admin_client", ADMIN_CLIENT)])
def test_groups_reader_non_member_403(orgs: dict, job_paths: dict, layout: str, which: int, actor: str,
                                      name: str) -> None:
    """'… returns a 403 ("Forbidden") for non-member / non-member client' (exact)."""
    assert_error(orgs[layout].http(actor).get(_paths(job_paths, layout)[which]), 403, no_access(name))


@pytest.mark.parametrize("layout", ["groups", "nested"])
@pytest.mark.parametrize("actor", ["normal_user", "non_admin_client"])
def test_groups_writer_member_201(orgs: dict, layout: str, actor: str) -> None:
    """'POST /jobs with [nested] pushy_job_writers returns a 201 for member / member client'."""
    r = orgs[layout].http(actor).post("jobs/", json=JOB_TO_RUN)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("layout", ["groups", "nested"])
@pytest.mark.parametrize("actor,name", [("admin_user", ADMIN_USER), ("admin_client", ADMIN_CLIENT)])
def test_groups_writer_non_member_403(orgs: dict, layout: str, actor: str, name: str) -> None:
    """'POST /jobs with [nested] pushy_job_writers returns a 403 for non-member / non-member
    client' (exact): admins do not write once pushy_job_writers exists."""
    assert_error(orgs[layout].http(actor).post("jobs/", json=JOB_TO_RUN), 403, no_access(name))


def test_groups_outside_user_403(orgs: dict, job_paths: dict) -> None:
    """'returns a 403 ("Forbidden") for outside user' on GET /jobs, POST /jobs, GET /jobs/<name>."""
    org = orgs["groups"]
    http = org.http("outside_user")
    for r in (http.get("jobs"), http.post("jobs", json=JOB_TO_RUN), http.get(job_paths["groups"])):
        assert_error(r, 403, not_associated(org.name))


# --- request error checking --------------------------------------------------------------------


def test_bogus_org_404(orgs: dict, job_paths: dict) -> None:
    """'returns 404 ("Not Found") with bogus org for /jobs', '… for /jobs/<name>', and
    'POST returns 404 when organization doesn't exist' (the newest original; older ones: 403)."""
    http = orgs["plain"].http("admin_user", org="bogus-org")
    message = ["organization 'bogus-org' does not exist."]
    assert_error(http.get("jobs"), 404, message)
    assert_error(http.get(job_paths["plain"].replace("pedant-testorg-jobs", "bogus-org")), 404, message)
    assert_error(http.post("jobs", json=JOB_TO_RUN), 404, message)


DEFAULT_PAYLOAD = {"command": "sleep 1", "nodes": ["DONKEY"], "quorum": 1, "run_timeout": 3600}
DELETE = object()

SUCCEEDS = [  # (field, value, expected value in the job document)
    ("command", "", ""),  # pending in the original ("transient mystery failures on CentOS")
    ("command", "sleep 2", "sleep 2"),
    ("nodes", ["DONKEY"], {"unavailable": ["DONKEY"]}),  # pending in the original
    ("nodes", ["DONKEY", "FIONA"], {"unavailable": ["DONKEY", "FIONA"]}),  # pending in the original
    ("quorum", DELETE, None),
    ("quorum", 1, None),
    ("quorum", 999, None),
    ("run_timeout", DELETE, 3600),
    ("run_timeout", 0, 0),
    ("run_timeout", 3600, 3600),
]

COMMAND_MSG = "invalid command supplied"
NODES_MSG = "at least one node must be supplied"
QUORUM_MSG = "invalid type supplied for quorum (expected a number)"
TIMEOUT_MSG = "invalid type supplied for run_timeout (expected a number)"

FAILS = [  # (field, value, message) — `{"error": message}`, a string (§10.5, S4)
    ("command", DELETE, COMMAND_MSG), ("command", [], COMMAND_MSG), ("command", {}, COMMAND_MSG),
    ("command", 0, COMMAND_MSG), ("command", False, COMMAND_MSG), ("command", None, COMMAND_MSG),
    ("nodes", DELETE, NODES_MSG), ("nodes", "", NODES_MSG), ("nodes", "DONKEY", NODES_MSG),
    ("nodes", [], NODES_MSG), ("nodes", ["DONKEY", "FIONA", False], NODES_MSG),
    ("nodes", ["DONKEY", "FIONA", None], NODES_MSG), ("nodes", ["DONKEY", "FIONA", {}], NODES_MSG),
    ("nodes", {}, NODES_MSG), ("nodes", 0, NODES_MSG), ("nodes", False, NODES_MSG), ("nodes", None, NODES_MSG),
    ("quorum", "", QUORUM_MSG), ("quorum", "1", QUORUM_MSG), ("quorum", [], QUORUM_MSG),
    ("quorum", {}, QUORUM_MSG), ("quorum", False, QUORUM_MSG), ("quorum", None, QUORUM_MSG),
    ("run_timeout", "", TIMEOUT_MSG), ("run_timeout", "1", TIMEOUT_MSG), ("run_timeout", [], TIMEOUT_MSG),
    ("run_timeout", {}, TIMEOUT_MSG), ("run_timeout", False, TIMEOUT_MSG), ("run_timeout", None, TIMEOUT_MSG),
    # "random shiznit": an unknown key; the message names it (docs/compatibility.md)
    ("foo", None, "invalid key supplied: 'foo'"), ("foo", "", "invalid key supplied: 'foo'"),
    ("foo", "bar", "invalid key supplied: 'foo'"), ("foo", 0, "invalid key supplied: 'foo'"),
]


def payload_with(field: str, value: Any) -> dict:
    p = dict(DEFAULT_PAYLOAD)
    if value is DELETE:
        p.pop(field, None)
    else:
        p[field] = value
    return p


def _case_id(field: str, value: Any) -> str:
    return f"{field}={'delete' if value is DELETE else json.dumps(value)}"


@pytest.mark.parametrize("field,value,message", FAILS, ids=[_case_id(f, v) for f, v, _ in FAILS])
def test_post_fails_with_value(orgs: dict, field: str, value: Any, message: str) -> None:
    """jobs_util `fails_with_value`: 'with <field> = <value> it reports 400'."""
    r = orgs["plain"].http("admin_user").post("jobs", json=payload_with(field, value))
    assert_error(r, 400, message)


def test_post_failures_store_nothing(orgs: dict) -> None:
    """None of the rejected bodies above leaves a job behind (§17.2 S10: nothing half-stored)."""
    org = orgs["readers-only"]
    http, reader = org.http("admin_user"), org.http("normal_user")
    before = reader.get("jobs").json()
    for field, value, message in FAILS:
        assert_error(http.post("jobs", json=payload_with(field, value)), 400, message)
    assert reader.get("jobs").json() == before


@pytest.fixture(scope="module")
def succeeded_posts(orgs: dict) -> dict[str, Any]:
    """All `succeeds_with_value` jobs posted at once, then waited for together (one voting round)."""
    http = orgs["plain"].http("admin_user")
    out = {}
    for field, value, _ in SUCCEEDS:
        out[_case_id(field, value)] = http.post("jobs", json=payload_with(field, value))
    return out


@pytest.mark.parametrize("field,value,expected", SUCCEEDS, ids=[_case_id(f, v) for f, v, _ in SUCCEEDS])
def test_post_succeeds_with_value(orgs: dict, succeeded_posts: dict, field: str, value: Any,
                                  expected: Any) -> None:
    """jobs_util `succeeds_with_value`: 201 (ours: `{"id","uri"}` + Location, §17.0), then the
    job reaches quorum_failed and its document is exactly the expected one."""
    r = succeeded_posts[_case_id(field, value)]
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"id", "uri"} and JOB_ID.match(body["id"]), body
    assert body["uri"].endswith(f"/organizations/pedant-testorg-jobs/pushy/jobs/{body['id']}")
    assert r.headers["Location"] == body["uri"]
    job = wait_status(orgs["plain"], path_of(body["uri"]))
    want: dict[str, Any] = {"command": "sleep 1", "nodes": {"unavailable": ["DONKEY"]}, "id": body["id"],
                            "run_timeout": 3600, "status": "quorum_failed"}
    if field in want:
        want[field] = expected
    job["nodes"] = {k: sorted(v) for k, v in job["nodes"].items()}
    created, updated = job.pop("created_at"), job.pop("updated_at")
    parse_rfc1123(created), parse_rfc1123(updated)
    assert job == want


def test_post_wrong_content_type_415(orgs: dict) -> None:
    """Ours (§10.2, docs/compatibility.md): POST with a non-JSON Content-Type → 415, JSON body."""
    r = orgs["plain"].http("admin_user").post("jobs", body=json.dumps(JOB_TO_RUN).encode(),
                                              headers={"Content-Type": "text/plain"})
    assert_error(r, 415)


# --- handling authentication headers ---------------------------------------------------------------


@pytest.mark.parametrize("case", AUTH_CASES, ids=[c.id for c in AUTH_CASES])
def test_auth_headers_get_jobs(orgs: dict, case: AuthCase) -> None:
    """'handling authentication headers / GET /jobs' (pending in the original)."""
    org = orgs["plain"]
    r = auth_case_request(org, case, "GET", f"{org.pushy}/jobs")
    check_auth_case(r, case, 200)
    if case.status == 0:
        assert isinstance(r.json(), list)


@pytest.mark.parametrize("case", AUTH_CASES, ids=[c.id for c in AUTH_CASES])
def test_auth_headers_post_jobs(orgs: dict, case: AuthCase) -> None:
    """'handling authentication headers / POST /jobs': success is 201 with the job's uri."""
    org = orgs["plain"]
    body = json.dumps(JOB_TO_RUN, separators=(",", ":")).encode()
    r = auth_case_request(org, case, "POST", f"{org.pushy}/jobs", body)
    check_auth_case(r, case, 201)
    if case.status == 0:
        assert re.match(r"^https?://.*/jobs/[0-9a-f]{32}$", r.json()["uri"]), r.json()


@pytest.mark.parametrize("case", AUTH_CASES, ids=[c.id for c in AUTH_CASES])
def test_auth_headers_get_job(orgs: dict, job_paths: dict, case: AuthCase) -> None:
    """'handling authentication headers / GET /jobs/<name>': success is the exact document."""
    org = orgs["plain"]
    r = auth_case_request(org, case, "GET", job_paths["plain"])
    check_auth_case(r, case, 200)
    if case.status == 0:
        job = r.json()
        parse_rfc1123(job.pop("created_at")), parse_rfc1123(job.pop("updated_at"))
        assert JOB_ID.match(job.pop("id"))
        assert job == {"command": "sleep 1", "nodes": {"unavailable": ["DONKEY"]}, "run_timeout": 3600,
                       "status": "quorum_failed"}


# --- provides timestamps in API responses -----------------------------------------------------------


def test_timestamps(orgs: dict) -> None:
    """'returns created_at', 'returns updated_at', 'has an updated_at later than or equal to
    created_at': RFC 1123 GMT, second precision (§10.6), UTC (S16)."""
    http = orgs["plain"].http("admin_user")
    t0 = int(time.time())
    r = http.post("jobs", json=JOB_TO_RUN)
    job = http.get(path_of(r.json()["uri"])).json()
    created, updated = parse_rfc1123(job["created_at"]), parse_rfc1123(job["updated_at"])
    assert updated >= created
    assert t0 - 5 <= created <= time.time() + 5  # UTC, not shifted by the host's zone


# --- ours: list and job shapes (§10.6, §10.7) ----------------------------------------------------------


def test_list_and_job_shapes_optional_keys(orgs: dict) -> None:
    """Optional keys only when set (`user`, `dir`, `env`, `capture_output` when true,
    `file_specified` when a file was given); no `nodes` nor `quorum` in the list; the job
    adds `nodes`; `include_file=true` swaps `file_specified` for `file`."""
    org = orgs["groups"]
    http = org.http("normal_user")
    plain_id = http.create_job("true", ["DONKEY"])
    full = {"user": "deploy", "dir": "/srv", "env": {"A": "1"}, "capture_output": True, "file": "raw:hello"}
    full_id = http.create_job("true", ["DONKEY", "FIONA"], quorum=1, **full)
    wait_status(org, f"jobs/{full_id}")
    listed = {j["id"]: j for j in http.get("jobs").json()}
    assert set(listed[plain_id]) == BASE_KEYS
    assert set(listed[full_id]) == BASE_KEYS | {"user", "dir", "env", "capture_output", "file_specified"}
    assert listed[full_id]["file_specified"] is True and listed[full_id]["env"] == {"A": "1"}
    assert set(http.job(plain_id)) == BASE_KEYS | {"nodes"}
    job = http.job(full_id)
    assert set(job) == set(listed[full_id]) | {"nodes"}
    assert {k: sorted(v) for k, v in job["nodes"].items()} == {"unavailable": ["DONKEY", "FIONA"]}
    with_file = http.job(full_id, params={"include_file": "true"})
    assert with_file["file"] == "raw:hello" and "file_specified" not in with_file
    capture_false = http.create_job("true", ["DONKEY"], capture_output=False)
    assert "capture_output" not in http.job(capture_false)


def test_error_body_shapes(orgs: dict) -> None:
    """§10.2/§17.2 S4 (not in the suite): job validation and 413 say `{"error": "msg"}` (a
    string); the auth and routing errors say `{"error": ["msg"]}` (a list)."""
    http = orgs["plain"].http("admin_user")
    assert_error(http.post("jobs", body=b"x" * 1_000_001, headers={"Content-Type": "application/json"}),
                 413, "JSON must be no more than 1000000 bytes.")
    assert_error(http.post("jobs", json={"command": 1, "nodes": ["DONKEY"]}), 400, "invalid command supplied")
    assert_error(http.get("jobs/nope"), 404)  # a list (checked by assert_error)
    assert_error(orgs["plain"].http("normal_user").post("jobs", json=JOB_TO_RUN), 403, no_access(NORMAL_USER))


@pytest.mark.parametrize("layout,actor,get_status,post_status", [
    # only pushy_job_writers: anybody of the org reads; only its members write, admins not
    ("writers-only", "normal_user", 200, 201),
    ("writers-only", "admin_user", 200, 403),
    ("writers-only", "admin_client", 200, 403),
    # only pushy_job_readers: only its members read; `admins` write (no writers group)
    ("readers-only", "normal_user", 200, 403),
    ("readers-only", "admin_user", 403, 201),
    ("readers-only", "admin_client", 403, 201),
])
def test_one_group_only_matrix(orgs: dict, layout: str, actor: str, get_status: int, post_status: int) -> None:
    """§10.3 (not in the suite, which always made both groups): each rule on its own."""
    org = orgs[layout]
    http = org.http(actor)
    name = org.principals[actor].name
    r = http.get("jobs")
    assert r.status_code == get_status, r.text
    if get_status == 403:
        assert_error(r, 403, no_access(name))
    r = http.post("jobs", json=JOB_TO_RUN)
    assert r.status_code == post_status, r.text
    if post_status == 403:
        assert_error(r, 403, no_access(name))


def test_post_uri_behind_tls_proxy(orgs: dict) -> None:
    """The original's POST /jobs uri is `https://…` behind its nginx (the suite's regex): the
    scheme comes from `X-Forwarded-Proto`, the host from `Host` (§10.5)."""
    http = orgs["plain"].http("admin_user")
    r = http.post("jobs", json=JOB_TO_RUN, headers={"X-Forwarded-Proto": "https", "Host": "push.example.com"})
    assert r.status_code == 201, r.text
    assert re.match(r"^https://push\.example\.com/organizations/pedant-testorg-jobs/pushy/jobs/[0-9a-f]{32}$",
                    r.json()["uri"]), r.json()
    assert r.headers["Location"] == r.json()["uri"]
