"""Semi- and anti-joins (EXISTS, IN, NOT EXISTS, NOT IN): existence parts the delta changes.

Δ(L ⋉ S) = ΔL ⋉ S + (L' ⋉ S' - L' ⋉ S), with ' the new state; the second part only concerns
rows of L' with a partner in ΔS: +1 for one that found a first partner, -1 for one that lost
its last (the other way round for an anti-join).
"""

from __future__ import annotations

from sqlglot import exp

from dvm import sql
from dvm.operators import SemiJoin
from dvm.rules import Derived, rows, rule
from dvm.rules.join import aliases
from dvm.zset import Context, DerivedRows, Term, is_empty, nonempty, touched


@rule(SemiJoin)
def semi_join(node: SemiJoin, inputs: tuple[Derived, Derived], context: Context) -> DerivedRows:
    input, subquery = rows(inputs[0]), rows(inputs[1])
    condition = node.condition

    def kept(state: Term) -> exp.Expr:
        found: exp.Expr = state.exists(condition)
        return exp.Not(this=found) if node.anti else found

    now_in = exp.and_(kept(subquery.new), exp.Not(this=kept(subquery.old)))
    now_out = exp.and_(exp.Not(this=kept(subquery.new)), kept(subquery.old))
    delta = [term.where_late(kept(subquery.old)) for term in nonempty(input.delta)]
    if not is_empty(subquery.delta):
        keys = sql.equated(condition, aliases(node.input), {node.subquery.alias})
        delta.append(input.new.where(touched(subquery.delta, condition, now_in, keys)))
        delta.append(input.new.where(touched(subquery.delta, condition, now_out, keys)).negated())
    return DerivedRows(
        new=input.new.where(kept(subquery.new)),
        old=input.old.where(kept(subquery.old)),
        delta=tuple(delta) or (input.delta[0],),
    )
