"""Filter: linear, the predicate applies to both states and to every delta term."""

from __future__ import annotations

from dvm.operators import Filter
from dvm.rules import Derived, rows, rule
from dvm.zset import Context, DerivedRows


@rule(Filter)
def filter_(node: Filter, inputs: tuple[Derived], context: Context) -> DerivedRows:
    (derived,) = inputs
    input = rows(derived)
    return DerivedRows(
        new=input.new.where(node.predicate),
        old=input.old.where(node.predicate),
        delta=tuple(term.where(node.predicate) for term in input.delta),
        weighted_old=(
            input.weighted_old.where(node.predicate) if input.weighted_old is not None else None
        ),
    )
