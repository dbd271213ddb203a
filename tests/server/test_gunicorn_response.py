"""gunicorn_app.OneWriteResponse: the same bytes as gunicorn's Response, in one sendall when it can.

Driven by gunicorn's real request parser over a real socket pair; the stock
Response writes the reference bytes (the Date header is the only thing that
may differ between two writes, it is normalised)."""
import re
import socket

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi as gwsgi
from gunicorn.http.parser import RequestParser

from pushjobs.server.gunicorn_app import OneWriteResponse

PEER = ("127.0.0.1", 40000)


class Recorder:
    """A socket stand-in that records each sendall."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.calls.append(bytes(data))

    def send(self, data: bytes) -> int:
        self.calls.append(bytes(data))
        return len(data)


def parsed(raw: bytes):
    a, b = socket.socketpair()
    try:
        a.sendall(raw)
        return next(iter(RequestParser(Config(), b, PEER)))
    finally:
        a.close()
        b.close()


def respond(cls, raw: bytes, status: str, headers: list, chunks: list[bytes]) -> list[bytes]:
    req = parsed(raw)
    sock = Recorder()
    resp, _environ = gwsgi.create(req, sock, PEER, "127.0.0.1:10003", Config(), response_class=cls)
    resp.start_response(status, headers)
    for c in chunks:
        resp.write(c)
    resp.close()
    return [re.sub(rb"Date: [^\r]*\r\n", b"Date: D\r\n", c) for c in sock.calls]


GET = b"GET /pushy/_status HTTP/1.1\r\nHost: h\r\n\r\n"
JSON = [("Content-Type", "application/json")]
CASES = {
    "whole body, Content-Length": (GET, "200 OK", JSON + [("Content-Length", "11")], [b'{"a":"bcd"}']),
    "error body": (GET, "401 UNAUTHORIZED", JSON + [("Content-Length", "2"), ("WWW-Authenticate", "x")], [b"{}"]),
    "body in two writes": (GET, "200 OK", JSON + [("Content-Length", "4")], [b"ab", b"cd"]),
    "longer than announced": (GET, "200 OK", JSON + [("Content-Length", "2")], [b"abcd"]),
    "chunked stream": (GET, "200 OK", [("Content-Type", "text/event-stream")], [b"", b"data: 1\n\n", b"x"]),
    "HEAD": (b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", "200 OK", JSON + [("Content-Length", "2")], [b"{}"]),
    "204": (GET, "204 NO CONTENT", [], [b""]),
    "HTTP/1.0 close": (b"GET / HTTP/1.0\r\n\r\n", "200 OK", JSON + [("Content-Length", "2")], [b"{}"]),
    "empty body": (GET, "200 OK", JSON + [("Content-Length", "0")], [b""]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_bytes_as_gunicorn(case):
    raw, status, headers, chunks = CASES[case]
    stock = respond(gwsgi.Response, raw, status, headers, chunks)
    ours = respond(OneWriteResponse, raw, status, headers, chunks)
    assert b"".join(ours) == b"".join(stock)


def test_a_whole_answer_is_one_sendall():
    raw, status, headers, chunks = CASES["whole body, Content-Length"]
    stock = respond(gwsgi.Response, raw, status, headers, chunks)
    ours = respond(OneWriteResponse, raw, status, headers, chunks)
    assert len(stock) == 2 and len(ours) == 1
    assert ours[0].startswith(b"HTTP/1.1 200 OK\r\n") and ours[0].endswith(b'\r\n\r\n{"a":"bcd"}')


def test_streams_keep_gunicorns_writes():
    """An SSE stream's head goes out at its first (possibly empty) write, as before."""
    raw, status, headers, chunks = CASES["chunked stream"]
    assert respond(OneWriteResponse, raw, status, headers, chunks) == respond(
        gwsgi.Response, raw, status, headers, chunks)


def test_date_is_gunicorns_text_of_this_second():
    import time

    from gunicorn import util

    from pushjobs.server.gunicorn_app import http_date_now

    for _ in range(3):
        before = util.http_date()
        ours = http_date_now()
        after = util.http_date()
        if before == after:  # not across a second boundary
            assert ours == before
            return
        time.sleep(0.01)
    raise AssertionError("the clock crossed a second boundary three times in a row")


def test_head_has_the_date_header_gunicorn_would_send():
    raw, status, headers, chunks = CASES["whole body, Content-Length"]
    req = parsed(raw)
    sock = Recorder()
    resp, _ = gwsgi.create(req, sock, PEER, "127.0.0.1:10003", Config(), response_class=OneWriteResponse)
    resp.start_response(status, headers)
    resp.write(chunks[0])
    head = sock.calls[0].split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    assert head[0] == "HTTP/1.1 200 OK"
    assert [h.split(":", 1)[0] for h in head[1:]] == ["Server", "Date", "Connection", "Content-Type",
                                                       "Content-Length"]
    assert head[2].endswith(" GMT") and head[3] == "Connection: keep-alive"
