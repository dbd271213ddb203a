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
