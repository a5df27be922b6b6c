"""Outer joins: the inner join's delta plus the padded rows whose existence the delta changes.

L ⟕ R = (L ⋈ R) + pad(L ▷ R), where L ▷ R are the rows of L without a partner. With ' the
new state: Δ(L ▷ R) = ΔL ▷ R + (L' ▷ R' - L' ▷ R); the second part only concerns rows of L'
that have a partner in ΔR: +1 for one that lost its last partner, -1 for one that found a
first. Padding joins the other side ``ON FALSE``, which gives its columns as NULLs of their
own types. RIGHT is LEFT with the sides swapped; FULL pads both sides.
"""

from __future__ import annotations

from sqlglot import exp

from dvm import sql
from dvm.operators import InnerJoin, JoinKind, OuterJoin
from dvm.rules import Derived, rows, rule
from dvm.rules.join import aliases, inner_join
from dvm.zset import Context, DerivedRows, Term, is_empty, joined, nonempty, touched


@rule(OuterJoin)
def outer_join(node: OuterJoin, inputs: tuple[Derived, Derived], context: Context) -> DerivedRows:
    left, right = rows(inputs[0]), rows(inputs[1])
    side = "FULL" if node.kind is JoinKind.FULL else node.kind.value.upper()
    inner = inner_join(InnerJoin((node.left, node.right), node.condition), (left, right), context)
    delta: list[Term] = nonempty(inner.delta)
    on_left, on_right = aliases(node.left), aliases(node.right)
    if node.kind in (JoinKind.LEFT, JoinKind.FULL):
        keys = sql.equated(node.condition, on_left, on_right)
        delta.extend(unmatched(left, right, node.condition, keys, pad_right=True))
    if node.kind in (JoinKind.RIGHT, JoinKind.FULL):
        keys = sql.equated(node.condition, on_right, on_left)
        delta.extend(unmatched(right, left, node.condition, keys, pad_right=False))

    def state(of_left: Term, of_right: Term) -> Term:
        return Term((joined(of_left.as_item(), side, of_right.as_item(), node.condition),))

    return DerivedRows(
        new=state(left.new, right.new),
        old=state(left.old, right.old),
        delta=tuple(delta) or inner.delta,
    )


def unmatched(
    kept: DerivedRows,
    other: DerivedRows,
    condition: exp.Expr,
    keys: list[tuple[exp.Expr, exp.Column]],
    *,
    pad_right: bool,
) -> list[Term]:
    """Δ(kept ▷ other), each row padded with NULLs for ``other``'s columns."""
    nulls = other.new.as_item()

    def pad(term: Term) -> Term:
        *first, last = term.items
        item = (
            joined(last, "LEFT", nulls, exp.false())
            if pad_right
            else joined(nulls, "RIGHT", last, exp.false())
        )
        return term.with_items((*first, item))

    def partner(state: Term) -> exp.Expr:
        return state.exists(condition)

    terms = [
        pad(term.where_late(exp.Not(this=partner(other.old)))) for term in nonempty(kept.delta)
    ]
    if is_empty(other.delta):
        return terms
    lost = exp.and_(exp.Not(this=partner(other.new)), partner(other.old))
    found = exp.and_(partner(other.new), exp.Not(this=partner(other.old)))
    terms.append(pad(kept.new.where(touched(other.delta, condition, lost, keys))))
    terms.append(pad(kept.new.where(touched(other.delta, condition, found, keys)).negated()))
    return terms
