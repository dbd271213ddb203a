"""Chef request signing and verification, v1.0/1.1/1.3 (§10.1, §10.1a, §10.2).

The openssl vectors in data/ (see make_chef_vectors.sh) were built by hand and
signed with the openssl command line, independently of chef_auth."""

from __future__ import annotations

import base64

import pytest

from pushjobs.protocol import chef_auth, keys
from pushjobs.protocol.chef_auth import ChefAuthError

TS = "2012-09-04T23:01:02Z"
T = 1346799662.0
JOB_BODY = b'{"command":"chef-client","nodes":["web01"]}'

# version -> (user, method, path, body) as in make_chef_vectors.sh
VECTORS = {
    "1.0": ("alice", "POST", "/organizations/acme/pushy/jobs", JOB_BODY),
    "1.1": ("web01", "GET", "/organizations/acme/pushy/config/web01", b""),
    "1.3": ("alice", "POST", "/organizations/acme/pushy/jobs", JOB_BODY),
}


def _vector(data_dir, version):
    canonical = (data_dir / f"chef_v{version}.canonical").read_bytes()
    sig = (data_dir / f"chef_v{version}.sig.b64").read_text().strip()
    return canonical, sig


@pytest.mark.parametrize("version", sorted(VECTORS))
def test_canonical_string_matches_hand_built_vector(data_dir, version):
    user, method, path, body = VECTORS[version]
    canonical, _ = _vector(data_dir, version)
    got = chef_auth.canonical_request(
        method, path, chef_auth.content_hash(body, version), TS, user, version, "1"
    )
    assert got == canonical


@pytest.mark.parametrize("version", sorted(VECTORS))
def test_signer_reproduces_openssl_vector(data_dir, test_key, version):
    user, method, path, body = VECTORS[version]
    _, sig = _vector(data_dir, version)
    headers = chef_auth.sign_request(test_key, user, method, path, body, version=version, timestamp=TS)
    chunks = [headers[f"X-Ops-Authorization-{i}"] for i in range(1, 7)]
    assert "X-Ops-Authorization-7" not in headers
    assert all(len(c) == 60 for c in chunks[:-1]) and len(chunks[-1]) == 344 - 300
    assert "".join(chunks) == sig
    assert headers["X-Ops-Sign"] == (
        f"algorithm={'sha256' if version == '1.3' else 'sha1'};version={version};"
    )
    assert headers["X-Ops-Timestamp"] == TS
    assert headers["X-Ops-UserId"] == user
    assert headers["X-Ops-Server-API-Version"] == "1"


def _openssl_headers(data_dir, version, user, body):
    _, sig = _vector(data_dir, version)
    headers = {
        "X-OPS-SIGN": f"algorithm={'sha256' if version == '1.3' else 'sha1'};version={version};",
        "X-OPS-USERID": user,
        "X-OPS-TIMESTAMP": TS,
        "X-OPS-CONTENT-HASH": chef_auth.content_hash(body, version),
        "X-OPS-SERVER-API-VERSION": "1",
    }
    for i in range(0, len(sig), 60):
        headers[f"X-OPS-AUTHORIZATION-{i // 60 + 1}"] = sig[i : i + 60]
    return headers


@pytest.mark.parametrize("version", sorted(VECTORS))
def test_verifier_accepts_openssl_vector(data_dir, test_pub, version):
    user, method, path, body = VECTORS[version]
    signed = chef_auth.parse_auth_headers(_openssl_headers(data_dir, version, user, body))
    assert signed.version == version and signed.user_id == user and signed.time == T
    assert chef_auth.verify_signature(signed, method, path, body, test_pub)
    # canonical path rules and query string are not covered by the signature
    assert chef_auth.verify_signature(signed, method, path.replace("/pushy/", "//pushy/") + "/?ccpk=x", body, test_pub)
    # but method, path and body are
    assert not chef_auth.verify_signature(signed, "DELETE", path, body, test_pub)
    assert not chef_auth.verify_signature(signed, method, path + "x", body, test_pub)
    assert not chef_auth.verify_signature(signed, method, path, body + b" ", test_pub)


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.3"])
def test_round_trip_and_wrong_key(test_key, version):
    other = keys.generate_rsa_key(1024)
    headers = chef_auth.sign_request(test_key, "bob", "put", "/a//b/", b"{}", version=version)
    signed = chef_auth.parse_auth_headers(headers)
    assert chef_auth.verify_signature(signed, "PUT", "/a/b", b"{}", test_key.public_key())
    assert chef_auth.verify_signature(signed, "PUT", "/a/b", "{}", test_key)  # str body, private key ok
    assert not chef_auth.verify_signature(signed, "PUT", "/a/b", b"{}", other.public_key())


def test_v11_user_id_is_hashed_and_v13_signs_api_version(test_key):
    h = chef_auth.sign_request(test_key, "web01", "GET", "/x", version="1.3", server_api_version="2", timestamp=T)
    signed = chef_auth.parse_auth_headers(h)
    assert signed.server_api_version == "2"
    assert chef_auth.verify_signature(signed, "GET", "/x", b"", test_key.public_key())
    h["X-Ops-Server-API-Version"] = "1"
    assert not chef_auth.verify_signature(chef_auth.parse_auth_headers(h), "GET", "/x", b"", test_key.public_key())
    # absent header: mixlib signs "0"
    h = chef_auth.sign_request(test_key, "web01", "GET", "/x", version="1.3", server_api_version=None)
    assert "X-Ops-Server-API-Version" not in h
    signed = chef_auth.parse_auth_headers(h)
    assert chef_auth.verify_signature(signed, "GET", "/x", b"", test_key.public_key())
    assert b"X-Ops-Server-API-Version:0" in chef_auth.canonical_request("GET", "/x", "h", TS, "u", "1.3")


def test_content_hash_mismatch_rejected(test_key):
    h = chef_auth.sign_request(test_key, "bob", "POST", "/x", b"a", version="1.1")
    h["X-Ops-Content-Hash"] = chef_auth.content_hash(b"b")
    assert not chef_auth.verify_signature(chef_auth.parse_auth_headers(h), "POST", "/x", b"a", test_key)


@pytest.mark.parametrize(
    "path, canonical",
    [("/", "/"), ("//", "/"), ("/a//b///c/", "/a/b/c"), ("/a/b?x=1//", "/a/b"), ("/a/", "/a")],
)
def test_canonical_path(path, canonical):
    assert chef_auth.canonical_path(path) == canonical


def test_timestamp_forms(test_key):
    import datetime as dt

    for ts in (T, int(T), TS, "2012-09-05T01:01:02+02:00", dt.datetime(2012, 9, 4, 23, 1, 2)):
        assert chef_auth.sign_request(test_key, "u", "GET", "/", timestamp=ts)["X-Ops-Timestamp"] == TS


def test_sign_header_variants_parse(test_key):
    h = chef_auth.sign_request(test_key, "u", "GET", "/", version="1.0", timestamp=T)
    for sign in ("version=1.0", " algorithm=sha1 ; version=1.0 ;", "version=1.0;;"):
        h["X-Ops-Sign"] = sign
        signed = chef_auth.parse_auth_headers(h)
        assert signed.version == "1.0" and signed.algorithm == "sha1"
        assert chef_auth.verify_signature(signed, "GET", "/", b"", test_key)


def test_version_12_is_accepted_as_11():
    signed = chef_auth.parse_auth_headers(
        {"X-Ops-Sign": "algorithm=sha1;version=1.2", "X-Ops-UserId": "u", "X-Ops-Timestamp": TS,
         "X-Ops-Content-Hash": "h", "X-Ops-Authorization-1": "AAAA"}
    )
    assert signed.version == "1.2"
    assert chef_auth.canonical_request("GET", "/", "h", TS, "u", "1.2") == chef_auth.canonical_request(
        "GET", "/", "h", TS, "u", "1.1"
    )


def _good_headers(test_key):
    return chef_auth.sign_request(test_key, "bob", "GET", "/x", version="1.1", timestamp=T)


def test_missing_headers_listed_in_order(test_key):
    h = _good_headers(test_key)
    del h["X-Ops-UserId"]
    h["X-Ops-Sign"] = ""  # empty counts as missing
    with pytest.raises(ChefAuthError) as exc:
        chef_auth.parse_auth_headers(h)
    err = exc.value
    assert err.kind == "missing_headers"
    assert err.missing == ("X-Ops-UserId", "X-Ops-Sign")
    assert err.http_status == 400
    assert err.message == "missing required authentication header(s) 'X-Ops-UserId', 'X-Ops-Sign'"
    with pytest.raises(ChefAuthError) as exc:
        chef_auth.parse_auth_headers({})
    assert exc.value.missing == (
        "X-Ops-UserId", "X-Ops-Timestamp", "X-Ops-Sign", "X-Ops-Content-Hash", "X-Ops-Authorization-1"
    )


@pytest.mark.parametrize("sign", ["version=2.0", "algorithm=sha256;version=1.1", "algorithm=sha1;version=1.3", "algorithm=sha1", "garbage"])
def test_unsupported_version(test_key, sign):
    h = _good_headers(test_key)
    h["X-Ops-Sign"] = sign
    with pytest.raises(ChefAuthError) as exc:
        chef_auth.parse_auth_headers(h)
    assert exc.value.kind == "unsupported_version"
    assert exc.value.http_status == 400
    assert exc.value.message == "Unsupported authentication protocol version"


@pytest.mark.parametrize("ts", ["yesterday", "2012-13-01T00:00:00Z", "1346799662"])
def test_bad_timestamp(test_key, ts):
    h = _good_headers(test_key)
    h["X-Ops-Timestamp"] = ts
    with pytest.raises(ChefAuthError) as exc:
        chef_auth.parse_auth_headers(h)
    assert exc.value.kind == "bad_timestamp"
    assert exc.value.http_status == 401
    assert exc.value.message == "bad header(s) 'X-Ops-Timestamp'"


def test_bad_authorization_base64(test_key):
    h = _good_headers(test_key)
    h["X-Ops-Authorization-1"] = "!!!!"
    with pytest.raises(ChefAuthError) as exc:
        chef_auth.parse_auth_headers(h)
    assert exc.value.kind == "bad_signature"


def test_authorization_chunks_joined_in_numeric_order(test_key):
    h = chef_auth.sign_request(test_key, "bob", "GET", "/x", version="1.1", timestamp=T)
    shuffled = {k: h[k] for k in reversed(list(h))}
    signed = chef_auth.parse_auth_headers(shuffled)
    assert base64.b64encode(signed.signature).decode() == "".join(
        h[f"X-Ops-Authorization-{i}"] for i in range(1, 7)
    )
    assert chef_auth.verify_signature(signed, "GET", "/x", b"", test_key)


def test_skew_is_the_callers_job(test_key):
    signed = chef_auth.parse_auth_headers(_good_headers(test_key))
    assert signed.skew(T + 901) == 901
    assert abs(signed.skew(T + 899)) <= chef_auth.MAX_CLOCK_SKEW


def test_truncated_signature_is_false_not_crash(test_key):
    h = _good_headers(test_key)
    for k in [k for k in h if k.startswith("X-Ops-Authorization-") and k != "X-Ops-Authorization-1"]:
        del h[k]
    signed = chef_auth.parse_auth_headers(h)
    for v in ("1.1", "1.3"):
        s = chef_auth.SignedRequest(**{**signed.__dict__, "version": v})
        assert not chef_auth.verify_signature(s, "GET", "/x", b"", test_key)


def test_parse_timestamp_is_parse_iso8601_remembered():
    from pushjobs.protocol.timestamps import parse_iso8601

    for text in ("2026-11-29T10:00:00Z", "2026-11-29T11:00:00+01:00", " 2026-11-29T10:00:00Z"):
        assert chef_auth.parse_timestamp(text) == parse_iso8601(text)
        assert chef_auth.parse_timestamp(text) == parse_iso8601(text)  # from the cache
    for bad in ("yesterday", ""):
        for _ in range(2):  # errors are raised every time, never remembered as a value
            with pytest.raises(ValueError):
                chef_auth.parse_timestamp(bad)
