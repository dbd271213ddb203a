"""Every message body of PROTOCOL.md §5, as small frozen dataclasses.

Rules of this file:

* ``from_dict(d)`` validates types and raises exactly one ProtocolError:
  ``missing_field`` or ``bad_field`` with ``err.field`` naming the field.
  Fields we do not know are kept in ``extra`` (and written back by
  ``to_body``), so a newer peer's additions survive a round trip.
* ``to_body()`` returns compact JSON bytes in wire order: server messages start
  with ``sequence`` and ``timestamp`` (§4.6), client messages follow the
  reference client's order.  Sign exactly these bytes.
* Timestamps stay strings here: :func:`signing.decode_frames` has already
  parsed and skew-checked the one in a received body.
* Incoming client ``job_id`` (§5.1): JSON null or the string ``"null"`` → None;
  a string longer than 64 bytes → :data:`INVALID_JOB_ID`, which never matches
  a job (the server still processes the message, e.g. as a heartbeat).
"""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Mapping, TypeVar, Union

from .errors import ProtocolError
from .framing import PROTOCOL_VERSION

__all__ = [
    "MAX_JOB_ID_BYTES",
    "INVALID_JOB_ID",
    "JOB_STATES",
    "ClientMessage",
    "ClientHeartbeat",
    "AckCommit",
    "NackCommit",
    "AckRun",
    "NackRun",
    "Succeeded",
    "Failed",
    "Aborted",
    "ServerMessage",
    "Abort",
    "Ack",
    "Commit",
    "Run",
    "ServerHeartbeat",
    "CLIENT_MESSAGE_TYPES",
    "SERVER_MESSAGE_TYPES",
    "parse_client_message",
    "parse_server_message",
    "server_message",
    "client_message",
    "dumps",
    "new_incarnation_id",
]

MAX_JOB_ID_BYTES = 64
#: What an over-long job id becomes: not 32 hex chars, so it matches no job.
INVALID_JOB_ID = "<invalid job id>"
JOB_STATES = ("idle", "committed", "running")

_MISSING = object()
M = TypeVar("M", bound="_Message")


def new_incarnation_id() -> str:
    """A random UUID: made once per process (server or agent) and never
    persisted, so a restart is visible to the peer (§6.5)."""
    return str(uuid.uuid4())


def dumps(obj: Mapping[str, Any]) -> bytes:
    """Compact JSON bytes (UTF-8, non-ASCII kept raw to stay small)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: fall back to \\u escapes
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii")


# --- field validators: value -> value, or raise ProtocolError(bad_field) ------


def _bad(name: str, msg_type: str, why: str) -> ProtocolError:
    return ProtocolError("bad_field", f"{msg_type}: field {name!r} {why}", field=name, msg_type=msg_type)


def _v_str(name: str, value: Any, t: str) -> str:
    if not isinstance(value, str):
        raise _bad(name, t, f"must be a string, not {type(value).__name__}")
    return value


def _v_opt_str(name: str, value: Any, t: str) -> str | None:
    return None if value is None else _v_str(name, value, t)


def _v_int(name: str, value: Any, t: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(name, t, f"must be an integer, not {type(value).__name__}")
    return value


def _v_bool(name: str, value: Any, t: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(name, t, f"must be true or false, not {type(value).__name__}")
    return value


def _v_env(name: str, value: Any, t: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _bad(name, t, "must be an object of strings")
    return value


def _v_client_job_id(name: str, value: Any, t: str) -> str | None:
    if value is None or value == "null":
        return None
    if not isinstance(value, str):
        raise _bad(name, t, f"must be a string or null, not {type(value).__name__}")
    if len(value) > MAX_JOB_ID_BYTES or len(value.encode("utf-8", "surrogatepass")) > MAX_JOB_ID_BYTES:
        return INVALID_JOB_ID
    return value


def _v_job_state(name: str, value: Any, t: str) -> str:
    value = _v_str(name, value, t)
    if value not in JOB_STATES:
        raise _bad(name, t, f"must be one of {', '.join(JOB_STATES)}, not {value[:32]!r}")
    return value


def _f(validator, default: Any = MISSING, *, omit_none: bool = False):
    """A message field: its validator, and whether None means "not on the wire"."""
    meta = {"v": validator, "omit_none": omit_none}
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


@functools.cache
def _specs(cls: type) -> tuple[tuple[tuple[str, Any, bool], ...], frozenset[str]]:
    """(name, validator, required) per field, and the known keys: computed once
    per class because from_dict runs for every heartbeat."""
    specs = tuple(
        (f.name, f.metadata["v"], f.default is MISSING and f.default_factory is MISSING)
        for f in fields(cls)
        if f.name != "extra"
    )
    return specs, frozenset({"type", *(s[0] for s in specs)})


@dataclass(frozen=True, kw_only=True)
class _Message:
    TYPE: ClassVar[str] = ""
    #: wire order of the known keys ("type" included)
    ORDER: ClassVar[tuple[str, ...]] = ()

    extra: dict[str, Any] = field(default_factory=dict, compare=True, repr=False)

    @property
    def type(self) -> str:
        return self.TYPE

    @classmethod
    def from_dict(cls: type[M], d: Mapping[str, Any]) -> M:
        """Validate a parsed body; ProtocolError names the first bad field."""
        if not isinstance(d, Mapping):
            raise ProtocolError("bad_json", "message body is not a JSON object", msg_type=cls.TYPE)
        t = cls.TYPE
        got = d.get("type", _MISSING)
        if got is not _MISSING and got != t:
            raise _bad("type", t, f"is {got!r}, expected {t!r}")
        kwargs: dict[str, Any] = {}
        specs, known = _specs(cls)
        for name, validator, required in specs:
            value = d.get(name, _MISSING)
            if value is _MISSING:
                if required:
                    raise ProtocolError(
                        "missing_field", f"{t}: required field {name!r} is missing",
                        field=name, msg_type=t,
                    )
                continue
            kwargs[name] = validator(name, value, t)
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(extra=extra, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The body as an ordered dict (wire order, then ``extra``)."""
        out: dict[str, Any] = {}
        meta = {f.name: f.metadata for f in fields(self) if f.name != "extra"}
        for key in self.ORDER:
            if key == "type":
                out["type"] = self.TYPE
                continue
            value = getattr(self, key)
            if value is None and meta[key].get("omit_none"):
                continue
            out[key] = value
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    def to_body(self) -> bytes:
        """Compact JSON bytes: exactly what gets signed and sent."""
        return dumps(self.to_dict())

    @classmethod
    def from_body(cls: type[M], body: bytes) -> M:
        from .signing import parse_body

        return cls.from_dict(parse_body(body))


# --- client → server (§5.1) ---------------------------------------------------

_CLIENT_HEAD = ("node", "client", "protocol_version", "org", "type", "sequence", "timestamp", "incarnation_id")


@dataclass(frozen=True, kw_only=True)
class ClientMessage(_Message):
    """Fields common to every client message (§5.1)."""

    ORDER: ClassVar[tuple[str, ...]] = _CLIENT_HEAD + ("job_id",)

    node: str = _f(_v_str)
    org: str = _f(_v_str)
    sequence: int = _f(_v_int)
    timestamp: str = _f(_v_str)
    incarnation_id: str = _f(_v_str)
    job_id: str | None = _f(_v_client_job_id, None)
    client: str = _f(_v_str, "")
    protocol_version: str = _f(_v_str, PROTOCOL_VERSION)


@dataclass(frozen=True, kw_only=True)
class ClientHeartbeat(ClientMessage):
    TYPE: ClassVar[str] = "heartbeat"
    ORDER: ClassVar[tuple[str, ...]] = _CLIENT_HEAD + ("job_state", "job_id")
    job_state: str = _f(_v_job_state)


@dataclass(frozen=True, kw_only=True)
class AckCommit(ClientMessage):
    TYPE: ClassVar[str] = "ack_commit"


@dataclass(frozen=True, kw_only=True)
class NackCommit(ClientMessage):
    TYPE: ClassVar[str] = "nack_commit"


@dataclass(frozen=True, kw_only=True)
class AckRun(ClientMessage):
    TYPE: ClassVar[str] = "ack_run"


@dataclass(frozen=True, kw_only=True)
class NackRun(ClientMessage):
    TYPE: ClassVar[str] = "nack_run"


@dataclass(frozen=True, kw_only=True)
class Succeeded(ClientMessage):
    TYPE: ClassVar[str] = "succeeded"
    ORDER: ClassVar[tuple[str, ...]] = _CLIENT_HEAD + ("job_id", "stdout", "stderr")
    stdout: str | None = _f(_v_opt_str, None, omit_none=True)
    stderr: str | None = _f(_v_opt_str, None, omit_none=True)


@dataclass(frozen=True, kw_only=True)
class Failed(ClientMessage):
    TYPE: ClassVar[str] = "failed"
    ORDER: ClassVar[tuple[str, ...]] = _CLIENT_HEAD + ("job_id", "stdout", "stderr")
    stdout: str | None = _f(_v_opt_str, None, omit_none=True)
    stderr: str | None = _f(_v_opt_str, None, omit_none=True)


@dataclass(frozen=True, kw_only=True)
class Aborted(ClientMessage):
    TYPE: ClassVar[str] = "aborted"


# --- server → client (§5.2, §5.3) ----------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServerMessage(_Message):
    """Server bodies start with ``sequence`` and ``timestamp`` (§4.6)."""

    ORDER: ClassVar[tuple[str, ...]] = ("sequence", "timestamp", "type")

    sequence: int = _f(_v_int)
    timestamp: str = _f(_v_str)


@dataclass(frozen=True, kw_only=True)
class Abort(ServerMessage):
    TYPE: ClassVar[str] = "abort"


@dataclass(frozen=True, kw_only=True)
class Ack(ServerMessage):
    TYPE: ClassVar[str] = "ack"


@dataclass(frozen=True, kw_only=True)
class Commit(ServerMessage):
    """§5.2.3.  Note the wire key ``capture`` (REST: ``capture_output``)."""

    TYPE: ClassVar[str] = "commit"
    ORDER: ClassVar[tuple[str, ...]] = (
        "sequence", "timestamp", "type", "job_id", "server", "command",
        "user", "dir", "env", "file", "capture",
    )
    job_id: str = _f(_v_str)
    command: str = _f(_v_str)
    server: str = _f(_v_str, "")
    user: str | None = _f(_v_opt_str, None, omit_none=True)
    dir: str | None = _f(_v_opt_str, None, omit_none=True)
    env: dict[str, str] | None = _f(_v_env, None, omit_none=True)
    file: str | None = _f(_v_opt_str, None, omit_none=True)
    capture: bool = _f(_v_bool, False)


@dataclass(frozen=True, kw_only=True)
class Run(ServerMessage):
    TYPE: ClassVar[str] = "run"
    ORDER: ClassVar[tuple[str, ...]] = ("sequence", "timestamp", "type", "job_id")
    job_id: str = _f(_v_str)


@dataclass(frozen=True, kw_only=True)
class ServerHeartbeat(ServerMessage):
    """§5.3, broadcast on the PUB socket, rsa2048_sha1-signed."""

    TYPE: ClassVar[str] = "heartbeat"
    ORDER: ClassVar[tuple[str, ...]] = ("sequence", "timestamp", "type", "server", "incarnation_id")
    incarnation_id: str = _f(_v_str)
    server: str = _f(_v_str, "")


AnyClientMessage = Union[
    ClientHeartbeat, AckCommit, NackCommit, AckRun, NackRun, Succeeded, Failed, Aborted
]
AnyServerMessage = Union[Abort, Ack, Commit, Run, ServerHeartbeat]

CLIENT_MESSAGE_TYPES: dict[str, type[ClientMessage]] = {
    c.TYPE: c
    for c in (ClientHeartbeat, AckCommit, NackCommit, AckRun, NackRun, Succeeded, Failed, Aborted)
}
SERVER_MESSAGE_TYPES: dict[str, type[ServerMessage]] = {
    c.TYPE: c for c in (Abort, Ack, Commit, Run, ServerHeartbeat)
}


def _dispatch(body: Any, table: Mapping[str, type[M]], side: str) -> M:
    if not isinstance(body, Mapping):
        raise ProtocolError("bad_json", "message body is not a JSON object")
    t = body.get("type", _MISSING)
    if t is _MISSING:
        raise ProtocolError("missing_field", "required field 'type' is missing", field="type")
    cls = table.get(t) if isinstance(t, str) else None
    if cls is None:
        raise ProtocolError(
            "bad_field", f"unknown {side} message type {str(t)[:40]!r}", field="type"
        )
    return cls.from_dict(body)


def parse_client_message(body: Mapping[str, Any]) -> ClientMessage:
    """A client → server body (one of the eight §5.1 types)."""
    return _dispatch(body, CLIENT_MESSAGE_TYPES, "client")


def parse_server_message(body: Mapping[str, Any]) -> ServerMessage:
    """A server → client body: abort, ack, commit, run or (server) heartbeat."""
    return _dispatch(body, SERVER_MESSAGE_TYPES, "server")


def server_message(type: str, *, sequence: int, timestamp: str, **fields: Any) -> ServerMessage:
    """Build (and validate) a server message from a core ``Send``'s fields."""
    return parse_server_message({"sequence": sequence, "timestamp": timestamp, "type": type, **fields})


def client_message(type: str, **fields: Any) -> ClientMessage:
    """Build (and validate) a client message; ``job_id`` defaults to None."""
    fields.setdefault("job_id", None)
    return parse_client_message({"type": type, **fields})
