"""Project: linear, output expressions apply to the delta as to the rows.

Rows keep their input's id. Without one (a keyless input), a row is identified by its values:
``hashtextextended(ROW(outputs)::text, 0)``, the same in storage and in the delta.

>>> from dvm import sql
>>> from dvm.catalog import Column, SourceTable
>>> from dvm.dialect import render_pretty
>>> from dvm.operators import Output, Scan
>>> from dvm.scan import scan
>>> t = SourceTable(9, "public", "t", (Column("v", "integer"),))
>>> node = Project(Scan(t, "t", ("v",)), (Output("w", sql.col("t", "v") * 2),))
>>> print(render_pretty(project(node, scan(node.input).delta, weighted=True)))
SELECT
  HASHTEXTEXTENDED(CAST(ROW("__pgt_q"."w") AS TEXT), 0) AS "__pgt_row_id",
  "__pgt_q"."__pgt_w",
  "__pgt_q"."w"
FROM (
  SELECT
    "t"."__pgt_w" AS "__pgt_w",
    "t"."v" * 2 AS "w"
  FROM "pg_temp"."__pgt_delta_9" AS "t"
) AS "__pgt_q"
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlglot import exp

from dvm import sql
from dvm.operators import Project
from dvm.zset import ROW_ID, WEIGHT, ZSet


def project(node: Project, rows: ZSet, *, weighted: bool) -> exp.Query:
    """``SELECT __pgt_row_id, [__pgt_w,] outputs`` over ``rows`` (new rows or a delta)."""
    outputs = [(output.name, output.expression) for output in node.outputs]
    query = rows.select(outputs, weighted=weighted)
    if rows.keyed:
        return query
    return identify_by_value(query, [name for name, _ in outputs], weighted=weighted)


def identify_by_value(query: exp.Query, columns: Sequence[str], *, weighted: bool) -> exp.Select:
    """Prefix ``query``'s rows with a row id hashed from their values."""
    inner = "__pgt_q"
    values = [sql.col(inner, name) for name in columns]
    select_list: list[exp.Expr] = [sql.alias(sql.row_hash(values), ROW_ID)]
    if weighted:
        select_list.append(sql.col(inner, WEIGHT))
    select_list.extend(values)
    return exp.select(*select_list).from_(query.subquery(sql.ident(inner)), copy=False)
