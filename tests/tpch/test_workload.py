"""The gate's workload: the refresh functions keep TPC-H's invariants, the updates reach every
column the queries read and stay in the columns' domains, and a seed fixes what one writer
does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from random import Random
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgtrickle.dev.cluster import LocalCluster
from tests.fixtures.cluster import Database
from tests.tpch import workload
from tests.tpch.data import SCHEMA, load
from tests.tpch.queries import QUERIES
from tests.tpch.workload import CHANGES, NOT_UPDATED, Lane, rf1, rf2, update


@pytest.fixture(scope="module")
def tpch(pg_cluster: LocalCluster) -> Iterator[Database]:
    """TPC-H at the CI scale, shared by this module's tests: each asserts on what it changed."""
    database = Database(pg_cluster, "tpch_workload")
    pg_cluster.create_database(database.name)
    try:
        load(database.dsn)
        yield database
    finally:
        pg_cluster.drop_database(database.name)


def _columns_read() -> set[str]:
    columns = re.findall(r"^\s+([a-z]+_[a-z]+)\s", SCHEMA.read_text(), re.MULTILINE)
    text = "\n".join(QUERIES.values())
    return {c for c in columns if re.search(rf"\b{c}\b", text)}


def test_the_updates_set_every_column_the_queries_read_but_a_documented_few() -> None:
    updated = {column for change in CHANGES for column in change.columns}
    assert _columns_read() - updated == set(NOT_UPDATED)


def test_rf1_inserts_orders_of_one_to_seven_lines_that_add_up(tpch: Database) -> None:
    with psycopg.connect(tpch.dsn) as conn:
        top = _value(conn, "SELECT max(o_orderkey) FROM orders")
        rf1(conn, Random(1), 20, Lane(1, 2))
        orders = conn.execute(
            "SELECT o_orderkey, o_custkey, o_orderstatus, o_totalprice, count(*),"
            "  max(l_linenumber), round(sum(l_extendedprice * (1 + l_tax) * (1 - l_discount)), 2),"
            "  string_agg(DISTINCT l_linestatus, ''),"
            "  bool_and(EXISTS (SELECT FROM partsupp"
            "           WHERE ps_partkey = l_partkey AND ps_suppkey = l_suppkey))"
            " FROM orders JOIN lineitem ON l_orderkey = o_orderkey"
            " WHERE o_orderkey > %s GROUP BY o_orderkey ORDER BY o_orderkey",
            (top,),
        ).fetchall()
        conn.rollback()
    first = top + 1 if top % 2 == 0 else top + 2
    assert [key for key, *_ in orders] == list(range(first, first + 40, 2)), "lane 1 of 2: odd"
    for key, customer, status, total, lines, last, charged, line_statuses, supplied in orders:
        assert 1 <= lines <= 7 and last == lines, key
        assert customer % 3 != 0, "a third of the customers never order"
        assert status == (line_statuses if len(line_statuses) == 1 else "P")
        assert supplied, "every line's part is sold by its supplier"
        assert total == charged, "the total price is the sum of the lines' charges"


def test_rf2_deletes_orders_with_their_lines(tpch: Database) -> None:
    with psycopg.connect(tpch.dsn) as conn:
        before = _value(conn, "SELECT count(*) FROM orders")
        rf2(conn, Random(2), 10)
        assert _value(conn, "SELECT count(*) FROM orders") == before - 10
        assert _value(conn, _ORPHAN_LINES) == 0
        conn.rollback()


_ORPHAN_LINES = (
    "SELECT count(*) FROM lineitem WHERE NOT EXISTS"
    " (SELECT FROM orders WHERE o_orderkey = l_orderkey)"
)

_DOMAINS = {
    "lines of quantity 1 to 50": "SELECT bool_and(l_quantity BETWEEN 1 AND 50) FROM lineitem",
    "discounts 0 to 0.10, taxes 0 to 0.08": (
        "SELECT bool_and(l_discount BETWEEN 0 AND 0.10 AND l_tax BETWEEN 0 AND 0.08) FROM lineitem"
    ),
    "dates from 1992 to 1998": (
        "SELECT bool_and(least(l_shipdate, l_commitdate, l_receiptdate) >= date '1992-01-01'"
        " AND greatest(l_shipdate, l_commitdate, l_receiptdate) <= date '1998-12-31')"
        " FROM lineitem"
    ),
    "the 25 nation names": "SELECT count(DISTINCT n_name) = 25 FROM nation",
    "the 5 region names": "SELECT count(DISTINCT r_name) = 5 FROM region",
    "nations in 5 regions of 5": (
        "SELECT bool_and(n = 5) FROM (SELECT count(*) AS n FROM nation GROUP BY n_regionkey) r"
    ),
    "phones of a country code and three groups": (
        "SELECT bool_and(c_phone ~ '^[1-3][0-9]-[0-9]{3}-[0-9]{3}-[0-9]{4} *$') FROM customer"
    ),
    "lines of parts their suppliers sell": (
        "SELECT bool_and(EXISTS (SELECT FROM partsupp"
        " WHERE ps_partkey = l_partkey AND ps_suppkey = l_suppkey)) FROM lineitem"
    ),
}


def test_updates_stay_in_the_domains_and_keep_every_order_with_its_lines(
    tpch: Database,
) -> None:
    with psycopg.connect(tpch.dsn) as conn:
        update(conn, Random(3), 600)
        broken = [what for what, check in _DOMAINS.items() if not _value(conn, check)]
        orphans = _value(conn, _ORPHAN_LINES)
        conn.rollback()
    assert not broken
    assert orphans == 0


def test_a_round_commits_most_transactions_and_rolls_back_some(tpch: Database) -> None:
    stats = workload.round(tpch.dsn, Random(4), orders=15, updates=150)
    assert stats.committed > 2 * stats.rolled_back > 0
    with psycopg.connect(tpch.dsn) as conn:
        assert _value(conn, _ORPHAN_LINES) == 0


def test_one_writer_from_one_seed_makes_the_same_changes(pg_cluster: LocalCluster) -> None:
    digests = []
    for copy in ("a", "b"):
        name = f"tpch_seeded_{copy}"
        pg_cluster.create_database(name)
        try:
            load(pg_cluster.dsn(name))
            workload.round(pg_cluster.dsn(name), Random(5), orders=10, updates=100, writers=1)
            with psycopg.connect(pg_cluster.dsn(name)) as conn:
                digests.append(_digest(conn))
        finally:
            pg_cluster.drop_database(name)
    assert digests[0] == digests[1]


def _digest(conn: psycopg.Connection[Any]) -> list[str]:
    tables = ("orders", "lineitem", "customer", "part", "partsupp", "supplier", "nation")
    digest = sql.SQL("SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {} t")
    return [str(_value(conn, digest.format(sql.Identifier(table)))) for table in tables]


def _value(
    conn: psycopg.Connection[Any], query: str | sql.Composed, params: tuple[object, ...] = ()
) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]
