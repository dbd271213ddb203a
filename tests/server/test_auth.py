"""server/auth.py without a server: header sanity (order, messages, skew boundary) and helpers.

The full pipeline (principals, signatures, groups) runs over real HTTP in
test_api_e2e.py; these pin the pure parts in microseconds.
"""
import pytest

from pushjobs.protocol.chef_auth import sign_request
from pushjobs.protocol.keys import generate_rsa_key
from pushjobs.protocol.timestamps import iso8601
from pushjobs.server.auth import (
    AUTH_CLOCK_SKEW,
    WWW_AUTHENTICATE,
    AuthError,
    check_headers,
    parse_sign_description,
    raw_request_path,
)

NOW = 1_700_000_000.0
KEY = generate_rsa_key()


def headers(version="1.1", t=NOW, **override):
    h = sign_request(KEY, "alice", "GET", "/organizations/acme/pushy/jobs", b"", version=version, timestamp=t)
    h.update(override)
    return {k: v for k, v in h.items() if v is not None}


def fail(h, now=NOW) -> AuthError:
    with pytest.raises(AuthError) as ei:
        check_headers(h, now=now)
    return ei.value


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.3"])
def test_good_headers(version):
    info = check_headers(headers(version), now=NOW)
    assert (info.user_id, info.version, info.timestamp) == ("alice", version, NOW)


def test_version_12_is_accepted_as_sha1():
    assert check_headers(headers(**{"X-Ops-Sign": "algorithm=sha1;version=1.2"}), now=NOW).version == "1.2"


def test_missing_headers_listed_in_order():
    e = fail({})
    assert e.status == 400
    assert e.body == {"error": ["missing required authentication header(s) 'X-Ops-UserId', 'X-Ops-Timestamp', "
                                "'X-Ops-Sign', 'X-Ops-Content-Hash'"]}
    e = fail(headers(**{"X-Ops-UserId": "  ", "X-Ops-Content-Hash": None}))
    assert e.body == {"error": ["missing required authentication header(s) 'X-Ops-UserId', 'X-Ops-Content-Hash'"]}


def test_header_names_are_case_insensitive():
    h = {k.upper(): v for k, v in headers().items()}
    assert check_headers(h, now=NOW).user_id == "alice"
    h = {k.lower(): v for k, v in headers().items()}
    assert check_headers(h, now=NOW).user_id == "alice"


def test_order_missing_then_version_then_timestamp():
    # unsupported version and bad timestamp together: the version wins (chef_authn's order)
    e = fail(headers(**{"X-Ops-Sign": "version=7", "X-Ops-Timestamp": "bad"}))
    assert (e.status, e.body) == (400, {"error": ["Unsupported authentication protocol version"]})
    e = fail(headers(**{"X-Ops-Timestamp": "bad"}))
    assert (e.status, e.body) == (401, {"error": ["bad header(s) 'X-Ops-Timestamp'"]})
    assert e.headers["WWW-Authenticate"] == WWW_AUTHENTICATE


@pytest.mark.parametrize("offset,ok", [(0, True), (AUTH_CLOCK_SKEW, True), (-AUTH_CLOCK_SKEW, True),
                                       (AUTH_CLOCK_SKEW + 1, False), (-AUTH_CLOCK_SKEW - 1, False)])
def test_skew_boundary(offset, ok):
    h = headers(t=NOW + offset)
    if ok:
        check_headers(h, now=NOW)
    else:
        e = fail(h)
        assert e.status == 401
        assert e.body == {"error": ["Failed to authenticate as alice. Synchronize the clock on your host."]}


@pytest.mark.parametrize("sign", ["algorithm=sha256;version=1.0", "algorithm=sha1;version=1.3", "version=",
                                  "algorithm=sha1", "garbage"])
def test_unsupported_versions(sign):
    e = fail(headers(**{"X-Ops-Sign": sign}))
    assert (e.status, e.body) == (400, {"error": ["Unsupported authentication protocol version"]})


def test_parse_sign_description():
    assert parse_sign_description("algorithm=sha1;version=1.1;") == {"algorithm": "sha1", "version": "1.1"}
    assert parse_sign_description(" Version = 1.3 ;; algorithm=sha256 ") == {"version": "1.3", "algorithm": "sha256"}
    assert parse_sign_description("") == {}


def test_timestamp_forms():
    assert check_headers(headers(**{"X-Ops-Timestamp": iso8601(NOW)}), now=NOW).timestamp == NOW


def test_raw_request_path():
    assert raw_request_path({"RAW_URI": "/organizations/a/pushy/config/x%2By?ccpk=1"}, "/fallback") == \
        "/organizations/a/pushy/config/x%2By"
    assert raw_request_path({"REQUEST_URI": "/a//b/"}, "/fallback") == "/a//b/"
    assert raw_request_path({"RAW_URI": "http://h:1/a/b?x"}, "/fallback") == "/a/b"
    assert raw_request_path({}, "/fallback") == "/fallback"


# --------------------------------------------------------------------------------------
# authenticate/authorize against a real store (SQLite and PostgreSQL)


def _auth(org: str, user: str, key, path: str = "/organizations/acme/pushy/node_states"):
    from pushjobs.server.auth import authenticate

    h = sign_request(key, user, "GET", path, b"")
    return authenticate(org, check_headers(h), h, "GET", path, b"")


def test_authenticate_reads_the_store_on_every_request(store_db):
    """404 org → 401 principal → 401 signature → 403 membership, and a deleted client or a
    changed key is seen by the very next call (the parsed-key cache is by PEM text)."""
    from pushjobs.protocol.keys import public_key_pem
    from pushjobs.server import identity as idn

    idn.create_org("acme")
    idn.create_org("beta")
    idn.create_client("acme", "n1", public_key_pem(KEY))
    idn.create_user("alice", public_key_pem(KEY), org="beta")
    r = _auth("acme", "n1", KEY)
    assert (r.name, r.kind, r.org_name) == ("n1", "client", "acme")
    assert r.org_guid == idn.get_org("acme").guid
    with pytest.raises(AuthError) as ei:
        _auth("nope", "n1", KEY)
    assert ei.value.status == 404
    with pytest.raises(AuthError) as ei:
        _auth("acme", "alice", KEY)  # a user of another org
    assert ei.value.status == 403
    other = generate_rsa_key()
    with pytest.raises(AuthError) as ei:
        _auth("acme", "n1", other)
    assert (ei.value.status, ei.value.body) == (401, {"error": ["Invalid signature for user or client 'n1'"]})
    idn.delete_client("acme", "n1")
    with pytest.raises(AuthError) as ei:
        _auth("acme", "n1", KEY)
    assert ei.value.status == 401 and "Failed to authenticate as 'n1'" in ei.value.body["error"][0]
    idn.create_client("acme", "n1", public_key_pem(other))  # re-created with a new key
    with pytest.raises(AuthError):
        _auth("acme", "n1", KEY)
    assert _auth("acme", "n1", other).name == "n1"


def test_authorization_uses_the_groups_read_with_the_principal(store_db):
    """The §10.3 rules give the same answers from the groups read by authenticate() and from
    fresh lookups (a Requestor without groups)."""
    import dataclasses

    from pushjobs.protocol.keys import public_key_pem
    from pushjobs.server import identity as idn
    from pushjobs.server.auth import can_read, can_write

    idn.create_org("acme")
    idn.create_user("alice", public_key_pem(KEY), org="acme", admin=True)
    idn.create_user("bob", public_key_pem(KEY), org="acme")
    answers = []
    for step in ("defaults", "readers", "writers"):
        if step == "readers":
            idn.group_add("acme", "pushy_job_readers", "alice")
        if step == "writers":
            idn.group_add("acme", "pushy_job_writers", "bob")
        for who in ("alice", "bob"):
            r = _auth("acme", who, KEY)
            assert r.groups is not None
            bare = dataclasses.replace(r, groups=None, org=None)
            got = (can_read(r), can_write(r))
            assert got == (can_read(bare), can_write(bare)), (step, who)
            answers.append((step, who, got))
    assert answers == [
        ("defaults", "alice", (True, True)), ("defaults", "bob", (True, False)),  # admins write
        ("readers", "alice", (True, True)), ("readers", "bob", (False, False)),  # readers: members only
        ("writers", "alice", (True, False)), ("writers", "bob", (False, True)),  # writers replace admins
    ]


def test_xops_headers_from_environ_match_werkzeug_and_check_the_same():
    """The X-Ops headers read straight from the WSGI environ are the ones werkzeug's
    EnvironHeaders gives (lower-case names), and the header checks answer the same."""
    from werkzeug.datastructures import EnvironHeaders
    from werkzeug.test import EnvironBuilder

    from pushjobs.server.auth import xops_headers

    h = headers(**{"User-Agent": "x", "Accept": "application/json", "X-Ops-Server-API-Version": "1"})
    environ = EnvironBuilder(path="/organizations/acme/pushy/jobs", headers=h).get_environ()
    fast = xops_headers(environ)
    slow = {k.lower(): v for k, v in EnvironHeaders(environ).items() if k.lower().startswith("x-ops-")}
    assert fast == slow
    assert set(fast) >= {"x-ops-userid", "x-ops-sign", "x-ops-timestamp", "x-ops-content-hash",
                         "x-ops-authorization-1"}
    assert check_headers(fast, now=NOW) == check_headers(EnvironHeaders(environ), now=NOW)
    # the same errors, in the same order, from the lower-case mapping
    del h["X-Ops-Sign"], h["X-Ops-UserId"]
    bad = xops_headers(EnvironBuilder(path="/", headers=h).get_environ())
    assert fail(bad).body == fail(h).body == {
        "error": ["missing required authentication header(s) 'X-Ops-UserId', 'X-Ops-Sign'"]}
