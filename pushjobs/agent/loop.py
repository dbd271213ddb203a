"""One selector loop for one or many node sessions (no gevent: the agent is a plain process).

Why a loop and not a thread per socket: ZeroMQ sockets are not thread-safe,
and the fleet simulator runs hundreds of node sessions in one process. So
every socket, timer and protocol decision of every session lives on ONE
thread, the loop's; other threads (job waiters, HTTP fetches) hand results
back with `call_soon_threadsafe`, which wakes the poller through a pipe.
Blocking work (the config GET, the facts PUT) runs in a small thread pool via
`run_in_executor` and never on the loop.

Public extension points (the fleet simulator's; the agent uses the defaults):

* `poller`: how the loop waits for its readers (a `Poller`). The default,
  `ZmqPoller`, hands every reader to `zmq_poll` on every iteration: right for
  one agent with three sockets, O(sockets) per wake-up for thousands. A
  poller may also report objects that are not real sockets (stand-ins fed by
  something else), and is told after every send on a socket (`note_send`),
  since a send can swallow a ZeroMQ socket's input notification.
* `timer_grain`: timers are rounded up to this many seconds (0: exact), so
  thousands of timers fire in a few batches instead of one wake-up each.
* `take_lag()`: the worst timer lateness since the last call, to tell a slow
  loop from a slow peer.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Optional, Protocol

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


class Poller(Protocol):
    """How an `EventLoop` waits for input (a public extension point).

    The loop keeps the callbacks; a poller only knows the registered objects
    (ZeroMQ sockets, file descriptors, or stand-ins of the poller's own kind)
    and says which of them may be readable. Reporting one that is not is
    harmless: the callbacks drain with `NOBLOCK`.
    """

    def register(self, sock: Any) -> None:
        """Watch `sock` for input (it may have input queued already)."""

    def unregister(self, sock: Any) -> None:
        """Stop watching `sock` (unknown objects are ignored)."""

    def poll(self, timeout: float) -> Iterable[Any]:
        """Wait up to `timeout` s (0: do not block) and return the registered objects
        that may be readable, in no particular order."""

    def pending(self) -> bool:
        """True when `poll` has objects to report without waiting (the loop then does not block)."""

    def note_send(self, sock: Any) -> None:
        """A message was just sent on `sock`."""

    def close(self) -> None:
        """Free what the poller holds."""


class ZmqPoller:
    """The default `Poller`: `zmq_poll` over every registered socket and fd (level-triggered)."""

    def __init__(self) -> None:
        self._poller = zmq.Poller()

    def register(self, sock: Any) -> None:
        self._poller.register(sock, zmq.POLLIN)

    def unregister(self, sock: Any) -> None:
        try:
            self._poller.unregister(sock)
        except KeyError:
            pass

    def poll(self, timeout: float) -> Iterable[Any]:
        return [sock for sock, _ in self._poller.poll(int(timeout * 1000))]

    def pending(self) -> bool:
        return False

    def note_send(self, sock: Any) -> None:
        pass  # zmq_poll asks ZMQ_EVENTS itself: nothing can be missed

    def close(self) -> None:
        pass


class EventLoop:
    """Poller + timers + a thread-safe call queue; `run()` until `stop()`."""

    def __init__(self, context: Optional[zmq.Context] = None, *, workers: int = 4,
                 clock: Callable[[], float] = time.monotonic,
                 poller: Optional[Poller] = None, timer_grain: float = 0.0):
        self.context = context or zmq.Context.instance()
        self.clock = clock
        self.poller: Poller = poller if poller is not None else ZmqPoller()
        self.timer_grain = max(0.0, timer_grain)
        self.max_lag = 0.0  # the latest a timer fired (s) since `take_lag()`
        self._readers: dict[Any, Callable[[], None]] = {}
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._calls: deque[Callable[[], None]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._readers[self._wake_r] = self._drain_wake_pipe
        self.poller.register(self._wake_r)
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
        """Loop thread only. With a `timer_grain`, `fn` runs up to one grain later."""
        when = self.clock() + max(0.0, delay)
        grain = self.timer_grain
        if grain > 0:
            when = math.ceil(when / grain) * grain
        handle = TimerHandle(when, fn)
        heapq.heappush(self._timers, (when, next(self._seq), handle))
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
        """Call `callback` (on the loop) whenever `sock` may have input."""
        self._readers[sock] = callback
        self.poller.register(sock)

    def remove_reader(self, sock: Any) -> None:
        if self._readers.pop(sock, None) is not None:
            self.poller.unregister(sock)

    def note_send(self, sock: Any) -> None:
        """Tell the poller a message was just sent on `sock` (see `Poller.note_send`)."""
        self.poller.note_send(sock)

    def take_lag(self) -> float:
        """The largest timer lateness (s) since the last call (read from any thread)."""
        lag, self.max_lag = self.max_lag, 0.0
        return lag

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
        timeout = 1.0
        if self._calls or self.poller.pending():
            timeout = 0.0
        elif self._timers:
            # +1 ms: zmq_poll's millisecond timeout must not wake us just before the timer
            timeout = max(0.0, min(1.0, self._timers[0][0] - self.clock() + 0.001))
        try:
            ready = self.poller.poll(timeout)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.ETERM:
                self._stopping.set()
                return
            raise
        except InterruptedError:
            ready = ()
        readers = self._readers
        for sock in ready:
            callback = readers.get(sock)  # a callback may have removed a later reader
            if callback is not None:
                self._guard(callback)
        while self._calls:
            self._guard(self._calls.popleft())
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            when, _, handle = heapq.heappop(self._timers)
            if not handle.cancelled:
                if now - when > self.max_lag:
                    self.max_lag = now - when
                self._guard(handle.fn)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

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
        self.poller.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
