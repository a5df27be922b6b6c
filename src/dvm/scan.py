"""Scan: the delta of a base table is its staged delta table.

>>> from dvm.catalog import Column, SourceTable
>>> from dvm.dialect import render_pretty
>>> t = SourceTable(16384, "public", "t", (Column("id", "integer"), Column("v", "text")), ("id",))
>>> derived = scan(Scan(t, "t", ("id", "v")))
>>> print(render_pretty(derived.delta.select([("v", sql.col("t", "v"))], weighted=True)))
SELECT
  HASHTEXTEXTENDED(CAST(ROW("t"."id") AS TEXT), 0) AS "__pgt_row_id",
  "t"."__pgt_w" AS "__pgt_w",
  "t"."v" AS "v"
FROM "pg_temp"."__pgt_delta_16384" AS "t"
"""

from __future__ import annotations

from sqlglot import exp

from dvm import sql
from dvm.catalog import SourceTable
from dvm.operators import Scan
from dvm.zset import Derived, Source, Term, ZSet


def delta_relation(source: SourceTable) -> str:
    """The temp table holding a source's staged delta: ``pg_temp."__pgt_delta_<oid>"``."""
    return f"__pgt_delta_{source.oid}"


def scan(node: Scan) -> Derived:
    """New rows: the base table. Delta: the staged delta table, weights as staged."""
    table = node.table
    row_id = _row_id(node) if table.keyed else None
    base = Source(node.alias, sql.table(table.schema, table.name), delta=False)
    delta = Source(node.alias, sql.table("pg_temp", delta_relation(table)), delta=True)
    return Derived(
        new=ZSet((Term((base,), (), 1, row_id),)),
        delta=ZSet((Term((delta,), (), 1, row_id),)),
    )


def _row_id(node: Scan) -> exp.Expr:
    """A keyed row's id: the hash of its primary key values."""
    return sql.row_hash([sql.col(node.alias, key) for key in node.table.primary_key])
