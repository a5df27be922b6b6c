"""The one statement that applies a delta query to the storage table.

KEYED: a MERGE on ``__pgt_row_id`` (PostgreSQL 15: no RETURNING, no NOT MATCHED BY SOURCE).
BAG: data-modifying CTEs that delete ``|w|`` physical copies of a row for ``w < 0`` (found
by the row id's index, deleted by ctid) and insert ``w`` copies for ``w > 0``; the statement
returns the two counts.

>>> from dvm.dialect import parse_one, render_pretty
>>> delta = parse_one("SELECT 1 AS __pgt_row_id, 'U' AS __pgt_action, 2 AS v")
>>> statement = render_pretty(merge(("public", "st"), delta, ["v"]))
>>> for line in statement.splitlines():
...     if line.startswith(("MERGE", "ON", "WHEN")):
...         print(line.split(" (")[0])
MERGE INTO "public"."st" AS "__pgt_t"
ON "__pgt_t"."__pgt_row_id" = "__pgt_d"."__pgt_row_id"
WHEN MATCHED AND "__pgt_d"."__pgt_action" = 'D' THEN DELETE
WHEN MATCHED AND "__pgt_d"."__pgt_action" = 'U' THEN UPDATE SET
WHEN NOT MATCHED AND "__pgt_d"."__pgt_action" = 'U' THEN INSERT
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlglot import exp

from dvm import sql
from dvm.consolidate import ACTION, BAG_WEIGHT
from dvm.zset import ROW_ID

_TARGET, _SOURCE = "__pgt_t", "__pgt_d"


def merge(storage: tuple[str, str], delta: exp.Query, columns: Sequence[str]) -> exp.Merge:
    """MERGE ``delta`` (row id, action, ``columns``) into ``storage``."""

    def action_is(value: str) -> exp.Expr:
        return exp.EQ(this=sql.col(_SOURCE, ACTION), expression=sql.lit(value))

    update = exp.Update(
        expressions=[
            exp.EQ(this=exp.Column(this=sql.ident(name)), expression=sql.col(_SOURCE, name))
            for name in columns
        ]
    )
    everything = [ROW_ID, *columns]
    insert = exp.Insert(
        this=exp.Tuple(expressions=[exp.Column(this=sql.ident(name)) for name in everything]),
        expression=exp.Tuple(expressions=[sql.col(_SOURCE, name) for name in everything]),
    )
    whens = [
        exp.When(matched=True, source=False, condition=action_is("D"), then=exp.var("DELETE")),
    ]
    if columns:
        whens.append(exp.When(matched=True, source=False, condition=action_is("U"), then=update))
    whens.append(exp.When(matched=False, source=False, condition=action_is("U"), then=insert))
    return exp.Merge(
        this=sql.table(*storage, alias=_TARGET),
        using=delta.subquery(sql.ident(_SOURCE)),
        on=exp.EQ(this=sql.col(_TARGET, ROW_ID), expression=sql.col(_SOURCE, ROW_ID)),
        whens=exp.Whens(expressions=whens),
    )


def bag(
    storage: tuple[str, str],
    delta: exp.Query,
    columns: Sequence[str],
    *,
    guard: str | None = None,
) -> exp.Select:
    """Apply ``delta`` (row id, weight, ``columns``) to a storage table holding duplicates.

    ``guard``: the name of a CTE of ``delta`` with one boolean ``valid`` (whether its rows
    are the whole change, see ``dvm.topk``); the statement returns it as a third value.
    """
    hoisted: list[exp.CTE] = []
    if guard is not None:
        # the guard's CTE must be visible to the final SELECT: the delta's CTEs move up
        delta = delta.copy()
        with_ = delta.args.get("with_")
        assert with_ is not None and any(cte.alias == guard for cte in with_.expressions)
        hoisted = list(with_.expressions)
        delta.set("with_", None)
    weight = sql.col(_SOURCE, BAG_WEIGHT)
    # |w| physical copies of each row id the delta removes copies of, found by the storage's
    # index on the row id from each delta row (a LATERAL with LIMIT leaves the planner no
    # other way: with a misestimated delta it hashed the whole storage table, 860,000 rows
    # for 839 deleted ones)
    copies = (
        exp.select(sql.alias(sql.col("__pgt_s", "ctid"), "__pgt_ctid"))
        .from_(sql.table(*storage, alias="__pgt_s"))
        .where(
            exp.EQ(this=sql.col("__pgt_s", ROW_ID), expression=sql.col(_SOURCE, ROW_ID)),
            copy=False,
        )
        .limit(exp.Neg(this=weight.copy()), copy=False)
    )
    victims = (
        exp.select(sql.col("__pgt_n", "__pgt_ctid"))
        .from_(exp.Table(this=sql.ident(_SOURCE), alias=exp.TableAlias(this=sql.ident(_SOURCE))))
        .join(
            exp.Lateral(this=copies.subquery(), alias=exp.TableAlias(this=sql.ident("__pgt_n"))),
            join_type="cross",
            copy=False,
        )
        .where(exp.LT(this=weight.copy(), expression=sql.lit(0)), copy=False)
    )
    delete = exp.Delete(
        this=sql.table(*storage, alias=_TARGET),
        using=[victims.subquery(sql.ident("__pgt_v"))],
        where=exp.Where(
            this=exp.EQ(this=sql.col(_TARGET, "ctid"), expression=sql.col("__pgt_v", "__pgt_ctid"))
        ),
        returning=exp.Returning(expressions=[sql.lit(1)]),
    )
    everything = [ROW_ID, *columns]
    copies = exp.select(*[sql.col(_SOURCE, name) for name in everything]).from_(
        exp.Table(this=sql.ident(_SOURCE), alias=exp.TableAlias(this=sql.ident(_SOURCE)))
    )
    copies = copies.join(
        exp.Table(this=exp.Anonymous(this="GENERATE_SERIES", expressions=[sql.lit(1), weight])),
        join_type="cross",
        copy=False,
    ).where(exp.GT(this=weight.copy(), expression=sql.lit(0)), copy=False)
    insert = exp.Insert(
        this=exp.Schema(
            this=sql.table(*storage),
            expressions=[sql.ident(name) for name in everything],
        ),
        expression=copies,
        returning=exp.Returning(expressions=[sql.lit(1)]),
    )

    def counted(cte: str, name: str) -> exp.Expr:
        return sql.alias(exp.select(exp.Count(this=exp.Star())).from_(cte).subquery(), name)

    outputs = [counted("__pgt_deleted", "deleted"), counted("__pgt_inserted", "inserted")]
    if guard is not None:
        outputs.append(
            sql.alias(exp.select(sql.col(None, "valid")).from_(guard).subquery(), "valid")
        )
    statement = exp.select(*outputs)
    for cte in hoisted:
        statement = statement.with_(
            cte.alias, as_=cte.this, materialized=cte.args.get("materialized"), copy=False
        )
    return (
        statement.with_(_SOURCE, as_=delta, copy=False)
        .with_("__pgt_deleted", as_=delete, copy=False)
        .with_("__pgt_inserted", as_=insert, copy=False)
    )
