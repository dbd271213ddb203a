"""Chef search for the node inventory: query parser, node expansion, matcher.

Pure: no Flask, no peewee. The search blueprint loads the org's nodes and
hands them to `search_nodes`; everything that decides *which* nodes match
lives here, so the grammar is tested in microseconds.

How a node is seen by a query (what Chef's server indexes, see erchef's
`chef_node:ejson_for_indexing` and `chef_index_expand:flatten`):

* the attributes are deep-merged, weakest first: default < normal <
  override < automatic (hashes merge, arrays and scalars are replaced);
* on top of them: `name`, `chef_type` ("node"), `chef_environment`,
  `run_list` (the raw items), `recipe` (the run list's recipes) and `role`
  (the run list's roles, plus `automatic.roles` as pushjobs agents report
  their roles there);
* the merged tree is flattened: every leaf value is indexed under its full
  key path joined with `_` (`kernel_machine`) AND under its own key alone
  (`machine`); the keys of a hash are values of the hash's path
  (`network_interfaces:eth0`); array items are values of the array's path;
  numbers and booleans become strings, null becomes "".

Query syntax (Lucene as used by Chef):

* `field:value`, `field:"quoted phrase"`, `field:[a TO b]` / `{a TO b}`
  ranges (numeric when both ends are numbers, `*` for an open end),
  `field:(a OR b)`; `*` and `?` wildcards in values and in field names
  (`network_interfaces_*_flags:UP`); `*:*` matches every node; a term
  without a field matches any value of any field;
* operators, strongest first: NOT / `!` / `-` / `+`, then AND / `&&`, then
  OR / `||` / juxtaposition (Lucene's default operator is OR);
* inside an OR list the Lucene clause rules apply: `+x` is required, `-x`
  and `NOT x` are prohibited, the other clauses are optional (at least one
  must match when there is no required clause), so a bare `NOT x` matches
  every node except the matches, as in Chef;
* `\\` escapes a special character; `^boost` is accepted and ignored.

Matching is case-sensitive for field names and values, as on a Chef
server (`platform:Debian` does not match `debian`; see chef/chef-server#2817
and chef/chef#5969): a job must never reach more nodes than the same query
selects in Chef. Use wildcards or OR for variants. A phrase matches a value
equal to it or starting with it followed by whitespace (Chef's index is
whitespace-tokenized).

A malformed query raises `QueryError` carrying the 0-based character
position of the problem; the API maps it to a 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

__all__ = [
    "QueryError",
    "Query",
    "parse_query",
    "expand_node",
    "deep_merge",
    "search_nodes",
    "SearchResult",
    "DEFAULT_ROWS",
    "node_json",
    "split_run_list",
]

DEFAULT_ROWS = 1000
"""Chef's default page size for search."""

SEP = "_"


class QueryError(ValueError):
    """A malformed query; `position` is the 0-based offset of the problem."""

    def __init__(self, message: str, position: int, query: str = ""):
        super().__init__(f"{message} at position {position}")
        self.message = message
        self.position = position
        self.query = query


# --------------------------------------------------------------------------
# Node expansion (what is indexed)
# --------------------------------------------------------------------------


def deep_merge(base: Any, over: Any) -> Any:
    """Chef's attribute deep merge: hashes merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base[k], v) if k in base else v
        return out
    return over


def _scalar(v: Any) -> str:
    if v is None:
        return ""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _flatten(keys: list[str], obj: Any, out: dict[str, set[str]]) -> None:
    """`chef_index_expand:expand/4`: keys joined with `_` plus the leaf key alone."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            k = str(k)
            _add(keys, k, out)
            _flatten(keys + [k], v, out)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _flatten(keys, item, out)
    else:
        _add(keys, _scalar(obj), out)


def _add(keys: list[str], value: str, out: dict[str, set[str]]) -> None:
    if not keys:
        return
    out.setdefault(SEP.join(keys), set()).add(value)
    if len(keys) > 1:
        out.setdefault(keys[-1], set()).add(value)


def split_run_list(run_list: Iterable[Any]) -> tuple[list[str], list[str]]:
    """(roles, recipes) of a run list; a bare item is a recipe, as in Chef."""
    roles: list[str] = []
    recipes: list[str] = []
    for item in run_list or []:
        if not isinstance(item, str):
            continue
        if item.startswith("role[") and item.endswith("]"):
            roles.append(item[5:-1])
        elif item.startswith("recipe[") and item.endswith("]"):
            recipes.append(item[7:-1])
        elif item:
            recipes.append(item)
    return roles, recipes


def expand_node(node: Mapping[str, Any]) -> dict[str, set[str]]:
    """The searchable fields of a node in Chef's JSON shape: field -> values (as strings)."""
    attrs: Any = {}
    for level in ("default", "normal", "override", "automatic"):
        part = node.get(level)
        if isinstance(part, dict):
            attrs = deep_merge(attrs, part)
    run_list = node.get("run_list") or []
    roles, recipes = split_run_list(run_list)
    auto = node.get("automatic") if isinstance(node.get("automatic"), dict) else {}
    auto_roles = auto.get("roles") if isinstance(auto, dict) else None
    if isinstance(auto_roles, list):
        roles += [r for r in auto_roles if isinstance(r, str) and r not in roles]
    doc = dict(attrs) if isinstance(attrs, dict) else {}
    doc.update(
        {
            "name": node.get("name", ""),
            "chef_type": "node",
            "chef_environment": node.get("chef_environment", "_default"),
            "run_list": list(run_list),
            "recipe": recipes,
            "role": roles,
        }
    )
    out: dict[str, set[str]] = {}
    _flatten([], doc, out)
    return out


# --------------------------------------------------------------------------
# Query AST
# --------------------------------------------------------------------------

Doc = Mapping[str, set[str]]


class Query:
    """A parsed query; `matches(doc)` where doc is `expand_node(...)`."""

    def matches(self, doc: Doc) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Pattern:
    """A term or field name: literal text or a `*`/`?` wildcard pattern (case-sensitive)."""

    text: str  # the literal text (for display and literal compare)
    regex: Optional["re.Pattern[str]"] = None  # set when it has wildcards

    def match(self, s: str) -> bool:
        if self.regex is not None:
            return self.regex.fullmatch(s) is not None
        return s == self.text

    @property
    def is_all(self) -> bool:
        return self.regex is not None and self.text == "*"


def _pattern(parts: Sequence[tuple[str, bool]]) -> Pattern:
    """parts: (char, escaped). Unescaped `*`/`?` are wildcards."""
    text = "".join(c for c, _ in parts)
    if not any(c in "*?" and not esc for c, esc in parts):
        return Pattern(text)
    rx = []
    for c, esc in parts:
        if not esc and c == "*":
            rx.append(".*")
        elif not esc and c == "?":
            rx.append(".")
        else:
            rx.append(re.escape(c))
    return Pattern(text, re.compile("".join(rx), re.DOTALL))


def _fields(doc: Doc, fpat: Optional[Pattern]) -> Iterator[set[str]]:
    if fpat is None:
        yield from doc.values()
    elif fpat.regex is None:
        vals = doc.get(fpat.text)
        if vals is not None:
            yield vals
    else:
        for k, vals in doc.items():
            if fpat.match(k):
                yield vals


@dataclass(frozen=True)
class MatchAll(Query):
    def matches(self, doc: Doc) -> bool:
        return True


@dataclass(frozen=True)
class Term(Query):
    field: Optional[Pattern]
    value: Pattern

    def matches(self, doc: Doc) -> bool:
        for vals in _fields(doc, self.field):
            if self.value.is_all:
                return True
            if self.value.regex is None:
                if self.value.text in vals:
                    return True
            elif any(self.value.match(v) for v in vals):
                return True
        return False


@dataclass(frozen=True)
class Phrase(Query):
    field: Optional[Pattern]
    text: str

    def matches(self, doc: Doc) -> bool:
        t = self.text
        for vals in _fields(doc, self.field):
            for v in vals:
                if v == t or (v.startswith(t) and v[len(t) : len(t) + 1].isspace()):
                    return True
        return False


def _num(s: str) -> Optional[float]:
    try:
        return float(s)
    except ValueError:
        return None


@dataclass(frozen=True)
class Range(Query):
    field: Optional[Pattern]
    low: Optional[str]  # None: open
    high: Optional[str]
    include_low: bool
    include_high: bool

    def _in(self, v: str) -> bool:
        lo, hi = self.low, self.high
        nums = [_num(x) for x in (v, lo, hi) if x is not None]
        if all(n is not None for n in nums):
            key: Callable[[str], Any] = lambda s: float(s)  # noqa: E731
        else:
            key = lambda s: s  # noqa: E731
        try:
            if lo is not None:
                if key(v) < key(lo) or (not self.include_low and key(v) == key(lo)):
                    return False
            if hi is not None:
                if key(v) > key(hi) or (not self.include_high and key(v) == key(hi)):
                    return False
        except (TypeError, ValueError):
            return False
        return True

    def matches(self, doc: Doc) -> bool:
        return any(self._in(v) for vals in _fields(doc, self.field) for v in vals)


@dataclass(frozen=True)
class Not(Query):
    inner: Query

    def matches(self, doc: Doc) -> bool:
        return not self.inner.matches(doc)


@dataclass(frozen=True)
class And(Query):
    parts: tuple[Query, ...]

    def matches(self, doc: Doc) -> bool:
        return all(p.matches(doc) for p in self.parts)


@dataclass(frozen=True)
class Clauses(Query):
    """An OR list with Lucene's clause rules (see the module docstring)."""

    should: tuple[Query, ...] = ()
    must: tuple[Query, ...] = ()
    must_not: tuple[Query, ...] = ()

    def matches(self, doc: Doc) -> bool:
        if any(q.matches(doc) for q in self.must_not):
            return False
        if not all(q.matches(doc) for q in self.must):
            return False
        if self.should and not self.must:
            return any(q.matches(doc) for q in self.should)
        return True


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------

_SPECIAL_START = set('()"[{')


@dataclass
class _Tok:
    kind: str  # WORD PHRASE LPAREN RPAREN AND OR NOT PLUS MINUS RANGE EOF
    pos: int
    parts: list[tuple[str, bool]] = field(default_factory=list)  # WORD: (char, escaped)
    field_parts: Optional[list[tuple[str, bool]]] = None  # WORD "f:" prefix
    text: str = ""  # PHRASE text
    # RANGE: (low parts, high parts, incl_low, incl_high)
    range: Optional[tuple[list[tuple[str, bool]], list[tuple[str, bool]], bool, bool]] = None
    colon_pos: int = -1


class _Lexer:
    def __init__(self, q: str):
        self.q = q
        self.i = 0
        self.n = len(q)

    def error(self, msg: str, pos: Optional[int] = None) -> QueryError:
        return QueryError(msg, self.i if pos is None else pos, self.q)

    def tokens(self) -> list[_Tok]:
        out: list[_Tok] = []
        while True:
            t = self.next()
            out.append(t)
            if t.kind == "EOF":
                return out

    def _skip_ws(self) -> None:
        while self.i < self.n and self.q[self.i].isspace():
            self.i += 1

    def next(self) -> _Tok:
        self._skip_ws()
        q, i = self.q, self.i
        if i >= self.n:
            return _Tok("EOF", i)
        c = q[i]
        if c == "(":
            self.i += 1
            return _Tok("LPAREN", i)
        if c == ")":
            self.i += 1
            return _Tok("RPAREN", i)
        if q.startswith("&&", i):
            self.i += 2
            return _Tok("AND", i)
        if q.startswith("||", i):
            self.i += 2
            return _Tok("OR", i)
        if c == "!":
            self.i += 1
            return _Tok("NOT", i)
        if c == "+":
            self.i += 1
            return _Tok("PLUS", i)
        if c == "-":
            self.i += 1
            return _Tok("MINUS", i)
        if c == '"':
            return self._phrase(None, -1)
        if c in "[{":
            return self._range(None, -1)
        if c in "]}":
            raise self.error(f"unexpected '{c}'")
        return self._word()

    def _phrase(self, fparts: Optional[list[tuple[str, bool]]], start: int) -> _Tok:
        q = self.q
        open_pos = self.i
        self.i += 1
        buf = []
        while self.i < self.n:
            c = q[self.i]
            if c == "\\" and self.i + 1 < self.n:
                buf.append(q[self.i + 1])
                self.i += 2
                continue
            if c == '"':
                self.i += 1
                self._boost()
                return _Tok(
                    "PHRASE",
                    open_pos if start < 0 else start,
                    field_parts=fparts,
                    text="".join(buf),
                )
            buf.append(c)
            self.i += 1
        raise self.error("unterminated quoted phrase", open_pos)

    def _bound(self) -> list[tuple[str, bool]]:
        self._skip_ws()
        q = self.q
        parts: list[tuple[str, bool]] = []
        if self.i < self.n and q[self.i] == '"':
            open_pos = self.i
            self.i += 1
            while self.i < self.n and q[self.i] != '"':
                if q[self.i] == "\\" and self.i + 1 < self.n:
                    self.i += 1
                parts.append((q[self.i], True))
                self.i += 1
            if self.i >= self.n:
                raise self.error("unterminated quoted phrase", open_pos)
            self.i += 1
            return parts
        while self.i < self.n and not q[self.i].isspace() and q[self.i] not in "]}":
            if q[self.i] == "\\" and self.i + 1 < self.n:
                parts.append((q[self.i + 1], True))
                self.i += 2
                continue
            parts.append((q[self.i], False))
            self.i += 1
        return parts

    def _range(self, fparts: Optional[list[tuple[str, bool]]], start: int) -> _Tok:
        q = self.q
        open_pos = self.i
        incl_low = q[self.i] == "["
        self.i += 1
        low = self._bound()
        if not low:
            raise self.error("expected a range start")
        self._skip_ws()
        if not q.startswith("TO", self.i) or (
            self.i + 2 < self.n and not q[self.i + 2].isspace()
        ):
            raise self.error("expected 'TO' in range")
        self.i += 2
        high = self._bound()
        if not high:
            raise self.error("expected a range end")
        self._skip_ws()
        if self.i >= self.n:
            raise self.error("unterminated range", open_pos)
        if q[self.i] not in "]}":
            raise self.error("expected ']' or '}' to close the range")
        incl_high = q[self.i] == "]"
        self.i += 1
        self._boost()
        return _Tok(
            "RANGE",
            open_pos if start < 0 else start,
            field_parts=fparts,
            range=(low, high, incl_low, incl_high),
        )

    def _boost(self) -> None:
        """`^2` after a term is accepted and ignored; `~` is not supported."""
        q = self.q
        if self.i < self.n and q[self.i] == "^":
            j = self.i + 1
            while j < self.n and (q[j].isdigit() or q[j] == "."):
                j += 1
            if j == self.i + 1:
                raise self.error("expected a number after '^'")
            self.i = j
        if self.i < self.n and q[self.i] == "~":
            raise self.error("fuzzy and proximity searches ('~') are not supported")

    def _word(self) -> _Tok:
        q = self.q
        start = self.i
        parts: list[tuple[str, bool]] = []
        fparts: Optional[list[tuple[str, bool]]] = None
        colon_pos = -1
        while self.i < self.n:
            c = q[self.i]
            if c.isspace() or c in '()"' or c in "^~":
                break
            if c in "[]{}" and fparts is None:
                raise self.error(f"unexpected '{c}'")
            if c == "\\":
                if self.i + 1 >= self.n:
                    raise self.error("dangling escape character '\\'")
                parts.append((q[self.i + 1], True))
                self.i += 2
                continue
            if c == ":" and fparts is None:
                if not parts:
                    raise self.error("missing field name before ':'")
                fparts, parts, colon_pos = parts, [], self.i
                self.i += 1
                # the value may be a phrase, a range or a group
                if self.i < self.n and q[self.i] == '"':
                    return self._phrase(fparts, start)
                if self.i < self.n and q[self.i] in "[{":
                    return self._range(fparts, start)
                if self.i < self.n and q[self.i] == "(":
                    return _Tok("FIELDGROUP", start, field_parts=fparts, colon_pos=colon_pos)
                continue
            parts.append((c, False))
            self.i += 1
        if fparts is not None and not parts:
            raise self.error("missing value after ':'")
        word = "".join(c for c, _ in parts)
        if fparts is None and not any(esc for _, esc in parts):
            if word == "AND":
                return _Tok("AND", start)
            if word == "OR":
                return _Tok("OR", start)
            if word == "NOT":
                return _Tok("NOT", start)
        tok = _Tok("WORD", start, parts=parts, field_parts=fparts, colon_pos=colon_pos)
        self._boost()
        return tok


# --------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------


class _Parser:
    """Recursive descent over the tokens: or_list > and_expr > unary > primary."""

    def __init__(self, q: str):
        self.q = q
        self.lexer = _Lexer(q)
        self.toks = self.lexer.tokens()
        self.k = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.k]

    def take(self) -> _Tok:
        t = self.toks[self.k]
        self.k += 1
        return t

    def error(self, msg: str, tok: Optional[_Tok] = None) -> QueryError:
        return QueryError(msg, (tok or self.tok).pos, self.q)

    def parse(self) -> Query:
        if self.tok.kind == "EOF":
            raise self.error("empty query")
        q = self.or_list(None)
        if self.tok.kind == "RPAREN":
            raise self.error("unbalanced ')'")
        if self.tok.kind != "EOF":  # pragma: no cover - or_list consumes all else
            raise self.error("unexpected input")
        return q

    _STARTS = {"WORD", "PHRASE", "RANGE", "LPAREN", "FIELDGROUP", "NOT", "PLUS", "MINUS"}

    def or_list(self, dfield: Optional[list[tuple[str, bool]]]) -> Query:
        should: list[Query] = []
        must: list[Query] = []
        must_not: list[Query] = []
        first = True
        while True:
            if not first:
                if self.tok.kind == "OR":
                    self.take()
                    if self.tok.kind not in self._STARTS:
                        raise self.error("expected a term after 'OR'")
                elif self.tok.kind not in self._STARTS:
                    break
            first = False
            kind, q = self.and_expr(dfield)
            {"should": should, "must": must, "must_not": must_not}[kind].append(q)
        if len(should) == 1 and not must and not must_not:
            return should[0]
        return Clauses(tuple(should), tuple(must), tuple(must_not))

    def and_expr(self, dfield: Optional[list[tuple[str, bool]]]) -> tuple[str, Query]:
        kind, q = self.unary(dfield)
        parts = [q if kind != "must_not" else Not(q)]
        while self.tok.kind == "AND":
            self.take()
            if self.tok.kind not in self._STARTS:
                raise self.error("expected a term after 'AND'")
            k2, q2 = self.unary(dfield)
            parts.append(Not(q2) if k2 == "must_not" else q2)
        if len(parts) == 1:
            return kind, q
        return "should", And(tuple(parts))

    def unary(self, dfield: Optional[list[tuple[str, bool]]]) -> tuple[str, Query]:
        t = self.tok
        if t.kind in ("NOT", "MINUS", "PLUS"):
            self.take()
            if self.tok.kind not in self._STARTS:
                name = {"NOT": "NOT", "MINUS": "-", "PLUS": "+"}[t.kind]
                raise self.error(f"expected a term after '{name}'")
            kind, inner = self.unary(dfield)
            if t.kind == "PLUS":
                return ("must" if kind != "must_not" else "must_not"), inner
            if kind == "must_not":  # double negation
                return "should", inner
            return "must_not", inner
        return "should", self.primary(dfield)

    def primary(self, dfield: Optional[list[tuple[str, bool]]]) -> Query:
        t = self.take()
        if t.kind == "LPAREN":
            if self.tok.kind == "RPAREN":
                raise self.error("empty group '()'")
            q = self.or_list(dfield)
            if self.tok.kind != "RPAREN":
                raise self.error("expected ')'" if self.tok.kind == "EOF" else "unexpected input")
            self.take()
            return q
        if t.kind == "FIELDGROUP":
            self.take()  # the '(' token produced after FIELDGROUP
            if self.tok.kind == "RPAREN":
                raise self.error("empty group '()'")
            q = self.or_list(t.field_parts)
            if self.tok.kind != "RPAREN":
                raise self.error("expected ')'")
            self.take()
            return q
        fparts = t.field_parts if t.field_parts is not None else dfield
        fpat = _pattern(fparts) if fparts is not None else None
        if t.kind == "WORD":
            value = _pattern(t.parts)
            if fpat is not None and fpat.is_all and value.is_all:
                return MatchAll()
            return Term(fpat, value)
        if t.kind == "PHRASE":
            return Phrase(fpat, t.text)
        if t.kind == "RANGE":
            assert t.range is not None
            lo, hi, il, ih = t.range
            los = "".join(c for c, _ in lo)
            his = "".join(c for c, _ in hi)
            open_lo = lo == [("*", False)]
            open_hi = hi == [("*", False)]
            return Range(fpat, None if open_lo else los, None if open_hi else his, il, ih)
        if t.kind == "RPAREN":
            raise self.error("unbalanced ')'", t)
        if t.kind == "EOF":
            raise self.error("unexpected end of query", t)
        raise self.error(f"unexpected '{t.kind}'", t)  # pragma: no cover


def parse_query(q: str) -> Query:
    """Parse a Chef (Lucene) query; raises QueryError(message, position)."""
    if not isinstance(q, str):
        raise QueryError("query must be a string", 0, "")
    return _Parser(q).parse()


# --------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------


@dataclass
class SearchResult:
    total: int
    start: int
    rows: list[dict]

    def to_json(self) -> dict:
        return {"total": self.total, "start": self.start, "rows": self.rows}


def search_nodes(
    query: str | Query,
    nodes: Iterable[Mapping[str, Any]],
    start: int = 0,
    rows: int = DEFAULT_ROWS,
) -> SearchResult:
    """Chef's response shape over nodes (Chef node JSON), ordered by name."""
    q = parse_query(query) if isinstance(query, str) else query
    hits = [n for n in nodes if q.matches(expand_node(n))]
    hits.sort(key=lambda n: str(n.get("name", "")))
    start = max(0, start)
    return SearchResult(len(hits), start, [dict(n) for n in hits[start : start + max(0, rows)]])


def node_json(
    name: str,
    chef_environment: str = "_default",
    run_list: Sequence[str] = (),
    automatic: Optional[Mapping] = None,
    normal: Optional[Mapping] = None,
    default: Optional[Mapping] = None,
    override: Optional[Mapping] = None,
) -> dict:
    """A node in Chef's JSON shape."""
    return {
        "name": name,
        "chef_environment": chef_environment,
        "json_class": "Chef::Node",
        "chef_type": "node",
        "run_list": list(run_list),
        "automatic": dict(automatic or {}),
        "normal": dict(normal or {}),
        "default": dict(default or {}),
        "override": dict(override or {}),
    }
