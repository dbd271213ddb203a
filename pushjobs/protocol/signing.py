"""Message signatures and the receive-side validation pipeline (§4.3–§4.5).

``hmac_sha256``: base64(HMAC-SHA256(session_key, body)), for everything on the
command channel.  ``rsa2048_sha1``: base64 of a *raw* PKCS#1 v1.5 type-1
private-encrypt of the 28-byte text base64(SHA1(body)), for the server's
heartbeat broadcast; it is not a standard signature (no DigestInfo), so it is
built from :func:`keys.rsa_private_encrypt`.

:func:`decode_frames` is on the server's heartbeat hot path (one call per node
per interval): it parses the JSON once, hashes the body bytes in place and does
nothing else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
from typing import Any, Callable, Iterable, Sequence

from cryptography.hazmat.primitives.asymmetric import rsa

from .errors import ProtocolError
from .framing import (
    HMAC_SHA256,
    MAX_HEADER_BYTES,
    RSA2048_SHA1,
    canonical_hmac_signature,
    format_header,
    parse_header,
)
from .keys import rsa_private_encrypt, rsa_public_decrypt
from .timestamps import check_skew, parse_http_date, parse_http_date_cached

__all__ = [
    "HMAC_SHA256",
    "RSA2048_SHA1",
    "sha1_checksum",
    "hmac_sign",
    "hmac_verify",
    "rsa_sign",
    "rsa_verify",
    "sign",
    "verify",
    "encode_frames",
    "decode_frames",
    "parse_body",
]

log = logging.getLogger(__name__)

KeyFor = Callable[[dict], Any]


def _b64decode(text: str) -> bytes | None:
    """Lenient base64 (whitespace, missing padding) as the reference client does."""
    try:
        return base64.b64decode(text, validate=True)  # the canonical form: fast path
    except (binascii.Error, ValueError, TypeError):
        pass
    try:
        raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
        raw = b"".join(raw.split())
        raw += b"=" * (-len(raw) % 4)
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return None


def sha1_checksum(body: bytes) -> bytes:
    """base64(SHA1(body)) as 28 ASCII bytes: what rsa2048_sha1 encrypts."""
    return base64.b64encode(hashlib.sha1(body).digest())


#: HMAC-SHA256 states after the key's inner and outer pad, per session key.
#: `hmac.digest` looks the digest up in OpenSSL 3 on every call (~2 us of a
#: ~3 us HMAC here); copying two prepared SHA-256 states costs ~1 us. Bounded:
#: cleared when full (one entry per node; 10,000 entries are ~5 MB).
_HMAC_STATES: dict[bytes, tuple[Any, Any]] = {}
HMAC_STATE_CACHE_MAX = 65536
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_sha256 = hashlib.sha256
_a2b_base64 = binascii.a2b_base64
_compare_digest = hmac.compare_digest


def hmac_pad_states(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256 (RFC 2104) as two SHA-256 states already fed the key's inner and
    outer pad: per message, copy each, feed the body / the inner digest (~1.1 µs, vs
    ~2-3 µs for `hmac.digest`). Uncached; `hmac_sha256_digest` keeps them per key."""
    k = bytes(key)
    if len(k) > 64:  # RFC 2104: long keys are hashed first
        k = _sha256(k).digest()
    k = k.ljust(64, b"\0")
    return (_sha256(k.translate(_IPAD)), _sha256(k.translate(_OPAD)))


def _hmac_states(key: bytes) -> tuple[Any, Any]:
    states = _HMAC_STATES.get(key)
    if states is None:
        states = hmac_pad_states(key)
        if len(_HMAC_STATES) >= HMAC_STATE_CACHE_MAX:
            _HMAC_STATES.clear()
        _HMAC_STATES[bytes(key)] = states
    return states


def hmac_sha256_digest(key: bytes, body: bytes) -> bytes:
    """HMAC-SHA256(key, body) (RFC 2104) from the key's cached pad states;
    byte-identical to ``hmac.digest(key, body, "sha256")``."""
    inner, outer = _hmac_states(key)
    i = inner.copy()
    i.update(body)
    o = outer.copy()
    o.update(i.digest())
    return o.digest()


def hmac_sign(key: bytes, body: bytes) -> str:
    """base64(HMAC-SHA256(key, body)), canonical padding, no newlines."""
    return base64.b64encode(hmac_sha256_digest(key, body)).decode("ascii")


def hmac_verify(key: bytes, body: bytes, signature_b64: str) -> bool:
    """Constant-time check of an hmac_sha256 signature."""
    given = _b64decode(signature_b64)
    if given is None:
        return False
    return _compare_digest(hmac_sha256_digest(key, body), given)


def _hmac_verify_raw(key: bytes, body: bytes, signature: bytes) -> bool:
    """`hmac_verify` for the signature bytes of a canonical header (the hot path):
    strict base64 first (what every sender emits), the lenient decoder after."""
    try:
        given = _a2b_base64(signature, strict_mode=True)
    except (binascii.Error, ValueError):
        given = _b64decode(signature.decode("ascii"))
        if given is None:
            return False
    return _compare_digest(hmac_sha256_digest(key, body), given)


def rsa_sign(private_key: rsa.RSAPrivateKey, body: bytes) -> str:
    """The rsa2048_sha1 signature of ``body`` (base64, no newlines)."""
    return base64.b64encode(rsa_private_encrypt(private_key, sha1_checksum(body))).decode("ascii")


def rsa_verify(public_key: rsa.RSAPublicKey | rsa.RSAPrivateKey, body: bytes, signature_b64: str) -> bool:
    """Public-decrypt the signature and compare with base64(SHA1(body))."""
    if isinstance(public_key, rsa.RSAPrivateKey):
        public_key = public_key.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        return False
    sig = _b64decode(signature_b64)
    if sig is None:
        return False
    recovered = rsa_public_decrypt(public_key, sig)
    if recovered is None:
        return False
    return hmac.compare_digest(recovered, sha1_checksum(body))


def sign(method: str, key: Any, body: bytes) -> str:
    """Signature of ``body`` by ``method`` (session key bytes or RSA private key)."""
    if method == HMAC_SHA256:
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError("hmac_sha256 needs the session key as bytes")
        return hmac_sign(bytes(key), body)
    if method == RSA2048_SHA1:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TypeError("rsa2048_sha1 needs an RSA private key")
        return rsa_sign(key, body)
    raise ValueError(f"unknown signing method {method!r}")


def verify(method: str, key: Any, body: bytes, signature_b64: str) -> bool:
    """True iff the signature is valid; a key of the wrong kind is just False."""
    if method == HMAC_SHA256:
        return isinstance(key, (bytes, bytearray)) and hmac_verify(bytes(key), body, signature_b64)
    if method == RSA2048_SHA1:
        return isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)) and rsa_verify(
            key, body, signature_b64
        )
    return False


def encode_frames(body: bytes, method: str, key: Any) -> list[bytes]:
    """``[header, body]`` ready for ``send_multipart`` (body sent unchanged)."""
    return [format_header(method, sign(method, key, body)), body]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for all calls: json.loads(..., parse_constant=...) would build a
# new one per message.  NaN/Infinity are not JSON and are refused.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


_scan_once = _DECODER.scan_once


def parse_body(body: bytes) -> dict:
    """JSON object from the (UTF-8) body bytes, else ProtocolError(bad_json).

    Fast path: a body that starts with ``{`` is scanned by the C scanner
    directly (what `JSONDecoder.decode` does after two regex whitespace
    matches); if it ends exactly at the end, that is the answer. Anything
    else, errors included, goes through `decode`, so results and messages
    are the same as before."""
    if type(body) is bytes and body[:1] == b"{":
        try:
            text = body.decode("utf-8")
            obj, end = _scan_once(text, 0)
        except (ValueError, StopIteration, RecursionError):
            pass
        else:
            if end == len(text):
                return obj
    try:
        obj = _DECODER.decode(body.decode("utf-8") if not isinstance(body, str) else body)
    except (ValueError, RecursionError, TypeError, AttributeError) as exc:  # incl. UnicodeDecodeError
        raise ProtocolError("bad_json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", f"body is a JSON {type(obj).__name__}, not an object")
    return obj


def _frame_bytes(frame: Any, reason: str) -> bytes:
    """bytes of a memoryview / zmq.Frame (anything with the buffer protocol)."""
    try:
        return bytes(memoryview(frame))
    except TypeError:
        raise ProtocolError(reason, f"frame is {type(frame).__name__}, not bytes") from None


def decode_frames(
    frames: Sequence[bytes],
    key_for: KeyFor,
    *,
    max_body_size: int,
    max_skew: float,
    now: float,
    methods: Iterable[str] = (HMAC_SHA256,),
    check_signature: bool = True,
) -> dict:
    """The §4.5 receive pipeline on ``[header, body]``; returns the body dict.

    1. two frames; header ≤ 2048 bytes, body ≤ ``max_body_size``;
    2. header parse, method in ``methods`` (the server passes only
       ``hmac_sha256`` for client messages, §17.2 S8);
    3. body is a JSON object;
    4. signature, with ``key_for(body_dict)`` (None: unknown sender →
       ``bad_signature``); skipped only when ``check_signature`` is False (the
       debug settings ``skip_header_validation`` / ``ignore_signature_check``);
    5. ``timestamp`` parses as an HTTP date and ``|now - ts| < max_skew``.

    Raises only ProtocolError.
    """
    if not isinstance(frames, (list, tuple)):
        try:
            frames = list(frames)
        except TypeError:
            raise ProtocolError("frame_count", "frames is not a sequence") from None
    if len(frames) != 2:
        raise ProtocolError("frame_count", f"{len(frames)} frames, expected 2")
    header_frame, body = frames
    if not isinstance(body, (bytes, bytearray)):
        body = _frame_bytes(body, "bad_json")
    if not isinstance(header_frame, (bytes, bytearray)):
        header_frame = _frame_bytes(header_frame, "bad_header")
    if len(header_frame) > MAX_HEADER_BYTES:
        raise ProtocolError("header_too_big", f"{len(header_frame)} bytes > {MAX_HEADER_BYTES}")
    if len(body) > max_body_size:
        raise ProtocolError("body_too_big", f"{len(body)} bytes > {max_body_size}")
    raw_sig = canonical_hmac_signature(header_frame)  # the common case: no Header object
    if raw_sig is not None:
        method = HMAC_SHA256
        header = None
    else:
        header = parse_header(header_frame)
        method = header.method
    if method not in methods:
        raise ProtocolError("bad_header", f"signing method {method} not accepted here")
    msg = parse_body(body)
    if check_signature:
        try:
            key = key_for(msg)
        except ProtocolError:
            raise
        except Exception as exc:  # a lookup bug must not kill the socket loop
            log.exception("signature key lookup failed")
            raise ProtocolError("bad_signature", f"key lookup failed: {exc!r}") from None
        if key is None:
            raise ProtocolError("bad_signature", "no key for this sender")
        if raw_sig is not None and type(key) is bytes:
            ok = _hmac_verify_raw(key, body, raw_sig)
        else:
            sig = header.signature if header is not None else raw_sig.decode("ascii")
            ok = verify(method, key, body, sig)
        if not ok:
            raise ProtocolError("bad_signature", f"{method} signature does not match")
    ts = msg.get("timestamp", _MISSING)
    if ts is _MISSING:
        raise ProtocolError("bad_timestamp", "no timestamp field")
    # the same few strings over and over: a dict hit, no function calls (the
    # skew check itself runs against `now` every time)
    t = parse_http_date_cached(ts) if type(ts) is str else parse_http_date(ts)
    if not abs(now - t) < max_skew:
        check_skew(t, now, max_skew)  # raises `stale` with the usual detail
    return msg


_MISSING = object()
