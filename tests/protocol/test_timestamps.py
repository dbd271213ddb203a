"""Timestamps: HTTP-date, ISO-8601, SSE form, skew rule (§4.5, §4.6, §10.1, §11)."""

from __future__ import annotations

import email.utils

import pytest

from pushjobs.protocol import ProtocolError, timestamps as ts

T = 1346799662.0  # Tue, 04 Sep 2012 23:01:02 GMT


def test_http_date_vector():
    assert ts.http_date(T) == "Tue, 04 Sep 2012 23:01:02 GMT"
    assert ts.http_date(T) == email.utils.formatdate(T, usegmt=True)
    assert ts.http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


@pytest.mark.parametrize(
    "text",
    [
        "Tue, 04 Sep 2012 23:01:02 GMT",  # RFC 1123
        "Tuesday, 04-Sep-12 23:01:02 GMT",  # RFC 850
        "Tue Sep  4 23:01:02 2012",  # asctime
        "Wed, 05 Sep 2012 01:01:02 +0200",
    ],
)
def test_parse_http_date_forms(text):
    assert ts.parse_http_date(text) == T


@pytest.mark.parametrize(
    "bad",
    ["", "yesterday", "Tue, 04 Sep 2012 25:01:02 GMT", "Tue, 31 Feb 2012 23:01:02 GMT",
     "Tue, 04 Foo 2012 23:01:02 GMT", None, 12, ["x"], "x" * 5000],
)
def test_parse_http_date_rejects(bad):
    with pytest.raises(ProtocolError) as exc:
        ts.parse_http_date(bad)
    assert exc.value.reason == "bad_timestamp"


def test_http_date_round_trip_now():
    import time

    now = time.time()
    assert ts.parse_http_date(ts.http_date(now)) == int(now)


def test_iso8601():
    assert ts.iso8601(T) == "2012-09-04T23:01:02Z"
    assert ts.parse_iso8601("2012-09-04T23:01:02Z") == T
    assert ts.parse_iso8601("2012-09-04T23:01:02.123Z") == T
    assert ts.parse_iso8601("2012-09-05T01:01:02+02:00") == T
    assert ts.parse_iso8601("2012-09-04T18:01:02-0500") == T
    assert ts.parse_iso8601("2012-09-04T23:01:02") == T
    for bad in ("", "2012-09-04", "2012-13-04T23:01:02Z", "garbage", None):
        with pytest.raises(ProtocolError) as exc:
            ts.parse_iso8601(bad)
        assert exc.value.reason == "bad_timestamp"


def test_sse_timestamp():
    assert ts.sse_timestamp(T + 0.995958) == "2012-09-04 23:01:02.995958Z"
    assert ts.sse_timestamp(T) == "2012-09-04 23:01:02.000000Z"


def test_skew_rule_strict_and_both_ways():
    assert ts.within_skew(T, T + 299.9, 300)
    assert not ts.within_skew(T, T + 300, 300)
    assert not ts.within_skew(T + 300, T, 300)
    ts.check_skew(T, T - 10, 300)
    with pytest.raises(ProtocolError) as exc:
        ts.check_skew(T, T + 301, 300)
    assert exc.value.reason == "stale"
