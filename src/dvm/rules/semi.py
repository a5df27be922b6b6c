"""Semi- and anti-joins (EXISTS, IN, NOT EXISTS, NOT IN): existence parts the delta changes.

Δ(L ⋉ S) = ΔL ⋉ S + (L' ⋉ S' - L' ⋉ S), with ' the new state; the second part only concerns
rows of L' with a partner in ΔS: +1 for one that found a first partner, -1 for one that lost
its last (the other way round for an anti-join).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from dvm import sql
from dvm.operators import SemiJoin, relation_types
from dvm.rules import Derived, rows, rule
from dvm.rules.join import aliases
from dvm.zset import (
    LATE_KEYS,
    Context,
    DerivedRows,
    Keyed,
    Term,
    is_empty,
    key_column,
    nonempty,
    touched,
)


@rule(SemiJoin)
def semi_join(node: SemiJoin, inputs: tuple[Derived, Derived], context: Context) -> DerivedRows:
    input, subquery = rows(inputs[0]), rows(inputs[1])
    condition = node.condition

    def kept(state: Term, on: exp.Expr = condition) -> exp.Expr:
        found: exp.Expr = state.exists(on)
        return exp.Not(this=found) if node.anti else found

    now_in = exp.and_(kept(subquery.new), exp.Not(this=kept(subquery.old)))
    now_out = exp.and_(exp.Not(this=kept(subquery.new)), kept(subquery.old))
    keyed = _keyed(node, kept, subquery.old)
    delta = [term.where_late(kept(subquery.old), keyed) for term in nonempty(input.delta)]
    if not is_empty(subquery.delta):
        keys = sql.equated(condition, aliases(node.input), {node.subquery.alias})
        delta.append(input.new.where(touched(subquery.delta, condition, now_in, keys)))
        delta.append(input.new.where(touched(subquery.delta, condition, now_out, keys)).negated())
    return DerivedRows(
        new=input.new.where(kept(subquery.new)),
        old=input.old.where(kept(subquery.old)),
        delta=tuple(delta) or (input.delta[0],),
    )


def _keyed(node: SemiJoin, kept: Callable[[Term, exp.Expr], exp.Expr], old: Term) -> Keyed | None:
    """The old state's test written over the input's columns it is correlated by, when the
    condition reads the input only through equalities of its columns with the subquery's
    (of types that hash as far as known, so that their distinct values can be found): then
    rows with equal columns get the same result, and a row with a NULL one that of a row
    with no partner (NULL equals nothing)."""
    outer = aliases(node.input)
    pairs = sql.equated(node.condition, outer, {node.subquery.alias})
    types = dict(zip(node.subquery.columns, relation_types(node.subquery.query), strict=True))
    keys: list[exp.Column] = []
    for expression, column in pairs:
        type_ = types.get(column.name)
        if not isinstance(expression, exp.Column) or not sql.hashable(type_):
            return None
        keys.append(expression)
    if not keys:
        return None
    positions = {(k.table, k.name): i for i, k in enumerate(keys, start=1)}

    def to_key(found: exp.Expr) -> exp.Expr:
        if isinstance(found, exp.Column) and found.table in outer:
            at = positions.get((found.table, found.name))
            if at is not None:
                return sql.col(LATE_KEYS, key_column(at))
        return found

    condition = node.condition.copy().transform(to_key, copy=False)
    if any(column.table in outer for column in condition.find_all(exp.Column)):
        return None  # the input is read otherwise as well
    if not _only_equated(node.condition, outer, keys):
        return None
    return Keyed(tuple(keys), kept(old, condition), when_null=node.anti)


def _only_equated(condition: exp.Expr, outer: set[str], keys: list[exp.Column]) -> bool:
    """Whether every column of ``outer`` in ``condition`` is one side of an equality
    conjunct (whose other side reads no ``outer`` column)."""
    wanted = {(k.table, k.name) for k in keys}
    for conjunct in sql.conjuncts(condition):
        columns = [c for c in conjunct.find_all(exp.Column) if c.table in outer]
        if not columns:
            continue
        if not isinstance(conjunct, exp.EQ):
            return False
        sides = (conjunct.this, conjunct.expression)
        if not any(
            isinstance(side, exp.Column) and (side.table, side.name) in wanted for side in sides
        ):
            return False
        if sum(1 for side in sides if any(c.table in outer for c in side.find_all(exp.Column))) > 1:
            return False
    return True
