"""push-jobs-server's process model: gunicorn, exactly ONE gevent worker, hooks.

Why one worker: node liveness, session keys, the ZAP allow-list and the job
state machines live in memory (PROTOCOL.md §15: heartbeats never touch the
database), and the ZeroMQ PUB/ROUTER sockets can be bound by one process
only. So the master only supervises; the worker holds everything:

* `load()` (in the worker: `preload_app` stays off) builds the `Runtime` and
  the Flask app around it;
* `post_worker_init` makes psycopg2 cooperative (PostgreSQL), opens the store
  and calls `runtime.start()` (binds ZeroMQ, starts timers) — never in the
  master, whose forks would share the sockets;
* a watcher greenlet calls `runtime.stop()` as soon as the worker is told to
  exit (SIGTERM on the master), so open SSE streams end and the worker
  finishes well within `graceful_timeout`; `worker_exit` makes sure it ran
  and closes the store;
* the worker class is `PushJobsGeventWorker`, gunicorn's gevent worker with a
  prompt stop: it reacts to SIGTERM at once and closes idle keep-alive
  connections instead of waiting for their timers (a stop takes well under a
  second instead of 2-5 s; requests in progress still finish).

SIGHUP: gunicorn re-reads the configuration (we re-read the settings file)
and replaces the worker. Because the new worker must bind the same ZeroMQ
ports, `on_reload` stops the old worker *before* the new one is spawned: a
reload is a short restart of the worker (node FSMs are rebuilt by the nodes'
next heartbeats; jobs in flight are handled as after a crash, §9.7). If the
settings file is invalid, SIGHUP only logs why and leaves the running worker
alone (`_PushJobsArbiter`).
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import socket
import sys
import time
from datetime import datetime
from functools import partial
from typing import Any, Callable, Optional

import gevent
from gevent.event import Event as GEvent
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn import util as gutil
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.http import wsgi as gwsgi
from gunicorn.sock import ssl_context
from gunicorn.workers.ggevent import GeventWorker

from pushjobs.server.settings import Settings

log = logging.getLogger("pushjobs.server")

GRACEFUL_TIMEOUT = 5  # s the master waits for the worker on SIGTERM/SIGHUP (busy requests only)
DRAIN_POLL = 0.05  # s between checks for finished connections while stopping
WORKER_CONNECTIONS = 2000  # concurrent HTTP connections (SSE streams count)
KEEPALIVE = 2  # s an idle keep-alive connection stays open


class PushJobsApplication(BaseApplication):
    """A gunicorn application whose configuration comes from our Settings, not gunicorn's CLI."""

    def __init__(self, settings: Settings, server_private_key: Any,
                 reload_settings: Optional[Callable[[], Settings]] = None):
        self.settings = settings
        self.server_private_key = server_private_key
        self.reload_settings = reload_settings
        self.runtime: Any = None
        self._stopped = False
        self._loaded_once = False
        super().__init__()

    # --- configuration (master) ------------------------------------------
    def run(self) -> None:
        """BaseApplication.run with our arbiter (SIGHUP with bad settings keeps the worker)."""
        try:
            _PushJobsArbiter(self).run()
        except RuntimeError as exc:
            sys.stderr.write(f"push-jobs-server: {exc}\n")
            sys.stderr.flush()
            sys.exit(1)

    def prepare_reload(self) -> bool:
        """Read the settings file for a SIGHUP; False (and the reason logged) if it is invalid.

        Checked before gunicorn's reload so that a typo in the settings file does
        not cost a worker restart (a new incarnation: jobs in flight would crash)."""
        if self.reload_settings is None:
            return True
        try:
            self._next_settings = self.reload_settings()
        except Exception as exc:  # noqa: BLE001 - keep serving with the old settings and worker
            log.error("settings not reloaded, keeping the old ones and the running worker: %s", exc)
            return False
        return True

    def load_config(self) -> None:
        pending, self._next_settings = getattr(self, "_next_settings", None), None
        if self._loaded_once and pending is not None:
            self.settings = pending
            log.info("settings reloaded")
        elif self._loaded_once and self.reload_settings is not None:
            try:
                self.settings = self.reload_settings()
                log.info("settings reloaded")
            except Exception as exc:  # noqa: BLE001 - keep serving with the old settings
                log.error("settings not reloaded, keeping the old ones: %s", exc)
        self._loaded_once = True
        s = self.settings
        level = str(s.log_level).lower()
        options = {
            "bind": [f"{_bracket(s.api_listen_address)}:{s.api_port}"],
            "workers": 1,
            "worker_class": PushJobsGeventWorker,
            "worker_connections": WORKER_CONNECTIONS,
            "preload_app": False,
            "graceful_timeout": GRACEFUL_TIMEOUT,
            "timeout": 30,
            # idle keep-alive connections are closed at shutdown (PushJobsGeventWorker); short anyway
            "keepalive": KEEPALIVE,
            "proc_name": "push-jobs-server",
            "loglevel": level if level in ("debug", "info", "warning", "error", "critical") else "info",
            "errorlog": "-",
            "accesslog": "-" if level == "debug" else None,
            "post_worker_init": self._post_worker_init,
            "worker_exit": self._worker_exit,
            "on_reload": _stop_workers_before_reload,
        }
        if s.ssl_certificate and s.ssl_certificate_key:
            options["certfile"] = s.ssl_certificate
            options["keyfile"] = s.ssl_certificate_key
        # gunicorn ≥ 24's control socket lives at one path per user (~/.gunicorn): several
        # servers on a host would fight over it, and we do not use it
        if "control_socket_disable" in self.cfg.settings:
            options["control_socket_disable"] = True
        for key, value in options.items():
            self.cfg.set(key, value)

    # --- the worker -------------------------------------------------------
    def load(self) -> Any:
        """Runs in the worker: the one Runtime and the Flask app around it."""
        from pushjobs.server.app import create_app
        from pushjobs.server.runtime import Runtime

        self._stopped = False
        self.runtime = Runtime(self.settings, server_private_key=self.server_private_key)
        return create_app(self.settings, self.runtime)

    def _post_worker_init(self, worker: Any) -> None:
        from pushjobs.server import store

        url = self.settings.resolved_database_url()
        if store.is_postgres_url(url):
            store.make_cooperative()
        store.open_database(self.settings, migrate=False)
        try:
            self.runtime.start()
        except Exception as exc:
            # e.g. a ZeroMQ port in use: the worker cannot boot and the master exits (status 3)
            log.error("cannot start the push-jobs services: %s", exc)
            raise
        log.info("worker %d serving the API on %s:%d (incarnation %s)", os.getpid(),
                 self.settings.api_listen_address, self.settings.api_port,
                 getattr(self.runtime, "incarnation_id", "?"))
        import gevent

        gevent.spawn(self._stop_when_told, worker)

    def _stop_when_told(self, worker: Any) -> None:
        import gevent

        while worker.alive:
            gevent.sleep(0.1)
        log.info("worker %d shutting down", os.getpid())
        self._stop_runtime()

    def _stop_runtime(self) -> None:
        if self._stopped or self.runtime is None:
            return
        self._stopped = True
        try:
            self.runtime.stop()
        except Exception:  # noqa: BLE001 - shutting down anyway
            log.exception("runtime.stop failed")

    def _worker_exit(self, server: Any, worker: Any) -> None:
        from pushjobs.server import store

        self._stop_runtime()
        try:
            store.close_database()
        except Exception:  # noqa: BLE001
            log.exception("closing the database failed")


class _HeadBuffer:
    """Stands in for the socket while gunicorn's `send_headers` writes the response head."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += data


_date_cache: tuple[int, str] = (-1, "")


def http_date_now() -> str:
    """gunicorn's `util.http_date()` (RFC 7231 Date), computed once per second.

    The Date header has one-second resolution (`formatdate` drops the
    fraction), so the text of the current second is reused: `email.utils`
    formatting showed up at ~2 % of a reconnect storm's worker CPU."""
    global _date_cache
    now = time.time()
    second = int(now)
    cached = _date_cache
    if cached[0] != second:
        cached = _date_cache = (second, gutil.http_date(second))
    return cached[1]


class OneWriteResponse(gwsgi.Response):
    """gunicorn's HTTP/1 response, with the head and a whole body in ONE sendall.

    gunicorn writes the head and then the body: two sendall calls, two TCP
    segments, two trips through gevent, for every API answer (a config
    handshake storm is ~10,000 small answers, #8). When the first write
    carries the whole announced body (Content-Length, not chunked, a body
    allowed), the head that gunicorn builds (`send_headers`, unchanged; only
    the Date text is reused within a second) is sent with it. Anything else — streams (SSE), chunked, HEAD/204/304,
    partial or oversized bodies — takes gunicorn's own path, byte for byte."""

    def default_headers(self) -> list[str]:
        """gunicorn 27's `Response.default_headers`, with the Date text of the current second."""
        if self.upgrade:
            connection = "upgrade"
        elif self.should_close():
            connection = "close"
        else:
            connection = "keep-alive"
        headers = [
            "HTTP/%s.%s %s\r\n" % (self.req.version[0], self.req.version[1], self.status),
            "Server: %s\r\n" % self.version,
            "Date: %s\r\n" % http_date_now(),
            "Connection: %s\r\n" % connection,
        ]
        if self.chunked:
            headers.append("Transfer-Encoding: chunked\r\n")
        return headers

    def write(self, arg: bytes) -> None:
        if (not self.headers_sent and type(arg) is bytes and arg and not self.chunked
                and not self._omits_body and self.response_length is not None
                and len(arg) <= self.response_length):
            sock, head = self.sock, _HeadBuffer()
            self.sock = head
            try:
                self.send_headers()
            finally:
                self.sock = sock
            self.sent += len(arg)
            gutil.write(sock, head.data + arg)
            return
        super().write(arg)


#: gunicorn's `wsgi.create` takes the response class (gunicorn ≥ 23); else its own is used.
_CREATE_TAKES_RESPONSE_CLASS = "response_class" in inspect.signature(gwsgi.create).parameters


class PushJobsGeventWorker(GeventWorker):
    """gunicorn's gevent worker, with a prompt graceful stop.

    Why: the stock worker notices SIGTERM only at its next 1 s tick, then
    waits for *every* connection to end, re-checking once a second; an idle
    keep-alive connection ends only when its `keepalive` timer runs out. A
    stop took 2-5 s, and so did every restart and SIGHUP (and every
    end-to-end test). Here:

    * SIGTERM wakes the main loop at once (an event instead of a 1 s sleep);
    * the listening sockets close, then connections *between* requests (idle
      keep-alive, or open but silent) are shut down: nothing is lost, an HTTP
      client must expect a keep-alive connection to close;
    * a request in progress finishes normally (its connection then closes, as
      gunicorn does once the worker is stopping), within `graceful_timeout`;
      SSE streams end because the watcher greenlet stops the runtime, which
      finishes every feed;
    * the drain is checked every `DRAIN_POLL` s, not every second.

    Only the plain gevent StreamServer path is used (the `gevent` worker
    class, HTTP/1.1 with optional TLS), as `load_config` configures it."""

    def run(self) -> None:
        self._stopping = getattr(self, "_stopping", None) or GEvent()
        self._connections: dict[Any, bool] = {}  # client socket -> busy with a request
        ssl_args = {"ssl_context": ssl_context(self.cfg)} if self.cfg.is_ssl else {}
        servers = []
        for s in self.sockets:
            s.setblocking(1)
            server = StreamServer(s, handle=partial(self.handle, s), spawn=Pool(self.worker_connections),
                                  **ssl_args)
            server.start()
            servers.append(server)

        while self.alive:
            self.notify()
            self._stopping.wait(1.0)

        try:
            for server in servers:
                server.close()  # stop accepting
            deadline = time.monotonic() + self.cfg.graceful_timeout
            while time.monotonic() < deadline:
                self.close_idle_connections()
                if all(server.pool.free_count() == server.pool.size for server in servers):
                    return
                self.notify()
                gevent.sleep(DRAIN_POLL)
            self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
            for server in servers:
                server.stop(timeout=1)
        except Exception:  # noqa: BLE001 - exiting anyway, as gunicorn's own worker does
            log.exception("error while draining connections")

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)  # alive = False
        if getattr(self, "_stopping", None) is None:
            self._stopping = GEvent()
        self._stopping.set()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        self._connections[client] = False
        try:
            super().handle(listener, client, addr)
        finally:
            self._connections.pop(client, None)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        self._connections[sock] = True
        try:
            if not _CREATE_TAKES_RESPONSE_CLASS:
                return super().handle_request(listener_name, req, sock, addr)
            try:
                return self._handle_request(listener_name, req, sock, addr)
            except (gevent.GreenletExit, SystemExit):  # as GeventWorker.handle_request
                return None
        finally:
            if sock in self._connections:
                self._connections[sock] = False

    def _handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
        """gunicorn 27's `AsyncWorker.handle_request`, step for step, with `OneWriteResponse`.

        Kept the same on purpose (hooks, max_requests, keep-alive, access log,
        the error paths); the only change is the response class."""
        request_start = datetime.now()
        environ: dict = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            resp, environ = gwsgi.create(req, sock, addr, listener_name, self.cfg,
                                         response_class=OneWriteResponse)
            environ["wsgi.multithread"] = True
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
            if not self.alive or not self.cfg.keepalive:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            if self.is_already_handled(respiter):
                return False
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                request_time = datetime.now() - request_start
                self.log.access(resp, req, environ, request_time)
                if hasattr(respiter, "close"):
                    respiter.close()
            if resp.should_close():
                raise StopIteration()
        except StopIteration:
            raise
        except OSError:
            gutil.reraise(*sys.exc_info())
        except (Exception, SystemExit):
            if resp and resp.headers_sent:
                self.log.exception("Error handling request")
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                except OSError:
                    pass
                raise StopIteration()
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:  # noqa: BLE001 - as gunicorn: a hook's failure is only logged
                self.log.exception("Exception in post_request hook")
        return True

    def close_idle_connections(self) -> int:
        """Shut down the connections that are between requests; returns how many.

        shutdown() (not close()) on a duplicate of the descriptor: the handler
        greenlet blocked reading the next request sees end-of-file and closes
        the socket itself, for plain and TLS sockets alike."""
        n = 0
        for client, busy in list(self._connections.items()):
            if busy:
                continue
            try:
                with socket.fromfd(client.fileno(), client.family, socket.SOCK_STREAM) as dup:
                    dup.shutdown(socket.SHUT_RDWR)
                n += 1
            except (OSError, ValueError):
                pass  # already closed
            self._connections.pop(client, None)
        return n


class _PushJobsArbiter(Arbiter):
    """gunicorn's arbiter, except that SIGHUP with an invalid settings file changes nothing."""

    def handle_hup(self) -> None:
        if not self.app.prepare_reload():
            return
        super().handle_hup()


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _stop_workers_before_reload(arbiter: Any) -> None:
    """gunicorn spawns the new worker before retiring the old; we cannot (ZeroMQ ports)."""
    pids = list(arbiter.WORKERS)
    for pid in pids:
        arbiter.kill_worker(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACEFUL_TIMEOUT + 2
    while arbiter.WORKERS and time.monotonic() < deadline:
        arbiter.reap_workers()
        time.sleep(0.05)
    for pid in list(arbiter.WORKERS):
        arbiter.kill_worker(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2
    while arbiter.WORKERS and time.monotonic() < deadline:
        arbiter.reap_workers()
        time.sleep(0.05)
