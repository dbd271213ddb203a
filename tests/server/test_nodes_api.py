"""Nodes and search API in-process: a real app, a real SQLite file, real Chef signatures.

The end-to-end path (the real server process, the CLI) is covered in
tests/cli/; these tests pin the resource rules quickly: shapes, validation,
authorization, the search grammar's HTTP mapping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from pushjobs.protocol.chef_auth import sign_request
from pushjobs.protocol.keys import generate_rsa_key, public_key_pem

KEYS: dict[str, Any] = {}


def _key(name: str) -> Any:
    if name not in KEYS:
        KEYS[name] = generate_rsa_key(2048)
    return KEYS[name]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from pushjobs.server import store
    from pushjobs.server.app import create_app
    from pushjobs.server.runtime import Runtime
    from pushjobs.server.settings import Settings

    data = Path(tmp_path_factory.mktemp("nodes-api"))
    settings = Settings(data_dir=str(data))
    store.open_database(settings)
    with store.db.connection_context():
        acme = store.Org.create(name="acme", guid="a" * 32)
        other = store.Org.create(name="other", guid="b" * 32)
        for uname, org in (("alice", acme), ("bob", acme), ("carol", other), ("dave", acme)):
            u = store.User.create(name=uname, public_key=public_key_pem(_key(uname)))
            store.OrgUser.create(org=org, user=u)
        for cname in ("web1", "web2"):
            store.Client.create(org=acme, name=cname, public_key=public_key_pem(_key(cname)))
        admins = store.Group.create(org=acme, name="admins")
        store.GroupMember.create(group=admins, kind="user", name="alice")
        readers = store.Group.create(org=acme, name="pushy_job_readers")
        for member, kind in (("alice", "user"), ("bob", "user"), ("web1", "client"), ("web2", "client")):
            store.GroupMember.create(group=readers, kind=kind, name=member)
        # dave is in the org but not a reader
    flask_app = create_app(settings, Runtime(settings), public_key_pem="")
    yield flask_app
    store.close_database()


class Api:
    def __init__(self, app: Any, who: str):
        self.c = app.test_client()
        self.who = who

    def req(self, method: str, path: str, body: Any = None, query: str = "") -> Any:
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = sign_request(_key(self.who), self.who, method, path, data)
        headers["Accept"] = "application/json"
        if body is not None:
            headers["Content-Type"] = "application/json"
        url = path + (f"?{query}" if query else "")
        return self.c.open(url, method=method, data=data, headers=headers)


def node(name: str, **kw: Any) -> dict:
    return {"name": name, "chef_environment": kw.pop("env", "_default"), "json_class": "Chef::Node",
            "chef_type": "node", "run_list": kw.pop("run_list", []), **kw}


N = "/organizations/acme/nodes"
S = "/organizations/acme/search/node"


def test_put_creates_then_replaces_and_get_returns_chef_shape(app: Any) -> None:
    alice = Api(app, "alice")
    r = alice.req("PUT", f"{N}/n1", node("n1", run_list=["role[web]"], automatic={"platform": "debian"}))
    assert r.status_code == 201, r.get_json()
    r = alice.req("PUT", f"{N}/n1", node("n1", run_list=["role[db]"], automatic={"platform": "centos"}))
    assert r.status_code == 200
    doc = alice.req("GET", f"{N}/n1").get_json()
    assert doc == {"name": "n1", "chef_environment": "_default", "json_class": "Chef::Node",
                   "chef_type": "node", "run_list": ["role[db]"], "automatic": {"platform": "centos"},
                   "normal": {}, "default": {}, "override": {}}


def test_post_creates_and_conflicts(app: Any) -> None:
    alice = Api(app, "alice")
    r = alice.req("POST", N, node("p1", env="production"))
    assert r.status_code == 201
    assert r.get_json()["uri"].endswith("/organizations/acme/nodes/p1")
    assert r.headers["Location"].endswith("/nodes/p1")
    r = alice.req("POST", N, node("p1"))
    assert r.status_code == 409
    assert r.get_json() == {"error": ["Node already exists"]}


def test_list_is_name_to_uri(app: Any) -> None:
    alice = Api(app, "alice")
    alice.req("PUT", f"{N}/l1", node("l1"))
    listing = alice.req("GET", N).get_json()
    assert listing["l1"].endswith("/organizations/acme/nodes/l1")


def test_get_unknown_is_404(app: Any) -> None:
    r = Api(app, "alice").req("GET", f"{N}/nope")
    assert r.status_code == 404
    assert "nope" in r.get_json()["error"][0]


@pytest.mark.parametrize(
    "body, field",
    [
        (node("bad name!"), "name"),
        (node("v1", env="bad env"), "chef_environment"),
        (node("v1", run_list="role[web]"), "run_list"),
        (node("v1", run_list=["role[web"]), "run_list"),
        (node("v1", automatic=[]), "automatic"),
        (node("v1", normal="x"), "normal"),
        (node("v1", json_class="Chef::Role"), "json_class"),
        (node("other"), "name"),  # PUT body name != URL name
    ],
)
def test_validation_names_the_field(app: Any, body: dict, field: str) -> None:
    r = Api(app, "alice").req("PUT", f"{N}/v1", body)
    assert r.status_code == 400
    assert f"Field '{field}' invalid" in r.get_json()["error"][0]


def test_malformed_json_is_400(app: Any) -> None:
    r = Api(app, "alice").req("PUT", f"{N}/v1", b"{not json")
    assert r.status_code == 400
    r = Api(app, "alice").req("PUT", f"{N}/v1", b"[1]")
    assert r.status_code == 400


def test_client_writes_only_its_own_node(app: Any) -> None:
    web1 = Api(app, "web1")
    assert web1.req("PUT", f"{N}/web1", node("web1", automatic={"fqdn": "web1.example"})).status_code in (200, 201)
    r = web1.req("PUT", f"{N}/web2", node("web2"))
    assert r.status_code == 403
    assert web1.req("POST", N, node("web2")).status_code == 403
    assert web1.req("GET", f"{N}/web1").status_code == 200


def test_user_needs_write_permission(app: Any) -> None:
    r = Api(app, "bob").req("PUT", f"{N}/b1", node("b1"))  # not an admin
    assert r.status_code == 403
    assert "does not have access" in r.get_json()["error"][0]


def test_readers_group_applies_to_reads(app: Any) -> None:
    assert Api(app, "dave").req("GET", N).status_code == 403
    assert Api(app, "dave").req("GET", S, query="q=*:*").status_code == 403


def test_other_org_member_is_forbidden(app: Any) -> None:
    assert Api(app, "carol").req("GET", N).status_code == 403


def test_unsigned_request_is_rejected(app: Any) -> None:
    r = app.test_client().get(N)
    assert r.status_code == 400
    assert "missing required authentication header" in r.get_json()["error"][0]


def test_delete(app: Any) -> None:
    alice = Api(app, "alice")
    alice.req("PUT", f"{N}/d1", node("d1"))
    assert alice.req("DELETE", f"{N}/d1").get_json()["name"] == "d1"
    assert alice.req("GET", f"{N}/d1").status_code == 404


def _search(app: Any, q: Optional[str], **params: Any) -> Any:
    from urllib.parse import urlencode

    if q is not None:
        params["q"] = q
    return Api(app, "bob").req("GET", S, query=urlencode(params))


def test_search_shape_grammar_and_paging(app: Any) -> None:
    alice = Api(app, "alice")
    for i, (role, plat) in enumerate([("web", "debian"), ("web", "ubuntu"), ("db", "debian")]):
        alice.req("PUT", f"{N}/s{i}", node(f"s{i}", run_list=[f"role[{role}]"],
                                              automatic={"platform": plat, "kernel": {"name": "Linux"}},
                                              normal={"tags": ["search-test"]}))
    r = _search(app, "tags:search-test AND role:web AND platform:debian")
    assert r.status_code == 200
    body = r.get_json()
    assert body["total"] == 1 and body["start"] == 0
    assert body["rows"][0]["name"] == "s0" and body["rows"][0]["chef_type"] == "node"
    body = _search(app, "tags:search-test AND NOT role:web").get_json()
    assert [n["name"] for n in body["rows"]] == ["s2"]
    body = _search(app, "tags:search-test", start=1, rows=1).get_json()
    assert body["total"] == 3 and body["start"] == 1 and [n["name"] for n in body["rows"]] == ["s1"]
    body = _search(app, "tags:search-test AND kernel_name:Linux").get_json()
    assert body["total"] == 3
    assert _search(app, None).get_json()["total"] >= 3  # q defaults to *:*
    # a replaced node is searched as it is now (the expansion cache follows updated_at)
    alice.req("PUT", f"{N}/s0", node("s0", run_list=["role[web]"], automatic={"platform": "arch"},
                                     normal={"tags": ["search-test"]}))
    assert _search(app, "tags:search-test AND platform:debian").get_json()["total"] == 1
    assert [n["name"] for n in _search(app, "platform:arch").get_json()["rows"]] == ["s0"]
    alice.req("DELETE", f"{N}/s2")
    assert _search(app, "tags:search-test").get_json()["total"] == 2


def test_partial_search(app: Any) -> None:
    alice = Api(app, "alice")
    alice.req("PUT", f"{N}/ps1", node("ps1", automatic={"ipaddress": "10.1.1.1", "kernel": {"name": "Linux"}},
                                      normal={"tags": ["partial"]}))
    r = Api(app, "bob").req("POST", S, {"name": ["name"], "ip": ["ipaddress"], "k": ["kernel", "name"],
                                        "none": ["no", "such"]}, query="q=tags:partial")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["total"] == 1
    assert body["rows"][0]["url"].endswith("/organizations/acme/nodes/ps1")
    assert body["rows"][0]["data"] == {"name": "ps1", "ip": "10.1.1.1", "k": "Linux", "none": None}
    r = Api(app, "bob").req("POST", S, {"name": "name"}, query="q=*:*")
    assert r.status_code == 400 and "partial search" in r.get_json()["error"][0]


@pytest.mark.parametrize("q, pos", [("role:(web", 9), ("role:web AND", 12), ('name:"x', 5)])
def test_search_malformed_query_is_400_with_position(app: Any, q: str, pos: int) -> None:
    r = _search(app, q)
    assert r.status_code == 400
    msg = r.get_json()["error"][0]
    assert msg.startswith("invalid search query:") and f"at position {pos}" in msg


@pytest.mark.parametrize("param", ["start", "rows"])
def test_search_bad_paging_parameter(app: Any, param: str) -> None:
    r = _search(app, "*:*", **{param: "-1"})
    assert r.status_code == 400
    assert f"'{param}'" in r.get_json()["error"][0]


def test_search_unknown_index(app: Any) -> None:
    r = Api(app, "bob").req("GET", "/organizations/acme/search/role", query="q=*:*")
    assert r.status_code == 404
    assert Api(app, "bob").req("GET", "/organizations/acme/search").get_json()["node"].endswith("/search/node")
