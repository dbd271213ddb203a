"""Output formats of the CLI: knife's text presenter, JSON and YAML.

`text` reproduces knife's default ("summary"/text) formatter so that people
and scripts used to knife-push see the same layout: keys sorted and
left-justified to the longest key + 1, nested hashes and arrays indented by
two spaces, single-element arrays collapsed onto the key's line, array items
separated by a blank line when they are hashes. Two deliberate differences:
no trailing spaces after a key that opens a nested block, and an empty
array/hash prints `key:` on its own line (knife glued the next key to it).

`json` is pretty-printed with two spaces (knife's `JSON.pretty_generate`);
`yaml` is a YAML document with an explicit `---` start, as Ruby's `to_yaml`.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

FORMATS = ("text", "json", "yaml")
"""Accepted values of -F/--format (`summary` is knife's alias of text)."""

ALIASES = {"summary": "text", "t": "text", "s": "text", "j": "json", "y": "yaml"}


def normalize_format(value: str) -> str:
    """Map a user-given format (knife accepts prefixes and `summary`) to one of FORMATS."""
    v = (value or "").strip().lower()
    v = ALIASES.get(v, v)
    if v not in FORMATS:
        raise ValueError(f"invalid format {value!r} (expected one of: text, json, yaml)")
    return v


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _should_enumerate(value: Any) -> bool:
    if isinstance(value, dict):
        return bool(value)
    if isinstance(value, (list, tuple)):
        return len(value) > 1 or (len(value) == 1 and _should_enumerate(value[0]))
    return False


def _indent(text: str) -> str:
    return "".join(("  " + line) if line.strip() else line for line in text.splitlines(True))


def text_format(data: Any) -> str:
    """knife's `TextFormatter#text_format`; the result ends with a newline (or is empty)."""
    buf: list[str] = []
    if isinstance(data, dict):
        width = max((len(str(k)) for k in data), default=0) + 1
        for key in sorted(data, key=str):
            value = data[key]
            label = f"{key}:".ljust(width)
            if _should_enumerate(value):
                buf.append(label.rstrip() + "\n")
                buf.append(_indent(text_format(value)))
            else:
                inner = text_format(value)
                if not inner:
                    buf.append(label.rstrip() + "\n")
                else:
                    buf.append(f"{label} {inner}")
    elif isinstance(data, (list, tuple)):
        for i, item in enumerate(data):
            buf.append(text_format(item))
            if isinstance(item, (dict, list, tuple)) and i != len(data) - 1:
                buf.append("\n")
    else:
        buf.append(_scalar(data) + "\n")
    return "".join(buf)


def render(data: Any, fmt: str) -> str:
    """`data` in `fmt` (one of FORMATS); always ends with a newline unless empty."""
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(data, explicit_start=True, default_flow_style=False, sort_keys=False)
    return text_format(data)
