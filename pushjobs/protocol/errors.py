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
    a human sentence for the log line.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):  # keep pickling (multiprocessing, logging) working
        return (type(self), (self.reason, self.detail))
