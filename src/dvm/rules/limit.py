"""ORDER BY … LIMIT inside a query: recomputed from both states at every refresh.

The first rows of a relation can change whenever any row does, so the delta is the new
first rows minus the old ones. (The stored relation of a stream table is a TopK maintained
from the delta instead: ``dvm.topk``.)
"""

from __future__ import annotations

from sqlglot import exp

from dvm import sql
from dvm.operators import TopK
from dvm.rules import Derived, relation, rule
from dvm.zset import WEIGHT, Context, DerivedRelation, aliased


def first_rows(node: TopK, state: exp.Query) -> exp.Select:
    """``SELECT columns FROM (state) ORDER BY order LIMIT limit`` as one nestable SELECT."""
    inner = (
        exp.select(*[sql.col("__pgt_o", c) for c in node.columns])
        .from_(aliased(state.subquery(), "__pgt_o", node.columns))
        .order_by(*[qualified(item, "__pgt_o") for item in node.order], copy=False)
        .limit(node.limit, copy=False)
    )
    if node.offset:
        inner = inner.offset(node.offset, copy=False)
    return exp.select(*[sql.col("__pgt_l", c) for c in node.columns]).from_(
        inner.subquery(sql.ident("__pgt_l"))
    )


def qualified(item: exp.Ordered, alias: str) -> exp.Ordered:
    """An ORDER BY item over the columns of ``alias`` (items name output columns)."""

    def qualify(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and not node.table:
            return sql.col(alias, node.name)
        return node

    ordered = item.copy().transform(qualify, copy=False)
    assert isinstance(ordered, exp.Ordered)
    return ordered


@rule(TopK)
def top_k(node: TopK, inputs: tuple[Derived], context: Context) -> DerivedRelation:
    (derived,) = inputs
    input = relation(derived)
    new, old = first_rows(node, input.new), first_rows(node, input.old)

    def signed(query: exp.Select, sign: int) -> exp.Select:
        return exp.select(sql.alias(sql.lit(sign), WEIGHT), exp.Star()).from_(
            query.subquery(sql.ident("__pgt_s")), copy=False
        )

    delta = exp.union(signed(new, 1), signed(old, -1), distinct=False, copy=False)
    return DerivedRelation(columns=node.columns, new=new, old=old, delta=context.cte(delta))
