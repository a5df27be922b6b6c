"""SubqueryScan: a relation's rows under an alias, its delta the relation's delta CTE."""

from __future__ import annotations

from dvm import sql
from dvm.operators import SubqueryScan
from dvm.rules import Derived, relation, rule
from dvm.zset import WEIGHT, Context, DerivedRows, Term, aliased, cte_item


@rule(SubqueryScan)
def subquery_scan(node: SubqueryScan, inputs: tuple[Derived], context: Context) -> DerivedRows:
    (derived,) = inputs
    inner = relation(derived)
    delta = aliased(cte_item(inner.delta, node.alias), node.alias, (WEIGHT, *node.columns))
    return DerivedRows(
        new=Term((aliased(inner.new, node.alias, node.columns),)),
        old=Term((aliased(inner.old, node.alias, node.columns),)),
        delta=(Term((delta,), factors=(sql.col(node.alias, WEIGHT),)),),
    )
