"""Search: GET …/organizations/ORG/search/node?q=QUERY&start=N&rows=N (Chef's API).

POST with a body `{"alias": ["path", "to", "attr"]}` is Chef's partial search
(what `knife search -a` and `knife ssh` send): rows are then
`{"url", "data": {alias: value}}`.

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
from pushjobs.server.api.nodes import node_document, node_uri
from pushjobs.server.auth import signed_request
from pushjobs.server.search import DEFAULT_ROWS, QueryError, deep_merge, expand_node, parse_query

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


def _partial_spec(body: bytes) -> dict[str, list[str]]:
    """Chef's partial search body: `{"alias": ["path", "to", "attr"], ...}`; 400 otherwise."""
    import json

    try:
        spec = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError) as e:
        raise error(400, f"invalid partial search body: {e}") from None
    if not isinstance(spec, dict) or not all(
            isinstance(v, list) and v and all(isinstance(p, str) for p in v) for v in spec.values()):
        raise error(400, 'invalid partial search body: expected {"NAME": ["path", "to", "attribute"], ...}')
    return spec


def partial_data(node: dict, spec: dict[str, list[str]]) -> dict[str, Any]:
    """The values a partial search asks for, looked up in the merged node (None when absent)."""
    merged: Any = {}
    for level in ("default", "normal", "override", "automatic"):
        merged = deep_merge(merged, node.get(level) or {})
    merged.update({k: node[k] for k in ("name", "chef_environment", "run_list") if k in node})
    out: dict[str, Any] = {}
    for alias, path in spec.items():
        cur: Any = merged
        for key in path:
            cur = cur.get(key) if isinstance(cur, dict) else None
        out[alias] = cur
    return out


@bp.route("/search", methods=["GET"])
@signed_request("read")
def list_indexes(org: str) -> Response:
    scheme = (request.headers.get("X-Forwarded-Proto") or request.scheme).split(",")[0].strip()
    return json_response({"node": f"{scheme}://{request.host}/organizations/{org}/search/node"})


@bp.route("/search/<index>", methods=["GET", "POST"])
@signed_request("read")
def search(org: str, index: str) -> Response:
    from pushjobs.server.store import Node

    partial = _partial_spec(g.body) if request.method == "POST" else None
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
    if partial is not None:
        page = [{"url": node_uri(org, n["name"]), "data": partial_data(n, partial)} for n in page]
    log.debug("search %s/%s q=%r: %d hits", org, index, q, len(hits))
    return json_response({"total": len(hits), "start": start, "rows": page})

