"""`make bench`: the scale suite as pytest items (not part of `make test`: tests/perf is
excluded by `norecursedirs` and only collected when named).

Sizes and databases come from the environment, so the same target runs a
quick check or the full 10,000-node measurement:

    PUSHJOBS_BENCH_NODES=1000,10000  PUSHJOBS_BENCH_DBS=sqlite,postgresql
    PUSHJOBS_BENCH_STEADY=300  PUSHJOBS_BENCH_RUNS=5  make bench

Defaults: 1,000 nodes, SQLite, 60 s steady state, 5 fan-out runs. Every run
appends its tables to docs/performance.md (PUSHJOBS_BENCH_NO_DOC=1 to skip).
"""

from __future__ import annotations

import os

import pytest

from tests.perf.bench import build_parser, suite

NODES = [int(x) for x in os.environ.get("PUSHJOBS_BENCH_NODES", "1000").split(",") if x.strip()]
DBS = [x.strip() for x in os.environ.get("PUSHJOBS_BENCH_DBS", "sqlite").split(",") if x.strip()]


@pytest.mark.timeout(7200)
@pytest.mark.parametrize("db", DBS)
@pytest.mark.parametrize("nodes", NODES)
def test_suite(nodes: int, db: str) -> None:
    args = build_parser().parse_args([
        "suite", "--nodes", str(nodes), "--db", db,
        "--steady", os.environ.get("PUSHJOBS_BENCH_STEADY", "60"),
        "--runs", os.environ.get("PUSHJOBS_BENCH_RUNS", "5"),
        "--api-seconds", os.environ.get("PUSHJOBS_BENCH_API_SECONDS", "10"),
    ])
    assert suite(args) == 0, "the suite could not finish; see the section appended to docs/performance.md"
