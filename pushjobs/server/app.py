"""The Flask application of push-jobs-server: `create_app(settings, runtime)`.

No import-time globals: everything a request needs hangs off
`app.extensions["pushjobs"]` (an `AppState`), so tests and tools can build as
many apps as they like in one process. The gunicorn worker (main.py) builds
exactly one, next to the one `Runtime` it starts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

from flask import Flask

from pushjobs.server.settings import Settings

log = logging.getLogger(__name__)

SERVER_PUBLIC_KEY_FILE = "pushy_pub.pem"
SERVER_PRIVATE_KEY_FILE = "pushy_priv.pem"


@dataclass
class AppState:
    """What the blueprints need: settings, the live server and the server's public key PEM."""

    settings: Settings
    runtime: Any  # pushjobs.server.runtime.Runtime
    server_public_key_pem: str


def server_public_key_pem(settings: Settings, runtime: Any = None) -> str:
    """The PEM advertised in the config handshake: data_dir/pushy_pub.pem, else derived
    from the runtime's private key (so a server that only has the private key works)."""
    path = os.path.join(settings.data_dir, SERVER_PUBLIC_KEY_FILE)
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read()
    except OSError:
        key = getattr(runtime, "server_private_key", None)
        if key is None:
            log.warning("server public key %s not found and no private key loaded", path)
            return ""
        from pushjobs.protocol.keys import public_key_pem

        return public_key_pem(key)


def create_app(settings: Settings, runtime: Any, *, public_key_pem: Optional[str] = None) -> Flask:
    """Build the REST API around `runtime` (see pushjobs.server.runtime.Runtime)."""
    from pushjobs.server import store
    from pushjobs.server.api import register_blueprints
    from pushjobs.server.api.errors import register_error_handlers

    app = Flask("pushjobs.server", static_folder=None)
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # keep the original's key order in documents
    app.json.compact = True
    # `…/pushy/jobs/` is `…/pushy/jobs`, as in the original (webmachine's dispatch ignores
    # a trailing slash; the pedant suite GETs and POSTs `jobs/` and `node_states/`). Chef
    # signing drops the trailing slash too, so the signature covers the same path.
    app.url_map.strict_slashes = False
    app.extensions["pushjobs"] = AppState(
        settings=settings,
        runtime=runtime,
        server_public_key_pem=public_key_pem if public_key_pem is not None
        else server_public_key_pem(settings, runtime),
    )

    # A request takes a pooled connection at its first query (peewee connects
    # on demand; `_status` and node_states never touch the database) and gives
    # it back here. One per request greenlet: never shared while in use.
    @app.teardown_request
    def _db_close(exc: Optional[BaseException]) -> None:
        if store.db.obj is not None and not store.db.is_closed():
            store.db.close()

    register_error_handlers(app)
    register_blueprints(app)
    return app
