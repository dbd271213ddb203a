"""The Chef query parser and matcher (pure; microseconds per test)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushjobs.server.search import (
    DEFAULT_ROWS,
    QueryError,
    deep_merge,
    expand_node,
    node_json,
    parse_query,
    search_nodes,
    split_run_list,
)

WEB01 = node_json(
    "web01",
    chef_environment="production",
    run_list=["role[web]", "recipe[apache2::mod_ssl]", "nginx"],
    automatic={
        "platform": "debian",
        "platform_family": "debian",
        "platform_version": "12.4",
        "kernel": {"name": "Linux", "machine": "x86_64", "release": "6.1.0"},
        "roles": ["base"],
        "ipaddress": "10.0.0.11",
        "fqdn": "web01.example.com",
        "network": {"interfaces": {"eth0": {"flags": ["UP", "BROADCAST"], "mtu": 1500}}},
        "cpu": {"total": 4},
        "virtual": True,
        "nothing": None,
    },
    normal={"tags": ["blue", "canary"], "app": {"port": 8080}},
    default={"app": {"port": 80, "name": "shop front"}},
)
WEB02 = node_json(
    "web02",
    chef_environment="production",
    run_list=["role[web]"],
    automatic={
        "platform": "ubuntu",
        "kernel": {"name": "Linux", "machine": "aarch64"},
        "ipaddress": "10.0.0.12",
        "cpu": {"total": 16},
    },
    normal={"tags": ["green"]},
)
DB01 = node_json(
    "db01",
    chef_environment="staging",
    run_list=["role[db]", "recipe[postgresql]"],
    automatic={"platform": "centos", "kernel": {"name": "Linux"}, "cpu": {"total": 8}},
    override={"app": {"port": 5432}},
)
WIN01 = node_json(
    "win01",
    automatic={"platform": "windows", "kernel": {"name": "Windows_NT"}, "roles": ["web"]},
)
NODES = [WEB01, WEB02, DB01, WIN01]


def names(q: str) -> list[str]:
    return [n["name"] for n in search_nodes(q, NODES).rows]


# --- expansion ---------------------------------------------------------------


def test_deep_merge_precedence_and_array_replacement() -> None:
    assert deep_merge({"a": {"b": 1, "c": [1, 2]}}, {"a": {"c": [3]}}) == {"a": {"b": 1, "c": [3]}}
    assert deep_merge({"a": 1}, {"a": {"x": 1}}) == {"a": {"x": 1}}


def test_split_run_list() -> None:
    assert split_run_list(["role[web]", "recipe[a::b]", "bare", 3]) == (["web"], ["a::b", "bare"])


def test_expand_joins_paths_and_indexes_the_leaf_key() -> None:
    d = expand_node(WEB01)
    assert d["kernel_name"] == {"Linux"}
    assert "Linux" in d["name"]  # the leaf key alone, as Chef's expander does
    assert d["kernel"] == {"name", "machine", "release"}  # hash keys are values of the path
    assert d["network_interfaces"] == {"eth0"}
    assert d["network_interfaces_eth0_flags"] == {"UP", "BROADCAST"}
    assert d["cpu_total"] == {"4"}
    assert d["virtual"] == {"true"}
    assert d["nothing"] == {""}


def test_expand_merges_precedence_levels() -> None:
    assert expand_node(WEB01)["app_port"] == {"8080"}  # normal beats default
    assert expand_node(DB01)["app_port"] == {"5432"}  # override
    assert expand_node(WEB01)["app_name"] == {"shop front"}


def test_expand_meta_fields() -> None:
    d = expand_node(WEB01)
    assert d["chef_type"] == {"node"}
    assert d["chef_environment"] == {"production"}
    assert d["role"] == {"web", "base"}
    assert d["recipe"] == {"apache2::mod_ssl", "nginx"}
    assert "role[web]" in d["run_list"]


# --- matching ------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, expected",
    [
        ("*:*", ["db01", "web01", "web02", "win01"]),
        ("name:web01", ["web01"]),
        ("name:web*", ["web01", "web02"]),
        ("name:web0?", ["web01", "web02"]),
        ("name:*01", ["db01", "web01", "win01"]),
        ("NAME:WEB01", []),  # case-sensitive, as Chef
        ("name:WEB01", []),
        ("role:web", ["web01", "web02", "win01"]),  # run list and automatic.roles
        ("role:base", ["web01"]),
        ("role:db", ["db01"]),
        ("recipe:postgresql", ["db01"]),
        ("recipe:apache2\\:\\:mod_ssl", ["web01"]),
        ("recipe:apache2::mod_ssl", ["web01"]),
        ("recipe:apache2*", ["web01"]),
        ("recipe:nginx", ["web01"]),
        ("tags:blue", ["web01"]),
        ("tags:green OR tags:canary", ["web01", "web02"]),
        ("chef_environment:production", ["web01", "web02"]),
        ("chef_environment:_default", ["win01"]),
        ("platform:debian", ["web01"]),
        ("platform:Debian", []),
        ("kernel_name:Linux", ["db01", "web01", "web02"]),
        ("kernel_name:linux", []),
        ("kernel_machine:x86_64", ["web01"]),
        ("machine:aarch64", ["web02"]),
        ("network_interfaces:eth0", ["web01"]),
        ("network_interfaces_*_flags:UP", ["web01"]),
        ("flags:BROADCAST", ["web01"]),
        ("flags:broadcast", []),
        ("ipaddress:10.0.0.*", ["web01", "web02"]),
        ('app_name:"shop front"', ["web01"]),
        ('app_name:"shop"', ["web01"]),  # phrase = leading whole words
        ('app_name:"shop fr"', []),
        ("fqdn:*", ["web01"]),
        ("nosuchfield:*", []),
        ("role:web AND platform:debian", ["web01"]),
        ("role:web && platform:ubuntu", ["web02"]),
        ("role:web AND NOT platform:debian", ["web02", "win01"]),
        ("role:web AND !platform:debian", ["web02", "win01"]),
        ("role:web -platform:debian", ["web02", "win01"]),
        ("+role:web +tags:green", ["web02"]),
        ("+role:web tags:green", ["web01", "web02", "win01"]),  # optional clause
        ("NOT role:web", ["db01"]),  # bare NOT: everyone but the matches
        ("-role:web", ["db01"]),
        ("NOT NOT role:db", ["db01"]),
        ("role:db OR platform:windows", ["db01", "win01"]),
        ("role:db || platform:windows", ["db01", "win01"]),
        ("role:db platform:windows", ["db01", "win01"]),  # juxtaposition is OR
        ("platform:debian OR platform:ubuntu AND tags:green", ["web01", "web02"]),
        ("(platform:debian OR platform:ubuntu) AND tags:green", ["web02"]),
        ("platform:(debian OR centos)", ["db01", "web01"]),
        ("platform:(debian centos) AND chef_environment:staging", ["db01"]),
        ("cpu_total:[8 TO 16]", ["db01", "web02"]),  # numeric range
        ("cpu_total:{8 TO 16]", ["web02"]),
        ("cpu_total:[* TO 8}", ["web01"]),
        ("platform:[c TO e]", ["db01", "web01"]),  # string range
        ("web02", ["web02"]),  # no field: any value
        ("Linux", ["db01", "web01", "web02"]),
        ("name:web01^2", ["web01"]),  # boost ignored
        ("name:web\\*", []),  # escaped wildcard is literal
        ("virtual:true", ["web01"]),
    ],
)
def test_queries(query: str, expected: list[str]) -> None:
    assert names(query) == expected


@pytest.mark.parametrize(
    "query, position",
    [
        ("", 0),
        ("   ", 3),
        ("role:web AND", 12),
        ("role:web OR", 11),
        ("(role:web", 9),
        ("role:web)", 8),
        ("role:", 5),
        (":web", 0),
        ('name:"web01', 5),
        ("NOT", 3),
        ("role:web AND AND x", 13),
        ("()", 1),
        ("x:[a TO", 7),
        ("x:[a b]", 5),
        ("x:[a TO b", 2),
        ("name:web~", 8),
        ("name:web\\", 8),
        ("]", 0),
        ("a AND (b OR c", 13),
        ("+", 1),
    ],
)
def test_malformed_queries_name_the_position(query: str, position: int) -> None:
    with pytest.raises(QueryError) as ei:
        parse_query(query)
    assert ei.value.position == position
    assert f"at position {position}" in str(ei.value)


def test_paging_and_total() -> None:
    r = search_nodes("*:*", NODES, start=1, rows=2)
    assert r.total == 4 and r.start == 1
    assert [n["name"] for n in r.rows] == ["web01", "web02"]
    assert r.to_json()["rows"][0]["json_class"] == "Chef::Node"
    assert search_nodes("*:*", NODES, start=10).rows == []
    assert DEFAULT_ROWS == 1000


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='ab:*?"()[]{} !+-&|\\^~TOANDR', max_size=20))
def test_parser_never_crashes(q: str) -> None:
    """Any input either parses or raises QueryError with a position inside the query."""
    try:
        query = parse_query(q)
    except QueryError as e:
        assert 0 <= e.position <= len(q)
    else:
        for n in NODES:
            query.matches(expand_node(n))


ATOMS = ["role:web", "role:db", "platform:debian", "tags:blue", "name:web*", "chef_environment:production",
         "cpu_total:[8 TO 16]", "*:*"]


def _set(q: str) -> set[str]:
    return set(names(q))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(ATOMS), st.sampled_from(ATOMS), st.sampled_from(ATOMS))
def test_boolean_algebra(a: str, b: str, c: str) -> None:
    """The operators mean what set algebra says, whatever the atoms."""
    every = _set("*:*")
    assert _set(f"{a} AND {b}") == _set(a) & _set(b) == _set(f"{a} && {b}")
    assert _set(f"{a} OR {b}") == _set(a) | _set(b) == _set(f"{a} || {b}") == _set(f"{a} {b}")
    assert _set(f"NOT {a}") == every - _set(a) == _set(f"-{a}") == _set(f"!{a}")
    assert _set(f"{a} AND NOT {b}") == _set(a) - _set(b)
    assert _set(f"{a} OR {b} AND {c}") == _set(a) | (_set(b) & _set(c))  # AND binds tighter
    assert _set(f"({a} OR {b}) AND {c}") == (_set(a) | _set(b)) & _set(c)
    assert _set(f"+{a} +{b}") == _set(a) & _set(b)
    assert _set(f"{a} -{b}") == _set(a) - _set(b)  # Lucene: a prohibited clause filters
