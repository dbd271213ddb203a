"""Port of oc-pushy-pedant `status_spec.rb`: GET /pushy/_status (PROTOCOL.md §10.11).

The original: PUT/POST/DELETE are 405; GET answers 200 to anybody, signed or
not, valid or not (no authentication on this path). Here also the body's
fields (§10.11) and our JSON 405 body with `Allow` (docs/compatibility.md,
"REST errors").
"""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.pedant.conftest import PedantOrg, PedantWorld, assert_error

STATUS = "/pushy/_status"


@pytest.fixture(scope="module")
def org(pedant_world: PedantWorld) -> PedantOrg:
    return pedant_world.make_org("pedant-testorg-status")


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE"])
def test_other_methods_are_405(org: PedantOrg, method: str) -> None:
    """'PUT|POST|DELETE /pushy/_status returns 405 ("Method Not Allowed")'."""
    http = org.http("admin_user")
    r = http.request(method, STATUS, json={}) if method != "DELETE" else http.request(method, STATUS)
    assert_error(r, 405)
    allowed = r.headers["Allow"].split(", ")
    assert "GET" in allowed and method not in allowed, allowed


@pytest.mark.parametrize("actor", ["admin_user", "normal_user", "admin_client", "invalid_user", "outside_user"])
def test_get_is_200_for_anybody(org: PedantOrg, actor: str) -> None:
    """'access control / GET /pushy/_status returns a 200 ("OK") for admin, normal user,
    client, invalid user, outside user'."""
    r = org.http(actor).get(STATUS)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")


def test_get_unsigned_and_body_shape(org: PedantOrg) -> None:
    """No signature at all still answers 200; the body is the §10.11 document."""
    r = requests.get(org.server.base_url + STATUS, timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"status", "incarnation_id", "node_fsm_count", "job_processes"}, body
    assert body["status"] == "it's alive"
    assert str(uuid.UUID(body["incarnation_id"])) == body["incarnation_id"]
    assert isinstance(body["node_fsm_count"], int) and not isinstance(body["node_fsm_count"], bool)
    assert body["node_fsm_count"] >= 0
    assert isinstance(body["job_processes"], list)
    assert all(isinstance(j, str) for j in body["job_processes"])
