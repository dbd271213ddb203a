"""docs/openapi.yaml against the app: every route documented, nothing stale, real responses validate.

The validator is a small JSON-Schema subset (type, enum, const, properties,
required, additionalProperties, propertyNames, items, minItems, minLength,
maxLength, pattern, minimum, allOf, oneOf, anyOf, $ref) — enough for the
schemas we write, without a new dependency.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from pushjobs.protocol.keys import curve_keypair

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text())


def _app_routes() -> set[tuple[str, str]]:
    from pushjobs.server.app import create_app
    from pushjobs.server.runtime import Runtime
    from pushjobs.server.settings import Settings

    settings = Settings(data_dir="/nonexistent", server_name="127.0.0.1")
    app = create_app(settings, Runtime(settings), public_key_pem="")
    out = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for m in rule.methods - {"HEAD", "OPTIONS"}:
            out.add((path, m.lower()))
    return out


def _resolve(spec: dict, node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = spec
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


# --------------------------------------------------------------------------------------
# the validator


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(spec: dict, schema: Any, value: Any, where: str = "$") -> list[str]:
    """Errors of `value` against `schema` (empty list: valid)."""
    schema = _resolve(spec, schema)
    errs: list[str] = []
    if schema is True or schema == {}:
        return errs
    t = schema.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not any(_TYPES[x](value) for x in types):
            return [f"{where}: {value!r:.60} is not {t}"]
    if "const" in schema and value != schema["const"]:
        errs.append(f"{where}: {value!r:.60} != const {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{where}: {value!r:.60} not in {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errs.append(f"{where}: {value!r:.60} does not match {schema['pattern']}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errs.append(f"{where}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errs.append(f"{where}: longer than {schema['maxLength']}")
    if _TYPES["number"](value) and "minimum" in schema and value < schema["minimum"]:
        errs.append(f"{where}: {value} < {schema['minimum']}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errs.append(f"{where}: fewer than {schema['minItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                errs += validate(spec, schema["items"], item, f"{where}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for req in schema.get("required", []):
            if req not in value:
                errs.append(f"{where}: missing required {req!r}")
        for k, v in value.items():
            if k in props:
                errs += validate(spec, props[k], v, f"{where}.{k}")
            elif schema.get("additionalProperties") is False:
                errs.append(f"{where}: unexpected property {k!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errs += validate(spec, schema["additionalProperties"], v, f"{where}.{k}")
            if "propertyNames" in schema:
                errs += validate(spec, schema["propertyNames"], k, f"{where}<key {k}>")
    for sub in schema.get("allOf", []):
        errs += validate(spec, sub, value, where)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            ok = [s for s in schema[key] if not validate(spec, s, value, where)]
            if not ok or (key == "oneOf" and len(ok) > 1):
                errs.append(f"{where}: does not match exactly {key}")
    return errs


def test_validator_catches_mismatches(spec):
    job_status = {"$ref": "#/components/schemas/NodeState"}
    assert validate(spec, job_status, {"node_name": "a", "status": "online", "availability": "available"}) == []
    assert validate(spec, job_status, {"node_name": "a", "status": "up", "availability": "available"})
    assert validate(spec, job_status, {"node_name": "a", "status": "online"})
    assert validate(spec, job_status, {"node_name": "a", "status": "online", "availability": "available", "x": 1})
    assert validate(spec, {"$ref": "#/components/schemas/ErrorList"}, {"error": "string"})


# --------------------------------------------------------------------------------------
# structure


def test_spec_is_openapi_31(spec):
    assert str(spec["openapi"]).startswith("3.1")
    assert spec["info"]["title"] and spec["paths"]


def test_every_route_is_documented_and_nothing_is_stale(spec):
    app = _app_routes()
    documented = {(p, m) for p, item in spec["paths"].items() for m in item if m in METHODS}
    assert app - documented == set(), "routes missing from docs/openapi.yaml"
    assert documented - app == set(), "docs/openapi.yaml documents routes the app does not have"


def test_operations_are_complete(spec):
    op_ids = set()
    for path, item in spec["paths"].items():
        path_params = {_resolve(spec, p)["name"] for p in item.get("parameters", [])}
        for method in (m for m in item if m in METHODS):
            op = item[method]
            assert op.get("summary"), (path, method)
            assert op["operationId"] not in op_ids
            op_ids.add(op["operationId"])
            params = path_params | {_resolve(spec, p)["name"] for p in op.get("parameters", [])}
            for name in re.findall(r"{([^}]+)}", path):
                assert name in params, f"{method} {path}: path parameter {name} undeclared"
            assert op["responses"], (path, method)
            for code, resp in op["responses"].items():
                resp = _resolve(spec, resp)
                assert resp.get("description"), (path, method, code)


# --------------------------------------------------------------------------------------
# real responses from a running server


@pytest.fixture(scope="module")
def running(module_server_factory):
    s = module_server_factory(settings={"voting_timeout": 5})
    s.create_org("acme")
    alice = s.create_user("alice", "acme", admin=True)
    web1 = s.create_client("web1", "acme")
    return s, s.client(alice), s.client(web1)


def _find_operation(spec: dict, path: str, method: str) -> tuple[str, Any]:
    """(template, operation); operation None when the path is documented without that method."""
    found = None
    for template, item in spec["paths"].items():
        rx = "^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(rx, path):
            if method.lower() in item:
                return template, item[method.lower()]
            found = template
    if found is not None:
        return found, None
    raise AssertionError(f"{method} {path} not in the spec")


def check(spec: dict, r: requests.Response) -> None:
    path = requests.utils.urlparse(r.request.url).path
    template, op = _find_operation(spec, path, r.request.method)
    if op is None:  # an undocumented method on a documented path: the common JSON 405
        assert r.status_code == 405 and "Allow" in r.headers
        assert validate(spec, {"$ref": "#/components/schemas/ErrorList"}, r.json()) == []
        return
    code = str(r.status_code)
    assert code in op["responses"], f"{r.request.method} {template}: undocumented status {code}"
    resp = _resolve(spec, op["responses"][code])
    ctype = r.headers.get("Content-Type", "").split(";")[0]
    assert ctype in resp.get("content", {}), f"{template} {code}: undocumented content type {ctype}"
    for header in resp.get("headers", {}):
        assert header in r.headers, f"{template} {code}: header {header} missing"
    if ctype == "application/json":
        errs = validate(spec, resp["content"][ctype]["schema"], r.json())
        assert errs == [], f"{r.request.method} {template} {code}: {errs}"


def test_real_responses_validate(spec, running):
    server, alice, web1 = running
    base = server.base_url
    responses = [
        requests.get(base + "/pushy/_status"),
        requests.post(base + "/pushy/_status"),
        web1.get("config/web1", params={"ccpk": curve_keypair()[0]}),
        web1.get("config/web1"),
        web1.get("config/web1", params={"ccpk": "bad"}),
        web1.get("config/web2", params={"ccpk": curve_keypair()[0]}),
        alice.get("jobs", sign=False),
        alice.get("jobs", user_id="nobody"),
        server.client(alice.principal, org="nope").get("jobs"),
        alice.post("jobs", json={"command": 1, "nodes": ["web1"]}),
        alice.post("jobs", body=b"x" * 1_000_001, headers={"Content-Type": "application/json"}),
        alice.put("jobs"),
        web1.post("jobs", json={"command": "x", "nodes": ["web1"]}),
        alice.get("node_states"),
        alice.get("node_states/web1"),
        alice.get(f"jobs/{'0' * 32}"),
        alice.get(f"jobs/{'0' * 32}/output/web1/stdout"),
        alice.post(f"jobs/{'0' * 32}/abort"),
    ]
    created = alice.post("jobs", json={"command": "chef-client", "nodes": ["web1", "web2"], "user": "u",
                                       "dir": "/", "env": {"A": "b"}, "file": "raw:x", "capture_output": True})
    responses.append(created)
    job_id = created.json()["id"]
    alice.wait_job(job_id, timeout=20)
    responses += [
        alice.get("jobs"),
        alice.get(f"jobs/{job_id}"),
        alice.get(f"jobs/{job_id}", params={"include_file": "true"}),
        alice.get(f"jobs/{job_id}/output/web1/stdout"),
        alice.get(f"jobs/{job_id}/output/web1/other"),
        alice.post(f"jobs/{job_id}/abort"),
        # content negotiation: 406 when Accept excludes the response type, 415 for a non-JSON POST
        requests.get(base + "/pushy/_status", headers={"Accept": "text/html"}),
        alice.get("jobs", headers={"Accept": "text/html"}),
        alice.get(f"jobs/{job_id}/output/web1/stdout", headers={"Accept": "application/json"}),
        alice.post("jobs", json={"command": "x", "nodes": ["web1"]}, headers={"Content-Type": "text/plain"}),
    ]
    seen = set()
    for r in responses:
        check(spec, r)
        seen.add(r.status_code)
    assert {200, 201, 400, 401, 403, 404, 405, 406, 409, 413, 415} <= seen
