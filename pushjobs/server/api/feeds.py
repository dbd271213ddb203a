"""GET …/pushy/job_status_feed[/JOB] (and the seed's …/jobs_status_feed[/JOB]): SSE (§11).

Rules of this file:
* Read authorization as every read endpoint (`signed_request("read")`), then
  content negotiation: `Accept` must allow `text/event-stream` (else 406).
* Every database read happens before the stream starts; the connection is
  released before the first byte, so a reader that stays for an hour holds
  no database connection.
* Streams are gevent-friendly generators over per-subscriber gevent queues;
  the response is never buffered (`X-Accel-Buffering: no`, an empty first
  chunk pushes the headers out at once).
* Every event ends with a blank line, finite responses included (S2); the
  org feed replays oldest-first (S1).
"""

from __future__ import annotations

import logging
from typing import Iterator

from flask import Blueprint, Response, current_app, g, request, stream_with_context
from gevent.queue import Empty

from pushjobs.server.api.errors import error
from pushjobs.server.auth import signed_request
from pushjobs.server.events import make_event

log = logging.getLogger(__name__)

bp = Blueprint("feeds", __name__, url_prefix="/organizations/<org>/pushy")

EVENT_STREAM = "text/event-stream"
KEEPALIVE = ":keepalive\n"


def _require_event_stream() -> None:
    accept = request.headers.get("Accept")
    if not accept or request.accept_mimetypes[EVENT_STREAM] <= 0:
        raise error(406, "Accept: text/event-stream required")


def _stream(chunks: Iterator[str]) -> Response:
    from pushjobs.server import store

    # The stream outlives the view: give the connection back now (§ rules).
    if store.db.obj is not None and not store.db.is_closed():
        store.db.close()
    resp = Response(stream_with_context(chunks), status=200, content_type=EVENT_STREAM)
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


def _live(history: list, queue, keep_alive: float, on_close) -> Iterator[str]:
    """History, then live events until the end marker; keepalives while idle."""
    try:
        yield ""  # headers out now, even with nothing to say yet
        for ev in history:
            yield ev.wire
        if queue is None:
            return
        while True:
            try:
                ev = queue.get(timeout=keep_alive)
            except Empty:
                yield KEEPALIVE
                continue
            if ev is None:
                return
            yield ev.wire
    finally:
        if queue is not None:
            on_close(queue)


@bp.route("/job_status_feed/<job_id>", methods=["GET"])
@bp.route("/jobs_status_feed/<job_id>", methods=["GET"])
@signed_request("read", produces=None)  # negotiated below: text/event-stream
def job_feed(org: str, job_id: str) -> Response:
    state = current_app.extensions["pushjobs"]
    runtime = state.runtime
    keep_alive = float(state.settings.keep_alive_time)
    bus = getattr(runtime, "bus", None)
    live = getattr(getattr(runtime, "jobs", None), "live", {}).get(job_id)
    feed = bus.job_feed(job_id) if bus is not None else None
    if live is not None and feed is not None and live.org == org:
        _require_event_stream()
        history, queue = feed.subscribe(request.headers.get("Last-Event-ID"))
        return _stream(_live(history, queue, keep_alive, feed.unsubscribe))
    # Not in memory (finished and no longer lingering, or a previous server): summary.
    from pushjobs.server.api.jobs import find_job, job_detail

    job = find_job(g.requestor.org_id, job_id)  # 404 when unknown
    _require_event_stream()
    ev = make_event("summary", "job-1", _now(), job_detail(job).items())
    return _stream(iter(["", ev.wire]))


@bp.route("/job_status_feed", methods=["GET"])
@bp.route("/jobs_status_feed", methods=["GET"])
@signed_request("read", produces=None)  # negotiated below: text/event-stream
def org_feed(org: str) -> Response:
    state = current_app.extensions["pushjobs"]
    runtime = state.runtime
    _require_event_stream()
    bus = getattr(runtime, "bus", None)
    if bus is None:
        raise error(503, "server runtime not started")
    feed = bus.org_feed(org)
    history, queue = feed.subscribe(request.headers.get("Last-Event-ID"))
    return _stream(_live(history, queue, float(state.settings.keep_alive_time), feed.unsubscribe))


def _now() -> float:
    import time

    return time.time()
