"""Bytes <-> messages. Pure functions, no sockets (see docs/architecture.md).

The names of the contract are re-exported here; the modules are
``errors``, ``framing``, ``signing``, ``timestamps``, ``messages``,
``chef_auth`` and ``keys``.
"""

from .errors import ProtocolError
from .framing import (
    HMAC_SHA256,
    MAX_HEADER_BYTES,
    RSA2048_SHA1,
    Header,
    format_header,
    parse_header,
)
from .keys import (
    curve_keypair,
    generate_rsa_key,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_key_pem,
    rsa_decrypt,
    rsa_encrypt,
    write_private_key,
    z85_decode,
    z85_encode,
)
from .signing import (
    decode_frames,
    encode_frames,
    hmac_sign,
    hmac_verify,
    rsa_sign,
    rsa_verify,
)
from .timestamps import (
    http_date,
    iso8601,
    parse_http_date,
    parse_iso8601,
    sse_timestamp,
)
from .messages import (
    ClientMessage,
    ServerMessage,
    parse_client_message,
    parse_server_message,
)
from .chef_auth import (
    ChefAuthError,
    SignedRequest,
    parse_auth_headers,
    sign_request,
    verify_signature,
)
