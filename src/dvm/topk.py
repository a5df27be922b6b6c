"""The stored TopK: a stream table holding the first rows of ``ORDER BY … LIMIT k``.

The candidates for the new first rows are the stored rows and the rows the delta of the
unlimited query inserts, less the rows it deletes; the new first rows are the first k of
them. That holds unless a row that was not stored had to come in: every such row comes after
the last stored row (the boundary), so it holds when fewer than k rows were stored (they were
all there is), or when k candidates are left and the k-th does not come after the boundary.
The guard says whether it holds; when it does not, the refresh recomputes fully.
"""

from __future__ import annotations

from sqlglot import exp

from dvm import consolidate, sql
from dvm.operators import TopK
from dvm.rules.limit import first_rows, qualified
from dvm.zset import GUARD, ROW_ID, WEIGHT, Context, DerivedRelation, aliased, cte_item


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


def _expanded(columns: tuple[str, ...], candidates: str) -> exp.Select:
    """Each candidate value as many times as its multiplicity."""
    copies = exp.select(*[sql.col("k", c) for c in columns]).from_(cte_item(candidates, "k"))
    return copies.join(
        exp.Table(
            this=sql.func("GENERATE_SERIES", sql.lit(1), sql.col("k", "__pgt_m")),
            alias=exp.TableAlias(this=sql.ident("__pgt_copy")),
        ),
        join_type="cross",
        copy=False,
    )


def delta_query(
    node: TopK, input: DerivedRelation, context: Context, storage: tuple[str, str]
) -> exp.Select:
    """``__pgt_row_id, __pgt_weight, columns``: the stored rows replaced by the new first rows."""
    columns = node.columns
    candidates = _candidates(node, input, context, storage)
    top = first_rows(node, _expanded(columns, candidates))
    change = exp.union(
        exp.select(sql.alias(sql.lit(1), WEIGHT), exp.Star()).from_(top.subquery(sql.ident("t"))),
        _stored(storage, columns, sql.lit(-1)),
        distinct=False,
    )
    values = [sql.col("z", c) for c in columns]
    identified = exp.select(
        sql.alias(sql.row_hash(values), ROW_ID), sql.col("z", WEIGHT), *values
    ).from_(change.subquery(sql.ident("z")), copy=False)
    # the guard in the same statement: its candidates are derived once, and when it fails
    # there are no rows (the apply reports it, and the refresh recomputes)
    context.ctes.append((GUARD, exp.select(sql.alias(_valid(node, candidates, storage), "valid"))))
    holds = exp.select(sql.col(None, "valid")).from_(GUARD).subquery()
    changes = exp.select(exp.Star()).from_(
        consolidate.bag(identified, columns).subquery(sql.ident("__pgt_g")), copy=False
    )
    return context.statement(changes.where(holds, copy=False))


def _numbered(node: TopK, rows: exp.Query, alias: str) -> exp.Select:
    """``rows`` with their place in the order (``__pgt_rn``) and their count (``__pgt_all``)."""
    order = exp.Order(expressions=[qualified(item, alias) for item in node.order])
    return exp.select(
        *[sql.col(alias, c) for c in node.columns],
        sql.alias(exp.Window(this=exp.RowNumber(), order=order), "__pgt_rn"),
        sql.alias(exp.Window(this=exp.Count(this=exp.Star())), "__pgt_all"),
    ).from_(aliased(rows, alias, node.columns))


def guard_query(
    node: TopK, input: DerivedRelation, context: Context, storage: tuple[str, str]
) -> exp.Select:
    """One boolean: whether the candidates hold the new first rows (else: recompute)."""
    candidates = _candidates(node, input, context, storage)
    return context.statement(exp.select(sql.alias(_valid(node, candidates, storage), "valid")))


def _valid(node: TopK, candidates: str, storage: tuple[str, str]) -> exp.Expr:
    columns = node.columns
    stored = exp.select(*[sql.col("s", c) for c in columns]).from_(sql.table(*storage, alias="s"))
    kth = (
        exp.select(sql.alias(sql.lit("k"), "__pgt_tag"), *[sql.col("c", c) for c in columns])
        .from_(_numbered(node, _expanded(columns, candidates), "c").subquery(sql.ident("c")))
        .where(exp.EQ(this=sql.col("c", "__pgt_rn"), expression=sql.lit(node.limit)))
    )
    boundary = (
        exp.select(sql.alias(sql.lit("b"), "__pgt_tag"), *[sql.col("b", c) for c in columns])
        .from_(_numbered(node, stored, "b").subquery(sql.ident("b")))
        .where(exp.EQ(this=sql.col("b", "__pgt_rn"), expression=sql.col("b", "__pgt_all")))
    )
    first = (
        exp.select(sql.col("u", "__pgt_tag"))
        .from_(exp.union(kth, boundary, distinct=False).subquery(sql.ident("u")))
        .order_by(
            *[qualified(item, "u") for item in node.order],
            exp.Ordered(this=sql.col("u", "__pgt_tag"), desc=True),
            copy=False,
        )
        .limit(1, copy=False)
    )
    count = exp.select(exp.Count(this=exp.Star())).from_(sql.table(*storage, alias="s"))
    return exp.or_(
        exp.LT(this=count.subquery(), expression=sql.lit(node.limit)),
        exp.EQ(this=first.subquery(), expression=sql.lit("k")),
    )
