"""The stored TopK: a stream table holding the first rows of ``ORDER BY … LIMIT k``.

The candidates for the new first rows are the stored rows and the rows the delta of the
unlimited query inserts, less the rows it deletes; the new first rows are the first k of
them. That holds unless a row that was not stored had to come in: every such row comes after
the last stored row (the boundary), so it holds when fewer than k rows were stored (they were
all there is), or when k candidates are left and the k-th does not come after the boundary.
The guard says whether it holds; when it does not, the refresh recomputes fully.

With ``OFFSET m`` the stored rows are those after the first m. They stay the window's start
when the delta's rows ordered before the first stored row net to zero (as many came as
went: still m rows before it) and none ties with it; then the candidates are the stored rows
and the delta's rows after the first stored one, and the rest is as above. The guard adds
those two tests (and that rows were stored at all).
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


PLACE = "__pgt_place"
"""Where a delta row is ordered against the first stored row: -1 before, 0 tied, 1 after."""


def _placed(node: TopK, input: DerivedRelation, context: Context, storage: tuple[str, str]) -> str:
    """The delta's rows (``__pgt_w, columns, __pgt_place``) placed against the first stored
    row (NULL places when nothing is stored)."""
    columns = node.columns
    first = first_rows(
        TopK(node.input, node.order, 1),
        exp.select(*[sql.col("s", c) for c in columns]).from_(sql.table(*storage, alias="s")),
    )
    tag = "__pgt_tag"
    boundary = exp.select(
        sql.alias(sql.lit("b"), tag),
        sql.alias(sql.lit(0), WEIGHT),
        *[sql.col("f", c) for c in columns],
    ).from_(first.subquery(sql.ident("f")))
    changes = exp.select(
        sql.alias(sql.lit("d"), tag), sql.col("d", WEIGHT), *[sql.col("d", c) for c in columns]
    ).from_(cte_item(input.delta, "d"))
    parts = exp.union(boundary, changes, distinct=False)
    order = exp.Order(expressions=[qualified(item, "u") for item in node.order])
    ranked = exp.select(
        sql.col("u", tag),
        sql.col("u", WEIGHT),
        *[sql.col("u", c) for c in columns],
        sql.alias(exp.Window(this=exp.Anonymous(this="RANK"), order=order), "__pgt_r"),
    ).from_(aliased(parts, "u", (tag, WEIGHT, *columns)))
    first_rank = exp.Window(
        this=exp.Max(
            this=exp.Case(
                ifs=[
                    exp.If(
                        this=exp.EQ(this=sql.col("r", tag), expression=sql.lit("b")),
                        true=sql.col("r", "__pgt_r"),
                    )
                ]
            )
        )
    )
    placed = (
        exp.select(sql.col("p", WEIGHT), *[sql.col("p", c) for c in columns], sql.col("p", PLACE))
        .from_(
            exp.select(
                sql.col("r", tag),
                sql.col("r", WEIGHT),
                *[sql.col("r", c) for c in columns],
                sql.alias(
                    sql.func("SIGN", exp.Sub(this=sql.col("r", "__pgt_r"), expression=first_rank)),
                    PLACE,
                ),
            )
            .from_(ranked.subquery(sql.ident("r")))
            .subquery(sql.ident("p"))
        )
        .where(exp.EQ(this=sql.col("p", tag), expression=sql.lit("d")))
    )
    return context.cte(placed, "o")


def _candidates(
    node: TopK, input: DerivedRelation, context: Context, storage: tuple[str, str]
) -> tuple[str, str | None]:
    """Distinct candidate values with their multiplicity (> 0), compared as text; and with
    an OFFSET, the placed delta (see ``_placed``)."""
    columns = node.columns
    changes = exp.select(sql.col("d", WEIGHT), *[sql.col("d", c) for c in columns]).from_(
        cte_item(input.delta, "d")
    )
    placed = None
    if node.offset:
        placed = _placed(node, input, context, storage)
        changes = (
            exp.select(sql.col("d", WEIGHT), *[sql.col("d", c) for c in columns])
            .from_(cte_item(placed, "d"))
            .where(exp.EQ(this=sql.col("d", PLACE), expression=sql.lit(1)))
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
    return context.cte(candidates, "k"), placed


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
    candidates, placed = _candidates(node, input, context, storage)
    # the candidates start at the window: its first rows, without the offset
    top = first_rows(TopK(node.input, node.order, node.limit), _expanded(columns, candidates))
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
    valid = _valid(node, candidates, placed, storage)
    context.ctes.append((GUARD, exp.select(sql.alias(valid, "valid"))))
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
    candidates, placed = _candidates(node, input, context, storage)
    valid = _valid(node, candidates, placed, storage)
    return context.statement(exp.select(sql.alias(valid, "valid")))


def _valid(node: TopK, candidates: str, placed: str | None, storage: tuple[str, str]) -> exp.Expr:
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
    valid = exp.or_(
        exp.LT(this=count.subquery(), expression=sql.lit(node.limit)),
        exp.EQ(this=first.subquery(), expression=sql.lit("k")),
    )
    if placed is None:
        return valid
    before = exp.Filter(
        this=exp.Sum(this=sql.col("o", WEIGHT)),
        expression=exp.Where(this=exp.EQ(this=sql.col("o", PLACE), expression=sql.lit(-1))),
    )
    tied = exp.Filter(
        this=exp.Count(this=exp.Star()),
        expression=exp.Where(this=exp.EQ(this=sql.col("o", PLACE), expression=sql.lit(0))),
    )
    still = exp.select(
        exp.and_(
            exp.EQ(this=sql.coalesce_zero(before), expression=sql.lit(0)),
            exp.EQ(this=tied, expression=sql.lit(0)),
        )
    ).from_(cte_item(placed, "o"))
    any_stored = exp.Exists(this=exp.select(sql.lit(1)).from_(sql.table(*storage, alias="s")))
    return exp.and_(any_stored, exp.paren(still.subquery()), exp.paren(valid))
