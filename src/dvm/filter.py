"""Filter: linear, the predicate applies to the delta as to the rows.

>>> from dvm import sql
>>> from dvm.catalog import Column, SourceTable
>>> from dvm.dialect import render_pretty
>>> from dvm.operators import Scan
>>> from dvm.scan import scan
>>> t = SourceTable(7, "public", "t", (Column("id", "integer"), Column("v", "integer")), ("id",))
>>> node = Filter(Scan(t, "t", ("id", "v")), sql.col("t", "v").eq(1))
>>> print(render_pretty(filter_(node, scan(node.input)).delta.select([], weighted=True)))
SELECT
  HASHTEXTEXTENDED(CAST(ROW("t"."id") AS TEXT), 0) AS "__pgt_row_id",
  "t"."__pgt_w" AS "__pgt_w"
FROM "pg_temp"."__pgt_delta_7" AS "t"
WHERE
  "t"."v" = 1
"""

from __future__ import annotations

from dvm.operators import Filter
from dvm.zset import Derived


def filter_(node: Filter, input: Derived) -> Derived:
    """filter(R)' = filter(R') and Δfilter(R) = filter(ΔR): the predicate is added to every term."""
    return Derived(new=input.new.where(node.predicate), delta=input.delta.where(node.predicate))
