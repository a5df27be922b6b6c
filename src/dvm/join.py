"""Inner join: Δ(R⋈S) = ΔR⋈S' + R'⋈ΔS - ΔR⋈ΔS (': the state at the refresh snapshot).

With old = new - Δ, the textbook ΔR⋈S + R⋈ΔS + ΔR⋈ΔS becomes the rule above, which reads
only the current base tables and the staged deltas. Weights multiply; the last term is
negated. A row's id is the hash of its two inputs' ids.

>>> from dvm import sql
>>> from dvm.catalog import Column, SourceTable
>>> from dvm.dialect import render
>>> from dvm.operators import Scan
>>> from dvm.scan import scan
>>> cols = (Column("id", "integer"), Column("k", "integer"))
>>> r = SourceTable(1, "public", "r", cols, ("id",))
>>> s = SourceTable(2, "public", "s", cols, ("id",))
>>> on = sql.col("r", "k").eq(sql.col("s", "k"))
>>> node = Join(Scan(r, "r", ("id", "k")), Scan(s, "s", ("id", "k")), on)
>>> for term in join(node, scan(node.left), scan(node.right)).delta.terms:
...     print([(x.alias, x.delta) for x in term.sources], render(term.weight()))
[('r', True), ('s', False)] "r"."__pgt_w"
[('r', False), ('s', True)] "s"."__pgt_w"
[('r', True), ('s', True)] -("r"."__pgt_w" * "s"."__pgt_w")
"""

from __future__ import annotations

from sqlglot import exp

from dvm import sql
from dvm.operators import Join
from dvm.zset import Derived, Term, ZSet


def join(node: Join, left: Derived, right: Derived) -> Derived:
    new = _product(left.new, right.new, node.condition)
    delta = (
        _product(left.delta, right.new, node.condition)
        .union(_product(left.new, right.delta, node.condition))
        .union(_product(left.delta, right.delta, node.condition).negate())
    )
    return Derived(new=new, delta=delta)


def _product(left: ZSet, right: ZSet, condition: exp.Expr | None) -> ZSet:
    terms = []
    for a in left.terms:
        for b in right.terms:
            conditions = a.conditions + b.conditions
            if condition is not None:
                conditions = (*conditions, condition)
            row_id = (
                sql.row_hash([a.row_id, b.row_id])
                if a.row_id is not None and b.row_id is not None
                else None
            )
            terms.append(Term(a.sources + b.sources, conditions, a.sign * b.sign, row_id))
    return ZSet(tuple(terms))
