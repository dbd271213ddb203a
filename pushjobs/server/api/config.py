"""GET /organizations/ORG/pushy/config/NODE: the configuration handshake (PROTOCOL.md §2).

The ccpk (the node's CurveZMQ public key) is checked before the signature,
as in the original, but is admitted to the ZAP allow-list only after the
request is authenticated and authorized (§17.2 S5: the original cached it
first). An invalid Z85 key is 401 "Bad ccpk", not a crash (S5). With
`disable_curve_encryption` no ccpk is needed and no `curve_public_key` is
returned (S6).
"""

from __future__ import annotations

import base64
import logging
from typing import Any, Mapping, Optional
from urllib.parse import unquote

from flask import Blueprint, Response, current_app, g, request

from pushjobs.protocol.errors import ProtocolError
from pushjobs.server.api.errors import error, json_response
from pushjobs.server.api.status import runtime_value
from pushjobs.server.auth import signed_request, unauthorized

log = logging.getLogger(__name__)

bp = Blueprint("config", __name__, url_prefix="/organizations/<org>/pushy")

try:
    from importlib.metadata import version as _dist_version

    _VERSION = _dist_version("pushjobs")
except Exception:  # noqa: BLE001 - not installed as a distribution
    from pushjobs import __version__ as _VERSION

OFFLINE_THRESHOLD = 3
ONLINE_THRESHOLD = 2
Z85_KEY_LENGTH = 40


def query_ccpk(environ: Mapping[str, Any]) -> Optional[str]:
    """`?ccpk=` as `request.args.get("ccpk")` reads it, without parsing the query into a MultiDict.

    Why: every node sends exactly `ccpk=<percent-encoded key>`, and werkzeug's
    general query parsing was a visible share of a handshake (#8). That one
    shape (ASCII, one parameter, decodes as UTF-8) is decoded here the way
    `parse_qsl` decodes it (`+` is a space, then percent-decoding); anything
    else goes through werkzeug."""
    qs = environ.get("QUERY_STRING", "")
    if isinstance(qs, str) and qs.startswith("ccpk=") and "&" not in qs and qs.isascii():
        try:
            return unquote(qs[5:].replace("+", " "), errors="strict")
        except UnicodeDecodeError:
            pass
    return request.args.get("ccpk")


def check_ccpk(_body: bytes) -> Optional[bytes]:
    """The raw 32-byte curve key from `?ccpk=`, or None when encryption is disabled."""
    from pushjobs.protocol.keys import z85_decode

    settings = current_app.extensions["pushjobs"].settings
    if settings.disable_curve_encryption:
        return None
    ccpk = query_ccpk(request.environ)
    if ccpk is None:
        raise error(400, "Missing ccpk")
    if len(ccpk) != Z85_KEY_LENGTH:
        raise unauthorized("Bad ccpk")
    try:
        raw = z85_decode(ccpk)
    except (ProtocolError, ValueError):
        raise unauthorized("Bad ccpk") from None
    if len(raw) != 32:
        raise unauthorized("Bad ccpk")
    return raw


@bp.route("/config/<node>", methods=["GET"])
@signed_request("config", malformed=check_ccpk, node_arg="node")
def config(org: str, node: str) -> Response:
    from pushjobs.protocol.keys import rsa_encrypt

    state = current_app.extensions["pushjobs"]
    settings, runtime = state.settings, state.runtime
    requestor = g.requestor
    body: dict = {
        "type": "config",
        "host": settings.server_name,
        "push_jobs": {
            "heartbeat": {
                "out_addr": f"tcp://{settings.server_name}:{settings.server_heartbeat_port}",
                "command_addr": f"tcp://{settings.server_name}:{settings.command_port}",
                "interval": settings.heartbeat_interval / 1000.0,
                "offline_threshold": OFFLINE_THRESHOLD,
                "online_threshold": ONLINE_THRESHOLD,
            }
        },
        "node": node,
        "organization": org,
        "public_key": state.server_public_key_pem,
    }
    if g.parsed is not None:
        curve_public_key = runtime_value(runtime.curve_public_key)
        if not curve_public_key:
            log.error("config for %s/%s: the runtime has no curve key yet", org, node)
            raise error(503, "The push jobs server is starting; try again")
        runtime.allow_curve_key(g.parsed)
        body["curve_public_key"] = curve_public_key
    session_key = runtime.session_key(org, node)
    encrypted = rsa_encrypt(requestor.public_key, session_key)
    body["encoded_session_key"] = {"method": "hmac_sha256", "key": base64.b64encode(encrypted).decode("ascii")}
    body["lifetime"] = int(settings.config_lifetime)
    body["max_message_skew"] = int(settings.max_message_skew)
    body["max_body_size"] = int(settings.max_body_size)
    body["incarnation_id"] = runtime_value(runtime.incarnation_id)
    # Our marker, after every original field (unknown fields are ignored by the
    # stock client): the agent reports node facts to `…/nodes/NODE` only when
    # it sees `node_facts` here; behind a Chef server that URL is the real node.
    body["pushjobs"] = {"version": _VERSION, "node_facts": "nodes" in current_app.blueprints}
    log.info("config for node %s/%s sent to %s %s", org, node, requestor.kind, requestor.name)
    return json_response(body)
