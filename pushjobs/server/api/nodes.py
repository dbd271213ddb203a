"""Node inventory: …/organizations/ORG/nodes[/NODE] in Chef's node JSON shape.

What the search endpoint searches. Agents PUT their own node (facts in
`automatic`, roles/environment/tags from their settings); people and tools
may create, replace, read and delete nodes as with a Chef server.

Authorization:
* read (GET): the read rule of PROTOCOL.md §10.3, like every other GET;
* write (PUT, POST, DELETE): a client may write only the node of its own
  name; a user needs the write rule of §10.3 (pushy_job_writers, else admins).

Validation errors are 400 `{"error": ["Field 'X' invalid: why"]}` naming
the field, as Chef does. Shapes follow Chef: POST → 201 `{"uri"}` (409 when
the node exists), GET list → `{name: uri}`, GET/PUT/DELETE → the node.
PUT creates a missing node (201) or replaces it (200).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from typing import Any, Callable, Optional

from flask import Blueprint, Response, g, request

from pushjobs.server.api.errors import error, json_response
from pushjobs.server.auth import (
    JSON,
    authenticate,
    can_read,
    can_write,
    check_accept,
    check_headers,
    forbidden,
    raw_request_path,
    read_body,
)

log = logging.getLogger(__name__)

bp = Blueprint("nodes", __name__, url_prefix="/organizations/<org>")

NAME_RE = re.compile(r"^[A-Za-z0-9_.\-:]{1,255}$")
ENV_RE = re.compile(r"^[A-Za-z0-9_\-]{1,255}$")
RUN_LIST_ITEM_RE = re.compile(
    r"^(?:role\[[A-Za-z0-9_.\-:]+\]|recipe\[[A-Za-z0-9_.\-:]+(?:@[0-9.]+)?\]|[A-Za-z0-9_.\-]+(?:::[A-Za-z0-9_.\-]+)?(?:@[0-9.]+)?)$"
)
ATTRIBUTE_LEVELS = ("automatic", "normal", "default", "override")
MAX_DEPTH = 64


def node_document(row: Any) -> dict:
    """A stored Node as Chef's node JSON."""
    doc = {
        "name": row.name,
        "chef_environment": row.chef_environment,
        "json_class": "Chef::Node",
        "chef_type": "node",
        "run_list": _loads(row.run_list, []),
    }
    for level in ATTRIBUTE_LEVELS:
        doc[level] = _loads(getattr(row, level), {})
    return doc


def _loads(text: Optional[str], default: Any) -> Any:
    try:
        value = json.loads(text) if text else default
    except ValueError:
        return default
    return value if isinstance(value, type(default)) else default


def _invalid(field: str, why: str) -> Exception:
    return error(400, f"Field '{field}' invalid: {why}")


def _depth(v: Any, d: int = 0) -> int:
    if d > MAX_DEPTH:
        return d
    if isinstance(v, dict):
        return max((_depth(x, d + 1) for x in v.values()), default=d + 1)
    if isinstance(v, list):
        return max((_depth(x, d + 1) for x in v), default=d + 1)
    return d


def validate_node(body: bytes, url_name: Optional[str]) -> dict:
    """The node JSON of a PUT/POST body, normalized; ApiError 400 naming the field otherwise."""
    try:
        data = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError) as e:
        raise error(400, f"invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise error(400, "the request body must be a JSON object (a Chef node)")
    name = data.get("name", url_name)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _invalid("name", "expected 1-255 letters, digits, '_', '-', '.' or ':'")
    if url_name is not None and name != url_name:
        raise _invalid("name", f"'{name}' does not match the URL's node name '{url_name}'")
    env = data.get("chef_environment", "_default")
    if not isinstance(env, str) or not ENV_RE.match(env):
        raise _invalid("chef_environment", "expected 1-255 letters, digits, '_' or '-'")
    if data.get("json_class", "Chef::Node") != "Chef::Node":
        raise _invalid("json_class", "must be 'Chef::Node'")
    if data.get("chef_type", "node") != "node":
        raise _invalid("chef_type", "must be 'node'")
    run_list = data.get("run_list", [])
    if not isinstance(run_list, list):
        raise _invalid("run_list", "expected an array of 'role[NAME]' / 'recipe[NAME]' items")
    for i, item in enumerate(run_list):
        if not isinstance(item, str) or not RUN_LIST_ITEM_RE.match(item):
            raise _invalid("run_list", f"item {i} ({item!r}) is not 'role[NAME]', 'recipe[NAME]' or a recipe name")
    node = {"name": name, "chef_environment": env, "run_list": list(dict.fromkeys(run_list))}
    for level in ATTRIBUTE_LEVELS:
        value = data.get(level, {})
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise _invalid(level, "expected a JSON object")
        if _depth(value) > MAX_DEPTH:
            raise _invalid(level, f"nested deeper than {MAX_DEPTH} levels")
        node[level] = value
    return node


def node_uri(org: str, name: str) -> str:
    scheme = (request.headers.get("X-Forwarded-Proto") or request.scheme).split(",")[0].strip()
    return f"{scheme}://{request.host}/organizations/{org}/nodes/{name}"


def _signed(action: str) -> Callable:
    """The auth pipeline of pushjobs.server.auth with the node rule for writes."""

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            info = check_headers(request.headers)
            body = read_body()
            g.body = body
            path = raw_request_path(request.environ, request.path)
            requestor = authenticate(kwargs.get("org", ""), info, request.headers, request.method, path, body)
            if action == "read":
                ok = can_read(requestor)
            elif requestor.kind == "client":
                target = kwargs.get("node")
                if target is None:  # POST: the name is in the body
                    target = _body_name(body)
                ok = target == requestor.name
            else:
                ok = can_write(requestor)
            if not ok:
                raise forbidden(requestor)
            check_accept(JSON)  # 406 after authorization, as every JSON resource
            g.requestor = requestor
            return view(*args, **kwargs)

        return wrapper

    return decorate


def _body_name(body: bytes) -> Optional[str]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def _save(org_id: int, node: dict, existing: Any) -> Any:
    from pushjobs.server.store import Node, db, utcnow

    fields = {
        "chef_environment": node["chef_environment"],
        "run_list": json.dumps(node["run_list"], separators=(",", ":")),
        **{lvl: json.dumps(node[lvl], separators=(",", ":")) for lvl in ATTRIBUTE_LEVELS},
        "updated_at": utcnow(),
    }
    with db.atomic():
        if existing is None:
            return Node.create(org=org_id, name=node["name"], **fields)
        Node.update(**fields).where(Node.id == existing.id).execute()
        return Node.get_by_id(existing.id)


def _find(org_id: int, name: str) -> Any:
    from pushjobs.server.store import Node

    return Node.get_or_none((Node.org == org_id) & (Node.name == name))


def _not_found(name: str) -> Exception:
    return error(404, f"node '{name}' not found")


@bp.route("/nodes", methods=["GET"])
@_signed("read")
def list_nodes(org: str) -> Response:
    from pushjobs.server.store import Node

    rows = Node.select(Node.name).where(Node.org == g.requestor.org_id).order_by(Node.name)
    return json_response({r.name: node_uri(org, r.name) for r in rows})


@bp.route("/nodes", methods=["POST"])
@_signed("write")
def create_node(org: str) -> Response:
    from peewee import IntegrityError

    node = validate_node(g.body, None)
    if _find(g.requestor.org_id, node["name"]) is not None:
        raise error(409, "Node already exists")
    try:
        _save(g.requestor.org_id, node, None)
    except IntegrityError:  # a concurrent create won
        raise error(409, "Node already exists") from None
    log.info("node %s/%s created by %s", org, node["name"], g.requestor.name)
    uri = node_uri(org, node["name"])
    return json_response({"uri": uri}, 201, {"Location": uri})


@bp.route("/nodes/<node>", methods=["GET"])
@_signed("read")
def get_node(org: str, node: str) -> Response:
    row = _find(g.requestor.org_id, node)
    if row is None:
        raise _not_found(node)
    return json_response(node_document(row))


@bp.route("/nodes/<node>", methods=["PUT"])
@_signed("write")
def put_node(org: str, node: str) -> Response:
    from peewee import IntegrityError

    doc = validate_node(g.body, node)
    existing = _find(g.requestor.org_id, node)
    try:
        row = _save(g.requestor.org_id, doc, existing)
    except IntegrityError:  # created concurrently: replace it
        row = _save(g.requestor.org_id, doc, _find(g.requestor.org_id, node))
    log.info("node %s/%s %s by %s", org, node, "replaced" if existing else "created", g.requestor.name)
    return json_response(node_document(row), 200 if existing else 201)


@bp.route("/nodes/<node>", methods=["DELETE"])
@_signed("write")
def delete_node(org: str, node: str) -> Response:
    row = _find(g.requestor.org_id, node)
    if row is None:
        raise _not_found(node)
    doc = node_document(row)
    row.delete_instance()
    log.info("node %s/%s deleted by %s", org, node, g.requestor.name)
    return json_response(doc)
