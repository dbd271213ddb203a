"""SSE histories: one feed per live job, one feed per organization (§11).

Rules of this file:
* Everything here runs in the single gevent worker; methods never yield
  between taking a history snapshot and registering a subscriber, so a
  subscription is atomic with its snapshot (§11.4: no gap, no duplicate).
* A subscriber is a `gevent.queue.Queue`; `None` in the queue means "the
  stream is over" (the job finished).
* Events are stored already stamped (`timestamp` first in the data object)
  and serialized once: many readers cost one `json.dumps` per event.
* No database access: the job coordinator persists events (the audit trail)
  and the feeds blueprint builds the `summary` from the database.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from gevent.queue import Queue

log = logging.getLogger(__name__)

START_OF_HISTORY_ID = "start_id"


#: (second, its "YYYY-MM-DD HH:MM:SS"), replaced as a whole: a fan-out stamps thousands of events a second
_last_second: tuple[int, str] = (-1, "")


def sse_timestamp(t: float) -> str:
    """`YYYY-MM-DD HH:MM:SS.ffffffZ` in UTC (§11.2)."""
    secs = int(t)
    micros = int(round((t - secs) * 1_000_000))
    if micros >= 1_000_000:
        secs += 1
        micros -= 1_000_000
    global _last_second
    cached = _last_second
    if cached[0] != secs:
        cached = _last_second = (secs, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs)))
    return cached[1] + ".%06dZ" % micros


def format_event(name: str, event_id: str, data_json: str) -> str:
    """One SSE event, terminated by a blank line (S2: even in finite responses)."""
    return f"event: {name}\nid: {event_id}\ndata: {data_json}\n\n"


@dataclass(frozen=True)
class Event:
    name: str
    id: str
    data: dict
    wire: str  # the serialized event, "event: ..\nid: ..\ndata: ..\n\n"
    at: float  # wall-clock time of the event (monotonic ordering, pruning)
    data_json: str = ""  # `data` serialized (the audit trail stores it: one json.dumps per event)


def make_event(name: str, event_id: str, t: float, fields: Iterable[tuple[str, Any]]) -> Event:
    data: dict = {"timestamp": sse_timestamp(t)}
    for k, v in fields:
        data[k] = v
    data_json = json.dumps(data, separators=(",", ":"))
    return Event(name, event_id, data, format_event(name, event_id, data_json), t, data_json)


@dataclass
class JobFeed:
    """The event history of one live (or lingering) job and its subscribers."""

    job_id: str
    events: list[Event] = field(default_factory=list)
    subscribers: list[Queue] = field(default_factory=list)
    finished: bool = False
    _last_t: float = 0.0

    def append(self, name: str, fields: Iterable[tuple[str, Any]], now: Optional[float] = None) -> Event:
        t = time.time() if now is None else now
        # Timestamps strictly increase within a job feed (§11.4).
        if t <= self._last_t:
            t = self._last_t + 1e-6
        self._last_t = t
        ev = make_event(name, f"job-{len(self.events) + 1}", t, fields)
        self.events.append(ev)
        for q in self.subscribers:
            q.put(ev)
        return ev

    def finish(self) -> None:
        """The job is over: live subscribers get the end-of-stream marker."""
        self.finished = True
        for q in self.subscribers:
            q.put(None)
        self.subscribers.clear()

    def subscribe(self, last_event_id: Optional[str]) -> tuple[list[Event], Optional[Queue]]:
        """History after `last_event_id` (all when absent/unknown) and a live queue.

        The queue is None when the job already finished (finite response)."""
        history = self.events
        if last_event_id:
            for i, ev in enumerate(self.events):
                if ev.id == last_event_id:
                    history = self.events[i + 1 :]
                    break
        history = list(history)
        if self.finished:
            return history, None
        q: Queue = Queue()
        self.subscribers.append(q)
        return history, q

    def unsubscribe(self, q: Queue) -> None:
        try:
            self.subscribers.remove(q)
        except ValueError:
            pass


@dataclass
class OrgFeed:
    """`start` and `job_complete` of every job of one org, kept `expiration` seconds."""

    org_name: str
    expiration: float
    events: deque = field(default_factory=deque)
    subscribers: list[Queue] = field(default_factory=list)
    counter: int = 0

    def prune(self, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        limit = now - self.expiration
        while self.events and self.events[0].at < limit:
            self.events.popleft()

    def append(self, name: str, fields: Iterable[tuple[str, Any]], now: Optional[float] = None) -> Event:
        t = time.time() if now is None else now
        self.prune(t)
        self.counter += 1
        ev = make_event(name, f"org-{self.counter}", t, fields)
        self.events.append(ev)
        for q in self.subscribers:
            q.put(ev)
        return ev

    def subscribe(self, last_event_id: Optional[str], now: Optional[float] = None) -> tuple[list[Event], Queue]:
        """§11.5, oldest-first in every case (S1 fixed)."""
        t = time.time() if now is None else now
        self.prune(t)
        history: list[Event] = []
        if last_event_id:
            for i, ev in enumerate(self.events):
                if ev.id == last_event_id:
                    history = list(self.events)[i + 1 :]
                    break
            else:
                start = make_event("start_of_history", START_OF_HISTORY_ID, t - self.expiration, ())
                history = [start] + list(self.events)
        q: Queue = Queue()
        self.subscribers.append(q)
        return history, q

    def unsubscribe(self, q: Queue) -> None:
        try:
            self.subscribers.remove(q)
        except ValueError:
            pass


class EventBus:
    """All SSE histories of this server incarnation."""

    def __init__(self, org_feed_expiration: float):
        self.org_feed_expiration = org_feed_expiration
        self.job_feeds: dict[str, JobFeed] = {}
        self.org_feeds: dict[str, OrgFeed] = {}

    def job_feed(self, job_id: str) -> Optional[JobFeed]:
        return self.job_feeds.get(job_id)

    def open_job_feed(self, job_id: str) -> JobFeed:
        feed = self.job_feeds.get(job_id)
        if feed is None:
            feed = self.job_feeds[job_id] = JobFeed(job_id)
        return feed

    def close_job_feed(self, job_id: str) -> None:
        """The job stopped lingering: later readers get the `summary` instead."""
        feed = self.job_feeds.pop(job_id, None)
        if feed is not None and not feed.finished:
            feed.finish()

    def close_all(self) -> None:
        """Server shutdown: every open stream ends (the worker must exit promptly)."""
        for feed in self.job_feeds.values():
            for q in feed.subscribers:
                q.put(None)
            feed.subscribers.clear()
        for org in self.org_feeds.values():
            for q in org.subscribers:
                q.put(None)
            org.subscribers.clear()

    def org_feed(self, org_name: str) -> OrgFeed:
        feed = self.org_feeds.get(org_name)
        if feed is None:
            feed = self.org_feeds[org_name] = OrgFeed(org_name, self.org_feed_expiration)
        return feed
