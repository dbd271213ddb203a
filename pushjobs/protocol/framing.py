"""Two-frame messages and the header clause (PROTOCOL.md §4.1, §4.2).

A pushy message is exactly ``[header, body]`` (the server ROUTER also sees a
leading routing id, which its shell strips before calling in here).  The header
is ASCII ``Version:2.0;SigningMethod:<m>;Signature:<b64>``; we always emit that
exact clause order and parse leniently the way the reference server does:
unknown clauses ignored, the legacy ``SignedChecksum`` alias accepted, Version
1.0 only together with ``rsa2048_sha1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .errors import ProtocolError

__all__ = [
    "MAX_HEADER_BYTES",
    "PROTOCOL_VERSION",
    "HMAC_SHA256",
    "RSA2048_SHA1",
    "SIGNING_METHODS",
    "Header",
    "format_header",
    "parse_header",
    "parse_header_general",
    "canonical_hmac_signature",
    "CANONICAL_HMAC_PREFIX",
    "split_frames",
]

#: Hard-coded in the reference server (§16 constants): bigger headers are dropped.
MAX_HEADER_BYTES = 2048
PROTOCOL_VERSION = "2.0"
HMAC_SHA256 = "hmac_sha256"
RSA2048_SHA1 = "rsa2048_sha1"
SIGNING_METHODS = (HMAC_SHA256, RSA2048_SHA1)
_VERSIONS = ("1.0", "2.0")


@dataclass(frozen=True, slots=True)
class Header:
    """A parsed header; ``signature`` is the base64 text as received."""

    version: str
    method: str
    signature: str

    def to_bytes(self) -> bytes:
        return f"Version:{self.version};SigningMethod:{self.method};Signature:{self.signature}".encode(
            "ascii"
        )


def format_header(method: str, signature_b64: str) -> bytes:
    """``b"Version:2.0;SigningMethod:<method>;Signature:<b64>"`` (§4.2 order)."""
    if method not in SIGNING_METHODS:
        raise ValueError(f"unknown signing method {method!r}")
    return b"Version:2.0;SigningMethod:" + method.encode("ascii") + b";Signature:" + (
        signature_b64.encode("ascii")
    )


#: What every real client (and our agent and fleet) sends, up to the signature.
CANONICAL_HMAC_PREFIX = b"Version:2.0;SigningMethod:hmac_sha256;Signature:"
_PREFIX_LEN = len(CANONICAL_HMAC_PREFIX)


def canonical_hmac_signature(data: bytes) -> bytes | None:
    """The signature bytes of a canonical ``hmac_sha256`` header, else None.

    The fast path of :func:`parse_header` (the server's hot path: one call
    per command message): a prefix check and two byte scans instead of an
    ASCII decode, a split and a loop over clauses. It answers only when the
    general parser would return ``Header("2.0", "hmac_sha256", <rest>)``:
    the rest is non-empty ASCII without ``;`` (a ``;`` would start another
    clause, which could override Version or SigningMethod) and the frame is
    within the size cap. Anything else (None) goes to the general parser,
    which produces every error exactly as before."""
    if (
        type(data) is bytes
        and data.startswith(CANONICAL_HMAC_PREFIX)
        and _PREFIX_LEN < len(data) <= MAX_HEADER_BYTES
    ):
        sig = data[_PREFIX_LEN:]
        if sig.isascii() and b";" not in sig:
            return sig
    return None


def parse_header(data: bytes) -> Header:
    """Parse a header frame; any problem raises ProtocolError.

    ``header_too_big`` over 2048 bytes; ``bad_header`` for non-ASCII text, a
    missing or unknown ``Version``/``SigningMethod``, a missing signature, or
    Version 1.0 with anything but ``rsa2048_sha1``.
    """
    sig = canonical_hmac_signature(data)
    if sig is not None:
        return Header(PROTOCOL_VERSION, HMAC_SHA256, sig.decode("ascii"))
    return parse_header_general(data)


def parse_header_general(data: bytes) -> Header:
    """The lenient parser for any header (the reference server's rules):
    unknown clauses ignored, later clauses win, ``SignedChecksum`` alias."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("bad_header", f"header frame is {type(data).__name__}, not bytes")
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError("header_too_big", f"{len(data)} bytes > {MAX_HEADER_BYTES}")
    try:
        text = bytes(data).decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("bad_header", "header is not ASCII") from None
    version = method = signature = checksum = None
    for clause in text.split(";"):
        name, sep, value = clause.partition(":")
        if not sep:
            continue  # not a Name:Value clause; unknown clauses are ignored
        if name == "Version":
            version = value
        elif name == "SigningMethod":
            method = value
        elif name == "Signature":
            signature = value
        elif name == "SignedChecksum":
            checksum = value
    if version not in _VERSIONS:
        raise ProtocolError("bad_header", f"unsupported Version {version!r}")
    if method not in SIGNING_METHODS:
        raise ProtocolError("bad_header", f"unknown SigningMethod {method!r}")
    if signature is None:
        signature = checksum
    if not signature:
        raise ProtocolError("bad_header", "no Signature clause")
    if version == "1.0" and method != RSA2048_SHA1:
        raise ProtocolError("bad_header", "Version 1.0 supports only rsa2048_sha1")
    return Header(version, method, signature)


def split_frames(frames: Sequence[bytes]) -> tuple[bytes, bytes]:
    """``(header, body)`` from exactly two frames, else ProtocolError(frame_count)."""
    try:
        n = len(frames)
    except TypeError:
        raise ProtocolError("frame_count", "frames is not a sequence") from None
    if n != 2:
        raise ProtocolError("frame_count", f"{n} frames, expected 2")
    return frames[0], frames[1]
