"""The REST API end to end: a real push-jobs-server subprocess on SQLite and on PostgreSQL.

Identities are made with the real push-jobs-server-ctl; every request is
signed with pushjobs.protocol.chef_auth over real HTTP. One server per
back end for the whole module (module-scoped fixture), so tests that change
state use their own org.

Covers PROTOCOL.md §2 (config handshake), §10.1–§10.11 (every auth failure
with its status and body, the group rules, every endpoint and every job
validation rule), §12.1 and §14 (retrieval), §17.0 and the §17.2 fixes S3,
S5, S6, S10, S16.
"""
from __future__ import annotations

import base64
import contextlib
import json
import re
import time
import urllib.parse

import pytest
import requests

from pushjobs.protocol.keys import curve_keypair, rsa_decrypt, z85_decode
from tests.server.test_api_job_validation import ORIGINAL_RULES

pytestmark = pytest.mark.e2e

RFC1123 = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                     r"\d{4} \d\d:\d\d:\d\d GMT$")
FINISHED = ("complete", "quorum_failed", "aborted", "timed_out", "crashed")
MISSING_ALL = ("missing required authentication header(s) 'X-Ops-UserId', 'X-Ops-Timestamp', 'X-Ops-Sign', "
               "'X-Ops-Content-Hash'")


class World:
    """The server and the identities every test uses."""

    def __init__(self, server, backend):
        self.server = server
        self.backend = backend
        s = server
        s.create_org("acme")
        s.create_org("other")
        self.alice = s.create_user("alice", "acme", admin=True)  # admin: may write
        self.bob = s.create_user("bob", "acme")  # plain member: read only
        self.carol = s.create_user("carol", "other")  # not in acme
        self.web1 = s.create_client("web1", "acme")
        self.web2 = s.create_client("web2", "acme")
        self.db1 = s.create_client("db1", "other")

    def http(self, principal, version="1.1", org=None):
        return self.server.client(principal, version=version, org=org)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def world(request, module_server_factory):
    kwargs = {}
    if request.param == "postgresql":
        kwargs["database_url"] = request.getfixturevalue("postgres_cluster").create_database()
    # voting_timeout long enough that a job on absent nodes stays live for the abort tests
    server = module_server_factory(settings={"voting_timeout": 30}, **kwargs)
    return World(server, request.param)


@contextlib.contextmanager
def server_db(server):
    """The server's own database, opened in the test process (to plant output rows)."""
    from pushjobs.server import store
    from pushjobs.server.settings import Settings

    settings = Settings(data_dir=str(server.data_dir), database_url=server.database_url, server_name="127.0.0.1")
    database = store.open_database(settings, migrate=False)
    try:
        with database.connection_context():
            yield store
    finally:
        store.close_database()


def error_of(r):
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    return r.json()["error"]


# --------------------------------------------------------------------------------------
# /pushy/_status and routing


def test_status_needs_no_auth(world):
    r = requests.get(world.server.base_url + "/pushy/_status")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    doc = r.json()
    assert doc["status"] == "it's alive"
    assert re.fullmatch(r"[0-9a-f-]{36}", doc["incarnation_id"])
    assert isinstance(doc["node_fsm_count"], int)
    assert isinstance(doc["job_processes"], list)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_status_other_methods_405(world, method):
    r = requests.request(method, world.server.base_url + "/pushy/_status")
    assert r.status_code == 405
    assert error_of(r) == ["method not allowed"]
    assert "GET" in r.headers["Allow"]


def test_unknown_route_is_json_404(world):
    http = world.http(world.alice)
    for path in ("/nope", "/organizations/acme/pushy/unknown", "/organizations/acme/pushy/config/",
                 "/organizations/acme/pushy/jobs/x/y"):
        r = http.get(path)
        assert r.status_code == 404, path
        assert isinstance(error_of(r), list)


@pytest.mark.parametrize("method,path", [
    ("PUT", "jobs"), ("DELETE", "jobs"), ("PUT", "jobs/abc"), ("DELETE", "jobs/abc"), ("POST", "jobs/abc"),
    ("POST", "node_states"), ("PUT", "config/web1"), ("GET", "jobs/abc/abort"),
    ("DELETE", "jobs/abc/output/web1/stdout"),
])
def test_wrong_methods_are_json_405(world, method, path):
    r = world.http(world.alice).request(method, path)
    assert r.status_code == 405, r.text
    assert error_of(r) == ["method not allowed"]


# --------------------------------------------------------------------------------------
# authentication failures (§10.1, §10.2)


def test_missing_all_headers(world):
    r = world.http(world.alice).get("jobs", sign=False)
    assert r.status_code == 400
    assert error_of(r) == [MISSING_ALL]


@pytest.mark.parametrize("dropped", [("X-Ops-Sign",), ("X-Ops-UserId", "X-Ops-Sign"), ("X-Ops-Content-Hash",),
                                     ("X-Ops-Timestamp",)])
def test_missing_some_headers(world, dropped):
    r = world.http(world.alice).get("jobs", drop=dropped)
    assert r.status_code == 400
    names = ", ".join(f"'{h}'" for h in ("X-Ops-UserId", "X-Ops-Timestamp", "X-Ops-Sign", "X-Ops-Content-Hash")
                      if h in dropped)
    assert error_of(r) == [f"missing required authentication header(s) {names}"]


def test_missing_authorization_headers(world):
    http = world.http(world.alice)
    headers = http.signed_headers("GET", "jobs")
    drop = tuple(k for k in headers if k.startswith("X-Ops-Authorization-"))
    r = http.get("jobs", drop=drop)
    # not a named 400: chef_authn requires four headers; no signature = a bad signature
    assert r.status_code == 401
    assert error_of(r) == [f"Invalid signature for user or client '{world.alice.name}'"]
    assert "X-Ops-Sign" in r.headers.get("WWW-Authenticate", "")


def test_empty_header_counts_as_missing(world):
    r = world.http(world.alice).get("jobs", override={"X-Ops-Sign": ""})
    assert r.status_code == 400
    assert error_of(r) == ["missing required authentication header(s) 'X-Ops-Sign'"]


def test_bad_timestamp(world):
    r = world.http(world.alice).get("jobs", override={"X-Ops-Timestamp": "yesterday"})
    assert r.status_code == 401
    assert error_of(r) == ["bad header(s) 'X-Ops-Timestamp'"]
    assert r.headers["WWW-Authenticate"] == 'X-Ops-Sign version="1.0" version="1.1"'


@pytest.mark.parametrize("offset", [-1000, 1000])
def test_clock_skew(world, offset):
    r = world.http(world.alice).get("jobs", timestamp=time.time() + offset)
    assert r.status_code == 401
    assert error_of(r) == ["Failed to authenticate as alice. Synchronize the clock on your host."]


def test_small_skew_is_fine(world):
    assert world.http(world.alice).get("jobs", timestamp=time.time() - 600).status_code == 200


@pytest.mark.parametrize("sign", ["algorithm=sha1;version=2.0", "algorithm=sha256;version=1.1",
                                  "algorithm=md5;version=1.0", "version=9"])
def test_unsupported_version(world, sign):
    r = world.http(world.alice).get("jobs", override={"X-Ops-Sign": sign})
    assert r.status_code == 400
    assert error_of(r) == ["Unsupported authentication protocol version"]


def test_unknown_principal(world):
    r = world.http(world.alice).get("jobs", user_id="nobody")
    assert r.status_code == 401
    assert error_of(r) == ["Failed to authenticate as 'nobody'. Ensure that your node_name and client key are correct."]
    assert "WWW-Authenticate" in r.headers


def test_client_of_another_org_is_unknown(world):
    r = world.http(world.db1, org="acme").get("jobs")
    assert r.status_code == 401
    assert "Failed to authenticate as 'db1'" in error_of(r)[0]


def test_bad_signature_wrong_key(world):
    # bob's key, alice's name
    r = world.http(world.bob).get("jobs", user_id="alice")
    assert r.status_code == 401
    assert error_of(r) == ["Invalid signature for user or client 'alice'"]
    assert r.headers["WWW-Authenticate"] == 'X-Ops-Sign version="1.0" version="1.1"'


def test_bad_signature_tampered_body_and_path(world):
    http = world.http(world.alice)
    body = json.dumps({"command": "x", "nodes": ["web1"]}).encode()
    signed = http.signed_headers("POST", "jobs", body)
    other = json.dumps({"command": "rm -rf /", "nodes": ["web1"]}).encode()
    r = http.post("jobs", body=other, sign=False, headers={**signed, "Content-Type": "application/json"})
    assert r.status_code == 401 and error_of(r) == ["Invalid signature for user or client 'alice'"]
    signed = http.signed_headers("GET", "node_states")
    r = http.get("jobs", sign=False, headers=signed)
    assert r.status_code == 401
    r = http.get("jobs", override={"X-Ops-Authorization-1": "!!!notbase64!!!"})
    assert r.status_code == 401 and error_of(r) == ["Invalid signature for user or client 'alice'"]


def test_user_not_in_org(world):
    r = world.http(world.carol, org="acme").get("jobs")
    assert r.status_code == 403
    assert error_of(r) == ["'carol' is not associated with organization 'acme'"]


def test_unknown_org(world):
    r = world.http(world.alice, org="nope").get("jobs")
    assert r.status_code == 404
    assert error_of(r) == ["organization 'nope' does not exist."]


def test_body_too_large(world):
    body = b'{"command":"' + b"x" * 1_000_000 + b'","nodes":["web1"]}'
    r = world.http(world.alice).post("jobs", body=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json() == {"error": "JSON must be no more than 1000000 bytes."}


def test_body_at_the_limit_is_read(world):
    body = json.dumps({"command": "x" * (1_000_000 - 40), "nodes": ["web1"]}).encode()
    assert len(body) <= 1_000_000
    r = world.http(world.alice).post("jobs", body=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text


def test_header_names_case_insensitive(world):
    http = world.http(world.web1)
    signed = http.signed_headers("GET", "jobs")
    upper = {k.upper(): v for k, v in signed.items()}
    lower = {k.lower(): v for k, v in signed.items()}
    assert http.get("jobs", sign=False, headers=upper).status_code == 200
    assert http.get("jobs", sign=False, headers=lower).status_code == 200


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.3"])
def test_all_signing_versions(world, version):
    http = world.http(world.alice, version=version)
    assert http.get("jobs").status_code == 200
    assert http.get("node_states/web1").status_code == 200
    r = http.post("jobs", json={"command": "chef-client", "nodes": ["web1"]})
    assert r.status_code == 201, r.text
    assert world.http(world.web1, version=version).get(
        "config/web1", params={"ccpk": curve_keypair()[0]}).status_code == 200


def test_invalid_job_body_is_400_before_authentication(world):
    # §10.2: malformed_request (job validation) precedes is_authorized
    r = world.http(world.bob).post("jobs", json={"command": 1, "nodes": ["web1"]}, user_id="alice")
    assert r.status_code == 400 and r.json() == {"error": "invalid command supplied"}
    # ...but header sanity comes first
    r = world.http(world.alice).post("jobs", json={"command": 1}, sign=False)
    assert r.status_code == 400 and error_of(r) == [MISSING_ALL]


# --------------------------------------------------------------------------------------
# authorization (§10.3)


def test_default_rules_read_any_member_write_admins(world):
    s = world.server
    assert world.http(world.bob).get("jobs").status_code == 200
    assert world.http(world.web1).get("jobs").status_code == 200
    r = world.http(world.bob).post("jobs", json={"command": "x", "nodes": ["web1"]})
    assert r.status_code == 403
    assert error_of(r) == ["User or client 'bob' does not have access to that action on this server."]
    assert world.http(world.web1).post("jobs", json={"command": "x", "nodes": ["web1"]}).status_code == 403
    assert world.http(world.alice).post("jobs", json={"command": "x", "nodes": ["web1"]}).status_code == 201
    assert s  # (server used for its ctl in the other tests)


def test_writers_group_replaces_admins(world):
    s = world.server
    s.create_org("wg")
    admin = s.create_user("wg-admin", "wg", admin=True)
    dev = s.create_user("wg-dev", "wg")
    ops = s.create_user("wg-ops", "wg")
    job = {"command": "x", "nodes": ["n1"]}
    assert world.http(admin).post("jobs", json=job).status_code == 201
    assert world.http(dev).post("jobs", json=job).status_code == 403
    s.add_to_group("wg", "pushy_job_writers", "wg-dev")
    assert world.http(dev).post("jobs", json=job).status_code == 201
    # the group exists now: admins are no longer enough
    assert world.http(admin).post("jobs", json=job).status_code == 403
    # nested: wg-ops in "deployers", deployers in pushy_job_writers
    assert world.http(ops).post("jobs", json=job).status_code == 403
    s.add_to_group("wg", "deployers", "wg-ops")
    s.add_to_group("wg", "pushy_job_writers", "group:deployers")
    assert world.http(ops).post("jobs", json=job).status_code == 201
    s.remove_from_group("wg", "deployers", "wg-ops")
    assert world.http(ops).post("jobs", json=job).status_code == 403


def test_no_admins_no_writers_nobody_writes(world):
    s = world.server
    s.create_org("nogroups")
    u = s.create_user("ng-user", "nogroups")
    # admins exists (created with the org) but is empty: nobody may write
    r = world.http(u).post("jobs", json={"command": "x", "nodes": ["n1"]})
    assert r.status_code == 403


def test_readers_group(world):
    s = world.server
    s.create_org("rg")
    admin = s.create_user("rg-admin", "rg", admin=True)
    reader = s.create_user("rg-reader", "rg")
    node = s.create_client("rg-node", "rg")
    assert world.http(reader).get("jobs").status_code == 200
    s.add_to_group("rg", "pushy_job_readers", "rg-reader")
    assert world.http(reader).get("jobs").status_code == 200
    for who in (admin, node):
        http = world.http(who)
        for path in ("jobs", "node_states", "node_states/x", "jobs/abc", "jobs/abc/output/x/stdout"):
            r = http.get(path)
            assert r.status_code == 403, (who.name, path)
            assert error_of(r) == [f"User or client '{who.name}' does not have access to that action on this server."]
    # a user's config request is a read; a client's config only checks its name
    assert world.http(admin).get("config/rg-node", params={"ccpk": curve_keypair()[0]}).status_code == 403
    assert world.http(node).get("config/rg-node", params={"ccpk": curve_keypair()[0]}).status_code == 200
    # writing is unaffected by the readers group
    assert world.http(admin).post("jobs", json={"command": "x", "nodes": ["rg-node"]}).status_code == 201


# --------------------------------------------------------------------------------------
# config handshake (§2)


def _config(world, principal, node, **params):
    return world.http(principal).get(f"config/{node}", params=params)


def test_config_for_a_client(world):
    pub, _sec = curve_keypair()
    r = _config(world, world.web1, "web1", ccpk=pub, version="2.0")
    assert r.status_code == 200, r.text
    doc = r.json()
    s = world.server
    assert doc["type"] == "config" and doc["host"] == "127.0.0.1"
    hb = doc["push_jobs"]["heartbeat"]
    assert hb == {"out_addr": s.out_addr, "command_addr": s.command_addr, "interval": 0.15,
                  "offline_threshold": 3, "online_threshold": 2}
    assert isinstance(hb["interval"], float)
    assert doc["node"] == "web1" and doc["organization"] == "acme"
    assert doc["public_key"] == s.server_public_key_path.read_text()
    assert doc["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert len(doc["curve_public_key"]) == 40 and len(z85_decode(doc["curve_public_key"])) == 32
    assert doc["encoded_session_key"]["method"] == "hmac_sha256"
    key = rsa_decrypt(world.web1.private_key, base64.b64decode(doc["encoded_session_key"]["key"]))
    assert len(key) == 32
    assert (doc["lifetime"], doc["max_message_skew"], doc["max_body_size"]) == (3600, 300, 65536)
    assert doc["incarnation_id"] == s.status()["incarnation_id"]
    assert list(doc) == ["type", "host", "push_jobs", "node", "organization", "public_key", "curve_public_key",
                         "encoded_session_key", "lifetime", "max_message_skew", "max_body_size", "incarnation_id",
                         "pushjobs"]
    assert doc["pushjobs"]["node_facts"] is True  # our marker: the agent may PUT facts to …/nodes/NODE
    # same session key again, re-encrypted
    doc2 = _config(world, world.web1, "web1", ccpk=pub).json()
    assert doc2["encoded_session_key"]["key"] != doc["encoded_session_key"]["key"]
    assert rsa_decrypt(world.web1.private_key, base64.b64decode(doc2["encoded_session_key"]["key"])) == key
    assert doc2["curve_public_key"] == doc["curve_public_key"]


def test_config_plus_in_ccpk_is_percent_encoded(world):
    for _ in range(50):
        pub, _ = curve_keypair()
        if "+" in pub:
            break
    http = world.http(world.web2)
    url = f"config/web2?ccpk={urllib.parse.quote(pub, safe='')}"
    assert http.get(url).status_code == 200


def test_config_for_a_user_is_a_read_and_encrypts_to_the_user(world):
    r = _config(world, world.bob, "web1", ccpk=curve_keypair()[0])
    assert r.status_code == 200
    key = rsa_decrypt(world.bob.private_key, base64.b64decode(r.json()["encoded_session_key"]["key"]))
    assert len(key) == 32


def test_config_client_name_must_match(world):
    r = _config(world, world.web1, "web2", ccpk=curve_keypair()[0])
    assert r.status_code == 403
    assert error_of(r) == ["Client and node name must match"]


def test_config_missing_ccpk(world):
    r = _config(world, world.web1, "web1")
    assert r.status_code == 400 and error_of(r) == ["Missing ccpk"]


@pytest.mark.parametrize("ccpk", ["", "short", "x" * 41, " " * 40, '"' * 40, "~" * 40])
def test_config_bad_ccpk(world, ccpk):
    r = _config(world, world.web1, "web1", ccpk=ccpk)
    assert r.status_code == 401 and error_of(r) == ["Bad ccpk"]
    assert r.headers["WWW-Authenticate"] == 'X-Ops-Sign version="1.0" version="1.1"'


def test_config_ccpk_checked_before_signature(world):
    r = world.http(world.bob).get("config/web1", user_id="web1")  # bad signature, no ccpk
    assert r.status_code == 400 and error_of(r) == ["Missing ccpk"]
    r = world.http(world.bob).get("config/web1", user_id="web1", params={"ccpk": "bad"})
    assert r.status_code == 401 and error_of(r) == ["Bad ccpk"]
    r = world.http(world.bob).get("config/web1", user_id="web1", params={"ccpk": curve_keypair()[0]})
    assert r.status_code == 401 and error_of(r) == ["Invalid signature for user or client 'web1'"]
    # header sanity still comes first
    r = world.http(world.web1).get("config/web1", sign=False)
    assert r.status_code == 400 and error_of(r) == [MISSING_ALL]


# --------------------------------------------------------------------------------------
# jobs (§10.5–§10.7, §12.1)


def test_create_job_201_with_id_uri_location(world):
    http = world.http(world.alice)
    r = http.post("jobs", json={"command": "chef-client", "nodes": ["web1", "web2"]})
    assert r.status_code == 201, r.text
    doc = r.json()
    job_id = doc["id"]
    assert re.fullmatch(r"[0-9a-f]{32}", job_id)
    assert doc["uri"] == f"{world.server.base_url}/organizations/acme/pushy/jobs/{job_id}"
    assert r.headers["Location"] == doc["uri"]
    # the org GUID's tail prefixes every job id of the org
    other = http.create_job("chef-client", ["web1"])
    assert other[:12] == job_id[:12] and other != job_id
    # X-Forwarded-Proto and Host shape the URI
    r = http.post("jobs", json={"command": "x", "nodes": ["web1"]},
                  headers={"X-Forwarded-Proto": "https", "Host": "push.example.com"})
    assert r.status_code == 201
    assert r.json()["uri"].startswith("https://push.example.com/organizations/acme/pushy/jobs/")


def test_job_document(world):
    http = world.http(world.alice)
    before = time.time()
    job_id = http.create_job("chef-client", ["web1", "web2", "ghost"], run_timeout=120, quorum=1)
    job = http.job(job_id)
    assert list(job)[:1] == ["nodes"]
    assert {k for k in job} == {"nodes", "id", "command", "status", "run_timeout", "created_at", "updated_at"}
    assert job["id"] == job_id and job["command"] == "chef-client" and job["run_timeout"] == 120
    assert job["status"] in ("new", "voting", "running") + FINISHED
    names = sorted(n for ns in job["nodes"].values() for n in ns)
    assert names == ["ghost", "web1", "web2"]  # unknown nodes are accepted
    assert all(job["nodes"].values())  # only statuses with at least one node
    for key in ("created_at", "updated_at"):
        assert RFC1123.match(job[key]), job[key]
    # formatted as UTC (S16)
    created = time.mktime(time.strptime(job["created_at"], "%a, %d %b %Y %H:%M:%S GMT")) - time.timezone
    assert before - 2 <= created <= time.time() + 2


def test_job_options_and_include_file(world):
    http = world.http(world.alice)
    file = "base64:" + base64.b64encode(b"#!/bin/sh\necho hi\n").decode()
    job_id = http.create_job("deploy", ["web1"], user="deploy", dir="/srv", env={"A": "1", "B": "x y"},
                             file=file, capture_output=True)
    job = http.job(job_id)
    assert job["user"] == "deploy" and job["dir"] == "/srv" and job["env"] == {"A": "1", "B": "x y"}
    assert job["capture_output"] is True and job["file_specified"] is True and "file" not in job
    full = http.job(job_id, params={"include_file": "true"})
    assert full["file"] == file and "file_specified" not in full
    assert "file" not in http.job(job_id, params={"include_file": "TRUE"})
    listed = {j["id"]: j for j in http.get("jobs").json()}[job_id]
    assert "nodes" not in listed and "quorum" not in listed and "file" not in listed
    assert listed["file_specified"] is True and listed["env"] == {"A": "1", "B": "x y"}
    # capture_output false and no options: no optional keys at all
    plain = http.job(http.create_job("ls", ["web1"], capture_output=False))
    assert not {"user", "dir", "env", "capture_output", "file", "file_specified"} & set(plain)


def test_list_jobs(world):
    http = world.http(world.bob)
    mine = world.http(world.alice).create_job("uptime", ["web2"])
    jobs = http.get("jobs").json()
    assert isinstance(jobs, list) and mine in {j["id"] for j in jobs}
    for j in jobs:
        assert {"id", "command", "status", "run_timeout", "created_at", "updated_at"} <= set(j)
        assert "nodes" not in j and "quorum" not in j
    # another org's jobs are invisible
    assert world.http(world.carol).get("jobs").json() == [] or all(
        j["id"] != mine for j in world.http(world.carol).get("jobs").json())
    r = world.http(world.carol).get(f"jobs/{mine}")
    assert r.status_code == 404


def test_get_unknown_job_404(world):
    for job_id in ("0" * 32, "not-a-job-id", "x" * 300):
        r = world.http(world.alice).get(f"jobs/{job_id}")
        assert r.status_code == 404 and isinstance(error_of(r), list)


@pytest.mark.parametrize("body,message", ORIGINAL_RULES, ids=[m[:40] for _, m in ORIGINAL_RULES])
def test_every_validation_rule_over_http(world, body, message):
    http = world.http(world.alice)
    r = http.post("jobs", json=body)
    assert r.status_code == 400, r.text
    assert r.json() == {"error": message}


@pytest.mark.parametrize("raw,needle", [
    (b"{not json", "invalid JSON"),
    (b"[1,2]", "JSON object"),
    (b'{"command":"x","nodes":["a","a"]}', "duplicate node name"),
    (b'{"command":"x","nodes":["a"],"quorum":1.5}', "quorum"),
    (b'{"command":"x","nodes":["a"],"run_timeout":-1}', "run_timeout"),
    (b'{"command":"x","nodes":["a"],"run_timeout":0.5}', "run_timeout"),
    (b'{"command":"x","nodes":["a"],"env":{"A":"1","A":"2"}}', "invalid environment value (duplicate key)"),
    (b'{"command":"x","nodes":["a"],"user":7}', "user"),
    (b'{"command":"x","nodes":["a"],"file":"raw:' + b"x" * 100001 + b'"}', "invalid file size"),
    (b'{"command":"x","nodes":["a"],"file":"base64:%%%"}', "couldn't decode base64"),
    (b'{"command":"x","nodes":["a"],"file":"plain"}', "expected 'base64:...' or 'raw:...'"),
    (b'{"command":"x","nodes":["' + b"n" * 300 + b'"]}', "nodes"),
])
def test_bad_bodies_are_400_and_store_nothing(world, raw, needle):
    http = world.http(world.alice)
    before = len(http.get("jobs").json())
    r = http.post("jobs", body=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]
    assert len(http.get("jobs").json()) == before


def test_non_json_content_type_is_415(world):
    http = world.http(world.alice)
    body = json.dumps({"command": "x", "nodes": ["web1"]}).encode()
    r = http.post("jobs", body=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in error_of(r)[0]
    r = http.post("jobs", body=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 201
    r = http.post("jobs", body=body)  # no Content-Type at all: accepted
    assert r.status_code == 201


@pytest.mark.parametrize("accept, ok", [
    (None, True), ("application/json", True), ("*/*", True), ("application/*", True),
    ("application/json; charset=utf-8", True), ("text/html, application/json;q=0.1", True),
    ("text/html", False), ("application/octet-stream", False), ("application/json;q=0, */*", False),
    ("text/event-stream", False),
])
def test_json_resources_negotiate_accept(world, accept, ok):
    """§10.2: 406 when Accept allows neither application/json nor */* (no Accept is fine)."""
    http = world.http(world.alice)
    headers = {"Accept": accept}  # None: requests sends no Accept header at all
    for path in ("jobs", "node_states", "node_states/web1", "/organizations/acme/nodes",
                 "/organizations/acme/search/node"):
        r = http.get(path, headers=headers)
        assert r.status_code == (200 if ok else 406), (path, accept, r.status_code, r.text)
        if not ok:
            assert "application/json" in error_of(r)[0]
    r = requests.get(world.server.base_url + "/pushy/_status", headers=headers, timeout=10)
    assert r.status_code == (200 if ok else 406)


def test_accept_is_checked_after_authorization_and_before_the_resource(world):
    """Evaluation order (§10.2): authentication/authorization → 406 → 404 → handler."""
    bad = {"Accept": "text/html"}
    alice = world.http(world.alice)
    assert alice.get("jobs", sign=False, headers=bad).status_code == 400  # headers first
    assert alice.get("jobs", user_id="nobody", headers=bad).status_code == 401
    assert world.http(world.carol, org="acme").get("jobs", headers=bad).status_code == 403
    assert alice.get(f"jobs/{'0' * 32}", headers=bad).status_code == 406  # before the 404
    before = len(alice.get("jobs").json())
    r = alice.post("jobs", json={"command": "x", "nodes": ["web1"]}, headers=bad)
    assert r.status_code == 406
    assert len(alice.get("jobs").json()) == before  # nothing was created
    assert world.http(world.bob).post("jobs", json={"command": "x", "nodes": ["web1"]},
                                      headers=bad).status_code == 403  # not a writer: 403 first


def test_output_negotiates_octet_stream(world):
    http = world.http(world.alice)
    job_id = http.create_job("echo hi", ["web1"], capture_output=True)
    with server_db(world.server) as store:
        store.JobOutput.create(job=job_id, node_name="web1", stdout=b"hi\n", stderr=b"")
    path = f"jobs/{job_id}/output/web1/stdout"
    for accept in ("application/octet-stream", "*/*", "application/*", None):
        r = http.get(path, headers={"Accept": accept})  # None: no Accept header at all
        assert r.status_code == 200 and r.content == b"hi\n", (accept, r.status_code)
    for accept in ("application/json", "text/plain", "application/octet-stream;q=0, */*"):
        r = http.get(path, headers={"Accept": accept})
        assert r.status_code == 406 and "application/octet-stream" in error_of(r)[0], (accept, r.text)


def test_file_at_limit_and_zero_timeout_accepted(world):
    http = world.http(world.alice)
    http.create_job("x", ["web1"], file="raw:" + "x" * 100000, run_timeout=0, quorum=0)
    http.create_job("x", ["web1"], file="base64:" + base64.b64encode(b"\0" * 100000).decode())


# --------------------------------------------------------------------------------------
# output (§10.8, §14)


def test_output_retrieval(world):
    http = world.http(world.bob)
    job_id = world.http(world.alice).create_job("echo hi", ["web1", "web2"], capture_output=True)
    r = http.get(f"jobs/{job_id}/output/web1/stdout")
    assert r.status_code == 404 and isinstance(error_of(r), list)
    with server_db(world.server) as store:
        store.JobOutput.create(job=job_id, node_name="web1", stdout=b"hi\n\xff", stderr=b"")
    r = http.get(f"jobs/{job_id}/output/web1/stdout")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.content == b"hi\n\xff"
    r = http.get(f"jobs/{job_id}/output/web1/stderr")
    assert r.status_code == 200 and r.content == b""
    assert http.get(f"jobs/{job_id}/output/web2/stdout").status_code == 404
    r = http.get(f"jobs/{job_id}/output/web1/stdlog")
    assert r.status_code == 404 and "stdout or stderr" in error_of(r)[0]
    assert http.get(f"jobs/{'0' * 32}/output/web1/stdout").status_code == 404


# --------------------------------------------------------------------------------------
# node states (§10.9, §10.10)


def test_node_states(world):
    http = world.http(world.bob)
    r = http.get("node_states")
    assert r.status_code == 200 and isinstance(r.json(), list)
    for entry in r.json():
        assert set(entry) == {"node_name", "availability"}
    r = http.get("node_states/never-seen")
    assert r.status_code == 200
    assert r.json() == {"node_name": "never-seen", "status": "offline", "availability": "unavailable"}


# --------------------------------------------------------------------------------------
# abort (ours, §17.0)


def test_node_states_and_abort_with_a_live_node(world):
    """A protocol-level node (FakeNode) comes online; a job waits on its vote; we abort it."""
    from tests.helpers.fakenode import FakeNode

    alice, bob = world.http(world.alice), world.http(world.bob)
    r = alice.post(f"jobs/{'0' * 32}/abort")
    assert r.status_code == 404 and isinstance(error_of(r), list)
    node = FakeNode(world.server, world.web2)
    node.commit_reply = None  # never votes: the job stays in voting (voting_timeout 30 s)
    node.start()
    try:
        node.wait_idle_on_server(bob)
        assert bob.get("node_states/web2").json() == {"node_name": "web2", "status": "online",
                                                      "availability": "available"}
        assert {"node_name": "web2", "availability": "available"} in bob.get("node_states").json()
        assert world.server.status()["node_fsm_count"] >= 1
        job_id = alice.create_job("sleep 100", ["web2"])
        node.wait_for("commit")
        assert job_id in world.server.status()["job_processes"]
        r = bob.post(f"jobs/{job_id}/abort")
        assert r.status_code == 403
        r = alice.post(f"jobs/{job_id}/abort")
        assert r.status_code in (200, 202), r.text
        assert r.json()["id"] == job_id
        job = alice.wait_job(job_id, timeout=15)
        assert job["status"] == "aborted"
        r = alice.post(f"jobs/{job_id}/abort")
        assert r.status_code == 409
        assert "already finished" in error_of(r)[0]
    finally:
        node.stop()


def test_abort_of_a_finished_job_is_409(world):
    alice = world.http(world.alice)
    job_id = alice.create_job("x", ["absent-node-3"])  # nobody online: quorum fails at once
    status = alice.wait_job(job_id, timeout=15)["status"]
    r = alice.post(f"jobs/{job_id}/abort")
    assert r.status_code == 409
    assert error_of(r) == [f"job '{job_id}' is already finished (status {status})"]


# --------------------------------------------------------------------------------------
# the running server caches no identity: ctl changes from another process count at once


def test_ctl_changes_from_another_process_count_from_the_next_request(world):
    """Keys are parsed once per PEM text, connections are pooled, principals and groups are read
    in one query: none of that may keep a deleted client, an old key or an old group rule
    alive. Each ctl command below runs in its own process while the server keeps running."""
    from tests.helpers.server import Principal

    s = world.server
    s.create_org("rotate")
    node = s.create_client("rot1", "rotate")
    reader = s.create_user("rotreader", "rotate")
    old_key = node.private_key  # loaded now: keeps signing with the old key
    pub = curve_keypair()[0]
    http_node, http_reader = world.http(node), world.http(reader)
    assert http_node.get("config/rot1", params={"ccpk": pub}).status_code == 200
    assert http_reader.get("node_states").status_code == 200
    # client deleted -> unknown principal on the very next request
    s.ctl("client-delete", "rot1", "--org", "rotate")
    r = http_node.get("config/rot1", params={"ccpk": pub})
    assert r.status_code == 401, r.text
    assert "Failed to authenticate as 'rot1'" in r.json()["error"][0]
    # re-created with a new key: the old key is refused, the new one works
    new_path = s.keys_dir / "client-rotate-rot1-new.pem"
    s.ctl("client-create", "rot1", "--org", "rotate", "--key-out", str(new_path))
    r = http_node.get("config/rot1", params={"ccpk": pub})
    assert r.status_code == 401 and r.json() == {"error": ["Invalid signature for user or client 'rot1'"]}
    assert node.private_key is old_key
    new_node = Principal(name="rot1", kind="client", org="rotate", key_path=new_path)
    r = world.http(new_node).get("config/rot1", params={"ccpk": pub})
    assert r.status_code == 200, r.text
    assert len(rsa_decrypt(new_node.private_key, base64.b64decode(r.json()["encoded_session_key"]["key"]))) == 32
    # a group rule added: the member-only read rule applies at once
    s.ctl("group-add", "rotate", "pushy_job_readers", "client:rot1")
    assert http_reader.get("node_states").status_code == 403
    s.ctl("group-add", "rotate", "pushy_job_readers", "rotreader")
    assert http_reader.get("node_states").status_code == 200
    # user deleted -> 401
    s.ctl("user-delete", "rotreader")
    assert http_reader.get("node_states").status_code == 401
