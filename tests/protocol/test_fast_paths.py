"""The receive path's fast paths give exactly the general code's answers (#8).

Header prefix check vs the lenient clause parser, cached HMAC pad states vs
`hmac.digest`, the direct JSON scan vs `JSONDecoder.decode`, the memoized
HTTP dates vs formatting/parsing every time: same results, same errors.
"""

from __future__ import annotations

import base64
import hmac
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushjobs.protocol import ProtocolError, framing, signing, timestamps
from pushjobs.protocol.framing import CANONICAL_HMAC_PREFIX, HMAC_SHA256


def _outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except ProtocolError as e:
        return ("error", e.reason, e.detail)


_sig_chars = st.sampled_from(list(b"ABCxyz019+/=;: \t\x00\x7f\x80\xff"))
_near_canonical = st.builds(
    lambda prefix, tail: prefix + bytes(tail),
    st.sampled_from([
        CANONICAL_HMAC_PREFIX,
        CANONICAL_HMAC_PREFIX[:-1],
        b"Version:2.0;SigningMethod:rsa2048_sha1;Signature:",
        b"Version:1.0;SigningMethod:hmac_sha256;Signature:",
        b"version:2.0;SigningMethod:hmac_sha256;Signature:",
        b"Version:2.0;SigningMethod:hmac_sha256;SignedChecksum:",
        b"SigningMethod:hmac_sha256;Version:2.0;Signature:",
        b"",
    ]),
    st.lists(_sig_chars, max_size=60)
    | st.builds(lambda pad, tail: [65] * pad + tail, st.integers(1990, 2010), st.lists(_sig_chars, max_size=4))
    | st.sampled_from([list(b";Version:1.0"), list(b"abc;SigningMethod:x"), list(b"a:b:c"), []]),
)


@settings(max_examples=300, deadline=None)
@given(_near_canonical | st.binary(max_size=80))
def test_parse_header_fast_path_equals_general_parser(data):
    assert _outcome(framing.parse_header, data) == _outcome(framing.parse_header_general, data)


def test_canonical_header_takes_the_fast_path():
    sig = signing.hmac_sign(b"k" * 32, b"{}")
    raw = framing.format_header(HMAC_SHA256, sig)
    assert framing.canonical_hmac_signature(raw) == sig.encode()
    assert framing.parse_header(raw) == framing.Header("2.0", HMAC_SHA256, sig)
    # not for anything the general parser could read differently
    for other in (raw + b";Version:1.0", CANONICAL_HMAC_PREFIX, raw.replace(b"2.0", b"1.0"),
                  raw + b"\xff", bytearray(raw), CANONICAL_HMAC_PREFIX + b"x" * 2048):
        assert framing.canonical_hmac_signature(other) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100), st.binary(max_size=300))
def test_cached_hmac_equals_hmac_digest(key, body):
    assert signing.hmac_sha256_digest(key, body) == hmac.digest(key, body, "sha256")
    assert signing.hmac_sha256_digest(key, body) == hmac.digest(key, body, "sha256")  # cached states


def test_hmac_state_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(signing, "HMAC_STATE_CACHE_MAX", 4)
    signing._HMAC_STATES.clear()
    for i in range(10):
        k = bytes([i]) * 32
        assert signing.hmac_sha256_digest(k, b"x") == hmac.digest(k, b"x", "sha256")
        assert len(signing._HMAC_STATES) <= 4


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        _json_values.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.text(max_size=5), _json_values, max_size=4).map(
            lambda d: json.dumps(d, separators=(",", ":")).encode()),
        st.builds(lambda a, b: a + b, st.sampled_from([b"{}", b'{"a":1}', b"{", b'{"a":NaN}', b'{"a":Infinity}']),
                  st.sampled_from([b"", b" ", b"x", b"{}", b"\n", b"\xff"])),
        st.binary(max_size=30).map(lambda b: b"{" + b),
    )
)
def test_parse_body_fast_path_equals_decoder(raw):
    def general(b):
        try:
            obj = signing._DECODER.decode(b.decode("utf-8"))
        except (ValueError, RecursionError, TypeError, AttributeError) as exc:
            raise ProtocolError("bad_json", str(exc)[:200]) from None
        if not isinstance(obj, dict):
            raise ProtocolError("bad_json", f"body is a JSON {type(obj).__name__}, not an object")
        return obj

    assert _outcome(signing.parse_body, raw) == _outcome(general, raw)


def test_http_date_memo_follows_the_clock():
    t = 1346799662.0  # Tue, 04 Sep 2012 23:01:02 GMT
    assert timestamps.http_date(t) == "Tue, 04 Sep 2012 23:01:02 GMT"
    assert timestamps.http_date(t + 0.999) == "Tue, 04 Sep 2012 23:01:02 GMT"
    assert timestamps.http_date(t + 1.0) == "Tue, 04 Sep 2012 23:01:03 GMT"
    assert timestamps.http_date(t) == "Tue, 04 Sep 2012 23:01:02 GMT"
    assert timestamps.http_date(-1.5) == "Wed, 31 Dec 1969 23:59:58 GMT"  # outside the memo: as before
    now = time.time()
    assert timestamps.parse_http_date(timestamps.http_date()) in (float(int(now)), float(int(now) + 1))


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0, max_value=4e9))
def test_http_date_memo_equals_formatting(t):
    assert timestamps.http_date(t) == timestamps._format_http_date(t)


def test_parse_http_date_cached_same_results_and_errors():
    good = "Tue, 04 Sep 2012 23:01:02 GMT"
    for _ in range(3):
        assert timestamps.parse_http_date_cached(good) == timestamps.parse_http_date(good) == 1346799662.0
    for bad in ("Tue, 31 Feb 2012 23:01:02 GMT", "yesterday", ""):
        for _ in range(2):  # errors are not cached
            with pytest.raises(ProtocolError) as a:
                timestamps.parse_http_date_cached(bad)
            with pytest.raises(ProtocolError) as b:
                timestamps.parse_http_date(bad)
            assert (a.value.reason, a.value.detail) == (b.value.reason, b.value.detail)
    for i in range(100):  # bounded
        timestamps.parse_http_date_cached(timestamps.http_date(1346799662.0 + i))
    assert len(timestamps._recent) <= timestamps._RECENT_MAX


def test_decode_frames_skew_still_checked_against_now_every_time():
    key = bytes(range(32))
    ts = "Tue, 04 Sep 2012 23:01:02 GMT"
    body = json.dumps({"timestamp": ts, "type": "heartbeat"}).encode()
    frames = signing.encode_frames(body, HMAC_SHA256, key)
    t = timestamps.parse_http_date(ts)
    kw = dict(max_body_size=65536, max_skew=300.0)
    assert signing.decode_frames(frames, lambda d: key, now=t + 299, **kw)["type"] == "heartbeat"
    with pytest.raises(ProtocolError) as e:  # the same string, a later now: stale
        signing.decode_frames(frames, lambda d: key, now=t + 300, **kw)
    assert e.value.reason == "stale"
    with pytest.raises(ProtocolError) as e:
        signing.decode_frames(frames, lambda d: key, now=t - 300, **kw)
    assert e.value.reason == "stale"


def test_decode_frames_fast_and_general_header_agree_on_signatures():
    """A canonical header (fast path) and the same signature in a reordered
    header (general parser) are accepted or refused alike, lenient base64 included."""
    key = bytes(range(32))
    body = json.dumps({"timestamp": timestamps.http_date(), "type": "heartbeat"}).encode()
    sig = signing.hmac_sign(key, body)
    kw = dict(max_body_size=65536, max_skew=300.0, now=time.time())

    def decode(frames):
        return signing.decode_frames(frames, lambda d: key, **kw)

    variants = [sig, sig.rstrip("="), sig[:20] + " " + sig[20:], "A" + sig[1:], "!!", base64.b64encode(b"x").decode()]
    for s in variants:
        canonical = [CANONICAL_HMAC_PREFIX + s.encode(), body]
        reordered = [b"SigningMethod:hmac_sha256;Signature:" + s.encode() + b";Version:2.0", body]
        assert framing.canonical_hmac_signature(canonical[0]) is not None
        assert framing.canonical_hmac_signature(reordered[0]) is None
        a = _outcome(decode, canonical)
        b = _outcome(decode, reordered)
        assert a[0] == b[0], s
        if a[0] == "error":
            assert a[1] == b[1] == "bad_signature"
