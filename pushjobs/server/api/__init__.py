"""REST API: one blueprint per resource (see docs/architecture.md).

`register_blueprints(app)` mounts the core resources and, when their modules
exist, the optional ones other work items add (`feeds`, `nodes`, `search`,
`metrics`), each exposing a Flask blueprint `bp`. A missing optional module is
skipped; any other import error is a bug and propagates.
"""

from __future__ import annotations

import importlib
import logging

from flask import Flask

log = logging.getLogger(__name__)

CORE = ("status", "config", "jobs", "output", "node_states")
OPTIONAL = ("feeds", "nodes", "search", "metrics")


def register_blueprints(app: Flask) -> list[str]:
    """Register every resource blueprint; returns the module names registered."""
    registered = []
    for name in CORE + OPTIONAL:
        modname = f"{__name__}.{name}"
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if name in OPTIONAL and exc.name == modname:
                log.debug("optional API module %s not present", modname)
                continue
            raise
        app.register_blueprint(module.bp)
        registered.append(name)
    return registered
