"""GET /pushy/_metrics: Prometheus text exposition of the live server.

Unauthenticated, like `/pushy/_status` (§10.11): it carries counts, never
names, keys or job data, and a scraper has no Chef key. Operators who do not
want it reachable put the API behind their proxy rules (docs/performance.md).
Other methods → 405 (Flask does that for a GET-only route).
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from pushjobs.server.metrics import CONTENT_TYPE, metrics_for

bp = Blueprint("metrics", __name__)


@bp.route("/pushy/_metrics", methods=["GET"])
def metrics() -> Response:
    runtime = current_app.extensions["pushjobs"].runtime
    body = metrics_for(runtime).render()
    return Response(body, status=200, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})
