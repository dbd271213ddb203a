"""Chef-signed request authentication and the group rules of PROTOCOL.md §10.1–§10.3.

Rules of this file:
* Every status code and error body is the original's (§10.2), byte for byte
  where the original is consistent; they are raised as `AuthError` and turned
  into responses in one place (`api.errors`).
* The evaluation order is webmachine's (§10.2): header sanity (400/401) →
  body size (413) → the resource's own malformed-request checks (job body
  400, config ccpk 400/401) → authentication (404 org, 401 principal, 401
  signature, 403 membership) → authorization (403) → Accept (406).
  `signed_request()` runs that pipeline for a view; views never check
  signatures themselves.
* The cryptography is the protocol library's (`pushjobs.protocol.chef_auth`):
  this module only decides *whose* key and *which* answer.
* Identities come from `pushjobs.server.identity` (orgs, principals: a client
  of the org wins over a user of the same name; users are members through
  OrgUser; groups with nested groups, cycle-safe).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from pushjobs.protocol.errors import ProtocolError

log = logging.getLogger(__name__)

#: REST clock skew allowed for X-Ops-Timestamp (seconds), a hard-coded constant of the original.
AUTH_CLOCK_SKEW = 900
#: Largest POST/PUT body accepted (bytes), a hard-coded constant of the original.
MAX_REQUEST_BODY = 1_000_000
#: The headers whose absence is reported by name, in the original's order.
REQUIRED_HEADERS = ("X-Ops-UserId", "X-Ops-Timestamp", "X-Ops-Sign", "X-Ops-Content-Hash")
#: Accepted X-Ops-Sign (version -> algorithm).
SIGN_VERSIONS = {"1.0": "sha1", "1.1": "sha1", "1.2": "sha1", "1.3": "sha256"}
WWW_AUTHENTICATE = 'X-Ops-Sign version="1.0" version="1.1"'

READERS_GROUP = "pushy_job_readers"
WRITERS_GROUP = "pushy_job_writers"
ADMINS_GROUP = "admins"
#: The groups the rules of §10.3 look at, read with the principal in one query.
AUTH_GROUPS = (READERS_GROUP, WRITERS_GROUP, ADMINS_GROUP)


class AuthError(Exception):
    """An HTTP answer from the auth pipeline: status, JSON body, extra headers."""

    def __init__(self, status: int, body: Any, headers: Optional[Mapping[str, str]] = None):
        super().__init__(f"{status} {body}")
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def error_list(status: int, message: str, **headers: str) -> AuthError:
    """The common `{"error": [message]}` shape."""
    return AuthError(status, {"error": [message]}, headers)


def unauthorized(message: str) -> AuthError:
    return AuthError(401, {"error": [message]}, {"WWW-Authenticate": WWW_AUTHENTICATE})


@dataclass(frozen=True)
class HeaderInfo:
    """What the header sanity phase learnt: who claims to sign, when, with which version."""

    user_id: str
    timestamp: float
    version: str


@dataclass(frozen=True)
class Requestor:
    """An authenticated principal of an org."""

    name: str
    kind: str  # "user" | "client"
    org_name: str
    org_id: int
    org_guid: str
    public_key: Any = field(repr=False, compare=False)  # cryptography RSAPublicKey
    org: Any = field(default=None, repr=False, compare=False)  # the store's Org row
    #: The §10.3 groups of the org as read with the principal (name -> id; absent: no
    #: such group); None: not read, authorization looks them up.
    groups: Optional[Mapping[str, int]] = field(default=None, repr=False, compare=False)


def _header(headers: Mapping[str, str], name: str) -> Optional[str]:
    """Case-insensitive header lookup; empty values count as missing (§10.1)."""
    value = headers.get(name)
    if value is None:
        lname = name.lower()
        value = headers.get(lname)  # the lower-case mapping of `xops_headers`
    if value is None:
        for k, v in headers.items():
            if k.lower() == lname:
                value = v
                break
    if value is None or value.strip() == "":
        return None
    return value


#: WSGI environ key prefix of the Chef auth headers (`X-Ops-*` → `HTTP_X_OPS_*`).
_XOPS_ENVIRON_PREFIX = "HTTP_X_OPS_"


def xops_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """The request's `X-Ops-*` headers, lower-case names, read straight from the WSGI environ.

    Why: authentication only looks at these ~10 headers, and walking werkzeug's
    `EnvironHeaders` (every header of the request, each name rebuilt) twice per
    request cost more than the rest of the header checks (config handshake
    storm, #8). The names are the ones werkzeug derives (`HTTP_X_OPS_SIGN` →
    `x-ops-sign`), so the answers are the same."""
    out: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith(_XOPS_ENVIRON_PREFIX) and isinstance(value, str):
            out["x-ops-" + key[11:].replace("_", "-").lower()] = value
    return out


def parse_sign_description(value: str) -> dict[str, str]:
    """`algorithm=sha1;version=1.1;` -> {"algorithm": "sha1", "version": "1.1"} (empty items ignored)."""
    out: dict[str, str] = {}
    for item in value.split(";"):
        item = item.strip()
        if not item:
            continue
        k, sep, v = item.partition("=")
        if sep:
            out[k.strip().lower()] = v.strip()
    return out


def check_headers(headers: Mapping[str, str], now: Optional[float] = None) -> HeaderInfo:
    """The malformed-request header checks of chef_authn, in its order.

    missing headers → 400; unsupported X-Ops-Sign → 400; unparseable
    timestamp → 401; timestamp outside ±900 s → 401."""
    from pushjobs.protocol.chef_auth import parse_timestamp

    # chef_authn requires these four; a missing or empty X-Ops-Authorization-N
    # is not a malformed request but a signature that cannot verify (401 in
    # authenticate(), after the principal lookup), as the original answers.
    missing = [h for h in REQUIRED_HEADERS if _header(headers, h) is None]
    if missing:
        names = ", ".join(f"'{h}'" for h in missing)
        raise error_list(400, f"missing required authentication header(s) {names}")
    user_id = _header(headers, "X-Ops-UserId") or ""
    sign = parse_sign_description(_header(headers, "X-Ops-Sign") or "")
    version = sign.get("version", "")
    if version not in SIGN_VERSIONS or SIGN_VERSIONS[version] != sign.get("algorithm", SIGN_VERSIONS[version]).lower():
        raise error_list(400, "Unsupported authentication protocol version")
    try:
        ts = parse_timestamp(_header(headers, "X-Ops-Timestamp") or "")
    except ProtocolError:
        raise unauthorized("bad header(s) 'X-Ops-Timestamp'") from None
    now = time.time() if now is None else now
    if abs(now - ts) > AUTH_CLOCK_SKEW:
        raise unauthorized(f"Failed to authenticate as {user_id}. Synchronize the clock on your host.")
    return HeaderInfo(user_id=user_id, timestamp=ts, version=version)


def too_large() -> AuthError:
    """413 with the string-shaped body of the original."""
    return AuthError(413, {"error": f"JSON must be no more than {MAX_REQUEST_BODY} bytes."})


# --------------------------------------------------------------------------------------
# identities (pushjobs.server.identity)


@functools.lru_cache(maxsize=4096)
def _load_public_key(pem: str) -> Any:
    """The parsed key of a PEM text, parsed once per text.

    Safe to cache: the key is a pure function of the text, and the text is
    read from the store on every request (so a key changed by the ctl is a
    different text, a deleted client has none). Only parsing is cached, never
    who may do what. A miss costs ~15 µs (fleets made by `client-create
    --count` share one key); the bound keeps memory in check (~2 KB a key)."""
    from pushjobs.protocol.keys import load_public_key

    return load_public_key(pem)


def lookup_org(org_name: str):
    """The Org row, or AuthError 404 in the original's words."""
    from pushjobs.server import identity

    org = identity.find_org(org_name)
    if org is None:
        raise error_list(404, f"organization '{org_name}' does not exist.")
    return org


def authenticate(org_name: str, info: HeaderInfo, headers: Mapping[str, str], method: str,
                 path: str, body: bytes) -> Requestor:
    """404 unknown org → 401 unknown principal → 401 bad signature → 403 not a member.

    One query reads the org, the principal (and its key, every time: no
    decision is cached across requests) and the §10.3 groups of the org."""
    from pushjobs.protocol import chef_auth
    from pushjobs.server import identity

    found = identity.lookup_request_identity(org_name, info.user_id, AUTH_GROUPS)
    if found is None:
        raise error_list(404, f"organization '{org_name}' does not exist.")
    org, principal = found.org, found.principal
    if principal is None:
        raise unauthorized(
            f"Failed to authenticate as '{info.user_id}'. Ensure that your node_name and client key are correct.")
    try:
        public_key = _load_public_key(principal.public_key)
        signed = chef_auth.parse_auth_headers(headers)
        ok = chef_auth.verify_signature(signed, method, path, body, public_key)
    except Exception as exc:  # noqa: BLE001 - any parse/crypto failure is a bad signature
        log.info("signature of %s rejected: %r", info.user_id, exc)
        ok = False
    if not ok:
        raise unauthorized(f"Invalid signature for user or client '{info.user_id}'")
    if not principal.org_member:
        raise error_list(403, f"'{info.user_id}' is not associated with organization '{org_name}'")
    return Requestor(name=principal.name, kind=principal.kind, org_name=org.name, org_id=org.id,
                     org_guid=org.guid, public_key=public_key, org=org, groups=found.groups)


# --------------------------------------------------------------------------------------
# authorization (§10.3)


def forbidden(requestor: Requestor) -> AuthError:
    return error_list(403, f"User or client '{requestor.name}' does not have access to that action on this server.")


def _org_of(requestor: Requestor) -> Any:
    return requestor.org if requestor.org is not None else requestor.org_name


def _group_id(requestor: Requestor, group: str) -> Optional[int]:
    """The id of `group` in the requestor's org, or None when it does not exist.

    From the authentication query when it read the groups (same request),
    else looked up now."""
    from pushjobs.server import identity

    if requestor.groups is not None:
        return requestor.groups.get(group)
    g = identity.find_group(_org_of(requestor), group)
    return g.id if g is not None else None


def can_read(requestor: Requestor) -> bool:
    from pushjobs.server import identity

    gid = _group_id(requestor, READERS_GROUP)
    if gid is not None:
        return identity.is_member(_org_of(requestor), READERS_GROUP, requestor.kind, requestor.name, group_id=gid)
    return True  # any authenticated org member


def can_write(requestor: Requestor) -> bool:
    from pushjobs.server import identity

    for group in (WRITERS_GROUP, ADMINS_GROUP):
        gid = _group_id(requestor, group)
        if gid is not None:
            return identity.is_member(_org_of(requestor), group, requestor.kind, requestor.name, group_id=gid)
    return False  # neither group: nobody writes


def authorize(requestor: Requestor, action: str, *, node: Optional[str] = None,
              validate_client_node_name: bool = True) -> None:
    """Raise 403 unless `requestor` may do `action` ("read", "write" or "config")."""
    if action == "config" and requestor.kind == "client":
        if validate_client_node_name and requestor.name != node:
            raise error_list(403, "Client and node name must match")
        return
    if action in ("read", "config"):
        ok = can_read(requestor)
    elif action == "write":
        ok = can_write(requestor)
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown action {action!r}")
    if not ok:
        raise forbidden(requestor)


# --------------------------------------------------------------------------------------
# the pipeline for a Flask view


def raw_request_path(environ: Mapping[str, Any], fallback: str) -> str:
    """The path exactly as the client sent (and signed) it, without the query string."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        raw = raw.split("?", 1)[0]
        if raw.startswith(("http://", "https://")):  # absolute-form request target
            raw = "/" + raw.split("://", 1)[1].partition("/")[2]
        return raw
    return fallback


def read_body() -> bytes:
    """The request body, 413 beyond MAX_REQUEST_BODY (checked before reading it all)."""
    from flask import request

    if request.method not in ("POST", "PUT", "PATCH"):
        return request.get_data(cache=True) if request.content_length else b""
    if request.content_length is not None and request.content_length > MAX_REQUEST_BODY:
        raise too_large()
    data = request.stream.read(MAX_REQUEST_BODY + 1) if request.content_length is None else request.get_data(cache=True)
    if len(data) > MAX_REQUEST_BODY:
        raise too_large()
    return data


JSON = "application/json"


def accept_allows(accept: Optional[str], mimetype: str) -> bool:
    """Whether an `Accept` header value allows `mimetype` (absent or empty allows everything).

    The most specific matching range decides (RFC 9110 §12.5.1): `type/sub`,
    then `type/*`, then `*/*`; q=0 refuses. Media-type parameters other than
    q (`application/json; charset=utf-8`) do not stop a match."""
    if accept is None or not accept.strip():
        return True
    major = mimetype.split("/", 1)[0]
    best: Optional[tuple[int, float]] = None  # (specificity, q)
    for item in accept.split(","):
        parts = [p.strip() for p in item.split(";")]
        rng = parts[0].lower()
        if not rng:
            continue
        q = 1.0
        for param in parts[1:]:
            k, _, v = param.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v.strip())
                except ValueError:
                    q = 0.0
        if rng == mimetype:
            spec = 3
        elif rng == f"{major}/*":
            spec = 2
        elif rng in ("*/*", "*"):
            spec = 1
        else:
            continue
        if best is None or spec > best[0]:
            best = (spec, q)
    return best is not None and best[1] > 0


def check_accept(mimetype: str) -> None:
    """406 unless the request's `Accept` allows `mimetype` (§10.2: after authorization)."""
    from flask import request

    accept = request.headers.get("Accept")
    if not accept_allows(accept, mimetype):
        raise error_list(406, f"cannot answer with any type in Accept '{accept}': this resource is {mimetype}")


def signed_request(action: str, *, malformed: Optional[Callable[[bytes], Any]] = None,
                   node_arg: Optional[str] = None, produces: Optional[str] = JSON) -> Callable:
    """Decorator: run the §10.2 pipeline, then call the view.

    `malformed(body)` is the resource's own malformed-request check (runs
    before authentication, as in the original); its result is put in
    `flask.g.parsed`. The authenticated principal is `flask.g.requestor`.
    `produces` is the view's response type: after authorization the request's
    `Accept` must allow it (else 406, as webmachine); None when the view
    negotiates itself (the SSE feeds).
    """

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from flask import current_app, g, request

            settings = current_app.extensions["pushjobs"].settings
            environ = request.environ
            xops = xops_headers(environ)
            info = check_headers(xops)
            body = read_body()
            g.body = body
            g.parsed = malformed(body) if malformed is not None else None
            org_name = kwargs.get("org", "")
            path = raw_request_path(environ, request.path)
            requestor = authenticate(org_name, info, xops, request.method, path, body)
            authorize(requestor, action, node=kwargs.get(node_arg) if node_arg else None,
                      validate_client_node_name=settings.validate_client_node_name)
            if produces is not None:
                check_accept(produces)
            g.requestor = requestor
            return view(*args, **kwargs)

        return wrapper

    return decorate
