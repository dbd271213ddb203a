"""Chef request signing ("X-Ops" headers), versions 1.0, 1.1 and 1.3.

Any Chef tool (knife-push, the stock push-jobs client, chef's HTTP stack) signs
its REST requests this way, so our server must verify exactly what
mixlib-authentication produces, and our CLI/agent must produce the same
(PROTOCOL.md §10.1, §10.1a):

* canonical path: the request path without query string, repeated ``/``
  collapsed, trailing ``/`` removed (unless the path is ``/``);
* v1.0/1.1 (sha1) canonical string::

      Method:GET\\nHashed Path:<b64 sha1(path)>\\nX-Ops-Content-Hash:<b64 sha1(body)>\\n
      X-Ops-Timestamp:<iso8601>\\nX-Ops-UserId:<user id, or b64 sha1(user id) for 1.1>

  signed with a raw PKCS#1 v1.5 type-1 private encrypt of the whole string;
* v1.3 (sha256)::

      Method:GET\\nPath:<path>\\nX-Ops-Content-Hash:<b64 sha256(body)>\\nX-Ops-Sign:version=1.3\\n
      X-Ops-Timestamp:<iso8601>\\nX-Ops-UserId:<user id>\\nX-Ops-Server-API-Version:<v>

  signed with a standard RSA-SHA256 PKCS#1 v1.5 signature.

The base64 signature is split into 60-character ``X-Ops-Authorization-N``
headers (N from 1).  Version 1.2 is accepted on input as 1.1 (Chef servers do).
:func:`parse_auth_headers` checks presence and syntax only; the caller does
the clock skew check (900 s) and the key lookup, then :func:`verify_signature`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import functools
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .keys import rsa_private_encrypt, rsa_public_decrypt
from .timestamps import iso8601, parse_iso8601

__all__ = [
    "ChefAuthError",
    "SignedRequest",
    "SUPPORTED_VERSIONS",
    "MAX_CLOCK_SKEW",
    "DEFAULT_SERVER_API_VERSION",
    "canonical_path",
    "canonical_request",
    "content_hash",
    "sign_request",
    "parse_auth_headers",
    "parse_timestamp",
    "verify_signature",
]

#: version → digest algorithm it signs with
SUPPORTED_VERSIONS = {"1.0": "sha1", "1.1": "sha1", "1.2": "sha1", "1.3": "sha256"}
#: allowed |now - X-Ops-Timestamp| in seconds (§10.1)
MAX_CLOCK_SKEW = 900
#: what mixlib-authentication assumes when X-Ops-Server-API-Version is absent
DEFAULT_SERVER_API_VERSION = "0"
#: presence-checked headers, in the order the error message names them (§10.2)
REQUIRED_HEADERS = ("X-Ops-UserId", "X-Ops-Timestamp", "X-Ops-Sign", "X-Ops-Content-Hash")
AUTHORIZATION_PREFIX = "X-Ops-Authorization-"
_LINE = 60
_SLASHES = re.compile(r"/+")


class ChefAuthError(ValueError):
    """Why a request's auth headers cannot even be checked.

    ``kind``: ``missing_headers`` (``missing`` lists the header names),
    ``bad_timestamp``, ``unsupported_version`` or ``bad_signature`` (the
    authorization headers are not base64).  :attr:`http_status` and
    :attr:`message` give the reference server's answer (§10.2).
    """

    def __init__(self, kind: str, detail: str = "", *, missing: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.detail = detail
        self.missing = tuple(missing)
        super().__init__(f"{kind}: {detail}" if detail else kind)

    @property
    def http_status(self) -> int:
        return {"missing_headers": 400, "unsupported_version": 400}.get(self.kind, 401)

    @property
    def message(self) -> str:
        if self.kind == "missing_headers":
            names = ", ".join(f"'{n}'" for n in self.missing)
            return f"missing required authentication header(s) {names}"
        if self.kind == "bad_timestamp":
            return "bad header(s) 'X-Ops-Timestamp'"
        if self.kind == "unsupported_version":
            return "Unsupported authentication protocol version"
        return self.detail or self.kind


@dataclass(frozen=True)
class SignedRequest:
    """The auth headers of one request, parsed (not yet verified)."""

    user_id: str
    version: str
    algorithm: str
    timestamp: str  # the header value, as sent
    time: float  # the same, epoch seconds (for the caller's skew check)
    content_hash: str
    signature: bytes  # raw, from the joined X-Ops-Authorization-N headers
    server_api_version: str | None = None

    def skew(self, now: float) -> float:
        """``now - time``: the caller rejects ``abs(skew) > MAX_CLOCK_SKEW``."""
        return now - self.time


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _digest(algorithm: str, data: bytes) -> str:
    return _b64(hashlib.new(algorithm, data).digest())


def _bytes(body: bytes | str | None) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8")
    return bytes(body)


def canonical_path(path: str) -> str:
    """Query string dropped, ``//`` collapsed, trailing ``/`` removed."""
    p = _SLASHES.sub("/", path.split("?", 1)[0])
    return p[:-1] if len(p) > 1 and p.endswith("/") else p


def content_hash(body: bytes | str | None, version: str = "1.1") -> str:
    """``X-Ops-Content-Hash``: base64 sha1 (sha256 for 1.3) of the body."""
    return _digest(_algorithm(version), _bytes(body))


def _algorithm(version: str) -> str:
    try:
        return SUPPORTED_VERSIONS[version]
    except KeyError:
        raise ChefAuthError("unsupported_version", f"signing version {version!r}") from None


def canonical_request(
    method: str,
    path: str,
    content_hash: str,
    timestamp: str,
    user_id: str,
    version: str,
    server_api_version: str | None = None,
) -> bytes:
    """The string that gets signed (mixlib-authentication ``canonicalize_request``).

    ``timestamp`` must already be canonical (``YYYY-MM-DDTHH:MM:SSZ``)."""
    algorithm = _algorithm(version)
    path = canonical_path(path)
    if version == "1.3":
        lines = [
            f"Method:{method.upper()}",
            f"Path:{path}",
            f"X-Ops-Content-Hash:{content_hash}",
            f"X-Ops-Sign:version={version}",
            f"X-Ops-Timestamp:{timestamp}",
            f"X-Ops-UserId:{user_id}",
            f"X-Ops-Server-API-Version:{server_api_version or DEFAULT_SERVER_API_VERSION}",
        ]
    else:
        uid = _digest(algorithm, user_id.encode("utf-8")) if version in ("1.1", "1.2") else user_id
        lines = [
            f"Method:{method.upper()}",
            f"Hashed Path:{_digest(algorithm, path.encode('utf-8'))}",
            f"X-Ops-Content-Hash:{content_hash}",
            f"X-Ops-Timestamp:{timestamp}",
            f"X-Ops-UserId:{uid}",
        ]
    return "\n".join(lines).encode("utf-8")


def _canonical_time(timestamp: Any) -> str:
    if timestamp is None:
        return iso8601()
    if isinstance(timestamp, _dt.datetime):
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=_dt.timezone.utc)
        return iso8601(timestamp.timestamp())
    if isinstance(timestamp, (int, float)):
        return iso8601(float(timestamp))
    if isinstance(timestamp, str):
        return iso8601(parse_iso8601(timestamp))
    raise TypeError(f"timestamp must be None, epoch seconds, datetime or ISO-8601 text")


def sign_request(
    private_key: rsa.RSAPrivateKey,
    user_id: str,
    method: str,
    path: str,
    body: bytes | str = b"",
    *,
    version: str = "1.1",
    timestamp: Any = None,
    server_api_version: str | None = "1",
) -> dict[str, str]:
    """The Chef auth headers for one request, as mixlib-authentication makes them.

    ``timestamp``: None (now), epoch seconds, a datetime or ISO-8601 text.
    ``server_api_version`` is sent as ``X-Ops-Server-API-Version`` (and, for
    1.3, signed); None omits the header.
    """
    algorithm = _algorithm(version)
    if version == "1.2":
        raise ChefAuthError("unsupported_version", "1.2 is accepted but never produced")
    ts = _canonical_time(timestamp)
    chash = content_hash(body, version)
    canonical = canonical_request(method, path, chash, ts, user_id, version, server_api_version)
    if version == "1.3":
        raw = private_key.sign(canonical, padding.PKCS1v15(), hashes.SHA256())
    else:
        raw = rsa_private_encrypt(private_key, canonical)
    sig = _b64(raw)
    headers = {
        "X-Ops-Sign": f"algorithm={algorithm};version={version};",
        "X-Ops-UserId": user_id,
        "X-Ops-Timestamp": ts,
        "X-Ops-Content-Hash": chash,
    }
    for i in range(0, len(sig), _LINE):
        headers[f"{AUTHORIZATION_PREFIX}{i // _LINE + 1}"] = sig[i : i + _LINE]
    if server_api_version is not None:
        headers["X-Ops-Server-API-Version"] = str(server_api_version)
    return headers


@functools.lru_cache(maxsize=1024)
def parse_timestamp(text: str) -> float:
    """``parse_iso8601`` of an X-Ops-Timestamp, remembered for the last 1,024 texts.

    A pure function of the text (errors are raised again every time, never
    cached). Why: the server parses the same header twice per request (skew
    check, then here), and a reconnect storm sends thousands of requests
    signed within the same few seconds."""
    return parse_iso8601(text)


@functools.lru_cache(maxsize=1024)
def _iso8601_of(t: float) -> str:
    """``iso8601(t)``, remembered (pure; see :func:`parse_timestamp`)."""
    return iso8601(t)


def _parse_sign(value: str) -> dict[str, str]:
    """``algorithm=sha1;version=1.1;`` → dict; empty items ignored (§10.1a)."""
    out: dict[str, str] = {}
    for item in value.split(";"):
        key, sep, val = item.partition("=")
        if sep:
            out[key.strip().lower()] = val.strip()
    return out


def parse_auth_headers(headers: Mapping[str, str]) -> SignedRequest:
    """Collect and syntax-check the X-Ops headers (names case-insensitive).

    Raises ChefAuthError: ``missing_headers`` (empty values count as missing),
    ``unsupported_version``, ``bad_timestamp``, ``bad_signature``.
    """
    lower: dict[str, str] = {}
    for name, value in headers.items():
        if isinstance(name, str) and isinstance(value, str):
            lower[name.strip().lower()] = value.strip()
    missing = [n for n in REQUIRED_HEADERS if not lower.get(n.lower())]
    auth_parts: dict[int, str] = {}
    prefix = AUTHORIZATION_PREFIX.lower()
    for name, value in lower.items():
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            auth_parts[int(name[len(prefix) :])] = value
    if not auth_parts.get(1):
        missing.append(f"{AUTHORIZATION_PREFIX}1")
    if missing:
        raise ChefAuthError(
            "missing_headers", "missing " + ", ".join(missing), missing=tuple(missing)
        )
    sign = _parse_sign(lower["x-ops-sign"])
    version = sign.get("version", "")
    if version not in SUPPORTED_VERSIONS:
        raise ChefAuthError("unsupported_version", f"X-Ops-Sign {lower['x-ops-sign']!r}")
    algorithm = sign.get("algorithm", SUPPORTED_VERSIONS[version]).lower()
    if algorithm != SUPPORTED_VERSIONS[version]:
        raise ChefAuthError("unsupported_version", f"algorithm {algorithm!r} with version {version}")
    timestamp = lower["x-ops-timestamp"]
    try:
        t = parse_timestamp(timestamp)
    except ValueError:
        raise ChefAuthError("bad_timestamp", f"X-Ops-Timestamp {timestamp[:40]!r}") from None
    chunks = []
    n = 1
    while auth_parts.get(n):
        chunks.append(auth_parts[n])
        n += 1
    try:
        signature = base64.b64decode("".join("".join(chunks).split()), validate=True)
    except (binascii.Error, ValueError):
        raise ChefAuthError("bad_signature", "X-Ops-Authorization is not base64") from None
    return SignedRequest(
        user_id=lower["x-ops-userid"],
        version=version,
        algorithm=algorithm,
        timestamp=timestamp,
        time=t,
        content_hash=lower["x-ops-content-hash"],
        signature=signature,
        server_api_version=lower.get("x-ops-server-api-version") or None,
    )


def verify_signature(
    signed: SignedRequest,
    method: str,
    path: str,
    body: bytes | str | None,
    public_key: rsa.RSAPublicKey | rsa.RSAPrivateKey,
) -> bool:
    """True iff the request was signed by ``public_key``'s owner, the body
    matches ``X-Ops-Content-Hash``, and the signature covers this method and
    (canonical, query-less) path.  Never raises for bad input."""
    if isinstance(public_key, rsa.RSAPrivateKey):
        public_key = public_key.public_key()
    try:
        expected_hash = content_hash(body, signed.version)
        if not hmac.compare_digest(expected_hash.encode(), signed.content_hash.encode("utf-8", "replace")):
            return False
        canonical = canonical_request(
            method, path, expected_hash, _iso8601_of(signed.time), signed.user_id,
            signed.version, signed.server_api_version,
        )
        if signed.version == "1.3":
            try:
                public_key.verify(signed.signature, canonical, padding.PKCS1v15(), hashes.SHA256())
            except InvalidSignature:
                return False
            return True
        recovered = rsa_public_decrypt(public_key, signed.signature)
        return recovered is not None and hmac.compare_digest(recovered, canonical)
    except (ChefAuthError, ValueError, TypeError):
        return False
