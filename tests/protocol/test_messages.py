"""Message catalogue (§5): every type both ways, validation, extras, job ids."""

from __future__ import annotations

import json

import pytest

from pushjobs.protocol import ProtocolError, messages as m

TS = "Tue, 04 Sep 2012 23:01:02 GMT"
JOB = "aaaaaaaaaaaa25fd67fa8715fd547d3d"

# §5.1 examples, verbatim
HEARTBEAT = (
    '{"node":"web01","client":"web01","protocol_version":"2.0","org":"acme","type":"heartbeat",'
    '"sequence":17,"timestamp":"Tue, 04 Sep 2012 23:01:02 GMT",'
    '"incarnation_id":"0d4c9ab6-6a4b-4d0c-9f5e-8a1a4f9f3d21","job_state":"idle","job_id":null}'
)
SUCCEEDED = (
    '{"node":"web01","client":"web01","protocol_version":"2.0","org":"acme","type":"succeeded",'
    '"sequence":23,"timestamp":"Tue, 04 Sep 2012 23:05:40 GMT",'
    '"incarnation_id":"0d4c9ab6-6a4b-4d0c-9f5e-8a1a4f9f3d21",'
    '"job_id":"aaaaaaaaaaaa25fd67fa8715fd547d3d","stdout":"hello\\n","stderr":""}'
)


def _client(type_, **kw):
    d = {"node": "web01", "client": "web01", "protocol_version": "2.0", "org": "acme", "type": type_,
         "sequence": 3, "timestamp": TS, "incarnation_id": "inc-1", "job_id": JOB}
    d.update(kw)
    return d


def test_spec_examples_round_trip_byte_for_byte():
    hb = m.parse_client_message(json.loads(HEARTBEAT))
    assert isinstance(hb, m.ClientHeartbeat)
    assert (hb.node, hb.org, hb.sequence, hb.job_state, hb.job_id) == ("web01", "acme", 17, "idle", None)
    assert hb.to_body() == HEARTBEAT.encode()
    done = m.parse_client_message(json.loads(SUCCEEDED))
    assert isinstance(done, m.Succeeded) and done.stdout == "hello\n" and done.stderr == ""
    assert done.to_body() == SUCCEEDED.encode()


@pytest.mark.parametrize("type_", sorted(m.CLIENT_MESSAGE_TYPES))
def test_every_client_type_round_trips(type_):
    d = _client(type_, **({"job_state": "running"} if type_ == "heartbeat" else {}))
    msg = m.parse_client_message(d)
    assert type(msg) is m.CLIENT_MESSAGE_TYPES[type_]
    assert msg.type == type_
    assert json.loads(msg.to_body()) == d
    assert m.parse_client_message(json.loads(msg.to_body())) == msg
    assert type(msg).from_body(msg.to_body()) == msg


def test_client_message_key_order():
    msg = m.client_message("failed", node="n", org="o", sequence=1, timestamp=TS, incarnation_id="i",
                           client="c", job_id=JOB, stdout="x")
    assert list(json.loads(msg.to_body())) == [
        "node", "client", "protocol_version", "org", "type", "sequence", "timestamp",
        "incarnation_id", "job_id", "stdout",
    ]
    assert msg.protocol_version == "2.0"


SERVER_CASES = {
    "abort": {},
    "ack": {},
    "commit": {"job_id": JOB, "server": "push.example.com", "command": "chef-client", "user": "deploy",
               "dir": "/srv/app", "env": {"K": "V"}, "file": "base64:dGVzdA==", "capture": False},
    "run": {"job_id": JOB},
    "heartbeat": {"server": "pushy-host", "incarnation_id": "e0d96969-db1a-4df5-aabd-a029de131ca3"},
}


@pytest.mark.parametrize("type_", sorted(SERVER_CASES))
def test_every_server_type_round_trips_with_sequence_and_timestamp_first(type_):
    msg = m.server_message(type_, sequence=7, timestamp=TS, **SERVER_CASES[type_])
    assert type(msg) is m.SERVER_MESSAGE_TYPES[type_]
    body = msg.to_body()
    assert body.startswith(b'{"sequence":7,"timestamp":"' + TS.encode() + b'","type":"' + type_.encode() + b'"')
    assert m.parse_server_message(json.loads(body)) == msg


def test_spec_abort_body_is_the_signing_vector_body():
    assert m.Abort(sequence=1, timestamp=TS).to_body() == (
        b'{"sequence":1,"timestamp":"Tue, 04 Sep 2012 23:01:02 GMT","type":"abort"}'
    )


def test_commit_optional_fields_omitted_and_capture_always_present():
    msg = m.server_message("commit", sequence=1, timestamp=TS, job_id=JOB, command="chef-client", server="s")
    d = json.loads(msg.to_body())
    assert d == {"sequence": 1, "timestamp": TS, "type": "commit", "job_id": JOB, "server": "s",
                 "command": "chef-client", "capture": False}
    assert (msg.user, msg.dir, msg.env, msg.file) == (None, None, None, None)


def test_unknown_fields_are_kept_in_extra_and_written_back():
    msg = m.parse_client_message(_client("ack_run", future="x", nested={"a": [1]}))
    assert msg.extra == {"future": "x", "nested": {"a": [1]}}
    assert json.loads(msg.to_body())["nested"] == {"a": [1]}
    srv = m.parse_server_message({"sequence": 1, "timestamp": TS, "type": "abort", "job_id": JOB})
    assert srv.extra == {"job_id": JOB}


@pytest.mark.parametrize("field", ["node", "org", "sequence", "timestamp", "incarnation_id"])
def test_missing_required_client_field_named(field):
    d = _client("ack_commit")
    del d[field]
    with pytest.raises(ProtocolError) as exc:
        m.parse_client_message(d)
    assert exc.value.reason == "missing_field"
    assert exc.value.field == field and exc.value.msg_type == "ack_commit"
    assert repr(field) in str(exc.value)


def test_optional_client_fields_default():
    d = _client("aborted")
    for k in ("client", "protocol_version", "job_id"):
        del d[k]
    msg = m.parse_client_message(d)
    assert (msg.client, msg.protocol_version, msg.job_id) == ("", "2.0", None)


def test_heartbeat_needs_valid_job_state():
    d = _client("heartbeat")
    with pytest.raises(ProtocolError) as exc:
        m.parse_client_message(d)
    assert (exc.value.reason, exc.value.field) == ("missing_field", "job_state")
    with pytest.raises(ProtocolError) as exc:
        m.parse_client_message(_client("heartbeat", job_state="dancing"))
    assert (exc.value.reason, exc.value.field) == ("bad_field", "job_state")


@pytest.mark.parametrize(
    "field, value",
    [("node", 1), ("org", None), ("sequence", "1"), ("sequence", True), ("sequence", 1.5),
     ("timestamp", 12), ("incarnation_id", []), ("job_id", 5), ("client", {}), ("stdout", 1)],
)
def test_bad_client_field_types(field, value):
    with pytest.raises(ProtocolError) as exc:
        m.parse_client_message(_client("succeeded", **{field: value}))
    assert exc.value.reason == "bad_field" and exc.value.field == field


@pytest.mark.parametrize(
    "value, expected",
    [(None, None), ("null", None), (JOB, JOB), ("x" * 64, "x" * 64), ("x" * 65, m.INVALID_JOB_ID),
     ("é" * 33, m.INVALID_JOB_ID)],
)
def test_client_job_id_rules(value, expected):
    assert m.parse_client_message(_client("aborted", job_id=value)).job_id == expected


@pytest.mark.parametrize(
    "type_, fields, missing",
    [("commit", {"command": "c"}, "job_id"), ("commit", {"job_id": JOB}, "command"),
     ("run", {}, "job_id"), ("heartbeat", {"server": "s"}, "incarnation_id")],
)
def test_missing_required_server_field_named(type_, fields, missing):
    with pytest.raises(ProtocolError) as exc:
        m.server_message(type_, sequence=1, timestamp=TS, **fields)
    assert exc.value.reason == "missing_field" and exc.value.field == missing
    assert exc.value.msg_type == type_


@pytest.mark.parametrize(
    "fields, bad",
    [({"env": {"K": 1}}, "env"), ({"env": ["K"]}, "env"), ({"capture": "yes"}, "capture"),
     ({"user": 0}, "user"), ({"file": []}, "file"), ({"job_id": None}, "job_id")],
)
def test_bad_commit_fields(fields, bad):
    d = {"job_id": JOB, "command": "c", **fields}
    with pytest.raises(ProtocolError) as exc:
        m.server_message("commit", sequence=1, timestamp=TS, **d)
    assert exc.value.reason == "bad_field" and exc.value.field == bad


def test_dispatch_errors():
    with pytest.raises(ProtocolError) as exc:
        m.parse_client_message({"node": "n"})
    assert (exc.value.reason, exc.value.field) == ("missing_field", "type")
    for t in ("started", "abort", 3, None):
        with pytest.raises(ProtocolError) as exc:
            m.parse_client_message(_client(t))
        assert (exc.value.reason, exc.value.field) == ("bad_field", "type")
    with pytest.raises(ProtocolError):
        m.parse_server_message({"sequence": 1, "timestamp": TS, "type": "ack_commit"})
    with pytest.raises(ProtocolError) as exc:
        m.parse_server_message(["not", "a", "dict"])
    assert exc.value.reason == "bad_json"


def test_from_dict_checks_type_when_present():
    with pytest.raises(ProtocolError):
        m.Run.from_dict({"sequence": 1, "timestamp": TS, "type": "commit", "job_id": JOB})
    assert m.Run.from_dict({"sequence": 1, "timestamp": TS, "job_id": JOB}).job_id == JOB


def test_messages_are_frozen():
    msg = m.Run(sequence=1, timestamp=TS, job_id=JOB)
    with pytest.raises(AttributeError):
        msg.job_id = "x"


def test_non_ascii_output_is_utf8_and_compact():
    msg = m.client_message("succeeded", node="n", org="o", sequence=1, timestamp=TS,
                           incarnation_id="i", stdout="héllo ✓")
    body = msg.to_body()
    assert "héllo ✓".encode() in body and b'", "' not in body and b'": ' not in body
    lone = m.client_message("failed", node="n", org="o", sequence=1, timestamp=TS,
                            incarnation_id="i", stderr="\udc80")
    assert json.loads(lone.to_body())["stderr"] == "\udc80"


def test_new_incarnation_id_is_a_fresh_uuid():
    import uuid

    a, b = m.new_incarnation_id(), m.new_incarnation_id()
    assert a != b and uuid.UUID(a).version == 4
