"""GET …/pushy/node_states[/NODE]: liveness from the runtime's memory (PROTOCOL.md §10.9–§10.10).

Node state never touches the database: the runtime's node registry answers.
Unknown nodes are reported offline, never 404.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from pushjobs.server.api.errors import json_response
from pushjobs.server.auth import signed_request

bp = Blueprint("node_states", __name__, url_prefix="/organizations/<org>/pushy")


@bp.route("/node_states", methods=["GET"])
@signed_request("read")
def node_states(org: str) -> Response:
    runtime = current_app.extensions["pushjobs"].runtime
    return json_response(list(runtime.node_states(org)))


@bp.route("/node_states/<node>", methods=["GET"])
@signed_request("read")
def node_state(org: str, node: str) -> Response:
    runtime = current_app.extensions["pushjobs"].runtime
    return json_response(runtime.node_state(org, node))
