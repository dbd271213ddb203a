"""validate_job: every rule of PROTOCOL.md §10.5 and the 400s that replace the original's 500s (S10).

Pure (no server): each case is one row. The same rules are exercised over
real HTTP in test_api_e2e.py.
"""
import base64
import json

import pytest

from pushjobs.server.api.errors import ApiError
from pushjobs.server.api.jobs import JobSpec, new_job_id, validate_job


def _err(body) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ApiError) as ei:
        validate_job(raw)
    assert ei.value.status == 400
    assert isinstance(ei.value.body["error"], str)  # job validation errors are string-shaped (§10.2)
    return ei.value.body["error"]


OK = {"command": "chef-client", "nodes": ["a", "b"]}

# (body, expected message) in the original's check order
ORIGINAL_RULES = [
    ({"nodes": ["a"]}, "invalid command supplied"),
    ({"command": 1, "nodes": ["a"]}, "invalid command supplied"),
    ({"command": None, "nodes": ["a"]}, "invalid command supplied"),
    ({"command": "x"}, "at least one node must be supplied"),
    ({"command": "x", "nodes": "a"}, "at least one node must be supplied"),
    ({"command": "x", "nodes": ["a", 1]}, "at least one node must be supplied"),
    ({"command": "x", "nodes": []}, "at least one node must be supplied"),
    ({**OK, "run_timeout": "10"}, "invalid type supplied for run_timeout (expected a number)"),
    ({**OK, "run_timeout": None}, "invalid type supplied for run_timeout (expected a number)"),
    ({**OK, "run_timeout": True}, "invalid type supplied for run_timeout (expected a number)"),
    ({**OK, "quorum": "1"}, "invalid type supplied for quorum (expected a number)"),
    ({**OK, "quorum": None}, "invalid type supplied for quorum (expected a number)"),
    ({**OK, "capture_output": "yes"}, "invalid type supplied for capture_output (expected a boolean)"),
    ({**OK, "capture_output": 1}, "invalid type supplied for capture_output (expected a boolean)"),
    ({**OK, "bogus": 1}, "invalid key supplied: 'bogus'"),
    ({**OK, "file": "text:abc"}, "invalid file contents (expected 'base64:...' or 'raw:...')"),
    ({**OK, "file": "base64:!!!"}, "invalid file contents (couldn't decode base64 string)"),
    ({**OK, "file": "raw:" + "x" * 100001}, "invalid file size (must be <= 100000 bytes)"),
    ({**OK, "file": "base64:" + base64.b64encode(b"x" * 100001).decode()},
     "invalid file size (must be <= 100000 bytes)"),
]


@pytest.mark.parametrize("body,message", ORIGINAL_RULES)
def test_original_rules(body, message):
    assert _err(body) == message


@pytest.mark.parametrize("field,value", [
    ("user", 1), ("dir", ["/"]), ("env", "A=1"), ("env", {"A": 1}), ("file", 5),
])
def test_option_types_name_the_field(field, value):
    msg = _err({**OK, field: value})
    assert field in msg and msg.startswith("invalid type supplied for")


def test_type_checks_follow_field_order():
    # command first, then nodes, run_timeout, quorum, user, dir, env, file, capture_output
    assert _err({"command": 1, "nodes": 1}) == "invalid command supplied"
    assert _err({"command": "x", "nodes": 1, "run_timeout": "x"}) == "at least one node must be supplied"
    assert "run_timeout" in _err({**OK, "run_timeout": "x", "quorum": "x"})
    assert "quorum" in _err({**OK, "quorum": "x", "user": 1})
    assert "user" in _err({**OK, "user": 1, "capture_output": 1})
    # type errors win over unknown keys and empty node lists
    assert "quorum" in _err({"command": "x", "nodes": [], "quorum": "x", "zzz": 1})
    assert _err({"command": "x", "nodes": [], "zzz": 1}) == "invalid key supplied: 'zzz'"


def test_duplicate_env_key():
    body = b'{"command":"x","nodes":["a"],"env":{"A":"1","A":"2"}}'
    assert _err(body) == "invalid environment value (duplicate key)"


@pytest.mark.parametrize("body,needle", [
    (b"", "invalid JSON"),
    (b"{", "invalid JSON"),
    (b"not json", "invalid JSON"),
    (b"\xff\xfe", "invalid JSON"),
    (b'{"command":"x","nodes":["a"],"quorum":NaN}', "invalid JSON"),
    (b'{"command":"x","nodes":["a"],"run_timeout":Infinity}', "invalid JSON"),
    (b"[]", "JSON object"),
    (b'"x"', "JSON object"),
    (b"null", "JSON object"),
    (b'{"command":"x","command":"y","nodes":["a"]}', "'command'"),
])
def test_malformed_bodies_are_400(body, needle):
    assert needle in _err(body)


@pytest.mark.parametrize("field,value", [
    ("quorum", 1.5), ("quorum", -1), ("run_timeout", 0.25), ("run_timeout", -5), ("run_timeout", 2**31),
    ("quorum", 1e300),
])
def test_fractional_negative_or_huge_numbers(field, value):
    msg = _err({**OK, field: value})
    assert field in msg and "non-negative integer" in msg


def test_duplicate_and_bad_node_names():
    assert "duplicate node name in nodes: 'a'" in _err({"command": "x", "nodes": ["a", "b", "a"]})
    assert "nodes" in _err({"command": "x", "nodes": [""]})
    assert "nodes" in _err({"command": "x", "nodes": ["n" * 256]})
    assert "nodes" in _err({"command": "x", "nodes": ["a\x00b"]})


def test_nul_characters_and_long_user():
    assert "command" in _err({**OK, "command": "a\x00"})
    assert "env" in _err({**OK, "env": {"A": "\x00"}})
    assert "user" in _err({**OK, "user": "u" * 256})


def test_valid_job_full():
    spec = validate_job(json.dumps({
        "command": "", "nodes": ["a", "b"], "quorum": 2.0, "run_timeout": 0, "user": "deploy",
        "dir": "/srv", "env": {"A": "1"}, "file": "base64:" + base64.b64encode(b"x" * 100000).decode(),
        "capture_output": True,
    }).encode())
    assert spec == JobSpec(command="", nodes=("a", "b"), quorum=2, run_timeout=0, user="deploy", dir="/srv",
                           env={"A": "1"}, file=spec.file, capture_output=True)
    assert validate_job(json.dumps({**OK, "file": "raw:" + "é" * 50000}).encode()).file.startswith("raw:")


def test_valid_job_defaults():
    spec = validate_job(json.dumps(OK).encode())
    assert (spec.quorum, spec.run_timeout, spec.user, spec.env, spec.capture_output) == (None, None, None, None, False)


def test_job_id_shape():
    guid = "0123456789abcdef0123456789abcdef"
    ids = {new_job_id(guid) for _ in range(50)}
    assert len(ids) == 50
    for i in ids:
        assert len(i) == 32 and i.startswith("456789abcdef") and all(c in "0123456789abcdef" for c in i)
