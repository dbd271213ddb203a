"""Property tests: whatever bytes arrive, the parsers raise only ProtocolError
(or ChefAuthError for HTTP headers), and valid input always round-trips."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings, strategies as st

from pushjobs.protocol import ProtocolError, chef_auth, framing, keys, messages, signing, timestamps
from pushjobs.protocol.framing import HMAC_SHA256

KEY = bytes(range(32))
NOW = 1346799662.0
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

clause_names = st.sampled_from(["Version", "SigningMethod", "Signature", "SignedChecksum", "Foo", ""])
clause_values = st.one_of(
    st.sampled_from(["1.0", "2.0", "3", "hmac_sha256", "rsa2048_sha1", "", "x:y"]),
    st.text(max_size=20),
)
headerish = st.lists(st.tuples(clause_names, clause_values), max_size=6).map(
    lambda cs: ";".join(f"{n}:{v}" for n, v in cs).encode("utf-8", "surrogatepass")
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=30))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
message_keys = st.sampled_from(
    ["node", "org", "client", "protocol_version", "type", "sequence", "timestamp", "incarnation_id",
     "job_id", "job_state", "stdout", "stderr", "command", "server", "user", "dir", "env", "file",
     "capture", "other"]
)
type_values = st.sampled_from(sorted(set(messages.CLIENT_MESSAGE_TYPES) | set(messages.SERVER_MESSAGE_TYPES)))
message_dicts = st.dictionaries(message_keys, st.one_of(json_values, type_values), max_size=14)


@FAST
@given(st.one_of(st.binary(max_size=3000), headerish))
def test_parse_header_raises_only_protocol_error(data):
    try:
        h = framing.parse_header(data)
    except ProtocolError:
        return
    assert h.version in ("1.0", "2.0") and h.method in framing.SIGNING_METHODS and h.signature


@FAST
@given(st.lists(st.one_of(st.binary(max_size=300), headerish), max_size=4))
def test_decode_frames_random_frames_raise_only_protocol_error(frames):
    try:
        signing.decode_frames(frames, lambda d: KEY, max_body_size=65536, max_skew=300, now=NOW)
    except ProtocolError:
        pass


@FAST
@given(message_dicts, st.sampled_from([KEY, None, b"", "str-key", object()]))
def test_decode_frames_signed_random_json_raises_only_protocol_error(body_dict, key):
    body = json.dumps(body_dict).encode()
    frames = signing.encode_frames(body, HMAC_SHA256, KEY)
    try:
        out = signing.decode_frames(frames, lambda d: key, max_body_size=65536, max_skew=300, now=NOW)
    except ProtocolError:
        return
    assert out == body_dict


@FAST
@given(message_dicts)
def test_parse_messages_raise_only_protocol_error(d):
    for parse in (messages.parse_client_message, messages.parse_server_message):
        try:
            msg = parse(d)
        except ProtocolError:
            continue
        # whatever parses serializes and parses back to the same thing
        assert parse(json.loads(msg.to_body())) == msg


@FAST
@given(json_values)
def test_parse_messages_non_dict_bodies(v):
    for parse in (messages.parse_client_message, messages.parse_server_message):
        try:
            parse(v)
        except ProtocolError:
            pass


@FAST
@given(st.binary(max_size=400))
def test_message_from_body_raises_only_protocol_error(body):
    for cls in (messages.ClientHeartbeat, messages.Commit):
        try:
            cls.from_body(body)
        except ProtocolError:
            pass


@FAST
@given(st.integers(0, 2**31), st.text(max_size=20), st.text(max_size=20),
       st.one_of(st.none(), st.text(max_size=70)), st.sampled_from(messages.JOB_STATES))
def test_valid_heartbeat_round_trips_through_frames(seq, node, org, job_id, state):
    msg = messages.client_message("heartbeat", node=node, org=org, sequence=seq,
                                  timestamp=timestamps.http_date(NOW), incarnation_id="i",
                                  job_state=state, job_id=job_id)
    frames = signing.encode_frames(msg.to_body(), HMAC_SHA256, KEY)
    got = signing.decode_frames(frames, lambda d: KEY, max_body_size=65536, max_skew=300, now=NOW + 1)
    assert messages.parse_client_message(got) == msg


@FAST
@given(st.text(max_size=80))
def test_timestamp_parsers_raise_only_protocol_error(text):
    for parse in (timestamps.parse_http_date, timestamps.parse_iso8601):
        try:
            parse(text)
        except ProtocolError:
            pass


@FAST
@given(st.floats(min_value=0, max_value=2**33, allow_nan=False))
def test_timestamp_round_trips(t):
    assert timestamps.parse_http_date(timestamps.http_date(t)) == int(t)
    assert timestamps.parse_iso8601(timestamps.iso8601(t)) == int(t)


@FAST
@given(st.binary(max_size=64).map(lambda b: b[: len(b) - len(b) % 4]))
def test_z85_round_trip(data):
    assert keys.z85_decode(keys.z85_encode(data)) == data


@FAST
@given(st.one_of(st.text(max_size=60), st.binary(max_size=60)))
def test_z85_decode_raises_only_protocol_error(text):
    try:
        keys.z85_decode(text)
    except ProtocolError as e:
        assert e.reason == "bad_key"


auth_names = st.sampled_from(
    ["X-Ops-Sign", "x-ops-userid", "X-OPS-TIMESTAMP", "X-Ops-Content-Hash", "X-Ops-Authorization-1",
     "X-Ops-Authorization-2", "X-Ops-Authorization-x", "X-Ops-Server-API-Version", "Host"]
)


@FAST
@given(st.dictionaries(auth_names, st.one_of(st.text(max_size=40), st.sampled_from(
    ["algorithm=sha1;version=1.1;", "version=1.3", "2012-09-04T23:01:02Z", "AAAA"]))))
def test_chef_auth_parse_raises_only_chef_auth_error(headers):
    try:
        signed = chef_auth.parse_auth_headers(headers)
    except chef_auth.ChefAuthError:
        return
    assert chef_auth.verify_signature(signed, "GET", "/x", b"", _PUB) is False


from pathlib import Path  # noqa: E402

_PUB = keys.load_public_key((Path(__file__).parent / "data" / "test_key_spki.pem").read_bytes())


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["1.0", "1.1", "1.3"]), st.text(min_size=1, max_size=40),
       st.sampled_from(["GET", "POST", "put", "DELETE"]),
       st.lists(st.text(alphabet="abc-_.~%", min_size=0, max_size=8), max_size=5),
       st.binary(max_size=200), st.floats(min_value=0, max_value=2**32, allow_nan=False))
def test_chef_sign_verify_round_trip(version, user, method, segments, body, t):
    path = "/" + "/".join(segments)
    headers = chef_auth.sign_request(_KEY, user.strip() or "u", method, path, body, version=version, timestamp=t)
    signed = chef_auth.parse_auth_headers({k.lower(): v for k, v in headers.items()})
    assert chef_auth.verify_signature(signed, method, path + "/", body, _PUB)
    assert not chef_auth.verify_signature(signed, method, path + "/z", body, _PUB)


_KEY = keys.load_private_key((Path(__file__).parent / "data" / "test_key.pem").read_bytes())
