"""Chef's real request signer (mixlib-authentication 3.0, Ruby) against our server, and back.

Forward: tests/compat/ruby/chef_signer.rb signs every request the way Chef's
HTTP stack does (Chef::HTTP::Authenticator + AuthCredentials: upper-cased
header names, `X-Ops-Sign: algorithm=…;version=…;` with its trailing `;`,
X-Ops-Server-API-Version, unsigned query string) and sends it with Ruby's
net/http, or byte for byte on a plain socket (`raw`), to a real
push-jobs-server. Reverse: headers made by `pushjobs.protocol.chef_auth.
sign_request` are checked by Mixlib::Authentication::SignatureVerification,
the verifier a Chef server uses, so our CLI and agent are accepted by Chef.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path

import pytest

from pushjobs.protocol.chef_auth import sign_request
from pushjobs.protocol.keys import (curve_keypair, generate_rsa_key, public_key_pem,
                                    rsa_decrypt, write_private_key)
from tests.compat.rubytools import requires_ruby, run_signer
from tests.helpers.fakenode import FakeNode

pytestmark = [pytest.mark.e2e, requires_ruby]

ORG = "acme"
# (signing version, X-Ops-Server-API-Version): Chef's Authenticator sends "1" in
# older releases and "2" in newer ones; None = no header (mixlib signs "0")
VERSIONS = [("1.0", "1"), ("1.1", "1"), ("1.3", "1"), ("1.3", "2"), ("1.3", None)]
PUSHY = f"/organizations/{ORG}/pushy"


@pytest.fixture(scope="module")
def env(module_server_factory, tmp_path_factory):
    """One server with a user, a job reader, a client web1 kept available by a FakeNode."""
    # a finished job's history stays readable (not yet a `summary`) for the whole module
    srv = module_server_factory(heartbeat_interval=150, settings={"wait_complete_time": 120})
    srv.create_org(ORG)
    alice = srv.create_user("alice", org=ORG, admin=True)
    web1 = srv.create_client("web1", org=ORG)
    http = srv.client(alice)
    node = FakeNode(srv, web1)
    node.run_result = ("succeeded", "hello from web1\n", "warn: none\n")
    node.start()
    node.wait_idle_on_server(http)
    other = tmp_path_factory.mktemp("keys") / "other.pem"
    write_private_key(other, generate_rsa_key())
    yield {"srv": srv, "alice": alice, "web1": web1, "http": http, "node": node, "other_key": other}
    node.stop()


def signer(env, principal, requests, key_path: Path | None = None) -> list[dict]:
    return run_signer("request", {"base_url": env["srv"].base_url,
                                  "key_path": str(key_path or principal.key_path),
                                  "user": principal.name, "requests": requests})


def test_config_handshake_signed_by_mixlib(env):
    """The stock client's config GET (every signing version; ccpk CGI-escaped, unsigned)."""
    ccpk, _secret = curve_keypair()
    reqs = [{"method": "GET", "path": f"{PUSHY}/config/web1", "version": v, "api_version": a,
             "query_params": {"ccpk": ccpk, "version": "2.0"}} for v, a in VERSIONS]
    reqs.append({"method": "GET", "path": f"{PUSHY}/config/web1", "version": "1.1", "raw": True,
                 "query_params": {"ccpk": ccpk, "version": "2.0"}})
    results = signer(env, env["web1"], reqs)
    for req, res in zip(reqs, results):
        assert res.get("status") == 200, (req, res)
        sent = res["sent_headers"]
        assert "X-OPS-USERID" in sent and "X-OPS-AUTHORIZATION-1" in sent and "HOST" in sent
        assert sent["X-OPS-SIGN"] == f"algorithm={'sha256' if req['version'] == '1.3' else 'sha1'};version={req['version']};"
        doc = json.loads(res["body"])
        assert doc["node"] == "web1" and doc["organization"] == ORG
        assert doc["curve_public_key"] and doc["incarnation_id"]
        key = rsa_decrypt(env["web1"].private_key, base64.b64decode(doc["encoded_session_key"]["key"]))
        assert len(key) == 32
        assert doc["push_jobs"]["heartbeat"]["out_addr"] == env["srv"].out_addr


def test_wrong_key_is_401_for_every_version(env):
    reqs = [{"method": "GET", "path": f"{PUSHY}/node_states", "version": v, "api_version": a}
            for v, a in VERSIONS]
    for res in signer(env, env["alice"], reqs, key_path=env["other_key"]):
        assert res["status"] == 401, res
        assert "X-Ops-Sign" in (res["www_authenticate"] or ""), res
        assert "Invalid signature" in res["body"], res


def test_other_clients_config_is_403(env):
    """A client may fetch only its own config (web2 need not even exist)."""
    ccpk, _ = curve_keypair()
    [res] = signer(env, env["web1"], [{"method": "GET", "path": f"{PUSHY}/config/web2",
                                       "query_params": {"ccpk": ccpk, "version": "2.0"}}])
    assert res["status"] == 403, res


def test_jobs_node_states_output_and_feed(env):
    """knife-push's requests, signed by mixlib: POST/GET jobs, node_states, output, the SSE feed."""
    body = json.dumps({"command": "chef-client", "nodes": ["web1"], "capture_output": True})
    created = signer(env, env["alice"], [
        {"method": "POST", "path": f"{PUSHY}/jobs", "body": body, "version": v, "api_version": a}
        for v, a in VERSIONS[:1]])
    assert created[0]["status"] == 201, created
    doc = json.loads(created[0]["body"])
    job_id = doc["id"]
    env["http"].wait_job(job_id, ("complete",), timeout=15)
    # knife-push follows the returned `uri` (Chef::ServerAPI signs that URL's path)
    uri = urllib.parse.urlsplit(doc["uri"])
    assert uri.path == f"{PUSHY}/jobs/{job_id}", doc
    [followed] = signer(env, env["alice"], [{"method": "GET", "path": uri.path, "version": "1.1"}])
    assert followed["status"] == 200 and json.loads(followed["body"])["id"] == job_id

    reqs = []
    for v, a in VERSIONS:
        reqs += [
            {"method": "GET", "path": f"{PUSHY}/jobs", "version": v, "api_version": a},
            {"method": "GET", "path": f"{PUSHY}/jobs/{job_id}", "version": v, "api_version": a},
            {"method": "GET", "path": f"{PUSHY}/node_states", "version": v, "api_version": a},
            {"method": "GET", "path": f"{PUSHY}/node_states/web1", "version": v, "api_version": a},
            {"method": "GET", "path": f"{PUSHY}/jobs/{job_id}/output/web1/stdout", "version": v,
             "api_version": a, "accept": "application/octet-stream"},
        ]
    reqs.append({"method": "GET", "path": f"{PUSHY}/jobs/{job_id}/output/web1/stderr", "version": "1.1",
                 "raw": True, "accept": "application/octet-stream"})
    # the job's SSE feed, read by net/http (a finished job's feed is finite)
    feeds = [{"method": "GET", "path": f"{PUSHY}/job_status_feed/{job_id}", "version": v, "api_version": a,
              "accept": "text/event-stream", "sse_max_events": 50, "sse_timeout": 10} for v, a in VERSIONS]
    res = signer(env, env["alice"], reqs + feeds)
    res, feed_results = res[:len(reqs)], res[len(reqs):]
    assert all(r.get("status") == 200 for r in res), [(q["path"], r.get("status"), r.get("body")) for q, r in zip(reqs, res)]
    for i in range(0, len(VERSIONS) * 5, 5):
        jobs, job, states, state, out = (json.loads(res[i]["body"]), json.loads(res[i + 1]["body"]),
                                         json.loads(res[i + 2]["body"]), json.loads(res[i + 3]["body"]),
                                         res[i + 4]["body"])
        assert job_id in [j["id"] for j in jobs]
        assert job["status"] == "complete" and job["nodes"] == {"succeeded": ["web1"]}
        assert {"node_name": "web1", "availability": "available"} in states
        assert state == {"node_name": "web1", "status": "online", "availability": "available"}
        assert out == "hello from web1\n"
    assert res[-1]["body"] == "warn: none\n"

    for feed in feed_results:
        assert feed["status"] == 200 and feed["content_type"].startswith("text/event-stream"), feed
        names = [e.get("event") for e in feed["events"]]
        assert [e.get("id") for e in feed["events"]] == [f"job-{i}" for i in range(1, len(names) + 1)]
        assert names[0] == "start" and names[-1] == "job_complete", names
        run = json.loads(feed["events"][names.index("run_complete")]["data"])
        assert run["node"] == "web1" and run["status"] == "success", run  # §11.3 spelling
        done = json.loads(feed["events"][-1]["data"])
        assert done["status"] == "complete"


def test_knife_push_job_start_bodies(env):
    """The exact bodies `knife job start` posts (knife-push job_start.rb/job_helpers.rb), then its polling.

    It always sends `capture_output` (false) and `env` (`{}` without
    --with-env), the quorum as a count, `--file` as "raw:…"; it takes the job
    id as the last 32 characters of `uri` and polls that absolute URL.
    """
    bodies = [
        {"command": "chef-client", "nodes": ["web1"], "quorum": 1, "capture_output": False, "env": {}},
        {"command": "chef-client", "nodes": ["web1"], "quorum": 1, "file": "raw:line one\nline two\n",
         "capture_output": True, "env": {"A": "b"}, "dir": "/tmp", "run_timeout": 60},
    ]
    for body in bodies:
        [res] = signer(env, env["alice"], [{"method": "POST", "path": f"{PUSHY}/jobs", "version": "1.1",
                                            "body": json.dumps(body)}])
        assert res["status"] == 201, (body, res)
        uri = json.loads(res["body"])["uri"]
        assert uri.startswith(env["srv"].base_url + "/"), uri
        job_id = uri[-32:]
        env["http"].wait_job(job_id, ("complete",), timeout=15)
        [job] = signer(env, env["alice"], [{"method": "GET", "path": urllib.parse.urlsplit(uri).path}])
        doc = json.loads(job["body"])
        assert doc["id"] == job_id and doc["status"] == "complete" and doc["nodes"] == {"succeeded": ["web1"]}
    # the raw file reached the node unchanged, with the other options
    commit = env["node"].wait_for("commit", timeout=5, where=lambda b: b.get("job_id") == job_id)
    assert commit["file"] == "raw:line one\nline two\n" and commit["capture"] is True
    assert commit["env"] == {"A": "b"} and commit["dir"] == "/tmp"


def test_post_job_bad_body_signed_by_mixlib_is_400(env):
    [res] = signer(env, env["alice"], [{"method": "POST", "path": f"{PUSHY}/jobs", "version": "1.3",
                                        "body": json.dumps({"command": "x", "nodes": "web1"})}])
    assert res["status"] == 400, res
    assert "error" in json.loads(res["body"])


# --- reverse: our signatures, Chef's verifier ------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.3"])
def test_our_signatures_pass_mixlib_verification(version):
    key = generate_rsa_key()
    other = generate_rsa_key()
    pem = public_key_pem(key)
    path = "/organizations/acme/pushy/jobs"
    body = json.dumps({"command": "chef-client", "nodes": ["web1", "web2"]}).encode()
    items = []
    for method, b in (("GET", b""), ("POST", body), ("PUT", "ünïcode".encode())):
        h = sign_request(key, "alice", method, path, b, version=version)
        items.append({"public_key": pem, "method": method, "path": path, "body": b.decode(), "headers": h})
    for api in ("2", None):  # another API version, and none at all (both sides assume "0")
        h = sign_request(key, "alice", "GET", path, b"", version=version, server_api_version=api)
        items.append({"public_key": pem, "method": "GET", "path": path, "body": "", "headers": h})
    # the path as a client may write it: Chef canonicalizes repeated and trailing slashes
    h = sign_request(key, "alice", "GET", "/organizations//acme/pushy/jobs/", b"", version=version)
    items.append({"public_key": pem, "method": "GET", "path": "/organizations//acme/pushy/jobs/",
                  "body": "", "headers": h})
    good = len(items)
    # negative controls: the verifier is not a rubber stamp
    h = sign_request(key, "alice", "POST", path, body, version=version)
    items.append({"public_key": pem, "method": "POST", "path": path, "body": body.decode() + " ", "headers": h})
    items.append({"public_key": pem, "method": "POST", "path": path + "x", "body": body.decode(), "headers": h})
    items.append({"public_key": public_key_pem(other), "method": "POST", "path": path,
                  "body": body.decode(), "headers": h})
    h = sign_request(key, "alice", "GET", path, b"", version=version, timestamp=1_000_000_000)
    items.append({"public_key": pem, "method": "GET", "path": path, "body": "", "headers": h})
    res = run_signer("verify", {"requests": items})
    assert [r["ok"] for r in res[:good]] == [True] * good, res[:good]
    assert all(r["user_id"] == "alice" for r in res[:good])
    assert [r["ok"] for r in res[good:]] == [False] * 4, res[good:]
    assert res[good]["valid_content_hash"] is False and res[good + 1]["valid_signature"] is False
    assert res[good + 2]["valid_signature"] is False and res[good + 3]["valid_timestamp"] is False


def test_https_with_certificate_verification(module_server_factory):
    """The same signed requests over HTTPS, the server's certificate verified by Ruby's OpenSSL."""
    srv = module_server_factory(heartbeat_interval=150, ssl=True)
    srv.create_org(ORG)
    web9 = srv.create_client("web9", org=ORG)
    ccpk, _ = curve_keypair()
    reqs = [{"method": "GET", "path": f"{PUSHY}/config/web9", "version": v, "api_version": a,
             "query_params": {"ccpk": ccpk, "version": "2.0"}} for v, a in VERSIONS]
    res = run_signer("request", {"base_url": srv.base_url, "key_path": str(web9.key_path), "user": "web9",
                                 "ca_file": str(srv.verify), "requests": reqs})
    assert srv.base_url.startswith("https://")
    assert [r.get("status") for r in res] == [200] * len(VERSIONS), res
    # without the CA the connection is refused by verification, as Chef would
    [bad] = run_signer("request", {"base_url": srv.base_url, "key_path": str(web9.key_path), "user": "web9",
                                   "requests": reqs[:1]})
    assert "certificate verify failed" in bad.get("error", ""), bad
