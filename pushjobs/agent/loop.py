"""One selector loop for one or many node sessions (no gevent: the agent is a plain process).

Why a loop and not a thread per socket: ZeroMQ sockets are not thread-safe,
and the fleet simulator runs hundreds of node sessions in one process. So
every socket, timer and protocol decision of every session lives on ONE
thread, the loop's; other threads (job waiters, HTTP fetches) hand results
back with `call_soon_threadsafe`, which wakes the poller through a pipe.
Blocking work (the config GET, the facts PUT) runs in a small thread pool via
`run_in_executor` and never on the loop.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

import zmq

log = logging.getLogger(__name__)


class TimerHandle:
    __slots__ = ("when", "fn", "cancelled")

    def __init__(self, when: float, fn: Callable[[], None]):
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """Poller + timers + a thread-safe call queue; `run()` until `stop()`."""

    def __init__(self, context: Optional[zmq.Context] = None, *, workers: int = 4,
                 clock: Callable[[], float] = time.monotonic):
        self.context = context or zmq.Context.instance()
        self.clock = clock
        self._poller = zmq.Poller()
        self._readers: dict[Any, Callable[[], None]] = {}
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._calls: deque[Callable[[], None]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agent-io")
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    # --- scheduling ----------------------------------------------------------
    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        self._calls.append(fn)
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # pipe full (already awake) or closed (shutting down)

    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        """Loop thread only."""
        handle = TimerHandle(self.clock() + max(0.0, delay), fn)
        heapq.heappush(self._timers, (handle.when, next(self._seq), handle))
        return handle

    def run_in_executor(self, fn: Callable[[], Any],
                        done: Callable[[Any, Optional[BaseException]], None]) -> None:
        """Run `fn` on a worker thread; `done(result, exc)` then runs on the loop."""
        def work() -> None:
            try:
                result, exc = fn(), None
            except BaseException as e:  # noqa: BLE001 - handed back to the loop
                result, exc = None, e
            self.call_soon_threadsafe(lambda: done(result, exc))

        if self._closed:
            return
        self._executor.submit(work)

    # --- sockets -------------------------------------------------------------
    def add_reader(self, sock: Any, callback: Callable[[], None]) -> None:
        self._readers[sock] = callback
        self._poller.register(sock, zmq.POLLIN)

    def remove_reader(self, sock: Any) -> None:
        if self._readers.pop(sock, None) is not None:
            try:
                self._poller.unregister(sock)
            except KeyError:
                pass

    # --- running ---------------------------------------------------------------
    def stop(self) -> None:
        self._stopping.set()
        self.call_soon_threadsafe(lambda: None)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        self._thread = threading.current_thread()
        while not self._stopping.is_set():
            self._run_once()

    def start_thread(self, name: str = "agent-loop") -> threading.Thread:
        t = threading.Thread(target=self.run, name=name, daemon=True)
        t.start()
        return t

    def _run_once(self) -> None:
        timeout_ms = 1000
        if self._calls:
            timeout_ms = 0
        elif self._timers:
            timeout_ms = max(0, min(1000, int((self._timers[0][0] - self.clock()) * 1000) + 1))
        try:
            events = dict(self._poller.poll(timeout_ms))
        except zmq.ZMQError as exc:
            if exc.errno == zmq.ETERM:
                self._stopping.set()
                return
            raise
        if self._wake_r in events:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        for sock, callback in list(self._readers.items()):
            if sock in events and sock in self._readers:
                self._guard(callback)
        while self._calls:
            self._guard(self._calls.popleft())
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, handle = heapq.heappop(self._timers)
            if not handle.cancelled:
                self._guard(handle.fn)

    @staticmethod
    def _guard(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # one bad callback must not stop every session
            log.exception("unhandled error in agent loop callback")

    def close(self) -> None:
        """After `run()` returned: free the pipe and the worker threads."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
