"""Port of oc-pushy-pedant `config_spec.rb`: GET …/pushy/config/NODE (PROTOCOL.md §2, §10.3).

Cases in the original's grouping: `config/` without a node (404 for every
verb), the config document, PUT/POST/DELETE → 405, access control without and
with `pushy_job_readers`/`pushy_job_writers`, the bogus org, and the shared
"handles authentication headers correctly" suite.

Differences from the original suite, each the protocol's rule:

* the original's requests carried no `ccpk`; a 2.x server answers that with
  400 "Missing ccpk" (§2.1), so every request here sends a fresh Z85 key;
* the two client cases of the group block were `pending` in the original
  ("something weird going on for clients here"): a client is never checked
  against the groups, only its name against the node's (§2.1, §10.3), which
  is what is asserted;
* `validate_client_node_name false` and `disable_curve_encryption` (S6) run
  on a second server with those settings.
"""

from __future__ import annotations

import base64
import re
import uuid

import pytest

from pushjobs.protocol.keys import curve_keypair, rsa_decrypt
from tests.helpers.server import Principal, ServerProcess
from tests.pedant.conftest import (
    ADMIN_CLIENT, ADMIN_USER, AUTH_CASES, FAILED_TO_AUTHENTICATE_AS_INVALID, NON_ADMIN_CLIENT, AuthCase,
    PedantOrg, PedantWorld, assert_error, auth_case_request, check_auth_case, ctl_batch, no_access,
    not_associated)

CONFIG_NAME = "DONKEY"
NAME_MISMATCH = ["Client and node name must match"]


def ccpk() -> dict:
    return {"ccpk": curve_keypair()[0], "version": "2.0"}


@pytest.fixture(scope="module")
def orgs(pedant_world: PedantWorld) -> dict[str, PedantOrg]:
    made = pedant_world.make_orgs({
        "pedant-testorg-config": None,
        "pedant-testorg-config-groups": [
            ("pushy_job_readers", "user:pedant_user"),
            ("pushy_job_readers", f"client:{NON_ADMIN_CLIENT}"),
            ("pushy_job_writers", "user:pedant_user"),
            ("pushy_job_writers", f"client:{NON_ADMIN_CLIENT}")],
    })
    return {"plain": made["pedant-testorg-config"], "groups": made["pedant-testorg-config-groups"]}


def check_config_body(body: dict, server: ServerProcess, org: str, node: str, principal: Principal, *,
                      curve: bool = True) -> None:
    """The §2.2 document: every field, exact where the value is known."""
    keys = {"type", "host", "push_jobs", "node", "organization", "public_key", "encoded_session_key",
            "lifetime", "max_message_skew", "max_body_size", "incarnation_id"}
    expected = keys | ({"curve_public_key"} if curve else set())
    # `pushjobs` (ours: version, node-facts marker) may follow; the stock client ignores it
    assert expected <= set(body) and set(body) - expected <= {"pushjobs"}, sorted(body)
    assert body["type"] == "config"
    assert body["host"] == "127.0.0.1"
    assert body["node"] == node
    assert body["organization"] == org and re.match(r"^pedant-testorg-", org)
    assert body["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert body["public_key"] == server.server_public_key_path.read_text()
    hb = body["push_jobs"]["heartbeat"]
    assert hb == {"out_addr": f"tcp://127.0.0.1:{server.server_heartbeat_port}",
                  "command_addr": f"tcp://127.0.0.1:{server.command_port}",
                  "interval": server.heartbeat_interval / 1000.0,
                  "offline_threshold": 3, "online_threshold": 2}
    assert isinstance(hb["interval"], float)
    assert body["encoded_session_key"]["method"] == "hmac_sha256"
    session_key = rsa_decrypt(principal.private_key, base64.b64decode(body["encoded_session_key"]["key"]))
    assert len(session_key) == 32
    assert body["lifetime"] == 3600 and body["max_message_skew"] == 300 and body["max_body_size"] == 65536
    assert body["incarnation_id"] == server.status()["incarnation_id"]
    uuid.UUID(body["incarnation_id"])
    if curve:
        assert isinstance(body["curve_public_key"], str) and len(body["curve_public_key"]) == 40


# --- /config/ without a node -------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "POST", "DELETE"])
def test_config_without_node_is_404(orgs: dict, method: str) -> None:
    """'/organization/<name>/pushy/config/: GET|PUT|POST|DELETE returns 404' (no route)."""
    http = orgs["plain"].http("admin_user")
    kw = {"json": {"type": "config"}} if method in ("PUT", "POST") else {}
    assert_error(http.request(method, "config/", params=ccpk(), **kw), 404)


def test_config_document(orgs: dict) -> None:
    """'GET /organization/<name>/pushy/config/<nodename> returns 200 and server config'."""
    org = orgs["plain"]
    r = org.http("admin_user").get(f"config/{CONFIG_NAME}", params=ccpk())
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    check_config_body(r.json(), org.server, org.name, CONFIG_NAME, org.principals["admin_user"])


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE"])
def test_config_other_verbs_are_405(orgs: dict, method: str) -> None:
    """'PUT|POST|DELETE /organization/<name>/pushy/config/<nodename> returns 405'."""
    http = orgs["plain"].http("admin_user")
    kw = {"json": {"type": "config"}} if method != "DELETE" else {}
    r = http.request(method, f"config/{CONFIG_NAME}", params=ccpk(), **kw)
    assert_error(r, 405)
    assert "GET" in r.headers["Allow"] and method not in r.headers["Allow"]


# --- access control ------------------------------------------------------------------------


@pytest.mark.parametrize("actor", ["admin_user", "normal_user"])
def test_config_users_are_200(orgs: dict, actor: str) -> None:
    """'GET /config/<name> returns a 200 ("OK") for admin / normal user'."""
    r = orgs["plain"].http(actor).get(f"config/{CONFIG_NAME}", params=ccpk())
    assert r.status_code == 200, r.text


def test_config_client_for_itself_is_200(orgs: dict) -> None:
    """'returns a 200 ("OK") for client' (its own node name); the session key is encrypted
    for the client's key."""
    org = orgs["plain"]
    r = org.http("non_admin_client").get(f"config/{NON_ADMIN_CLIENT}", params=ccpk())
    assert r.status_code == 200, r.text
    check_config_body(r.json(), org.server, org.name, NON_ADMIN_CLIENT, org.principals["non_admin_client"])


def test_config_invalid_user_is_401(orgs: dict) -> None:
    """'returns a 401 ("Unauthorized") for invalid user' (body exact)."""
    r = orgs["plain"].http("invalid_user").get(f"config/{CONFIG_NAME}", params=ccpk())
    assert_error(r, 401, FAILED_TO_AUTHENTICATE_AS_INVALID)


@pytest.mark.parametrize("layout", ["plain", "groups"])
def test_config_outside_user_is_403(orgs: dict, layout: str) -> None:
    """'returns a 403 ("Forbidden") for outside user' (body exact), with and without groups."""
    org = orgs[layout]
    r = org.http("outside_user").get(f"config/{CONFIG_NAME}", params=ccpk())
    assert_error(r, 403, not_associated(org.name))


def test_config_bogus_client_is_401(orgs: dict) -> None:
    """'returns a 401 ("Unauthorized") for bogus client'."""
    r = orgs["plain"].http("bad_client").get(f"config/{NON_ADMIN_CLIENT}", params=ccpk())
    assert_error(r, 401, [f"Invalid signature for user or client '{NON_ADMIN_CLIENT}'"])


def test_config_client_name_mismatch_is_403(orgs: dict) -> None:
    """'returns a 403 ("Forbidden") when client and node name do not match' (body exact)."""
    r = orgs["plain"].http("non_admin_client").get(f"config/{CONFIG_NAME}", params=ccpk())
    assert_error(r, 403, NAME_MISMATCH)


# --- access control with pushy_job groups ----------------------------------------------------


def test_config_groups_member_is_200(orgs: dict) -> None:
    """'GET /config/<name> with pushy_job_readers returns a 200 ("OK") for member'."""
    r = orgs["groups"].http("normal_user").get(f"config/{CONFIG_NAME}", params=ccpk())
    assert r.status_code == 200, r.text


def test_config_groups_non_member_is_403(orgs: dict) -> None:
    """'returns a 403 ("Forbidden") for non-member' (body exact): users are checked against readers."""
    r = orgs["groups"].http("admin_user").get(f"config/{CONFIG_NAME}", params=ccpk())
    assert_error(r, 403, no_access(ADMIN_USER))


@pytest.mark.parametrize("actor,name", [("non_admin_client", NON_ADMIN_CLIENT), ("admin_client", ADMIN_CLIENT)])
def test_config_groups_clients_only_name_checked(orgs: dict, actor: str, name: str) -> None:
    """The original's `pending` 'member client' / 'non-member client' cases: clients are not
    checked against the groups (§2.1): any client gets its own config, no client another's."""
    http = orgs["groups"].http(actor)
    r = http.get(f"config/{name}", params=ccpk())
    assert r.status_code == 200, r.text
    assert_error(http.get(f"config/{CONFIG_NAME}", params=ccpk()), 403, NAME_MISMATCH)


# --- invalid request -------------------------------------------------------------------------


def test_config_bogus_org_is_404(orgs: dict) -> None:
    """'returns 404 ("Not Found") when organization doesn't exist'."""
    r = orgs["plain"].http("admin_user", org="bogus-org").get(f"config/{CONFIG_NAME}", params=ccpk())
    assert_error(r, 404, ["organization 'bogus-org' does not exist."])


def test_config_ccpk_checks(orgs: dict) -> None:
    """§2.1 (not in the suite, which predates it): no ccpk → 400, wrong length or not Z85 → 401 (S5)."""
    http = orgs["plain"].http("admin_user")
    assert_error(http.get(f"config/{CONFIG_NAME}"), 400, ["Missing ccpk"])
    assert_error(http.get(f"config/{CONFIG_NAME}", params={"ccpk": "short"}), 401, ["Bad ccpk"])
    assert_error(http.get(f"config/{CONFIG_NAME}", params={"ccpk": "~" * 40}), 401, ["Bad ccpk"])


# --- handling authentication headers -----------------------------------------------------------


@pytest.mark.parametrize("case", AUTH_CASES, ids=[c.id for c in AUTH_CASES])
def test_config_authentication_headers(orgs: dict, case: AuthCase) -> None:
    """chef-pedant 'handles authentication headers correctly' on GET /config/<name>."""
    org = orgs["plain"]
    r = auth_case_request(org, case, "GET", f"{org.pushy}/config/{CONFIG_NAME}", params=ccpk())
    check_auth_case(r, case, 200)
    if case.status == 0:
        check_config_body(r.json(), org.server, org.name, CONFIG_NAME, org.principals["admin_user"])


# --- validate_client_node_name false, disable_curve_encryption (a second server) ----------------


@pytest.fixture(scope="module")
def lax_server(module_server_factory) -> tuple[ServerProcess, Principal, Principal]:
    s = module_server_factory(settings={"validate_client_node_name": False, "disable_curve_encryption": True})
    s.keys_dir.mkdir(exist_ok=True)
    user = Principal("pedant_user", "user", "pedant-testorg-lax", s.keys_dir / "lax-user.pem")
    client = Principal("web1", "client", "pedant-testorg-lax", s.keys_dir / "lax-web1.pem")
    ctl_batch(s, [["org-create", "pedant-testorg-lax"],
                  ["user-create", user.name, "--org", user.org, "--key-out", str(user.key_path)],
                  ["client-create", client.name, "--org", client.org, "--key-out", str(client.key_path)]])
    return s, user, client


def test_config_validate_client_node_name_false(lax_server) -> None:
    """With `validate_client_node_name false` a client may fetch any node's config (§2.1);
    with `disable_curve_encryption` no ccpk is needed and no curve key is sent (S6)."""
    s, user, client = lax_server
    r = s.client(client).get(f"config/{CONFIG_NAME}")
    assert r.status_code == 200, r.text
    check_config_body(r.json(), s, client.org, CONFIG_NAME, client, curve=False)
    r = s.client(user).get("config/web1", params=ccpk())  # a ccpk is ignored
    assert r.status_code == 200, r.text
    assert "curve_public_key" not in r.json()
