"""Timestamps in the three textual forms the protocol uses, and the skew rule.

* message bodies (§4.6): HTTP-date / RFC 1123 in GMT (RFC 850 and asctime are
  accepted on input, as the Erlang server's ``httpd_util`` parser did);
* ``X-Ops-Timestamp`` (§10.1): ISO-8601 UTC ``YYYY-MM-DDTHH:MM:SSZ``;
* SSE events (§11): ``YYYY-MM-DD HH:MM:SS.ffffffZ``.

All times are float seconds since the epoch (``time.time()``), injected by the
caller where it matters so that tests can use a fake clock.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import email.utils
import functools
import re
import time

from .errors import ProtocolError

__all__ = [
    "http_date",
    "parse_http_date",
    "parse_http_date_cached",
    "iso8601",
    "parse_iso8601",
    "sse_timestamp",
    "within_skew",
    "check_skew",
]

_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    )
}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# The exact form every known sender emits: parsed without email.utils on the
# heartbeat hot path.
_RFC1123 = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) ([A-Z][a-z][a-z]) (\d{4}) (\d\d):(\d\d):(\d\d) GMT\Z"
)
_ISO8601 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.\d+)?(Z|z|[+-]\d\d:?\d\d)?\Z"
)


def _now(t: float | None) -> float:
    return time.time() if t is None else t


# http_date() of the current second: every message the server sends in one
# second carries the same text (1 s resolution), so it is formatted once.
_last_second: int | None = None
_last_text = ""


def http_date(t: float | None = None) -> str:
    """RFC 1123 date in GMT, e.g. ``Tue, 04 Sep 2012 23:01:02 GMT``."""
    global _last_second, _last_text
    if t is None:
        t = time.time()
    if 0.0 <= t < 1e11:  # the ordinary range: memoize by whole second
        sec = int(t)
        if sec == _last_second:
            return _last_text
        text = _format_http_date(sec)
        _last_second, _last_text = sec, text
        return text
    return _format_http_date(t)


def _format_http_date(t: float) -> str:
    tm = time.gmtime(t)
    return "%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[tm.tm_wday],
        tm.tm_mday,
        _MONTH_NAMES[tm.tm_mon - 1],
        tm.tm_year,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
    )


def _timegm(year: int, month: int, day: int, hh: int, mm: int, ss: int, s: object) -> float:
    try:
        _dt.datetime(year, month, day, hh, mm, ss)  # range validation only
    except (ValueError, OverflowError):
        raise ProtocolError("bad_timestamp", f"impossible date {s!r}") from None
    return float(calendar.timegm((year, month, day, hh, mm, ss, 0, 0, 0)))


def parse_http_date(s: str) -> float:
    """Parse an HTTP-date (RFC 1123, RFC 850 or asctime) to epoch seconds.

    Raises ProtocolError(bad_timestamp) for anything else, including
    impossible dates and non-strings (JSON can carry any type here).
    """
    if not isinstance(s, str):
        raise ProtocolError("bad_timestamp", f"timestamp is not a string: {type(s).__name__}")
    return _parse_http_date(s)


#: The last few distinct timestamp strings seen by `parse_http_date_cached`
#: (a node stamps with 1 s resolution: a busy server sees the same 1-3 strings
#: over and over). Bounded: cleared when it holds this many.
_RECENT_MAX = 16
_recent: dict[str, float] = {}


def parse_http_date_cached(s: str) -> float:
    """`parse_http_date` for a str, memoized for the last few distinct strings
    (the server's receive path: one call per message). Errors are not cached."""
    v = _recent.get(s)
    if v is None:
        v = _parse_http_date(s)
        if len(_recent) >= _RECENT_MAX:
            _recent.clear()
        _recent[s] = v
    return v


@functools.lru_cache(maxsize=4096)
def _parse_http_date(s: str) -> float:
    # Cached: thousands of nodes stamp their heartbeats with the same few
    # seconds, so on a busy server most lookups hit.  Errors are not cached.
    m = _RFC1123.match(s)
    if m is not None:
        month = _MONTHS.get(m.group(2))
        if month is None:
            raise ProtocolError("bad_timestamp", f"bad month in {s!r}")
        return _timegm(
            int(m.group(3)), month, int(m.group(1)),
            int(m.group(4)), int(m.group(5)), int(m.group(6)), s,
        )
    if len(s) > 64:
        raise ProtocolError("bad_timestamp", "timestamp too long")
    try:
        parts = email.utils.parsedate_tz(s)
    except Exception:  # email.utils has raised odd errors on odd input
        parts = None
    if parts is None:
        raise ProtocolError("bad_timestamp", f"unparseable HTTP date {s!r}")
    year, month, day, hh, mm, ss = parts[:6]
    offset = parts[9] or 0
    return _timegm(year, month, day, hh, mm, ss, s) - offset


def iso8601(t: float | None = None) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` (UTC), the X-Ops-Timestamp form."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_now(t)))


def parse_iso8601(s: str) -> float:
    """Parse an ISO-8601 timestamp (``Z`` or a numeric offset; no zone = UTC,
    as Ruby's ``Time.parse(..).utc`` on a UTC host).  Fractions are dropped,
    as mixlib-authentication's canonical time does."""
    if not isinstance(s, str):
        raise ProtocolError("bad_timestamp", "timestamp is not a string")
    m = _ISO8601.match(s.strip())
    if m is None:
        raise ProtocolError("bad_timestamp", f"unparseable ISO-8601 time {s!r}")
    t = _timegm(*(int(m.group(i)) for i in range(1, 7)), s)
    zone = m.group(7)
    if zone and zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        t -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return t


def sse_timestamp(t: float | None = None) -> str:
    """``2014-07-10 05:17:44.995958Z``: the timestamp of SSE event data (§11)."""
    d = _dt.datetime.fromtimestamp(_now(t), tz=_dt.timezone.utc)
    return d.strftime("%Y-%m-%d %H:%M:%S.%fZ")


def within_skew(ts: float, now: float, max_skew: float) -> bool:
    """The skew rule of §4.5: ``|now - ts| < max_skew`` (strict)."""
    return abs(now - ts) < max_skew


def check_skew(ts: float, now: float, max_skew: float) -> None:
    """Raise ProtocolError(stale) when ``ts`` is outside the skew window.

    Both directions are rejected (the reference client only rejected future
    timestamps, §17.3 C3)."""
    if not within_skew(ts, now, max_skew):
        raise ProtocolError(
            "stale", f"timestamp off by {now - ts:+.0f}s (allowed < {max_skew:g}s)"
        )
