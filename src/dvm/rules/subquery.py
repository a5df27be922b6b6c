"""SubqueryScan: a relation's rows under an alias, its delta the relation's delta CTE."""

from __future__ import annotations

from sqlglot import exp

from dvm import sql
from dvm.operators import SubqueryScan
from dvm.rules import Derived, relation, rule
from dvm.zset import WEIGHT, Context, DerivedRows, Term, aliased, cte_item


@rule(SubqueryScan)
def subquery_scan(node: SubqueryScan, inputs: tuple[Derived], context: Context) -> DerivedRows:
    (derived,) = inputs
    inner = relation(derived)
    delta = aliased(cte_item(inner.delta, node.alias), node.alias, (WEIGHT, *node.columns))
    change = Term((delta,), factors=(sql.col(node.alias, WEIGHT),), deltas=frozenset({node.alias}))
    changes = (change.emptied() if inner.empty else change,)

    def reduced(column: str, values: exp.Query) -> DerivedRows | None:
        if inner.restricted is None or column not in node.columns:
            return None
        states = inner.restricted(inner.columns[node.columns.index(column)], values)
        if states is None:
            return None
        new, old = states
        return DerivedRows(
            new=Term((aliased(new, node.alias, node.columns),)),
            old=Term((aliased(old, node.alias, node.columns),)),
            delta=changes,
        )

    return DerivedRows(
        new=Term((aliased(inner.new, node.alias, node.columns),)),
        old=Term((aliased(inner.old, node.alias, node.columns),)),
        delta=changes,
        reduced=reduced,
    )
