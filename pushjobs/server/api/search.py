"""Search: GET …/organizations/ORG/search/node?q=QUERY&start=N&rows=N (Chef's API).

The query language and matching live in `pushjobs.server.search` (pure);
this module only loads the org's nodes and maps errors. Response shape is
Chef's: `{"total", "start", "rows": [node objects]}`, rows ordered by name,
`rows` defaulting to 1000. A malformed query is a 400 naming the position of
the error; a bad `start`/`rows` a 400 naming the parameter. Only the `node`
index exists; other indexes answer 404 as Chef does for an unknown index.

Expanded nodes are cached per app by (id, updated_at) so that repeated
searches over a large fleet do not re-flatten every node.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from pushjobs.server.api.errors import error, json_response
from pushjobs.server.api.nodes import node_document, node_uri
from pushjobs.server.auth import signed_request
from pushjobs.server.search import DEFAULT_ROWS, QueryError, expand_node, parse_query

log = logging.getLogger(__name__)

bp = Blueprint("search", __name__, url_prefix="/organizations/<org>")

CACHE_KEY = "pushjobs.search.cache"
CACHE_SIZE = 50_000


def _int_param(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise error(400, f"invalid '{name}' parameter {raw!r}: expected a non-negative integer") from None
    if value < 0:
        raise error(400, f"invalid '{name}' parameter {raw!r}: expected a non-negative integer")
    return value


def _cache() -> "OrderedDict[tuple, dict]":
    return current_app.extensions.setdefault(CACHE_KEY, OrderedDict())


def _expanded(row: Any, doc: dict) -> dict:
    cache = _cache()
    key = (row.id, row.updated_at)
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = expand_node(doc)
        while len(cache) > CACHE_SIZE:
            cache.popitem(last=False)
    return hit


@bp.route("/search", methods=["GET"])
@signed_request("read")
def list_indexes(org: str) -> Response:
    scheme = (request.headers.get("X-Forwarded-Proto") or request.scheme).split(",")[0].strip()
    return json_response({"node": f"{scheme}://{request.host}/organizations/{org}/search/node"})


@bp.route("/search/<index>", methods=["GET"])
@signed_request("read")
def search(org: str, index: str) -> Response:
    from pushjobs.server.store import Node

    if index != "node":
        raise error(404, f"I don't know how to search for {index} data objects.")
    q = request.args.get("q", "*:*")
    start = _int_param("start", 0)
    rows = _int_param("rows", DEFAULT_ROWS)
    try:
        query = parse_query(q)
    except QueryError as e:
        raise error(400, f"invalid search query: '{q}': {e.message} at position {e.position}") from None
    hits = []
    for row in Node.select().where(Node.org == g.requestor.org_id).order_by(Node.name):
        doc = node_document(row)
        if query.matches(_expanded(row, doc)):
            hits.append(doc)
    log.debug("search %s/%s q=%r: %d hits", org, index, q, len(hits))
    return json_response({"total": len(hits), "start": start, "rows": hits[start:start + rows]})


__all__ = ["bp", "node_uri"]
