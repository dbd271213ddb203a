"""Search: GET …/organizations/ORG/search/node?q=QUERY&start=N&rows=N (Chef's API).

The query language and matching live in `pushjobs.server.search` (pure);
this module only loads the org's nodes and maps errors. Response shape is
Chef's: `{"total", "start", "rows": [node objects]}`, rows ordered by name,
`rows` defaulting to 1000. A malformed query is a 400 naming the position of
the error; a bad `start`/`rows` a 400 naming the parameter. Only the `node`
index exists; other indexes answer 404 as Chef does for an unknown index.

Expanded nodes are cached per app by (id, updated_at), and only the rows of
the requested page are read in full, so that repeated searches over a large
fleet neither re-read nor re-flatten every node (10 000 nodes: tens of ms).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from pushjobs.server.api.errors import error, json_response
from pushjobs.server.api.nodes import node_document
from pushjobs.server.auth import signed_request
from pushjobs.server.search import DEFAULT_ROWS, QueryError, expand_node, parse_query

log = logging.getLogger(__name__)

bp = Blueprint("search", __name__, url_prefix="/organizations/<org>")

CACHE_KEY = "pushjobs.search.cache"
CACHE_SIZE = 50_000
BATCH = 500


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


def _expansions(rows: list[Any]) -> list[dict]:
    """The expanded (searchable) form of each (id, updated_at) row, from the cache when
    possible; the full rows of the misses are read in batches."""
    from pushjobs.server.store import Node

    cache = _cache()
    missing = [r.id for r in rows if (r.id, r.updated_at) not in cache]
    for i in range(0, len(missing), BATCH):
        for full in Node.select().where(Node.id.in_(missing[i:i + BATCH])):
            cache[(full.id, full.updated_at)] = expand_node(node_document(full))
    # a node changed or deleted since `rows` was read simply does not match this time
    out = [cache.get((r.id, r.updated_at), {}) for r in rows]
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return out


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
    rows_meta = list(Node.select(Node.id, Node.name, Node.updated_at)
                     .where(Node.org == g.requestor.org_id).order_by(Node.name))
    hits = [r for r, doc in zip(rows_meta, _expansions(rows_meta)) if query.matches(doc)]
    page_ids = [r.id for r in hits[start:start + rows]]
    full = {n.id: n for i in range(0, len(page_ids), BATCH)
            for n in Node.select().where(Node.id.in_(page_ids[i:i + BATCH]))}
    page = [node_document(full[i]) for i in page_ids if i in full]
    log.debug("search %s/%s q=%r: %d hits", org, index, q, len(hits))
    return json_response({"total": len(hits), "start": start, "rows": page})

