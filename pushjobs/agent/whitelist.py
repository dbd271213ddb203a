"""The command whitelist (PROTOCOL.md §13, USERLAND.md §2.5).

The job `command` sent by the server is a lookup key, not something to run.
Rules of this file:

* Exact keys first, then regex keys in file order; the first match wins.
* A regex key is written `/.../` (slashes included, optional `i`/`m`/`x`
  flags after the last slash), as the original client spells it, or `re:...`;
  from a client.rb it arrives as a compiled pattern.
* Values are a command line, or a map with `command_line` and `lock`.
* Regex substitution follows Ruby `gsub` (every match replaced, `\\1`,
  `\\0`/`\\&`, `\\k<name>` in the value) but every piece of the job command
  that lands in the command line is `shlex.quote`d for the quoting context it
  lands in, and text of the job command outside any match is refused: only
  whitelist-authored text is ever interpreted by a shell.
* A command line without shell syntax runs as an argv (no shell at all);
  otherwise it runs as `/bin/sh -c LINE`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

LockSpec = Union[None, bool, str]


class WhitelistError(ValueError):
    """A whitelist that cannot be used (bad regex, bad value)."""


@dataclass(frozen=True)
class Resolved:
    """What a job command resolves to."""

    command: str            # the job command (lookup key)
    command_line: str       # the line to run (for logs and `sh -c`)
    argv: tuple[str, ...]   # what is exec'd
    shell: bool             # argv is ("/bin/sh", "-c", command_line)
    lock: LockSpec          # None, True (Chef's lockfile) or a path


@dataclass(frozen=True)
class Entry:
    key: Union[str, re.Pattern]
    command_line: str
    lock: LockSpec
    source_key: str

    @property
    def is_regex(self) -> bool:
        return isinstance(self.key, re.Pattern)


# Characters that need a shell when found in whitelist-authored text. Quotes
# alone do not: shlex.split() handles them.
_SHELL_SYNTAX = re.compile(r"[|&;<>()$`\\*?\[\]{}~#!\n]")
_ASSIGNMENT = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*=")
_REGEX_KEY = re.compile(r"^/(.*)/([imx]*)$", re.S)
_FLAG_BITS = {"i": re.IGNORECASE, "m": re.DOTALL, "x": re.VERBOSE}  # Ruby /m == Python DOTALL


def needs_shell(text: str) -> bool:
    return bool(_SHELL_SYNTAX.search(text) or _ASSIGNMENT.match(text))


def _ruby_to_python_regex(source: str) -> str:
    # Ruby anchors \A \z \Z and named groups (?<name>) are mostly Python-compatible;
    # \z is spelled \Z in Python, \h is a hex digit.
    return source.replace(r"\z", r"\Z").replace(r"\h", r"[0-9a-fA-F]")


def compile_key(key: Any) -> Union[str, re.Pattern]:
    """A whitelist key: a plain name, or a regex written `/.../flags` or `re:...`."""
    if isinstance(key, re.Pattern):
        return key
    if not isinstance(key, str) or not key:
        raise WhitelistError(f"whitelist keys must be non-empty strings, got {key!r}")
    m = _REGEX_KEY.match(key)
    if m and len(key) >= 2:
        source, flags = m.group(1), m.group(2)
    elif key.startswith("re:"):
        source, flags = key[3:], ""
    else:
        return key
    bits = 0
    for f in flags:
        bits |= _FLAG_BITS[f]
    try:
        return re.compile(_ruby_to_python_regex(source), bits)
    except re.error as exc:
        raise WhitelistError(f"bad regex {key!r}: {exc}") from None


def _parse_value(key: str, value: Any) -> tuple[str, LockSpec]:
    if isinstance(value, str):
        if not value.strip():
            raise WhitelistError(f"{key!r}: empty command line")
        return value, None
    if isinstance(value, Mapping):
        norm = {str(k).lstrip(":"): v for k, v in value.items()}
        unknown = set(norm) - {"command_line", "lock"}
        if unknown:
            raise WhitelistError(f"{key!r}: unknown keys {sorted(unknown)} (use command_line, lock)")
        line = norm.get("command_line")
        if not isinstance(line, str) or not line.strip():
            raise WhitelistError(f"{key!r}: command_line must be a non-empty string")
        lock = norm.get("lock")
        if lock is False:
            lock = None
        if lock is not None and not (lock is True or (isinstance(lock, str) and lock)):
            raise WhitelistError(f"{key!r}: lock must be true, false or a path")
        return line, lock
    raise WhitelistError(f"{key!r}: value must be a command line or a map with command_line")


# --- Ruby gsub replacement templates ---------------------------------------------

_TEMPLATE_TOKEN = re.compile(r"\\(?:(\d)|k<(\w+)>|g<(\w+)>|([&`'\\]))")


def _template_parts(template: str) -> list[Union[str, tuple[str, Union[int, str]]]]:
    """Split a replacement into literal text and ("group", n) / ("pre"|"post", 0)."""
    parts: list[Union[str, tuple[str, Union[int, str]]]] = []
    pos = 0
    for m in _TEMPLATE_TOKEN.finditer(template):
        if m.start() > pos:
            parts.append(template[pos:m.start()])
        digit, kname, gname, sym = m.groups()
        if digit is not None:
            parts.append(("group", int(digit)))
        elif kname or gname:
            name = kname or gname
            parts.append(("group", int(name) if name.isdigit() else name))
        elif sym == "&":
            parts.append(("group", 0))
        elif sym == "`":
            parts.append(("pre", 0))
        elif sym == "'":
            parts.append(("post", 0))
        else:  # "\\\\" -> one literal backslash
            parts.append("\\")
        pos = m.end()
    if pos < len(template):
        parts.append(template[pos:])
    return parts


def _quote_for_context(text: str, context: str) -> str:
    """Insert untrusted `text` as ONE literal word fragment at a point of a shell line.

    `context` is the quoting state at the insertion point: "" (unquoted),
    "'" (inside single quotes) or '"' (inside double quotes). The quoted
    section is closed, the text inserted as a single-quoted literal, and the
    section reopened, so no quoting state can leak.
    """
    quoted = shlex.quote(text)
    if context == "'":
        return "'" + quoted + "'"
    if context == '"':
        return '"' + quoted + '"'
    return quoted


def _scan_quote_state(text: str, state: str) -> str:
    """Advance the POSIX-shell quoting state over literal text.

    Returns "", "'" or '"'; a trailing unescaped backslash is reported as
    "\\" (an insertion there would have its first character escaped).
    """
    i = 0
    while i < len(text):
        c = text[i]
        if state == "'":
            if c == "'":
                state = ""
        elif state == '"':
            if c == "\\":
                if i + 1 == len(text):
                    return "\\"
                i += 1
            elif c == '"':
                state = ""
        else:
            if c == "\\":
                if i + 1 == len(text):
                    return "\\"
                i += 1
            elif c in "'\"":
                state = c
        i += 1
    return state


def _insertion_states(template: str) -> list[str]:
    """The quoting state at each insertion point of a template."""
    states = []
    state = ""
    for part in _template_parts(template):
        if isinstance(part, str):
            state = _scan_quote_state(part, state if state != "\\" else "")
        else:
            states.append(state)
    return states


class Whitelist:
    """An ordered whitelist; `resolve(command)` -> Resolved or None."""

    def __init__(self, entries: list[Entry]):
        self.entries = entries
        self._exact = {e.key: e for e in entries if not e.is_regex}

    @classmethod
    def from_mapping(cls, mapping: Mapping[Any, Any]) -> "Whitelist":
        if not isinstance(mapping, Mapping):
            raise WhitelistError("the whitelist must be a map")
        entries = []
        for raw_key, value in mapping.items():
            key = compile_key(raw_key)
            source = raw_key.pattern if isinstance(raw_key, re.Pattern) else str(raw_key)
            line, lock = _parse_value(source, value)
            if isinstance(key, re.Pattern):
                # validate the template's group references now, not at job time
                for part in _template_parts(line):
                    if isinstance(part, tuple) and part[0] == "group":
                        g = part[1]
                        if isinstance(g, int) and g > key.groups:
                            raise WhitelistError(f"{source!r}: \\{g} but the regex has "
                                                 f"{key.groups} group(s)")
                        if isinstance(g, str) and g not in key.groupindex:
                            raise WhitelistError(f"{source!r}: no group named {g!r}")
                if "\\" in _insertion_states(line):
                    raise WhitelistError(f"{source!r}: a back-reference right after a "
                                         "backslash cannot be quoted safely")
            entries.append(Entry(key, line, lock, source))
        return cls(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def resolve(self, command: str) -> Optional[Resolved]:
        """Resolve a job command; None if not whitelisted (or unsafe to run)."""
        if not isinstance(command, str) or not command or "\x00" in command:
            return None
        entry = self._exact.get(command)
        if entry is not None:
            return _finish(command, entry.command_line, entry.lock, authored_only=True)
        for entry in self.entries:
            if not entry.is_regex:
                continue
            assert isinstance(entry.key, re.Pattern)
            if entry.key.search(command) is None:
                continue
            line = _substitute(entry.key, entry.command_line, command)
            if line is None:
                return None
            return _finish(command, line, entry.lock, authored_only=False,
                           template=entry.command_line)
        return None

    def why_not(self, command: str) -> str:
        """A human reason for a failed resolve, for the nack log line."""
        for entry in self.entries:
            if entry.is_regex and isinstance(command, str) and entry.key.search(command):
                return (f"{command!r} matches {entry.source_key} only partly; text outside "
                        "the match would reach the command line")
        return f"{command!r} is not in the whitelist"


def _substitute(pattern: re.Pattern, template: str, command: str) -> Optional[str]:
    """Ruby gsub with every inserted piece of `command` shell-quoted.

    Returns None when text of `command` would be copied outside a match.
    """
    parts = _template_parts(template)
    out: list[str] = []
    pos = 0
    for m in pattern.finditer(command):
        if m.start() > pos and command[pos:m.start()]:
            return None  # unmatched user text would be copied verbatim
        if m.end() == m.start() and m.start() == len(command) and out:
            break  # trailing empty match after a full match: Ruby adds nothing useful
        state = ""
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                state = _scan_quote_state(part, state)
                continue
            if state == "\\":
                return None
            kind, ref = part
            if kind == "group":
                value = m.group(ref) or ""
            elif kind == "pre":
                value = command[:m.start()]
            else:
                value = command[m.end():]
            out.append(_quote_for_context(value, state))
        pos = m.end()
    if command[pos:]:
        return None
    return "".join(out)


def _finish(command: str, line: str, lock: LockSpec, *, authored_only: bool,
            template: Optional[str] = None) -> Resolved:
    # Shell or argv is decided on the whitelist-authored text only.
    authored = line if authored_only else "".join(
        p for p in _template_parts(template or "") if isinstance(p, str))
    if not needs_shell(authored):
        try:
            argv = tuple(shlex.split(line))
        except ValueError:
            argv = ()
        if argv:
            return Resolved(command, line, argv, False, lock)
    return Resolved(command, line, ("/bin/sh", "-c", line), True, lock)


def default_whitelist() -> Whitelist:
    return Whitelist.from_mapping({"chef-client": "chef-client"})
