"""The live server inside the one gevent worker: what the REST API asks of it.

The API (pushjobs.server.api) talks to the running server only through a
`Runtime`. `create_app(settings, runtime)` receives it; the gunicorn
post-worker-init hook calls `runtime.start()` (broker, heartbeats, timers)
and the worker-exit hook `runtime.stop()`.

Inside: the broker (pushjobs.server.broker: PUB heartbeat, ROUTER, ZAP),
the node registry (nodes.py: node FSMs, liveness), the job coordinator
(jobs.py: job FSMs, persistence) and the SSE histories (events.py). All of
them are greenlets of the one gevent worker; the API calls into them
directly (no locks are needed between greenlets for in-memory state, the
only lock guards the session keys and the ZAP allow-list, which the config
endpoint may touch from any greenlet or thread).

`drop_counts` counts the command-socket messages dropped by the receive
pipeline, by reason (`bad_signature`, `stale`, `body_too_big`, ...), for the
metrics endpoint.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import uuid
from collections import Counter
from typing import Any, Optional

from pushjobs.server.settings import Settings

log = logging.getLogger(__name__)

SERVER_PRIVATE_KEY_FILE = "pushy_priv.pem"
ZAP_PURGE_INTERVAL = 5.0  # s (§3.4)


def _greenlet_local_connections(database: Any) -> None:
    """Give every greenlet its own database connection.

    peewee keeps "the current connection" in a `threading.local` subclass
    defined when peewee is imported; the gunicorn master imports it before
    gevent patches `threading`, so all greenlets of the worker would share
    one connection. With PostgreSQL (cooperative psycopg2) a request could
    then close or interleave with the job coordinator's writer in the middle
    of its transaction. Swapping the state for a greenlet-local one fixes
    that for every user of `store.db` (the API's per-request connections
    keep working: each request is a greenlet)."""
    import peewee
    from gevent.local import local as greenlet_local

    state = getattr(database, "_state", None)
    if state is None or isinstance(state, greenlet_local):
        return
    if not database.is_closed():
        database.close()

    class _GreenletConnectionLocal(peewee._ConnectionState, greenlet_local):
        pass

    database._state = _GreenletConnectionLocal()


def _freeze_heap() -> None:
    """Move everything allocated so far (modules, the Flask app, settings,
    the store) out of the garbage collector's sight: the worker's long-lived
    start-up objects are never garbage, and without this every full
    collection walks them again (gc.freeze, Python >= 3.7)."""
    gc.freeze()


class Runtime:
    def __init__(self, settings: Settings, server_private_key=None):
        self.settings = settings
        self.incarnation_id = str(uuid.uuid4())
        self.server_private_key = server_private_key  # cryptography RSAPrivateKey
        self.curve_public_key: Optional[str] = None  # Z85, None when curve is disabled
        self.curve_secret_key: Optional[str] = None
        if not settings.disable_curve_encryption:
            # A fresh pair per server start (§3.3); made here so that the config
            # endpoint can hand out the public key before start() runs.
            from pushjobs.protocol.keys import curve_keypair

            self.curve_public_key, self.curve_secret_key = curve_keypair()
        self._session_keys: dict[tuple[str, str], bytes] = {}
        self._zap_allow: dict[bytes, float] = {}
        self._lock = threading.Lock()
        self.drop_counts: Counter = Counter()
        self.started = False
        self.broker: Any = None
        self.registry: Any = None
        self.jobs: Any = None
        self.bus: Any = None
        self._greenlets: list = []

    # --- lifecycle -------------------------------------------------------
    def start(self) -> None:
        """Bind sockets, start heartbeats, scanners and the job coordinator.

        Order matters: crash recovery before any job can start; the ZAP
        handler before the ROUTER binds (inside Broker.start)."""
        if self.started:
            return
        import gevent

        from pushjobs.server import store
        from pushjobs.server.broker import Broker
        from pushjobs.server.events import EventBus
        from pushjobs.server.jobs import JobCoordinator
        from pushjobs.server.nodes import NodeRegistry

        s = self.settings
        if self.server_private_key is None:
            from pushjobs.protocol.keys import load_private_key

            path = os.path.join(s.data_dir, SERVER_PRIVATE_KEY_FILE)
            with open(path, "rb") as fh:
                self.server_private_key = load_private_key(fh.read())
        self.bus = EventBus(float(s.org_feed_expiration))
        self.registry = NodeRegistry(
            settings=s,
            session_key_for=self._existing_session_key,
            send_frames=self._send_frames,
            drop_counts=self.drop_counts,
        )
        self.jobs = JobCoordinator(settings=s, registry=self.registry, bus=self.bus, server_name=s.server_name)
        self.registry.jobs = self.jobs
        if store.db.obj is not None:
            _greenlet_local_connections(store.db.obj)
            store.db.connect(reuse_if_open=True)
            try:
                self.jobs.recover()
            finally:
                store.db.close()
        else:
            log.warning("no database bound: crash recovery skipped")
        self.jobs.start()
        self.registry.start()
        self.broker = Broker(
            listen_address=s.zeromq_listen_address,
            heartbeat_port=s.server_heartbeat_port,
            command_port=s.command_port,
            heartbeat_interval=s.heartbeat_interval / 1000.0,
            server_private_key=self.server_private_key,
            incarnation_id=self.incarnation_id,
            on_frames=self.registry.on_frames,
            key_allowed=self.curve_key_allowed,
            curve_secret_key=None if s.disable_curve_encryption else self.curve_secret_key,
            # far above any valid message; the pipeline's body cap is what counts
            max_frame_bytes=max(4 * s.max_body_size, 1 << 20),
            on_backlog=self.registry.lag.set_backlog,
        )
        self.broker.start()
        self._greenlets.append(gevent.spawn(self._zap_purge_loop))
        self.started = True
        _freeze_heap()
        log.info("runtime started (incarnation %s)", self.incarnation_id)

    def stop(self) -> None:
        """Close sockets; jobs in flight are left for crash recovery at next start."""
        if not self.started:
            return
        import gevent

        gevent.killall(self._greenlets, block=False)
        self._greenlets.clear()
        if self.bus is not None:
            self.bus.close_all()
        try:
            if self.broker is not None:
                self.broker.stop()
        finally:
            if self.registry is not None:
                self.registry.stop()
            if self.jobs is not None:
                self.jobs.stop()  # flushes pending database writes
            self.started = False
            log.info("runtime stopped (incarnation %s)", self.incarnation_id)

    def _send_frames(self, routing_id: bytes, frames: list[bytes]) -> None:
        if self.broker is not None:
            self.broker.send(routing_id, frames)

    def _zap_purge_loop(self) -> None:
        import gevent

        while True:
            gevent.sleep(ZAP_PURGE_INTERVAL)
            self.purge_curve_keys()

    # --- config handshake ------------------------------------------------
    def session_key(self, org_name: str, node_name: str) -> bytes:
        """The 32-byte HMAC key of (org, node); created on first use, kept until restart."""
        k = (org_name, node_name)
        with self._lock:
            key = self._session_keys.get(k)
            if key is None:
                key = self._session_keys[k] = os.urandom(32)
            return key

    def _existing_session_key(self, org_name: str, node_name: str) -> Optional[bytes]:
        """The key of (org, node) only if a config request created it: a message from
        a node that never did the handshake cannot verify and creates no state (S7).

        Called for every command message (receive and send), so no lock: one
        dict read is atomic under the GIL and sees any key a writer (holding
        `_lock`) stored before it, so a new key is used by the very next
        message. The lock cost ~8 % of the server's CPU at 5,000 nodes."""
        return self._session_keys.get((org_name, node_name))

    def allow_curve_key(self, raw_key: bytes, now: Optional[float] = None) -> None:
        """Admit a client's 32-byte CurveZMQ public key for `zap_key_lifetime` seconds."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._zap_allow[raw_key] = now + self.settings.zap_key_lifetime

    def curve_key_allowed(self, raw_key: bytes, now: Optional[float] = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            exp = self._zap_allow.get(raw_key)
            return exp is not None and exp > now

    def purge_curve_keys(self, now: Optional[float] = None) -> int:
        """Forget expired ZAP entries (every 5 s, §3.4); returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            expired = [k for k, exp in self._zap_allow.items() if exp <= now]
            for k in expired:
                del self._zap_allow[k]
        return len(expired)

    # --- node states -----------------------------------------------------
    def node_state(self, org_name: str, node_name: str) -> dict:
        """{"node_name", "status": online|offline, "availability": available|unavailable}"""
        avail = self.registry.availability((org_name, node_name)) if self.registry is not None else None
        if avail is None:
            return {"node_name": node_name, "status": "offline", "availability": "unavailable"}
        return {"node_name": node_name, "status": "online", "availability": avail}

    def node_states(self, org_name: str) -> list[dict]:
        """One {"node_name", "availability"} per node with a live FSM in the org."""
        if self.registry is None:
            return []
        return [
            {"node_name": e.fsm.node, "availability": "available" if e.fsm.available else "unavailable"}
            for e in self.registry.nodes_of_org(org_name)
        ]

    def node_fsm_count(self) -> int:
        return len(self.registry.entries) if self.registry is not None else 0

    # --- jobs ------------------------------------------------------------
    def start_job(self, job_id: str) -> None:
        """The job and its job nodes are stored with status `new`: run it."""
        if self.jobs is None:
            log.warning("job %s stored but the runtime is not started: it stays new", job_id)
            return
        self.jobs.start_job(job_id)

    def abort_job(self, job_id: str, requestor: str) -> bool:
        """Abort a live job; False when the job is not live (already finished).

        Waits (bounded) for the resulting database writes, so that the API's
        answer already shows the job `aborted`."""
        if self.jobs is None:
            return False
        ok = self.jobs.abort_job(job_id, requestor)
        if ok:
            self.jobs.flush(5.0)
        return ok

    def live_job_ids(self) -> list[str]:
        return self.jobs.live_job_ids() if self.jobs is not None else []

    # --- for tests and the metrics endpoint -------------------------------
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued database write is applied."""
        return self.jobs.flush(timeout) if self.jobs is not None else True
