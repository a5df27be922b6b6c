"""Consolidate a Z-set delta into what the apply statement needs.

KEYED (one row per row id, 'U' upsert or 'D' delete): weights are summed per row id and
row value (compared as text, so values of any type, json included, can be compared); the
value whose net weight is positive is the new version. An UPDATE staged as (r, old, -1),
(r, new, +1) becomes one 'U' of the new values; equal old and new values cancel out.

BAG (duplicates allowed): weights are summed per row id, which is the hash of the values.

>>> from dvm.dialect import parse_one, render, render_pretty
>>> zset = parse_one('SELECT 1 AS "__pgt_row_id", 1 AS "__pgt_w", 2 AS "v"')
>>> print(render_pretty(keyed(zset, ["v"])).split("FROM")[0].strip())
SELECT DISTINCT ON ("__pgt_row_id")
  "__pgt_row_id",
  CASE WHEN "__pgt_net" > 0 THEN 'U' ELSE 'D' END AS "__pgt_action",
  "v"
>>> print(render(keyed(zset, ["v"]).find(exp.Window)).replace('"__pgt_z".', ""))
SUM("__pgt_w") OVER (PARTITION BY "__pgt_row_id", CAST(ROW("v") AS TEXT))
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlglot import exp

from dvm import sql
from dvm.zset import ROW_ID, WEIGHT

ACTION = "__pgt_action"
BAG_WEIGHT = "__pgt_weight"
_NET = "__pgt_net"


def keyed(zset: exp.Query, columns: Sequence[str]) -> exp.Select:
    """``__pgt_row_id, __pgt_action, columns``: exactly one row per changed row id."""
    partition: list[exp.Expr] = [sql.col("__pgt_z", ROW_ID)]
    if columns:
        partition.append(sql.row_text([sql.col("__pgt_z", name) for name in columns]))
    action = exp.Case(
        ifs=[
            exp.If(this=exp.GT(this=sql.col(None, _NET), expression=sql.lit(0)), true=sql.lit("U"))
        ],
        default=sql.lit("D"),
    )
    return _pick(zset, partition, [sql.alias(action, ACTION)], columns, newest_first=True)


def bag(zset: exp.Query, columns: Sequence[str]) -> exp.Select:
    """``__pgt_row_id, __pgt_weight, columns``: one row per distinct changed row."""
    partition: list[exp.Expr] = [sql.col("__pgt_z", ROW_ID)]
    weight = sql.alias(sql.col(None, _NET), BAG_WEIGHT)
    return _pick(zset, partition, [weight], columns, newest_first=False)


def _pick(
    zset: exp.Query,
    partition: list[exp.Expr],
    extra: list[exp.Expr],
    columns: Sequence[str],
    *,
    newest_first: bool,
) -> exp.Select:
    net = exp.Window(this=exp.Sum(this=sql.col("__pgt_z", WEIGHT)), partition_by=partition)
    summed = exp.select(
        exp.Column(this=exp.Star(), table=sql.ident("__pgt_z")), sql.alias(net, _NET)
    ).from_(zset.subquery(sql.ident("__pgt_z")), copy=False)
    row_id = sql.col(None, ROW_ID)
    select = (
        exp.select(row_id, *extra, *[sql.col(None, name) for name in columns])
        .from_(summed.subquery(sql.ident("__pgt_c")), copy=False)
        .where(exp.NEQ(this=sql.col(None, _NET), expression=sql.lit(0)), copy=False)
    )
    select.set("distinct", exp.Distinct(on=exp.Tuple(expressions=[row_id.copy()])))
    if newest_first:
        select = select.order_by(
            row_id.copy(),
            exp.Ordered(this=sql.col(None, _NET), desc=True, nulls_first=True),
            copy=False,
        )
    return select
