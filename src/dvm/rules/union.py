"""UNION ALL: linear, the inputs' deltas are concatenated (columns by position)."""

from __future__ import annotations

from sqlglot import exp

from dvm.operators import UnionAll
from dvm.rules import Derived, relation, rule
from dvm.zset import Context, DerivedRelation, cte_item, union_all


@rule(UnionAll)
def union(node: UnionAll, inputs: tuple[Derived, ...], context: Context) -> DerivedRelation:
    derived = [relation(input) for input in inputs]
    delta = union_all(
        [
            exp.select(exp.Star()).from_(cte_item(d.delta, f"__pgt_u{i}"))
            for i, d in enumerate(derived)
            if not d.empty or i == 0
        ]
    )
    return DerivedRelation(
        columns=node.columns,
        new=union_all([d.new.copy() for d in derived]),
        old=union_all([d.old.copy() for d in derived]),
        delta=context.cte(delta),
    )
