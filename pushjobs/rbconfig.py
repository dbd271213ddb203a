"""Read Ruby-style settings files (Chef's client.rb/knife.rb, the push-jobs server .rb) without Ruby.

Rules of this file:
* Parse, never evaluate. The only "computation" is what every knife.rb does:
  `current_dir = File.dirname(__FILE__)` and `"#{current_dir}/x.pem"`, i.e.
  variables assigned earlier in the same file and a few pure `File.*` path
  functions (`~` in File.expand_path is the only thing read from the
  environment). Nothing reads the file system or runs code.
* Statements understood (one Assignment each):
  `key value`, `key = value`, `key(value)` (over several lines too),
  `key value => value, ...` (a bare hash argument),
  `section['key'] = value` / `section[:key][:sub] = value` (section kept apart).
* Values: integers (`1_000`, `0x1f`), floats, bare dotted addresses
  (`127.0.0.1`, read as a string), single/double-quoted strings
  (with Ruby's escapes; adjacent literals concatenate), `%w()` arrays,
  true/false/nil, symbols (`:verify_peer` -> RbSymbol, a str), regex literals
  (`/re/i`, `%r{re}` -> RbRegex), arrays and hashes (`"a" => 1`, `a: 1`).
* Strict mode (the server's settings) raises `RbConfigError` whose str is one
  line `FILE:LINE: what is wrong` at the first statement it cannot read.
  Lenient mode (client.rb, knife.rb) skips such a statement, or a whole
  `if ... end` / `do ... end` block, and records a warning instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

__all__ = [
    "Assignment",
    "Assignments",
    "RbConfigError",
    "RbRegex",
    "RbSymbol",
    "RbWarning",
    "parse",
    "parse_file",
]


class RbConfigError(ValueError):
    """A statement or value the parser cannot read; str() is `FILE:LINE: message`."""

    def __init__(self, filename: str, lineno: int, message: str):
        super().__init__(f"{filename}:{lineno}: {message}")
        self.filename = filename
        self.lineno = lineno
        self.message = message
        # aliases some callers use
        self.line = lineno
        self.problem = message


class RbSymbol(str):
    """A Ruby symbol: equal to its name as a str, but tells `:foo` from `"foo"` when it matters."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"RbSymbol({str(self)!r})"


@dataclass(frozen=True)
class RbRegex:
    """A Ruby regex literal, kept as written; `compile()` gives the Python equivalent."""

    pattern: str
    flags: str = ""

    def compile(self) -> "re.Pattern[str]":
        """Python `re` for the Ruby pattern: ^/$ are line anchors, /m is DOTALL, /x is VERBOSE."""
        flags = re.MULTILINE
        if "i" in self.flags:
            flags |= re.IGNORECASE
        if "m" in self.flags:
            flags |= re.DOTALL
        if "x" in self.flags:
            flags |= re.VERBOSE
        return re.compile(_ruby_regex_to_python(self.pattern), flags)

    def __str__(self) -> str:
        return f"/{self.pattern}/{self.flags}"


def _ruby_regex_to_python(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            n = pattern[i + 1]
            out.append({"z": r"\Z", "Z": r"(?=\n?\Z)", "h": "[0-9a-fA-F]", "H": "[^0-9a-fA-F]"}.get(n, c + n))
            i += 2
            continue
        if pattern.startswith("(?<", i) and i + 3 < len(pattern) and pattern[i + 3] not in "=!":
            out.append("(?P<")
            i += 3
            continue
        out.append(c)
        i += 1
    return "".join(out)


Value = Union[str, int, float, bool, None, list, dict, RbRegex]


@dataclass(frozen=True)
class Assignment:
    key: str  # "node_name"; for section['a']['b'] = v: "a.b"
    value: Any
    lineno: int
    section: Optional[str] = None  # "pushy_server" for pushy_server['key'] = v, "knife" for knife[:x] = v


@dataclass(frozen=True)
class RbWarning:
    filename: str
    lineno: int
    message: str
    # the setting name the skipped statement starts with (None if it does not
    # start with a name): lets a caller refuse to skip settings that matter
    key: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno}: {self.message}"


class Assignments(list):
    """The assignments of a file, in order, plus the warnings of lenient mode."""

    def __init__(self, items=(), warnings: Optional[list[RbWarning]] = None):
        super().__init__(items)
        self.warnings: list[RbWarning] = warnings or []

    def as_dict(self) -> dict[str, Any]:
        """Top-level (section-less) keys to their last value."""
        return {a.key: a.value for a in self if a.section is None}

    def values(self) -> dict[str, Any]:
        """Same as `as_dict()`."""
        return self.as_dict()

    @property
    def lines(self) -> dict[str, int]:
        """Top-level key -> line of its last assignment."""
        return {a.key: a.lineno for a in self if a.section is None}


# ---------------------------------------------------------------------------
# tokens

NL, STR, NUM, SYM, REGEX, IDENT, CONST, LABEL, OP, ERR, EOF = (
    "newline", "string", "number", "symbol", "regex", "identifier", "constant", "label", "op", "error", "end of file",
)


@dataclass
class _Tok:
    kind: str
    value: Any
    line: int
    space_before: bool = False
    text: str = ""

    def describe(self) -> str:
        if self.kind in (NL, EOF):
            return self.kind
        return f"`{self.text or self.value}`"


class _Interp:
    """A `#{...}` piece of a double-quoted string, resolved by the parser (variables only)."""

    def __init__(self, source: str):
        self.source = source.strip()


_IDENT_START = re.compile(r"[A-Za-z_]")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*[?!]?")
_NUMBER = re.compile(
    r"0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|\d[\d_]*(?:\.\d[\d_]*)?(?:[eE][+-]?\d+)?"
)
_DOTTED = re.compile(r"\d+(?:\.\d+){2,}(?![\w.])")
_CLOSERS = {"(": ")", "[": "]", "{": "}", "<": ">", "|": "|", "/": "/", "!": "!"}
_SIMPLE_ESCAPES = {
    "n": "\n", "t": "\t", "r": "\r", "0": "\0", "s": " ", "e": "\x1b", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
}
# a newline after one of these continues the statement
_SYMBOL_RE = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(?:[?!](?:(?==>)|(?!=))|=(?:(?==>)|(?![~>=])))?"
    r"|\[\]=?|[+\-*/<>=!~%&|^]+"
)
_CONTINUE_AFTER = {",", "=>", "=", ".", "::", "\\"}


class _Lexer:
    def __init__(self, text: str, filename: str):
        self.text = text
        self.filename = filename
        self.i = 0
        self.line = 1
        self.depth = 0
        self.toks: list[_Tok] = []

    def error(self, message: str, line: Optional[int] = None) -> RbConfigError:
        return RbConfigError(self.filename, line or self.line, message)

    def emit(self, kind: str, value: Any, line: int, space: bool, text: str = "") -> None:
        self.toks.append(_Tok(kind, value, line, space, text))

    def run(self) -> list[_Tok]:
        t = self.text
        n = len(t)
        space = False
        at_line_start = True
        while self.i < n:
            c = t[self.i]
            if at_line_start and t.startswith("=begin", self.i):
                end = re.compile(r"^=end\b.*$", re.M).search(t, self.i)
                stop = end.end() if end else n
                self.line += t.count("\n", self.i, stop)
                self.i = stop
                continue
            at_line_start = False
            if c in " \t\r\f":
                self.i += 1
                space = True
                continue
            if c == "\\" and t.startswith("\n", self.i + 1):
                self.i += 2
                self.line += 1
                space = True
                continue
            if c == "#":
                while self.i < n and t[self.i] != "\n":
                    self.i += 1
                continue
            if c == "\n" or c == ";":
                if self.depth == 0 and self.toks and self.toks[-1].kind != NL and not (
                    c == "\n" and self.toks[-1].kind == OP and self.toks[-1].value in _CONTINUE_AFTER
                ):
                    self.emit(NL, None, self.line, space)
                if c == "\n":
                    self.line += 1
                    at_line_start = True
                self.i += 1
                space = True
                continue
            line = self.line
            start = self.i
            if c in "'\"":
                value = self.string(c)
                self.maybe_label_or_str(value, line, space, t[start:self.i])
            elif c == ":":
                self.colon(line, space)
            elif c == "/":
                self.regex("/", line, space)
            elif c == "%" and self.i + 1 < n and t[self.i + 1] in "wWiIrq" and self.i + 2 < n \
                    and t[self.i + 2] in _CLOSERS:
                self.percent(line, space)
            elif c.isdigit() and _DOTTED.match(t, self.i):
                # `server_name 127.0.0.1`: not Ruby, but what people write; a string
                m = _DOTTED.match(t, self.i)
                assert m is not None
                self.i = m.end()
                self.emit(STR, [m.group()], line, space, m.group())
            elif c.isdigit():
                m = _NUMBER.match(t, self.i)
                assert m is not None
                self.i = m.end()
                try:
                    self.emit(NUM, _to_number(m.group()), line, space, m.group())
                except ValueError:
                    self.emit(ERR, m.group(), line, space, m.group())  # "0x_", "1__": reported by the parser
            elif _IDENT_START.match(c):
                m = _IDENT.match(t, self.i)
                assert m is not None
                word = m.group()
                self.i = m.end()
                if self.i < n and t[self.i] == ":" and not t.startswith("::", self.i) and word[-1] not in "?!":
                    self.i += 1
                    self.emit(LABEL, RbSymbol(word), line, space, word + ":")
                else:
                    self.emit(CONST if word[0].isupper() else IDENT, word, line, space, word)
            elif t.startswith("=>", self.i):
                self.i += 2
                self.emit(OP, "=>", line, space, "=>")
            elif t.startswith("::", self.i):
                self.i += 2
                self.emit(OP, "::", line, space, "::")
            elif c == "=" and not t.startswith(("==", "=~"), self.i):
                self.i += 1
                self.emit(OP, "=", line, space, "=")
            elif c in "([{":
                self.depth += 1
                self.i += 1
                self.emit(OP, c, line, space, c)
            elif c in ")]}":
                self.depth = max(0, self.depth - 1)
                self.i += 1
                self.emit(OP, c, line, space, c)
            elif c in ",.-+":
                self.i += 1
                self.emit(OP, c, line, space, c)
            else:
                # anything else (operators, @ivars, $globals, heredocs): the parser
                # reports the statement holding it as unsupported
                m = re.compile(r"\S[^\s\w'\"]*").match(t, self.i)
                assert m is not None
                self.i = m.end()
                self.emit(ERR, m.group(), line, space, m.group())
            space = False
        self.emit(NL, None, self.line, space)
        self.emit(EOF, None, self.line, False)
        return self.toks

    def maybe_label_or_str(self, value: list, line: int, space: bool, text: str) -> None:
        t = self.text
        if t.startswith(":", self.i) and not t.startswith("::", self.i) and all(isinstance(p, str) for p in value):
            self.i += 1
            self.emit(LABEL, RbSymbol("".join(value)), line, space, text + ":")
        else:
            self.emit(STR, value, line, space, text)

    def string(self, quote: str, close: Optional[str] = None, interpolate: Optional[bool] = None) -> list:
        """Read a string literal after its opening delimiter; returns parts (str and _Interp)."""
        t = self.text
        close = close or quote
        interpolate = (quote == '"') if interpolate is None else interpolate
        start_line = self.line
        self.i += 1
        parts: list = []
        buf: list[str] = []
        nest = 0
        while True:
            if self.i >= len(t):
                raise self.error("unterminated string", start_line)
            c = t[self.i]
            if c == "\n":
                self.line += 1
            if c == "\\" and self.i + 1 < len(t):
                n = t[self.i + 1]
                if not interpolate:
                    buf.append(n if n in ("\\", close, quote) else "\\" + n)
                    self.i += 2
                    continue
                self.i += 2
                buf.append(self.escape(n))
                continue
            if interpolate and t.startswith("#{", self.i):
                end = t.find("}", self.i)
                if end < 0:
                    raise self.error("unterminated #{...} in string", start_line)
                if buf:
                    parts.append("".join(buf))
                    buf = []
                parts.append(_Interp(t[self.i + 2:end]))
                self.i = end + 1
                continue
            if c == quote and close != quote:
                nest += 1
            elif c == close:
                if nest == 0:
                    self.i += 1
                    break
                nest -= 1
            buf.append(c)
            self.i += 1
        if buf or not parts:
            parts.append("".join(buf))
        return parts

    def escape(self, n: str) -> str:
        t = self.text
        if n in _SIMPLE_ESCAPES:
            if n == "0" and self.i < len(t) and t[self.i] in "01234567":
                m = re.compile(r"[0-7]{1,2}").match(t, self.i)
                assert m is not None
                self.i = m.end()
                return chr(int("0" + m.group(), 8))
            return _SIMPLE_ESCAPES[n]
        if n in "1234567":
            m = re.compile(r"[0-7]{0,2}").match(t, self.i)
            assert m is not None
            self.i = m.end()
            return chr(int(n + m.group(), 8))
        if n == "x":
            m = re.compile(r"[0-9a-fA-F]{1,2}").match(t, self.i)
            if not m:
                raise self.error("invalid \\x escape")
            self.i = m.end()
            return chr(int(m.group(), 16))
        if n == "u":
            m = re.compile(r"\{([0-9a-fA-F ]+)\}|([0-9a-fA-F]{4})").match(t, self.i)
            if not m:
                raise self.error("invalid \\u escape")
            self.i = m.end()
            if m.group(1):
                return "".join(chr(int(h, 16)) for h in m.group(1).split())
            return chr(int(m.group(2), 16))
        if n == "\n":
            self.line += 1
            return ""
        return n  # \\ \" \' \# and unknown escapes: the character itself

    def colon(self, line: int, space: bool) -> None:
        t = self.text
        nxt = t[self.i + 1] if self.i + 1 < len(t) else ""
        if nxt == ":":
            self.i += 2
            self.emit(OP, "::", line, space, "::")
        elif nxt in "'\"":
            self.i += 1
            parts = self.string(nxt)
            if not all(isinstance(p, str) for p in parts):
                raise self.error("interpolation in a symbol is not supported")
            self.emit(SYM, RbSymbol("".join(parts)), line, space, ":" + "".join(parts))
        else:
            # As Ruby's lexer: a name takes a setter `=` only when it does not
            # start `=>`, `=~` or `==` (`:a=>1` is :a then `=>`, but `:a==>1`
            # is :a= then `=>`); `?`/`!` are taken unless `=` follows, except
            # `=>` (Ruby rejects `:a?=>1`; reading it as :a? is the only intent).
            m = _SYMBOL_RE.match(t, self.i + 1)
            if m:
                self.i = m.end()
                self.emit(SYM, RbSymbol(m.group()), line, space, ":" + m.group())
            else:
                self.i += 1
                self.emit(OP, ":", line, space, ":")

    def regex(self, close: str, line: int, space: bool, skip: int = 1) -> None:
        t = self.text
        opener = t[self.i + skip - 1]
        self.i += skip
        buf: list[str] = []
        in_class = False
        nest = 0
        while True:
            if self.i >= len(t):
                raise self.error("unterminated regular expression", line)
            c = t[self.i]
            if c == "\n":
                self.line += 1
            if c == "\\" and self.i + 1 < len(t):
                nxt = t[self.i + 1]
                buf.append(nxt if nxt == close and close == "/" else c + nxt)
                self.i += 2
                continue
            if c == "[" and not in_class:
                in_class = True
            elif c == "]" and in_class:
                in_class = False
            elif not in_class and close != opener and c == opener:
                nest += 1
            elif c == close and not in_class:
                if nest == 0:
                    break
                nest -= 1
            buf.append(c)
            self.i += 1
        self.i += 1
        m = re.compile(r"[imxounse]*").match(t, self.i)
        assert m is not None
        self.i = m.end()
        pattern = "".join(buf)
        if "#{" in pattern:
            raise self.error("interpolation in a regular expression is not supported", line)
        self.emit(REGEX, RbRegex(pattern, "".join(sorted(set(m.group()) & set("imx")))), line, space,
                  f"/{pattern}/{m.group()}")

    def percent(self, line: int, space: bool) -> None:
        t = self.text
        kind = t[self.i + 1]
        opener = t[self.i + 2]
        close = _CLOSERS[opener]
        if kind == "r":
            self.regex(close, line, space, skip=3)
            return
        self.i += 2
        parts = self.string(opener, close, interpolate=kind in "WI")
        if not all(isinstance(p, str) for p in parts):
            raise self.error("interpolation in %w() is not supported")
        body = "".join(parts)
        if kind == "q":
            self.emit(STR, [body], line, space, f"%q{opener}{body}{close}")
            return
        words = body.split()
        if kind in "iI":
            words = [RbSymbol(w) for w in words]
        self.emit(OP, "[", line, space, "%w")
        for k, w in enumerate(words):
            if k:
                self.emit(OP, ",", line, False, ",")
            self.emit(SYM if kind in "iI" else STR, w if kind in "iI" else [w], line, True, w)
        self.emit(OP, "]", line, False, "]")


def _to_number(text: str) -> Union[int, float]:
    s = text.replace("_", "")
    if s[:2].lower() in ("0x", "0b", "0o"):
        return int(s, 0)
    if any(ch in s for ch in ".eE"):
        return float(s)
    return int(s, 10)


# ---------------------------------------------------------------------------
# parser

# Calls that would be evaluated by Ruby; reported as unsupported statements.
_RUBY_CALLS = {
    "require", "require_relative", "load", "puts", "print", "p", "pp", "raise", "include", "extend", "eval",
    "exit", "exit!", "abort", "system", "exec", "sleep", "instance_eval", "at_exit", "trap", "fork", "spawn",
    "warn", "lambda", "proc", "loop", "attr_accessor", "define_method", "send", "public_send", "config_context",
    "default", "configurable",
}
_BLOCK_OPENERS = {"if", "unless", "while", "until", "case", "def", "begin", "class", "module", "for"}
_KEYWORDS = {"true", "false", "nil", "self", "then", "else", "elsif", "when", "end", "do", "and", "or", "not"}
_MAX_DEPTH = 64
_FILE_FUNCS = {"dirname", "basename", "join", "expand_path", "absolute_path"}


class _Unsupported(Exception):
    pass


class _Parser:
    def __init__(self, toks: list[_Tok], filename: str, strict: bool):
        self.toks = toks
        self.pos = 0
        self.filename = filename
        self.strict = strict
        self.vars: dict[str, Any] = {}
        self.result = Assignments()
        self.depth = 0

    # --- token helpers ---
    @property
    def tok(self) -> _Tok:
        return self.toks[self.pos]

    def peek(self, k: int = 1) -> _Tok:
        return self.toks[min(self.pos + k, len(self.toks) - 1)]

    def next(self) -> _Tok:
        t = self.toks[self.pos]
        if t.kind != EOF:
            self.pos += 1
        return t

    def is_op(self, value: str, tok: Optional[_Tok] = None) -> bool:
        t = tok or self.tok
        return t.kind == OP and t.value == value

    def expect_op(self, value: str) -> None:
        if not self.is_op(value):
            raise _Unsupported(f"expected `{value}`, found {self.tok.describe()}")
        self.next()

    # --- statements ---
    def run(self) -> Assignments:
        while self.tok.kind != EOF:
            if self.tok.kind == NL:
                self.next()
                continue
            start = self.pos
            line = self.tok.line
            try:
                a = self.statement()
                if self.tok.kind != NL:
                    raise _Unsupported(f"unexpected {self.tok.describe()} after the value")
                self.result.append(a)
                if a.section is None:
                    self.vars[a.key] = a.value
            except _Unsupported as e:
                self.pos = start
                self.skip_statement(line, str(e))
        return self.result

    def statement_text(self, start: int) -> str:
        out = []
        for t in self.toks[start:]:
            if t.kind in (NL, EOF):
                break
            out.append(("" if not out or not t.space_before else " ") + (t.text or str(t.value)))
            if len(out) > 12:
                out.append(" ...")
                break
        return "".join(out)

    def skip_statement(self, line: int, why: str) -> None:
        first = self.tok
        text = self.statement_text(self.pos)
        block = first.kind == IDENT and first.value in _BLOCK_OPENERS
        depth = 0
        # skip to the end of the statement; a block opener (or `do`) skips to its `end`
        while True:
            t = self.tok
            if t.kind == EOF:
                break
            if t.kind == IDENT and t.value == "do":
                depth += 1
            if t.kind == NL:
                self.next()
                if block or depth:
                    depth = max(depth, 1) if block else depth
                    block = False
                    # consume statements until the matching `end`
                    while self.tok.kind != EOF and depth > 0:
                        s = self.tok
                        if s.kind == IDENT and s.value in _BLOCK_OPENERS:
                            depth += 1
                        elif s.kind == IDENT and s.value == "do":
                            depth += 1
                        elif s.kind == IDENT and s.value == "end":
                            depth -= 1
                        self.next()
                    # drop the rest of the `end` line
                    while self.tok.kind not in (NL, EOF):
                        self.next()
                    continue
                break
            self.next()
        message = f"{why}: `{text}`" if text else why
        if self.strict:
            raise RbConfigError(self.filename, line, message)
        key = first.value if first.kind == IDENT else None
        self.result.warnings.append(RbWarning(self.filename, line, f"skipped: {message}", key))

    def statement(self) -> Assignment:
        t = self.tok
        line = t.line
        if t.kind == CONST:
            raise _Unsupported("not a setting (constants and method calls are not supported)")
        if t.kind != IDENT:
            raise _Unsupported(f"a statement starts with a setting name, found {t.describe()}")
        name = t.value
        if name in _BLOCK_OPENERS or name in _KEYWORDS:
            raise _Unsupported(f"Ruby `{name}` is not supported (the file is parsed, never evaluated)")
        if name in _RUBY_CALLS:
            raise _Unsupported(f"`{name}` is not supported (the file is parsed, never evaluated)")
        self.next()
        nxt = self.tok
        if self.is_op("="):
            self.next()
            return Assignment(name, self.value(), line)
        if self.is_op("[") and not nxt.space_before:
            subs = []
            while self.is_op("[") and not self.tok.space_before:
                self.next()
                k = self.value()
                if not isinstance(k, (str, int)):
                    raise _Unsupported("a section key is a string or a symbol")
                subs.append(str(k))
                self.expect_op("]")
            if not self.is_op("="):
                raise _Unsupported(f"expected `=` after {name}[...], found {self.tok.describe()}")
            self.next()
            return Assignment(".".join(subs), self.value(), line, section=name)
        if self.is_op("("):
            self.next()
            if self.is_op(")"):
                raise _Unsupported(f"`{name}()` has no value")
            v = self.value_or_bare_hash()
            if self.is_op(","):
                raise _Unsupported(f"`{name}` with several arguments is not a setting")
            self.expect_op(")")
            return Assignment(name, v, line)
        if nxt.kind in (NL, EOF):
            raise _Unsupported(f"`{name}` has no value")
        if self.is_op(".") or self.is_op("::"):
            raise _Unsupported("method calls are not supported")
        if nxt.kind == ERR:
            raise _Unsupported(f"unsupported syntax {nxt.describe()}")
        v = self.value_or_bare_hash()
        if self.is_op(","):
            raise _Unsupported(f"`{name}` with several arguments is not a setting")
        return Assignment(name, v, line)

    # --- values ---
    def value_or_bare_hash(self) -> Any:
        """A value, or `k => v, k2 => v2` / `k: v, ...` without braces (Ruby's trailing hash argument)."""
        if self.tok.kind == LABEL:
            return self.hash_pairs(end=None)
        v = self.value()
        if self.is_op("=>"):
            self.next()
            first = self.value()
            d = {self.hash_key(v): first}
            if self.is_op(","):
                self.next()
                d.update(self.hash_pairs(end=None))
            return d
        return v

    def hash_key(self, k: Any) -> Any:
        if isinstance(k, (list, dict)):
            raise _Unsupported("a hash key is a string, symbol, number or regex")
        return k

    def hash_pairs(self, end: Optional[str]) -> dict:
        d: dict = {}
        while True:
            if end is not None and self.is_op(end):
                break
            if self.tok.kind == LABEL:
                k: Any = self.next().value
            else:
                k = self.hash_key(self.value())
                if not self.is_op("=>"):
                    raise _Unsupported(f"expected `=>` in a hash, found {self.tok.describe()}")
                self.next()
            d[k] = self.value()
            if self.is_op(","):
                self.next()
                continue
            break
        return d

    def value(self) -> Any:
        self.depth += 1
        try:
            if self.depth > _MAX_DEPTH:
                raise _Unsupported("arrays/hashes nested too deeply")
            return self._value()
        finally:
            self.depth -= 1

    def _value(self) -> Any:
        t = self.tok
        if t.kind == STR:
            self.next()
            s = self.resolve_string(t.value)
            while self.tok.kind == STR:  # "a" "b" -> "ab"
                s += self.resolve_string(self.next().value)
            return s
        if t.kind == NUM:
            self.next()
            return t.value
        if self.is_op("-") or self.is_op("+"):
            self.next()
            if self.tok.kind != NUM:
                raise _Unsupported(f"expected a number after `{t.value}`")
            n = self.next().value
            return -n if t.value == "-" else n
        if t.kind == SYM:
            self.next()
            return t.value
        if t.kind == REGEX:
            self.next()
            return t.value
        if self.is_op("["):
            self.next()
            items = []
            while not self.is_op("]"):
                items.append(self.value())
                if self.is_op(","):
                    self.next()
                    continue
                if not self.is_op("]"):
                    raise _Unsupported(f"expected `,` or `]` in an array, found {self.tok.describe()}")
            self.next()
            return items
        if self.is_op("{"):
            self.next()
            d = self.hash_pairs(end="}")
            self.expect_op("}")
            return d
        if t.kind == IDENT:
            if t.value in ("true", "false", "nil"):
                self.next()
                return {"true": True, "false": False, "nil": None}[t.value]
            if t.value == "__FILE__":
                self.next()
                return self.filename
            if t.value == "__dir__":
                self.next()
                return os.path.dirname(self.filename)
            if t.value in self.vars and not self.is_op("(", self.peek()) and not self.is_op(".", self.peek()):
                self.next()
                return self.vars[t.value]
            raise _Unsupported(f"unknown name `{t.value}` (only values and variables assigned above are supported)")
        if t.kind == CONST and t.value == "File" and self.is_op(".", self.peek()):
            return self.file_call()
        if t.kind in (NL, EOF):
            raise _Unsupported("missing value")
        raise _Unsupported(f"unsupported value {t.describe()}")

    def file_call(self) -> str:
        self.next()  # File
        self.next()  # .
        fn = self.tok
        if fn.kind != IDENT or fn.value not in _FILE_FUNCS:
            raise _Unsupported(f"File.{fn.value} is not supported")
        self.next()
        self.expect_op("(")
        args = []
        while not self.is_op(")"):
            a = self.value()
            if not isinstance(a, str):
                raise _Unsupported(f"File.{fn.value} takes strings")
            args.append(a)
            if self.is_op(","):
                self.next()
            elif not self.is_op(")"):
                raise _Unsupported(f"expected `,` or `)`, found {self.tok.describe()}")
        self.next()
        name = fn.value
        try:
            if name == "dirname":
                return os.path.dirname(*args)
            if name == "basename":
                return os.path.basename(args[0]) if len(args) == 1 else \
                    os.path.basename(args[0]).removesuffix(args[1])
            if name == "join":
                return "/".join(a.rstrip("/") if i < len(args) - 1 else a for i, a in enumerate(args))
            base = args[1] if len(args) > 1 else os.path.dirname(os.path.abspath(self.filename))
            return os.path.normpath(os.path.join(base, os.path.expanduser(args[0])))
        except (TypeError, IndexError):
            raise _Unsupported(f"bad arguments to File.{name}") from None

    def resolve_string(self, parts: list) -> str:
        out = []
        for p in parts:
            if isinstance(p, _Interp):
                src = p.source
                if src in ("__dir__", "File.dirname(__FILE__)"):
                    out.append(os.path.dirname(self.filename))
                elif re.fullmatch(r"[a-z_][A-Za-z0-9_]*", src) and src in self.vars \
                        and isinstance(self.vars[src], (str, int, float)):
                    out.append(str(self.vars[src]))
                else:
                    raise _Unsupported(f"string interpolation #{{{src}}} is not supported")
            else:
                out.append(p)
        return "".join(out)


def parse(
    text: str,
    filename: str = "<string>",
    strict: bool = True,
    *,
    path: Optional[str] = None,
    lenient: Optional[bool] = None,
) -> Assignments:
    """The assignments of a Ruby-style settings file, in file order.

    strict=True raises RbConfigError at the first statement it cannot read;
    strict=False skips it and adds an RbWarning to `.warnings`.
    (`path=` and `lenient=` are accepted as aliases of `filename` and `not strict`.)"""
    if path is not None:
        filename = path
    if lenient is not None:
        strict = not lenient
    toks = _Lexer(text, filename).run()
    return _Parser(toks, filename, strict).run()


def parse_file(path: str, strict: bool = True) -> Assignments:
    """`parse` on a file's contents (UTF-8; undecodable bytes are an error naming the file)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise RbConfigError(path, 1, f"not UTF-8 text ({e.reason})") from None
    return parse(text, path, strict)
