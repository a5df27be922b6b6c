"""The stored TopK: a stream table holding the first rows of ``ORDER BY … LIMIT k``.

The candidates for the new first rows are the stored rows and the rows the delta of the
unlimited query inserts, less the rows it deletes; the new first rows are the first k of
them. That holds unless rows outside the stored ones had to come in: when k rows were stored
and fewer than k candidates are left. The guard says whether it holds; when it does not, the
refresh recomputes fully (and says so).
"""

from __future__ import annotations

from sqlglot import exp

from dvm import consolidate, sql
from dvm.operators import TopK
from dvm.rules.limit import first_rows
from dvm.zset import ROW_ID, WEIGHT, Context, DerivedRelation, cte_item


def _stored(storage: tuple[str, str], columns: tuple[str, ...], weight: exp.Expr) -> exp.Select:
    return exp.select(sql.alias(weight, WEIGHT), *[sql.col("s", c) for c in columns]).from_(
        sql.table(*storage, alias="s")
    )


def _candidates(
    node: TopK, input: DerivedRelation, context: Context, storage: tuple[str, str]
) -> str:
    """Distinct candidate values with their multiplicity (> 0), compared as text."""
    columns = node.columns
    changes = exp.select(sql.col("d", WEIGHT), *[sql.col("d", c) for c in columns]).from_(
        cte_item(input.delta, "d")
    )
    everything = exp.union(_stored(storage, columns, sql.lit(1)), changes, distinct=False)
    text = sql.row_text([sql.col("e", c) for c in columns])
    netted = exp.select(
        *[sql.col("e", c) for c in columns],
        sql.alias(
            exp.Window(this=exp.Sum(this=sql.col("e", WEIGHT)), partition_by=[text]), "__pgt_m"
        ),
        sql.alias(exp.Window(this=exp.RowNumber(), partition_by=[text.copy()]), "__pgt_n"),
    ).from_(everything.subquery(sql.ident("e")), copy=False)
    candidates = (
        exp.select(*[sql.col("c", c) for c in columns], sql.col("c", "__pgt_m"))
        .from_(netted.subquery(sql.ident("c")), copy=False)
        .where(
            exp.and_(
                exp.EQ(this=sql.col("c", "__pgt_n"), expression=sql.lit(1)),
                exp.GT(this=sql.col("c", "__pgt_m"), expression=sql.lit(0)),
            ),
            copy=False,
        )
    )
    return context.cte(candidates, "k")


def delta_query(
    node: TopK, input: DerivedRelation, context: Context, storage: tuple[str, str]
) -> exp.Select:
    """``__pgt_row_id, __pgt_weight, columns``: the stored rows replaced by the new first rows."""
    columns = node.columns
    candidates = _candidates(node, input, context, storage)
    copies = exp.select(*[sql.col("k", c) for c in columns]).from_(cte_item(candidates, "k"))
    copies = copies.join(
        exp.Table(
            this=sql.func("GENERATE_SERIES", sql.lit(1), sql.col("k", "__pgt_m")),
            alias=exp.TableAlias(this=sql.ident("__pgt_copy")),
        ),
        join_type="cross",
        copy=False,
    )
    top = first_rows(node, copies)
    change = exp.union(
        exp.select(sql.alias(sql.lit(1), WEIGHT), exp.Star()).from_(top.subquery(sql.ident("t"))),
        _stored(storage, columns, sql.lit(-1)),
        distinct=False,
    )
    values = [sql.col("z", c) for c in columns]
    identified = exp.select(
        sql.alias(sql.row_hash(values), ROW_ID), sql.col("z", WEIGHT), *values
    ).from_(change.subquery(sql.ident("z")), copy=False)
    return context.statement(consolidate.bag(identified, columns))


def guard_query(
    node: TopK, input: DerivedRelation, context: Context, storage: tuple[str, str]
) -> exp.Select:
    """One boolean: whether the candidates hold the new first rows (else: recompute)."""
    candidates = _candidates(node, input, context, storage)
    stored = exp.select(exp.Count(this=exp.Star())).from_(sql.table(*storage, alias="s"))
    left = exp.select(sql.coalesce_zero(exp.Sum(this=sql.col("k", "__pgt_m")))).from_(
        cte_item(candidates, "k")
    )
    valid = exp.or_(
        exp.LT(this=stored.subquery(), expression=sql.lit(node.limit)),
        exp.GTE(this=left.subquery(), expression=sql.lit(node.limit)),
    )
    return context.statement(exp.select(sql.alias(valid, "valid")))
