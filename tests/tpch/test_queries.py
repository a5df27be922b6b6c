"""The 22 TPC-H queries, as the gate declares them: each runs on PostgreSQL 18 and 15 and has
an answer at the CI scale, and each TopK query's order leaves no ties.

The data is loaded once per server, with the gate's own ``load``, into a database of this
module; the queries only read it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from pgtrickle.dev.cluster import LocalCluster
from tests.fixtures.cluster import Database
from tests.tpch.data import CI_SCALE, load
from tests.tpch.queries import QUERIES, TOPK

_LIMIT = re.compile(r"\nORDER BY (?P<order>[^\n]+)\nLIMIT (?P<limit>\d+)$")


@pytest.fixture(scope="module", params=["pg18", "pg15"])
def tpch(request: pytest.FixtureRequest) -> Iterator[Database]:
    """TPC-H at the CI scale in a database of its own, on each server there is."""
    cluster: LocalCluster | None = request.getfixturevalue(
        "pg_cluster" if request.param == "pg18" else "pg15_cluster"
    )
    if cluster is None:
        pytest.skip("Debian's PostgreSQL 15 is not installed")
    database = Database(cluster, f"tpch_queries_{request.param}")
    cluster.create_database(database.name)
    try:
        load(database.dsn, CI_SCALE)
        yield database
    finally:
        cluster.drop_database(database.name)


def test_there_are_22_queries_and_five_of_them_are_topk() -> None:
    assert list(QUERIES) == [f"q{n:02d}" for n in range(1, 23)]
    assert TOPK == {"q02": 100, "q03": 10, "q10": 20, "q18": 100, "q21": 100}


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_only_the_topk_queries_end_in_a_limit_and_it_is_theirs(name: str) -> None:
    found = _LIMIT.search(QUERIES[name])
    assert (int(found["limit"]) if found else None) == TOPK.get(name)


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_intervals_are_written_as_one_string(name: str) -> None:
    """``interval '3 months'``, never ``interval '3' month``: the form analysts write, and the
    one the compiler's parser must keep."""
    literals = re.findall(r"interval\s*'([^']*)'", QUERIES[name], re.IGNORECASE)
    assert all(re.fullmatch(r"\d+ [a-z]+", literal) for literal in literals), literals


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_every_query_runs_and_has_an_answer_without_nulls(tpch: Database, name: str) -> None:
    """An empty answer, or one of NULLs (an aggregate over nothing), would test nothing."""
    with psycopg.connect(tpch.dsn) as conn:
        rows = conn.execute(QUERIES[name]).fetchall()
    assert rows, f"{name} has no answer at scale {CI_SCALE}"
    assert all(value is not None for row in rows for value in row), f"{name} answers NULL"


@pytest.mark.parametrize("name", sorted(TOPK))
def test_the_order_of_a_topk_query_ties_no_two_rows(tpch: Database, name: str) -> None:
    """Without its LIMIT, no two rows of the answer are equal on the ORDER BY: whichever
    plan the server picks, the rows under the limit are the same set."""
    found = _LIMIT.search(QUERIES[name])
    assert found is not None
    unlimited = QUERIES[name][: found.start("limit") - len("LIMIT ")]
    keys = re.sub(r"\s+DESC\b", "", found["order"])
    with psycopg.connect(tpch.dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*), count(DISTINCT ({})) FROM ({}) AS q").format(
                sql.SQL(keys), sql.SQL(unlimited)
            )
        ).fetchone()
    assert row is not None
    rows, distinct = row
    assert rows > 0 and distinct == rows, f"{name}: {rows - distinct} rows tie on ORDER BY {keys}"
