"""GET …/pushy/jobs/ID/output/NODE/stdout|stderr: captured output (PROTOCOL.md §10.8, §14).

The answer is application/octet-stream: an `Accept` that allows neither it nor
`*/*` (e.g. `application/json` alone) gets 406 after authorization, as in the
original; no `Accept` is fine."""

from __future__ import annotations

from flask import Blueprint, Response, g

from pushjobs.server.api.errors import error
from pushjobs.server.api.jobs import find_job
from pushjobs.server.auth import signed_request

bp = Blueprint("output", __name__, url_prefix="/organizations/<org>/pushy")

CHANNELS = ("stdout", "stderr")


@bp.route("/jobs/<job_id>/output/<node>/<channel>", methods=["GET"])
@signed_request("read", produces="application/octet-stream")
def output(org: str, job_id: str, node: str, channel: str) -> Response:
    """The raw captured bytes; 404 while there is no output row (capture off, node not done)."""
    from pushjobs.server.store import JobOutput

    if channel not in CHANNELS:
        raise error(404, f"unknown output channel '{channel}' (expected stdout or stderr)")
    job = find_job(g.requestor.org_id, job_id)
    row = JobOutput.get_or_none((JobOutput.job == job.id) & (JobOutput.node_name == node))
    if row is None:
        raise error(404, f"no output for node '{node}' in job '{job_id}'")
    data = getattr(row, channel)
    if isinstance(data, memoryview):
        data = data.tobytes()
    elif isinstance(data, str):
        data = data.encode("utf-8")
    return Response(bytes(data or b""), status=200, mimetype="application/octet-stream")
