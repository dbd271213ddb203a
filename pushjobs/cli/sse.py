"""A Server-Sent Events reader for the job feed (PROTOCOL.md §11).

Incremental and transport-agnostic: feed it text chunks, get `Event`s. The
end of the stream terminates a pending event (the original server omits the
last blank line of a finite response, §11.2), so `close()` flushes it.
Comments (`:keepalive`, `:ping`) are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator


@dataclass(frozen=True)
class Event:
    name: str
    id: str
    data: dict[str, Any] = field(default_factory=dict)
    raw: str = ""


class SSEParser:
    def __init__(self) -> None:
        self._buf = ""
        self._name = ""
        self._id = ""
        self._data: list[str] = []

    def feed(self, chunk: str) -> list[Event]:
        """Consume a chunk of text; return the events it completed."""
        self._buf += chunk.replace("\r\n", "\n").replace("\r", "\n")
        out: list[Event] = []
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            ev = self._line(line)
            if ev is not None:
                out.append(ev)
        return out

    def close(self) -> list[Event]:
        """End of stream: a partial last line and a pending event are complete."""
        out: list[Event] = []
        if self._buf:
            ev = self._line(self._buf)
            self._buf = ""
            if ev is not None:
                out.append(ev)
        ev = self._dispatch()
        if ev is not None:
            out.append(ev)
        return out

    def _line(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._name = value
        elif name == "id":
            self._id = value
        elif name == "data":
            self._data.append(value)
        return None

    def _dispatch(self) -> Event | None:
        if not self._data and not self._name:
            return None
        raw = "\n".join(self._data)
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {"value": data}
        ev = Event(self._name or "message", self._id, data, raw)
        self._name, self._data = "", []
        return ev


def parse_stream(chunks: Iterable[str]) -> Iterator[Event]:
    """All events of a stream of text chunks, including the unterminated last one."""
    p = SSEParser()
    for chunk in chunks:
        yield from p.feed(chunk)
    yield from p.close()
