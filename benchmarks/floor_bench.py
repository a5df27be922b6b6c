"""`./run bench floor`: the least work any differential refresh of a TPC-H query must do,
side by side with PostgreSQL's ``REFRESH MATERIALIZED VIEW`` of the same query.

A differential refresh executed by PostgreSQL has to read each changed row at least once and
join it, by index, to the rows of the other tables it meets, then aggregate. This measures
exactly that and nothing more: the changed orders and lineitems are already in analyzed temp
tables (as if staged for free, no netting), each change is joined once (the first-order terms
of the join rule, no correction terms), the result is aggregated and thrown away (no MERGE,
no commit, no refresh protocol). It is a lower bound of the time of a differential refresh,
whatever the compiler: where the materialized view is less than ten times slower than this
floor, "ten times faster than REFRESH MATERIALIZED VIEW" cannot be met on the machine.

The change is the ``tpch`` benchmark's: half the changed orders are copies of random orders
with their lineitems under new keys, half are deletes of random orders with theirs (here
simulated in the temp tables, the base tables untouched).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from benchmarks import tpch_bench
from tests.tpch.queries import QUERIES

FLOOR_QUERIES = ("q01", "q03", "q05", "q10", "q18")

# The first-order delta terms of each query, over the changed lineitems ``dl`` and orders
# ``dor`` (column ``w``: +1 inserted, -1 deleted), joined to the other tables as they are.
FLOORS: dict[str, str] = {
    "q01": """
        SELECT l_returnflag, l_linestatus, sum(w), sum(w * l_quantity),
               sum(w * l_extendedprice), sum(w * l_extendedprice * (1 - l_discount)),
               sum(w * l_extendedprice * (1 - l_discount) * (1 + l_tax)),
               sum(w * l_discount)
        FROM dl WHERE l_shipdate <= date '1998-12-01' - interval '90 days'
        GROUP BY l_returnflag, l_linestatus""",
    "q03": """
        SELECT k, sum(r) FROM (
          SELECT d.l_orderkey AS k, d.w * d.l_extendedprice * (1 - d.l_discount) AS r
          FROM dl d JOIN orders o ON o.o_orderkey = d.l_orderkey
          JOIN customer c ON c.c_custkey = o.o_custkey
          WHERE c.c_mktsegment = 'BUILDING' AND o.o_orderdate < date '1995-03-15'
            AND d.l_shipdate > date '1995-03-15'
          UNION ALL
          SELECT l.l_orderkey, d.w * l.l_extendedprice * (1 - l.l_discount)
          FROM dor d JOIN lineitem l ON l.l_orderkey = d.o_orderkey
          JOIN customer c ON c.c_custkey = d.o_custkey
          WHERE c.c_mktsegment = 'BUILDING' AND d.o_orderdate < date '1995-03-15'
            AND l.l_shipdate > date '1995-03-15') t
        GROUP BY k""",
    "q05": """
        SELECT n, sum(r) FROM (
          SELECT n.n_name AS n, d.w * d.l_extendedprice * (1 - d.l_discount) AS r
          FROM dl d JOIN orders o ON o.o_orderkey = d.l_orderkey
          JOIN customer c ON c.c_custkey = o.o_custkey
          JOIN supplier s ON s.s_suppkey = d.l_suppkey AND s.s_nationkey = c.c_nationkey
          JOIN nation n ON n.n_nationkey = s.s_nationkey
          JOIN region r ON r.r_regionkey = n.n_regionkey
          WHERE r.r_name = 'ASIA' AND o.o_orderdate >= date '1994-01-01'
            AND o.o_orderdate < date '1995-01-01'
          UNION ALL
          SELECT n.n_name, d.w * l.l_extendedprice * (1 - l.l_discount)
          FROM dor d JOIN lineitem l ON l.l_orderkey = d.o_orderkey
          JOIN customer c ON c.c_custkey = d.o_custkey
          JOIN supplier s ON s.s_suppkey = l.l_suppkey AND s.s_nationkey = c.c_nationkey
          JOIN nation n ON n.n_nationkey = s.s_nationkey
          JOIN region r ON r.r_regionkey = n.n_regionkey
          WHERE r.r_name = 'ASIA' AND d.o_orderdate >= date '1994-01-01'
            AND d.o_orderdate < date '1995-01-01') t
        GROUP BY n""",
    "q10": """
        SELECT k, sum(r) FROM (
          SELECT c.c_custkey AS k, d.w * d.l_extendedprice * (1 - d.l_discount) AS r
          FROM dl d JOIN orders o ON o.o_orderkey = d.l_orderkey
          JOIN customer c ON c.c_custkey = o.o_custkey
          JOIN nation n ON n.n_nationkey = c.c_nationkey
          WHERE d.l_returnflag = 'R' AND o.o_orderdate >= date '1993-10-01'
            AND o.o_orderdate < date '1994-01-01'
          UNION ALL
          SELECT c.c_custkey, d.w * l.l_extendedprice * (1 - l.l_discount)
          FROM dor d JOIN lineitem l ON l.l_orderkey = d.o_orderkey
          JOIN customer c ON c.c_custkey = d.o_custkey
          JOIN nation n ON n.n_nationkey = c.c_nationkey
          WHERE l.l_returnflag = 'R' AND d.o_orderdate >= date '1993-10-01'
            AND d.o_orderdate < date '1994-01-01') t
        GROUP BY k""",
    # the groups of the IN subquery that the changed lineitems touch, recomputed by index
    "q18": """
        SELECT l.l_orderkey, sum(l.l_quantity) FROM lineitem l
        WHERE l.l_orderkey IN (SELECT l_orderkey FROM dl)
        GROUP BY l.l_orderkey HAVING sum(l.l_quantity) > 300""",
}

PLANNER = "SET jit = off; SET enable_mergejoin = off; SET random_page_cost = 1.1"
"""The planner settings of pgtrickle's delta statements."""


@dataclass
class FloorRow:
    query: str
    orders: int
    lines: int
    floor: list[float] = field(default_factory=list)
    matview: list[float] = field(default_factory=list)


def _ms(conn: psycopg.Connection[Any], statement: sql.Composed | str) -> float:
    started = time.perf_counter()
    conn.execute(statement if isinstance(statement, sql.Composed) else statement.encode())
    return (time.perf_counter() - started) * 1000


def simulate(conn: psycopg.Connection[Any], orders: int, seed: float) -> int:
    """The change as temp tables ``dor`` and ``dl``; the number of changed lineitems."""
    conn.execute("SELECT setseed(%s)", (seed,))
    conn.execute("DROP TABLE IF EXISTS dl, dor")
    half = orders // 2
    conn.execute(
        "CREATE TEMP TABLE dor AS SELECT -1 AS w, o.* FROM orders o ORDER BY random() LIMIT %s",
        (orders - half,),
    )
    conn.execute(
        "INSERT INTO dor SELECT 1, m.top + row_number() OVER (), o.o_custkey, o.o_orderstatus,"
        " o.o_totalprice, o.o_orderdate, o.o_orderpriority, o.o_clerk, o.o_shippriority,"
        " o.o_comment FROM (SELECT * FROM orders ORDER BY random() LIMIT %s) o,"
        " (SELECT max(o_orderkey) AS top FROM orders) m",
        (half,),
    )
    conn.execute(
        "CREATE TEMP TABLE dl AS SELECT d.w, l.* FROM dor d JOIN lineitem l"
        " ON l.l_orderkey = d.o_orderkey WHERE d.w = -1"
    )
    # the copies' lineitems: those of random orders, under the new keys
    conn.execute(
        "INSERT INTO dl SELECT 1, d.o_orderkey, l.l_partkey, l.l_suppkey, l.l_linenumber,"
        " l.l_quantity, l.l_extendedprice, l.l_discount, l.l_tax, l.l_returnflag,"
        " l.l_linestatus, l.l_shipdate, l.l_commitdate, l.l_receiptdate, l.l_shipinstruct,"
        " l.l_shipmode, l.l_comment FROM (SELECT o_orderkey, row_number() OVER () AS n"
        " FROM dor WHERE w = 1) d JOIN (SELECT o_orderkey AS k, row_number() OVER () AS n"
        " FROM (SELECT o_orderkey FROM orders ORDER BY random() LIMIT %s) r) p ON p.n = d.n"
        " JOIN lineitem l ON l.l_orderkey = p.k",
        (half,),
    )
    conn.execute("ANALYZE dl; ANALYZE dor")
    row = conn.execute("SELECT count(*) FROM dl").fetchone()
    return int(row[0]) if row else 0


def run(
    scale: float, shares: Sequence[float], repeats: int, queries: Sequence[str] = FLOOR_QUERIES
) -> list[FloorRow]:
    report = tpch_bench.Report(scale, scale, repeats, 600)
    rows: list[FloorRow] = []
    with tpch_bench.private_base(scale, report) as base:
        print(" ".join(f"{k}={v}" for k, v in tpch_bench.machine(base.cluster).items()))
        base.load(queries)
        conn = base.conn
        for q in queries:
            conn.execute(
                sql.SQL("CREATE MATERIALIZED VIEW {} AS {}").format(
                    sql.Identifier(tpch_bench.mv_name(q)), sql.SQL(QUERIES[q])
                )
            )
        for share in shares:
            orders = max(2, round(base.orders * share))
            measured = {q: FloorRow(q, orders, 0) for q in queries}
            for repeat in range(repeats):
                lines = simulate(conn, orders, 0.3 + repeat / 100)
                for q in queries:
                    row = measured[q]
                    row.lines = lines
                    view = sql.Identifier(tpch_bench.mv_name(q))
                    row.matview.append(
                        _ms(conn, sql.SQL("REFRESH MATERIALIZED VIEW {}").format(view))
                    )
                    with conn.transaction():
                        conn.execute(PLANNER)
                        row.floor.append(_ms(conn, FLOORS[q]))
                        conn.execute("RESET jit; RESET enable_mergejoin; RESET random_page_cost")
                    print(
                        f"{share:.1%} {q}: floor {row.floor[-1]:,.1f} ms,"
                        f" REFRESH MATERIALIZED VIEW {row.matview[-1]:,.0f} ms",
                        flush=True,
                    )
            rows.extend(measured.values())
    return rows


def markdown(rows: Sequence[FloorRow]) -> str:
    out = [
        "| query | changed orders | lineitems | floor (ms) | REFRESH MV (ms) | MV / floor |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        floor, view = statistics.median(row.floor), statistics.median(row.matview)
        out.append(
            f"| {row.query} | {row.orders:,} | {row.lines:,} | {floor:,.1f} | {view:,.0f}"
            f" | {view / floor:,.1f}x |"
        )
    return "\n".join(out)
