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
"""

from __future__ import annotations

from functools import reduce

from sqlglot import exp

from dvm.operators import InnerJoin
from dvm.rules import Derived, rows, rule
from dvm.zset import Context, DerivedRows, Term


@rule(InnerJoin)
def inner_join(node: InnerJoin, inputs: tuple[Derived, ...], context: Context) -> DerivedRows:
    derived = [rows(input) for input in inputs]
    conditions: tuple[exp.Expr, ...] = (node.condition,) if node.condition is not None else ()

    def product(terms: list[Term]) -> Term:
        return reduce(Term.times, terms).where(*conditions)

    delta: list[Term] = []
    for i, input in enumerate(derived):
        before = [d.new for d in derived[:i]]
        after = [d.old_in_products for d in derived[i + 1 :]]
        delta.extend(product([*before, term, *after]) for term in input.delta)
    return DerivedRows(
        new=product([d.new for d in derived]),
        old=product([d.old for d in derived]),
        delta=tuple(delta),
        weighted_old=product([d.old_in_products for d in derived]),
    )
