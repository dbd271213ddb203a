"""Port of oc-pushy-pedant `node_states_spec.rb`: GET …/pushy/node_states[/NODE] (PROTOCOL.md §10.9–§10.10).

Every `it` of the original is a case here, in the original's grouping:

* HTTP verb validation: PUT/POST/DELETE on both paths → 405;
* access control with no `pushy_job_readers` (org `pedant-testorg-ns`), with
  the group (`…-ns-readers`), with a nested group (`…-ns-nested`);
* bogus org; the chef-pedant shared "handles authentication headers correctly"
  suite on both paths.

Where we answer differently from the original, the case says why: unknown
nodes are 200 "offline" (§10.10; the original's 404 cases were `:skip`ped
because it never 404s either). The original also put the outside user into
`pushy_job_readers`; our ctl refuses to group a user of another org, and the
answer is the same 403 "not associated" either way (membership is checked
before the groups).
"""

from __future__ import annotations

import pytest

from tests.pedant.conftest import (
    ADMIN_CLIENT, ADMIN_USER, AUTH_CASES, FAILED_TO_AUTHENTICATE_AS_INVALID, NON_ADMIN_CLIENT, AuthCase,
    PedantOrg, PedantWorld, assert_error, auth_case_request, check_auth_case, no_access, not_associated)

NODE = "some_node"
NON_EXISTENT_NODE = "not_a_number"
PATHS = ["node_states/", f"node_states/{NODE}"]


def offline(node: str = NODE) -> dict:
    return {"availability": "unavailable", "node_name": node, "status": "offline"}


@pytest.fixture(scope="module")
def orgs(pedant_world: PedantWorld) -> dict[str, PedantOrg]:
    made = pedant_world.make_orgs({
        "pedant-testorg-ns": None,
        "pedant-testorg-ns-readers": [
            ("pushy_job_readers", "user:pedant_user"),
            ("pushy_job_readers", f"client:{NON_ADMIN_CLIENT}")],
        "pedant-testorg-ns-nested": [
            ("nested_pushy_job_readers", "user:pedant_user"),
            ("nested_pushy_job_readers", f"client:{NON_ADMIN_CLIENT}"),
            ("pushy_job_readers", "group:nested_pushy_job_readers")],
    })
    return {"plain": made["pedant-testorg-ns"], "readers": made["pedant-testorg-ns-readers"],
            "nested": made["pedant-testorg-ns-nested"]}


# --- HTTP verb validation ---------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE"])
def test_verbs_other_than_get_are_405(orgs: dict, path: str, method: str) -> None:
    """'HTTP verb validation: PUT|POST|DELETE returns a 405 ("Method Not Allowed")'."""
    http = orgs["plain"].http("admin_user")
    r = http.request(method, path, json=offline()) if method != "DELETE" else http.request(method, path)
    assert_error(r, 405)
    assert "GET" in r.headers["Allow"] and method not in r.headers["Allow"]


# --- access control with no pushy_job_readers ------------------------------------------


@pytest.mark.parametrize("actor", ["admin_user", "normal_user", "non_admin_client"])
def test_no_readers_list_is_200(orgs: dict, actor: str) -> None:
    """'GET /node_states returns a 200 ("OK") for admin, normal user, client'."""
    r = orgs["plain"].http(actor).get("node_states/")
    assert r.status_code == 200, r.text
    assert isinstance(r.json(), list)


@pytest.mark.parametrize("actor", ["admin_user", "normal_user", "non_admin_client"])
def test_no_readers_node_is_200_offline(orgs: dict, actor: str) -> None:
    """'GET /node_states/<name> returns a 200 ("OK") for admin, normal user, client' (body exact)."""
    r = orgs["plain"].http(actor).get(f"node_states/{NODE}")
    assert r.status_code == 200, r.text
    assert r.json() == offline()


@pytest.mark.parametrize("path", PATHS)
def test_no_readers_invalid_user_is_401(orgs: dict, path: str) -> None:
    """'returns a 401 ("Unauthorized") for invalid user' (body exact)."""
    assert_error(orgs["plain"].http("invalid_user").get(path), 401, FAILED_TO_AUTHENTICATE_AS_INVALID)


@pytest.mark.parametrize("path", PATHS)
def test_no_readers_outside_user_is_403(orgs: dict, path: str) -> None:
    """'returns a 403 ("Forbidden") for outside user' (body exact)."""
    org = orgs["plain"]
    assert_error(org.http("outside_user").get(path), 403, not_associated(org.name))


@pytest.mark.parametrize("path", PATHS)
def test_no_readers_bogus_client_is_401(orgs: dict, path: str) -> None:
    """'returns a 401 ("Unauthorized") for bogus client'."""
    assert_error(orgs["plain"].http("bad_client").get(path), 401,
                 [f"Invalid signature for user or client '{NON_ADMIN_CLIENT}'"])


@pytest.mark.parametrize("actor", ["admin_user", "normal_user"])
def test_missing_node_is_200_offline(orgs: dict, actor: str) -> None:
    """'returns a 404 ("Not Found") for missing node_state' was `:skip` in the original: it answers
    200 "offline" for any name, as we do (PROTOCOL.md §10.10: never 404)."""
    r = orgs["plain"].http(actor).get(f"node_states/{NON_EXISTENT_NODE}")
    assert r.status_code == 200, r.text
    assert r.json() == offline(NON_EXISTENT_NODE)


# --- access control with pushy_job_readers (plain and nested) ---------------------------


@pytest.mark.parametrize("layout", ["readers", "nested"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("actor", ["normal_user", "non_admin_client"])
def test_readers_member_is_200(orgs: dict, layout: str, path: str, actor: str) -> None:
    """'returns a 200 ("OK") for member / member client' (the node's body exact)."""
    r = orgs[layout].http(actor).get(path)
    assert r.status_code == 200, r.text
    if path.endswith(NODE):
        assert r.json() == offline()
    else:
        assert isinstance(r.json(), list)


@pytest.mark.parametrize("layout", ["readers", "nested"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("actor,name", [("admin_user", ADMIN_USER), ("admin_client", ADMIN_CLIENT)])
def test_readers_non_member_is_403(orgs: dict, layout: str, path: str, actor: str, name: str) -> None:
    """'returns a 403 ("Forbidden") for non-member / non-member client' (body exact): admins
    are not readers once the group exists."""
    assert_error(orgs[layout].http(actor).get(path), 403, no_access(name))


@pytest.mark.parametrize("path", PATHS)
def test_readers_outside_user_is_403(orgs: dict, path: str) -> None:
    """'returns a 403 ("Forbidden") for outside user' with pushy_job_readers (body exact)."""
    org = orgs["readers"]
    assert_error(org.http("outside_user").get(path), 403, not_associated(org.name))


# --- invalid request ----------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_bogus_org_is_404(orgs: dict, path: str) -> None:
    """'returns 404 ("Not Found") with bogus org' (the newest original; older ones said 403)."""
    r = orgs["plain"].http("admin_user", org="bogus-org").get(path)
    assert_error(r, 404, ["organization 'bogus-org' does not exist."])


# --- handling authentication headers -------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", AUTH_CASES, ids=[c.id for c in AUTH_CASES])
def test_authentication_headers(orgs: dict, case: AuthCase, path: str) -> None:
    """chef-pedant 'handles authentication headers correctly' on GET /node_states[/<name>]."""
    org = orgs["plain"]
    r = auth_case_request(org, case, "GET", f"{org.pushy}/{path}")
    check_auth_case(r, case, 200)
    if case.status == 0 and path.endswith(NODE):
        assert r.json() == offline()


# --- ours: an online node (§10.9, §10.10, S9) -----------------------------------------------


def test_online_node_shapes(orgs: dict) -> None:
    """Not in the original suite (it had no node online): the list has `node_name` and
    `availability` only, one entry per online node; the single view says online/available."""
    from tests.helpers.fakenode import FakeNode

    org = orgs["plain"]
    http = org.http("admin_user")
    node = FakeNode(org.server, org.principals["admin_client"])
    try:
        node.start()
        node.wait_idle_on_server(http)
        r = http.get(f"node_states/{ADMIN_CLIENT}")
        assert r.status_code == 200 and r.json() == {
            "node_name": ADMIN_CLIENT, "status": "online", "availability": "available"}, r.text
        listed = http.get("node_states").json()
        assert listed == [{"node_name": ADMIN_CLIENT, "availability": "available"}], listed
    finally:
        node.stop()

