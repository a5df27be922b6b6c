"""Scan: a base table's new state is the table, its delta the staged (netted) delta table.

The staged delta holds, per row value, the net weight of the refresh window's changes (the
staging nets them), so a row version no snapshot of the query can see never reaches an
expression. The old state is derived as new - Δ: the table without the rows the delta
inserted, plus the rows it deleted.

>>> from dvm.catalog import Column, SourceTable
>>> from dvm.dialect import render_pretty
>>> from dvm.zset import Context
>>> t = SourceTable(7, "public", "t", (Column("id", "integer"), Column("v", "text")), ("id",))
>>> derived = scan(Scan(t, "t", ("id", "v")), (), Context())
>>> print(render_pretty(derived.old.select([sql.col("t", "v")], weighted=False)))
SELECT
  "t"."v"
FROM (
  SELECT
    "t"."id",
    "t"."v"
  FROM "public"."t" AS "t"
  WHERE
    NOT EXISTS(
      SELECT
        1
      FROM "pg_temp"."__pgt_delta_7" AS "d"
      WHERE
        "d"."id" = "t"."id" AND "d"."__pgt_w" > 0
    )
  UNION ALL
  SELECT
    "d"."id",
    "d"."v"
  FROM "pg_temp"."__pgt_delta_7" AS "d"
  WHERE
    "d"."__pgt_w" < 0
) AS "t"
"""

from __future__ import annotations

from sqlglot import exp

from dvm import sql
from dvm.catalog import SourceTable
from dvm.operators import Scan
from dvm.rules import rule
from dvm.zset import WEIGHT, Context, DerivedRows, Term, aliased


def delta_relation(source: SourceTable, *, indexed: bool = True) -> str:
    """The temp table holding a source's staged delta: ``pg_temp."__pgt_delta_<oid>"``,
    indexed by the source's key, or ``pg_temp."__pgt_delta_<oid>_p"``, not indexed (for a
    delta that looks nothing up by key in it: maintaining the index makes staging 60,000
    lineitems 40 ms dearer).

    The rule below names the indexed one; ``dvm.compile`` renames the tables of the
    sources whose delta is not looked up (see ``KEY_LOOKUP``)."""
    return f"__pgt_delta_{source.oid}" if indexed else f"__pgt_delta_{source.oid}_p"


KEY_LOOKUP = "pgtrickle_key_lookup"
"""The ``meta`` key that marks a test looking up a staged delta by the source's key, with
the source's oid: such a delta is staged into the indexed table."""


@rule(Scan)
def scan(node: Scan, inputs: tuple[()], context: Context) -> DerivedRows:
    table = node.table
    base = sql.table(table.schema, table.name, alias=node.alias)
    delta = sql.table("pg_temp", delta_relation(table), alias=node.alias)
    change = Term((delta,), factors=(sql.col(node.alias, WEIGHT),), deltas=frozenset({node.alias}))
    if context.unchanged(table.oid):
        # nothing staged: the table is both states
        return DerivedRows(
            new=Term((base,)),
            old=Term((base.copy(),)),
            delta=(change.emptied(),),
            weighted_old=Term((base.copy(),)),
        )
    return DerivedRows(
        new=Term((base,)),
        old=Term((aliased(old_state(node), node.alias),)),
        delta=(change,),
        weighted_old=Term(
            (aliased(weighted_old_state(node), node.alias),),
            factors=(sql.col(node.alias, WEIGHT),),
        ),
    )


def weighted_old_state(node: Scan) -> exp.Query:
    """new - Δ as a Z-set: every row now with weight 1, every staged row with its weight
    negated (a row the delta inserted cancels out)."""
    now = exp.select(
        *[sql.col(node.alias, c) for c in node.columns], sql.alias(sql.lit(1), WEIGHT)
    ).from_(sql.table(node.table.schema, node.table.name, alias=node.alias))
    staged = exp.select(
        *[sql.col("d", c) for c in node.columns],
        sql.alias(exp.Neg(this=sql.col("d", WEIGHT)), WEIGHT),
    ).from_(_staged(node))
    return exp.union(now, staged, distinct=False, copy=False)


def _staged(node: Scan) -> exp.Table:
    return sql.table("pg_temp", delta_relation(node.table), alias="d")


def _weight_is(sign: type[exp.GT] | type[exp.LT]) -> exp.Expr:
    return sign(this=sql.col("d", WEIGHT), expression=sql.lit(0))


def old_state(node: Scan) -> exp.Query:
    """The table's rows before the refresh window, from its rows now and the staged delta."""
    columns = node.columns
    deleted = exp.select(*[sql.col("d", c) for c in columns]).from_(_staged(node))
    deleted = deleted.where(_weight_is(exp.LT), copy=False)
    if node.table.keyed:
        return exp.union(_kept_keyed(node), deleted, distinct=False, copy=False)
    return exp.union(_kept_keyless(node), _copies(node), distinct=False, copy=False)


def _kept_keyed(node: Scan) -> exp.Select:
    """Rows whose key the delta did not insert (a key has one version in each state).

    A correlated NOT EXISTS, not ``key NOT IN (the inserted keys)``: the staged delta is
    indexed by the key, and the planner costs a hashed NOT IN's whole build at every lookup
    of the old state inside a correlated test, which makes it scan tables instead.
    """
    key = node.table.primary_key
    same = [exp.EQ(this=sql.col("d", k), expression=sql.col(node.alias, k)) for k in key]
    inserted = exp.select(sql.lit(1)).from_(_staged(node))
    inserted = inserted.where(exp.and_(*same, _weight_is(exp.GT)), copy=False)
    lookup = exp.Exists(this=inserted)
    lookup.meta[KEY_LOOKUP] = node.table.oid
    kept = exp.Not(this=lookup)
    table = sql.table(node.table.schema, node.table.name, alias=node.alias)
    return exp.select(*[sql.col(node.alias, c) for c in node.columns]).from_(table).where(kept)


def _kept_keyless(node: Scan) -> exp.Select:
    """Each value's copies beyond those the delta inserted (copies numbered per value)."""
    values = [sql.col("r", c) for c in node.columns]
    numbered = exp.select(
        *values,
        sql.alias(sql.row_text(values), "__pgt_t"),
        sql.alias(exp.Window(this=exp.RowNumber(), partition_by=[sql.row_text(values)]), "__pgt_n"),
    ).from_(sql.table(node.table.schema, node.table.name, alias="r"))
    inserted = (
        exp.select(exp.Sum(this=sql.col("d", WEIGHT)))
        .from_(_staged(node))
        .where(
            exp.and_(
                _weight_is(exp.GT),
                exp.EQ(
                    this=sql.row_text([sql.col("d", c) for c in node.columns]),
                    expression=sql.col("x", "__pgt_t"),
                ),
            ),
            copy=False,
        )
    )
    return (
        exp.select(*[sql.col("x", c) for c in node.columns])
        .from_(aliased(numbered, "x"))
        .where(
            exp.GT(
                this=sql.col("x", "__pgt_n"),
                expression=sql.coalesce_zero(inserted.subquery()),
            ),
            copy=False,
        )
    )


def _copies(node: Scan) -> exp.Select:
    """Every deleted copy: a value deleted n times is n rows."""
    series = exp.Table(
        this=sql.func("GENERATE_SERIES", sql.lit(1), exp.Neg(this=sql.col("d", WEIGHT))),
        alias=exp.TableAlias(this=sql.ident("__pgt_copy")),
    )
    return (
        exp.select(*[sql.col("d", c) for c in node.columns])
        .from_(_staged(node))
        .join(series, join_type="cross", copy=False)
        .where(_weight_is(exp.LT), copy=False)
    )
