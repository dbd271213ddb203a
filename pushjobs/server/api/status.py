"""GET /pushy/_status: the unauthenticated liveness document of §10.11."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from pushjobs.server.api.errors import json_response
from pushjobs.server.auth import JSON, check_accept

bp = Blueprint("status", __name__)


def runtime_value(value):
    """Runtime exposes some facts as attributes and some as methods; accept both."""
    return value() if callable(value) else value


@bp.route("/pushy/_status", methods=["GET"])
def status() -> Response:
    check_accept(JSON)  # 406 when Accept excludes JSON (no Accept is fine)
    runtime = current_app.extensions["pushjobs"].runtime
    return json_response({
        "status": "it's alive",
        "incarnation_id": runtime_value(runtime.incarnation_id),
        "node_fsm_count": runtime.node_fsm_count(),
        "job_processes": list(runtime.live_job_ids()),
    })
