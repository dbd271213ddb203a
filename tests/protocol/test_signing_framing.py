"""Framing (§4.1, §4.2), signatures (§4.3) and the receive pipeline (§4.5)."""

from __future__ import annotations

import base64
import json

import pytest

from pushjobs.protocol import ProtocolError, framing, signing, timestamps
from pushjobs.protocol.framing import HMAC_SHA256, RSA2048_SHA1, Header

VECTOR_KEY = bytes(range(32))
VECTOR_BODY = b'{"sequence":1,"timestamp":"Tue, 04 Sep 2012 23:01:02 GMT","type":"abort"}'
VECTOR_HMAC = "H1EX80i7K4xP2WT8TXO+9Cgr5kqMipX1JsCFhdVWAOo="
VECTOR_SHA1 = b"WHMiwy0ULMh0wqAaCDvKyDESD0Y="
VECTOR_NOW = timestamps.parse_http_date("Tue, 04 Sep 2012 23:01:02 GMT")


# --- §4.3 vectors -----------------------------------------------------------


def test_hmac_vector_of_section_4_3():
    assert signing.hmac_sign(VECTOR_KEY, VECTOR_BODY) == VECTOR_HMAC
    assert signing.hmac_verify(VECTOR_KEY, VECTOR_BODY, VECTOR_HMAC)


def test_hmac_verify_rejects_other_body_key_and_garbage():
    assert not signing.hmac_verify(VECTOR_KEY, VECTOR_BODY + b" ", VECTOR_HMAC)
    assert not signing.hmac_verify(bytes(32), VECTOR_BODY, VECTOR_HMAC)
    assert not signing.hmac_verify(VECTOR_KEY, VECTOR_BODY, "not base64!!")
    assert not signing.hmac_verify(VECTOR_KEY, VECTOR_BODY, "")


def test_sha1_checksum_vector_of_section_4_3():
    assert signing.sha1_checksum(VECTOR_BODY) == VECTOR_SHA1


def test_rsa2048_sha1_matches_openssl_vector(data_dir, test_key, test_pub):
    """data/abort_body.rsa2048_sha1.b64 was made with
    ``openssl pkeyutl -sign -pkeyopt rsa_padding_mode:pkcs1`` (no digest) on
    the 28-byte checksum text: see data/README.md."""
    body = (data_dir / "abort_body.json").read_bytes()
    assert body == VECTOR_BODY
    expected = (data_dir / "abort_body.rsa2048_sha1.b64").read_text().strip()
    assert signing.rsa_sign(test_key, body) == expected
    assert signing.rsa_verify(test_pub, body, expected)


def test_rsa_verify_rejects_tampering(test_key, test_pub):
    sig = signing.rsa_sign(test_key, VECTOR_BODY)
    assert not signing.rsa_verify(test_pub, VECTOR_BODY.replace(b"1", b"2"), sig)
    raw = bytearray(base64.b64decode(sig))
    raw[10] ^= 1
    assert not signing.rsa_verify(test_pub, VECTOR_BODY, base64.b64encode(raw).decode())
    assert not signing.rsa_verify(test_pub, VECTOR_BODY, "AAAA")
    assert not signing.rsa_verify(test_pub, VECTOR_BODY, "%%%")


def test_rsa2048_sha1_is_not_a_standard_signature(test_key, test_pub):
    """cryptography's sign() adds a DigestInfo: it must NOT verify (§4.3)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    std = test_key.sign(VECTOR_BODY, padding.PKCS1v15(), hashes.SHA1())
    assert not signing.rsa_verify(test_pub, VECTOR_BODY, base64.b64encode(std).decode())


# --- header ------------------------------------------------------------------


def test_format_header_exact_bytes():
    assert framing.format_header(HMAC_SHA256, VECTOR_HMAC) == (
        b"Version:2.0;SigningMethod:hmac_sha256;Signature:" + VECTOR_HMAC.encode()
    )
    with pytest.raises(ValueError):
        framing.format_header("md5", "x")


def test_parse_header_round_trip():
    h = framing.parse_header(framing.format_header(RSA2048_SHA1, "abc="))
    assert h == Header("2.0", RSA2048_SHA1, "abc=")
    assert framing.parse_header(h.to_bytes()) == h


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b"Version:1.0;SigningMethod:rsa2048_sha1;SignedChecksum:abc=", Header("1.0", RSA2048_SHA1, "abc=")),
        (b"SigningMethod:hmac_sha256;Foo:bar;Signature:x;Version:2.0", Header("2.0", HMAC_SHA256, "x")),
        (b"Version:2.0;SigningMethod:hmac_sha256;SignedChecksum:old;Signature:new", Header("2.0", HMAC_SHA256, "new")),
        (b"Version:2.0;;junk;SigningMethod:hmac_sha256;Signature:a:b", Header("2.0", HMAC_SHA256, "a:b")),
    ],
)
def test_parse_header_rules(raw, expected):
    assert framing.parse_header(raw) == expected


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"Version:3.0;SigningMethod:hmac_sha256;Signature:x", "bad_header"),
        (b"SigningMethod:hmac_sha256;Signature:x", "bad_header"),
        (b"Version:2.0;SigningMethod:md5;Signature:x", "bad_header"),
        (b"Version:2.0;Signature:x", "bad_header"),
        (b"Version:2.0;SigningMethod:hmac_sha256", "bad_header"),
        (b"Version:2.0;SigningMethod:hmac_sha256;Signature:", "bad_header"),
        (b"Version:1.0;SigningMethod:hmac_sha256;Signature:x", "bad_header"),
        (b"Version:2.0;SigningMethod:hmac_sha256;Signature:\xff", "bad_header"),
        (b"", "bad_header"),
        (b"Version:2.0;SigningMethod:hmac_sha256;Signature:" + b"A" * 2048, "header_too_big"),
        ("Version:2.0", "bad_header"),
    ],
)
def test_parse_header_rejects(raw, reason):
    with pytest.raises(ProtocolError) as exc:
        framing.parse_header(raw)
    assert exc.value.reason == reason


def test_header_cap_is_2048_inclusive():
    base = b"Version:2.0;SigningMethod:hmac_sha256;Signature:"
    ok = base + b"A" * (2048 - len(base))
    assert len(ok) == 2048
    framing.parse_header(ok)
    with pytest.raises(ProtocolError):
        framing.parse_header(ok + b"A")


# --- decode_frames (§4.5) ----------------------------------------------------


def _client_body(ts: str = "Tue, 04 Sep 2012 23:01:02 GMT", **extra) -> bytes:
    d = {"node": "web01", "org": "acme", "type": "heartbeat", "sequence": 1, "timestamp": ts}
    d.update(extra)
    return json.dumps(d, separators=(",", ":")).encode()


def _decode(frames, key=VECTOR_KEY, **kw):
    kw.setdefault("max_body_size", 65536)
    kw.setdefault("max_skew", 300)
    kw.setdefault("now", VECTOR_NOW)
    return signing.decode_frames(frames, lambda body: key, **kw)


def test_encode_decode_hmac_round_trip():
    frames = signing.encode_frames(VECTOR_BODY, HMAC_SHA256, VECTOR_KEY)
    assert frames == [framing.format_header(HMAC_SHA256, VECTOR_HMAC), VECTOR_BODY]
    assert _decode(frames) == json.loads(VECTOR_BODY)


def test_encode_decode_rsa_round_trip(test_key, test_pub):
    frames = signing.encode_frames(VECTOR_BODY, RSA2048_SHA1, test_key)
    assert _decode(frames, key=test_pub, methods=(RSA2048_SHA1,))["type"] == "abort"


def test_key_for_sees_the_body_dict():
    seen = []
    body = _client_body()
    frames = signing.encode_frames(body, HMAC_SHA256, VECTOR_KEY)

    def key_for(d):
        seen.append((d["org"], d["node"]))
        return VECTOR_KEY

    signing.decode_frames(frames, key_for, max_body_size=65536, max_skew=300, now=VECTOR_NOW)
    assert seen == [("acme", "web01")]


def _reason(frames, **kw):
    with pytest.raises(ProtocolError) as exc:
        _decode(frames, **kw)
    return exc.value.reason


def test_decode_frame_count():
    frames = signing.encode_frames(VECTOR_BODY, HMAC_SHA256, VECTOR_KEY)
    assert _reason(frames[:1]) == "frame_count"
    assert _reason(frames + [b""]) == "frame_count"
    assert _reason([b"id"] + frames) == "frame_count"


def test_decode_size_caps():
    big = _client_body(pad="x" * 200)
    frames = signing.encode_frames(big, HMAC_SHA256, VECTOR_KEY)
    assert _reason(frames, max_body_size=len(big) - 1) == "body_too_big"
    assert _decode(frames, max_body_size=len(big))["pad"]
    assert _reason([b"A" * 2049, big]) == "header_too_big"


def test_decode_method_not_accepted(test_key):
    frames = signing.encode_frames(VECTOR_BODY, RSA2048_SHA1, test_key)
    assert _reason(frames) == "bad_header"  # server accepts only hmac from clients (S8)


def test_decode_bad_json():
    for body in (b"{", b"[1,2]", b"\xff\xfe", b'"str"', b'{"a": NaN}', b"[" * 100000):
        frames = [framing.format_header(HMAC_SHA256, signing.hmac_sign(VECTOR_KEY, body)), body]
        assert _reason(frames, max_body_size=10**6) == "bad_json"


def test_decode_bad_signature():
    frames = signing.encode_frames(_client_body(), HMAC_SHA256, VECTOR_KEY)
    assert _reason(frames, key=bytes(32)) == "bad_signature"
    assert _reason(frames, key=None) == "bad_signature"
    assert _reason([frames[0], frames[1].replace(b"web01", b"web02")]) == "bad_signature"


def test_decode_key_for_failure_is_protocol_error():
    frames = signing.encode_frames(_client_body(), HMAC_SHA256, VECTOR_KEY)

    def broken(d):
        raise KeyError("org")

    with pytest.raises(ProtocolError) as exc:
        signing.decode_frames(frames, broken, max_body_size=65536, max_skew=300, now=VECTOR_NOW)
    assert exc.value.reason == "bad_signature"


def test_decode_check_signature_false_skips_it():
    frames = signing.encode_frames(_client_body(), HMAC_SHA256, bytes(32))
    assert _decode(frames, check_signature=False)["node"] == "web01"


def test_decode_timestamps():
    def frames_for(ts):
        return signing.encode_frames(_client_body(ts=ts), HMAC_SHA256, VECTOR_KEY)

    assert _decode(frames_for("Tuesday, 04-Sep-12 23:01:02 GMT"))
    assert _decode(frames_for("Tue Sep  4 23:01:02 2012"))
    assert _decode(frames_for("Tue, 04 Sep 2012 23:05:00 GMT"))
    assert _reason(frames_for("yesterday")) == "bad_timestamp"
    body = b'{"type":"heartbeat"}'
    assert _reason(signing.encode_frames(body, HMAC_SHA256, VECTOR_KEY)) == "bad_timestamp"
    body = b'{"type":"heartbeat","timestamp":12}'
    assert _reason(signing.encode_frames(body, HMAC_SHA256, VECTOR_KEY)) == "bad_timestamp"
    # strictly less than max_skew, both directions
    assert _reason(frames_for("Tue, 04 Sep 2012 23:06:02 GMT")) == "stale"
    assert _reason(frames_for("Tue, 04 Sep 2012 22:56:02 GMT")) == "stale"
    assert _decode(frames_for("Tue, 04 Sep 2012 22:56:03 GMT"))


def test_decode_pipeline_order_signature_before_timestamp():
    frames = signing.encode_frames(_client_body(ts="bad"), HMAC_SHA256, VECTOR_KEY)
    assert _reason(frames, key=bytes(32)) == "bad_signature"


def test_decode_accepts_memoryviews_and_zmq_frames():
    import zmq

    frames = signing.encode_frames(VECTOR_BODY, HMAC_SHA256, VECTOR_KEY)
    assert _decode([memoryview(frames[0]), bytearray(frames[1])])["type"] == "abort"
    assert _decode([zmq.Frame(frames[0]), zmq.Frame(frames[1])])["type"] == "abort"
    assert _reason([frames[0], 12]) == "bad_json"
    assert _reason([None, frames[1]]) == "bad_header"


def test_decode_legacy_v1_rsa_header(test_key, test_pub):
    sig = signing.rsa_sign(test_key, VECTOR_BODY)
    frames = [b"Version:1.0;SigningMethod:rsa2048_sha1;SignedChecksum:" + sig.encode(), VECTOR_BODY]
    assert _decode(frames, key=test_pub, methods=(RSA2048_SHA1,))["sequence"] == 1
    # an hmac key for an rsa message (or the reverse) is a bad signature, not a crash
    assert _reason(frames, key=VECTOR_KEY, methods=(RSA2048_SHA1,)) == "bad_signature"
    hmac_frames = signing.encode_frames(VECTOR_BODY, HMAC_SHA256, VECTOR_KEY)
    assert _reason(hmac_frames, key=test_pub) == "bad_signature"


def test_hmac_verify_lenient_base64_like_reference_client():
    assert signing.hmac_verify(VECTOR_KEY, VECTOR_BODY, VECTOR_HMAC.rstrip("="))
    assert signing.hmac_verify(VECTOR_KEY, VECTOR_BODY, VECTOR_HMAC[:20] + "\n" + VECTOR_HMAC[20:])


def test_protocol_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(ProtocolError("missing_field", "x", field="job_id", msg_type="run")))
    assert (err.reason, err.detail, err.field, err.msg_type) == ("missing_field", "x", "job_id", "run")
