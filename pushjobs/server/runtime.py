"""The live server inside the one gevent worker: what the REST API asks of it.

The API (pushjobs.server.api) talks to the running server only through a
`Runtime`. `create_app(settings, runtime)` receives it; the gunicorn
post-worker-init hook calls `runtime.start()` (broker, heartbeats, timers)
and the worker-exit hook `runtime.stop()`.

This module starts as the interface plus the parts that need no sockets
(session keys, the ZAP allow-list, identity of this incarnation). The broker,
node registry and job coordinator (Server II) fill in the rest behind the
same methods.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Optional

from pushjobs.server.settings import Settings


class Runtime:
    def __init__(self, settings: Settings, server_private_key=None):
        self.settings = settings
        self.incarnation_id = str(uuid.uuid4())
        self.server_private_key = server_private_key  # cryptography RSAPrivateKey
        self.curve_public_key: Optional[str] = None  # Z85, None when curve is disabled
        self.curve_secret_key: Optional[str] = None
        self._session_keys: dict[tuple[str, str], bytes] = {}
        self._zap_allow: dict[bytes, float] = {}
        self._lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------
    def start(self) -> None:
        """Bind sockets, start heartbeats, scanners and the job coordinator."""

    def stop(self) -> None:
        """Close sockets; jobs in flight are left for crash recovery at next start."""

    # --- config handshake ------------------------------------------------
    def session_key(self, org_name: str, node_name: str) -> bytes:
        """The 32-byte HMAC key of (org, node); created on first use, kept until restart."""
        k = (org_name, node_name)
        with self._lock:
            key = self._session_keys.get(k)
            if key is None:
                key = self._session_keys[k] = os.urandom(32)
            return key

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

    # --- node states -----------------------------------------------------
    def node_state(self, org_name: str, node_name: str) -> dict:
        """{"node_name", "status": online|offline, "availability": available|unavailable}"""
        return {"node_name": node_name, "status": "offline", "availability": "unavailable"}

    def node_states(self, org_name: str) -> list[dict]:
        """One {"node_name", "availability"} per node with a live FSM in the org."""
        return []

    def node_fsm_count(self) -> int:
        return 0

    # --- jobs ------------------------------------------------------------
    def start_job(self, job_id: str) -> None:
        """The job and its job nodes are stored with status `new`: run it."""

    def abort_job(self, job_id: str, requestor: str) -> bool:
        """Abort a live job; False when the job is not live (already finished)."""
        return False

    def live_job_ids(self) -> list[str]:
        return []
