"""Inner join of n inputs: Δ(R₁⋈…⋈Rₙ) = Σᵢ R₁'⋈…⋈Rᵢ₋₁'⋈ΔRᵢ⋈Rᵢ₊₁⋈…⋈Rₙ.

' is the new state, unprimed the old one (derived as new - Δ by the inputs' rules): n terms
per delta term of an input, not the 2ⁿ - 1 of nesting the binary rule. Weights multiply; an
old base table in a product is the Z-set new - Δ (its weight a factor too).

>>> from dvm import sql
>>> from dvm.catalog import Column, SourceTable
>>> from dvm.dialect import render
>>> from dvm.operators import Scan
>>> from dvm.rules import derive
>>> from dvm.zset import Context
>>> cols = (Column("id", "integer"), Column("k", "integer"))
>>> scans = [Scan(SourceTable(i, "public", n, cols, ("id",)), n, ("id", "k")) for i, n in
...          enumerate("rst", 1)]
>>> on = exp.and_(sql.col("r", "k").eq(sql.col("s", "k")), sql.col("s", "k").eq(sql.col("t", "k")))
>>> derived = derive(InnerJoin(tuple(scans), on), Context())
>>> def kind(item):
...     text = render(item)
...     if "__pgt_delta" in text.split(" AS ")[0]:
...         return "delta"
...     return "old" if "UNION" in text else "new"
>>> for term in derived.delta:
...     print([kind(item) for item in term.items], render(term.weight()))
['delta', 'old', 'old'] "r"."__pgt_w" * "s"."__pgt_w" * "t"."__pgt_w"
['new', 'delta', 'old'] "s"."__pgt_w" * "t"."__pgt_w"
['new', 'new', 'delta'] "t"."__pgt_w"

For a refresh in which only r and t staged rows (``Context.changed``): s is its table in
every term, and the terms of r and t read new states and deltas only, the product of both
deltas subtracted.

>>> changed = Context(changed=frozenset({1, 3}))
>>> for term in derive(InnerJoin(tuple(scans), on), changed).delta:
...     print([kind(item) for item in term.items], render(term.weight()))
['delta', 'new', 'new'] "r"."__pgt_w"
['new', 'new', 'delta'] "t"."__pgt_w"
['delta', 'new', 'delta'] -("r"."__pgt_w" * "t"."__pgt_w")
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import reduce
from itertools import combinations
from math import prod

from sqlglot import exp

from dvm import sql
from dvm.dialect import render
from dvm.operators import (
    Filter,
    InnerJoin,
    Rows,
    Scan,
    SemiJoin,
    SubqueryScan,
)
from dvm.rules import Derived, rows, rule
from dvm.zset import Context, DerivedRows, Term, is_empty, live

EXPANDED_TERMS = 15
"""The most terms a join's delta may expand into over new states (see ``inner_join``); a
join of more changing inputs keeps the n terms with old states."""


@rule(InnerJoin)
def inner_join(node: InnerJoin, inputs: tuple[Derived, ...], context: Context) -> DerivedRows:
    """The n terms of the module's formula; for a refresh whose changed sources are known
    (``Context.changed``), the inclusion-exclusion form over the inputs that change:
    Δ(R₁⋈…⋈Rₙ) = Σ over non-empty sets S of them of (-1)^(|S|+1) ⋈ᵢ∈S ΔRᵢ ⋈ⱼ∉S Rⱼ'. Its
    terms read new states and deltas only, whose row counts the planner knows; an old state
    (the table and its delta in a union) has no statistics, and a misestimate there turns
    every join above it into a scan of whole tables."""
    derived = [rows(input) for input in inputs]
    conditions: tuple[exp.Expr, ...] = (node.condition,) if node.condition is not None else ()

    def product(terms: list[Term]) -> Term:
        return reduce(Term.times, terms).where(*conditions)

    changing = [i for i, d in enumerate(derived) if not is_empty(d.delta)]
    delta: list[Term] = []
    if not changing:
        delta.append(product([derived[0].delta[0], *[d.new for d in derived[1:]]]))
    elif context.changed is not None and _expansion(derived, changing) <= EXPANDED_TERMS:
        delta.extend(_expanded(node, derived, changing, product))
    else:
        for i in changing:
            for term in live(derived[i].delta):
                mine = aliases(node.inputs[i])
                states = [
                    d if j == i else _reduced(node, mine, term, j, d) for j, d in enumerate(derived)
                ]
                before = [d.new for d in states[:i]]
                after = [d.new if is_empty(d.delta) else d.old_in_products for d in states[i + 1 :]]
                delta.append(product([*before, term, *after]))
    return DerivedRows(
        new=product([d.new for d in derived]),
        old=product([d.old for d in derived]),
        delta=tuple(delta),
        weighted_old=product([d.old_in_products for d in derived]),
    )


def _expansion(derived: list[DerivedRows], changing: list[int]) -> int:
    """How many terms the inclusion-exclusion form has: a product of one term per input of
    each set, so ∏(1 + terms of each changing input) - 1."""
    return prod(1 + len(live(derived[i].delta)) for i in changing) - 1


def _expanded(
    node: InnerJoin,
    derived: list[DerivedRows],
    changing: list[int],
    product: Callable[[list[Term]], Term],
) -> list[Term]:
    terms: list[Term] = []
    for size in range(1, len(changing) + 1):
        for chosen in combinations(changing, size):
            mine = {alias for i in chosen for alias in aliases(node.inputs[i])}
            for picked in itertools.product(*[live(derived[i].delta) for i in chosen]):
                by_input = dict(zip(chosen, picked, strict=True))
                deltas = reduce(Term.times, picked)
                parts = [
                    by_input[j] if j in by_input else _reduced(node, mine, deltas, j, d).new
                    for j, d in enumerate(derived)
                ]
                term = product(parts)
                terms.append(term if size % 2 else term.negated())
    return terms


def _reduced(
    node: InnerJoin, mine: set[str], term: Term, j: int, input: DerivedRows
) -> DerivedRows:
    """Input ``j``'s states in the product with ``term`` (a delta of the inputs binding the
    aliases ``mine``): reduced to the rows the join can match with the term's when ``j`` can
    reduce cheaply (a grouped relation: only the groups of those keys) and an equality of the
    condition ties one of its columns to values of the term alone."""
    target = node.inputs[j]
    if input.reduced is None or not isinstance(target, SubqueryScan):
        return input
    for other, side in sql.equated(node.condition, mine, {target.alias}):
        values = _values(term, other) if isinstance(other, exp.Column) else None
        reduced = None if values is None else input.reduced(side.name, values)
        if reduced is not None:
            return reduced
    return input


def _values(term: Term, column: exp.Column) -> exp.Select | None:
    """A query over one delta item of ``term`` whose values include every value ``column``
    takes in the term's rows: that column itself, or one the term's conditions equate it
    with. None when there is none (the values would cost as much as the term)."""
    candidates = [column]
    for conjunct in [c for condition in term.conditions for c in sql.conjuncts(condition)]:
        if isinstance(conjunct, exp.EQ):
            for one, two in (
                (conjunct.this, conjunct.expression),
                (conjunct.expression, conjunct.this),
            ):
                if render(one) == render(column) and isinstance(two, exp.Column):
                    candidates.append(two)
    items = {item.alias_or_name: item for item in term.items}
    for candidate in candidates:
        # (a delta padded by an outer join is inside a joined item: not one to read alone)
        if candidate.table in term.deltas and candidate.table in items:
            return exp.select(candidate.copy()).from_(items[candidate.table].copy())
    return None


def aliases(node: Rows) -> set[str]:
    """The aliases a row node's terms bind (not those of subqueries, EXISTS's included)."""
    if isinstance(node, Scan | SubqueryScan):
        return {node.alias}
    if isinstance(node, Filter | SemiJoin):
        return aliases(node.input)
    inputs = node.inputs if isinstance(node, InnerJoin) else (node.left, node.right)
    return {alias for child in inputs for alias in aliases(child)}
