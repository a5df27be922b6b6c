"""INTERSECT and EXCEPT, with and without ALL: the affected values recomputed.

A value's multiplicity in the result depends only on its multiplicities in the inputs, so
the values the inputs' deltas touch are recomputed from the new and the old states, compared
as the set operation compares (equality, NULLs equal), and the rest is untouched.
"""

from __future__ import annotations

from sqlglot import exp

from dvm import sql
from dvm.operators import SetKind, SetOperation
from dvm.rules import Derived, relation, rule
from dvm.zset import WEIGHT, Context, DerivedRelation, aliased, cte_item, union_all


@rule(SetOperation)
def set_operation(
    node: SetOperation, inputs: tuple[Derived, Derived], context: Context
) -> DerivedRelation:
    left, right = relation(inputs[0]), relation(inputs[1])
    columns = node.columns

    def hashed(alias: str) -> exp.Expr:
        return sql.value_hash([sql.col(alias, c) for c in columns])

    touched = union_all(
        [
            exp.select(sql.alias(hashed("c"), "h")).from_(
                aliased(cte_item(d.delta, "c"), "c", (WEIGHT, *columns))
            )
            for d in (left, right)
            if not d.empty or d is left
        ]
    )
    name = context.cte(touched, "v")
    values = exp.select(sql.col("v", "h")).from_(cte_item(name, "v"))

    def restricted(state: exp.Query, alias: str) -> exp.Select:
        return (
            exp.select(*[sql.col(alias, c) for c in columns])
            .from_(aliased(state.subquery(), alias, columns))
            .where(exp.In(this=hashed(alias), query=values.subquery()), copy=False)
        )

    def combined(a: exp.Query, b: exp.Query) -> exp.Query:
        kind = exp.Intersect if node.kind is SetKind.INTERSECT else exp.Except
        return kind(this=a, expression=b, distinct=not node.all)

    def signed(query: exp.Query, sign: int) -> exp.Select:
        return exp.select(sql.alias(sql.lit(sign), WEIGHT), exp.Star()).from_(
            query.subquery(sql.ident("__pgt_s")), copy=False
        )

    new = combined(restricted(left.new, "a"), restricted(right.new, "b"))
    old = combined(restricted(left.old, "a"), restricted(right.old, "b"))
    delta = exp.union(signed(new, 1), signed(old, -1), distinct=False, copy=False)
    return DerivedRelation(
        columns=columns,
        new=_whole(combined(left.new.copy(), right.new.copy()), columns),
        old=_whole(combined(left.old.copy(), right.old.copy()), columns),
        delta=context.cte(delta),
    )


def _whole(query: exp.Query, columns: tuple[str, ...]) -> exp.Select:
    """The set operation as one SELECT, so it nests anywhere a query does."""
    return exp.select(*[sql.col("__pgt_s", c) for c in columns]).from_(
        aliased(query.subquery(), "__pgt_s", columns)
    )
