"""The one exception of the protocol layer.

Everything that can go wrong while turning bytes into messages raises
:class:`ProtocolError`, so a socket loop needs exactly one ``except`` clause and
can count drops by ``reason`` (a short, stable code used as a metrics label).
"""

from __future__ import annotations

__all__ = ["ProtocolError", "REASONS"]

#: Every reason code the protocol layer raises (docs/architecture.md).
REASONS = frozenset(
    {
        "frame_count",
        "header_too_big",
        "bad_header",
        "body_too_big",
        "bad_json",
        "bad_signature",
        "bad_timestamp",
        "stale",
        "missing_field",
        "bad_field",
        "bad_key",
    }
)


class ProtocolError(ValueError):
    """A message (or key) that must be dropped.

    ``reason`` is one of :data:`REASONS` (metrics label, log key); ``detail`` is
    a human sentence for the log line.  ``field`` names the offending body
    field for ``missing_field``/``bad_field`` (the agent answers a commit
    without ``job_id`` with a ``nack_commit``, §5.4, so it needs to know), and
    ``msg_type`` the message type when it was known.
    """

    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        field: str | None = None,
        msg_type: str | None = None,
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.field = field
        self.msg_type = msg_type
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):  # keep pickling (multiprocessing, logging) working
        return (_rebuild, (type(self), self.reason, self.detail, self.field, self.msg_type))


def _rebuild(cls, reason, detail, field, msg_type):  # pragma: no cover - pickle helper
    return cls(reason, detail, field=field, msg_type=msg_type)
