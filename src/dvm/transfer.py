"""Key transfer: a grouped subquery joined on a group key reads only the groups its partner
can match.

``part ⋈ (SELECT l_partkey, avg(l_quantity) FROM lineitem GROUP BY l_partkey)`` joined on
``p_partkey = l_partkey``, with ``part`` filtered to a brand, matches only the groups of that
brand's parts. The rewrite says so in the tree: the aggregate's input becomes a semi-join
with the partner's key values under the partner's own predicates (a superset of the keys the
join can match, in every state of the tables), so the query means what it meant. What it
changes is the delta: the groups a change touches are those of the parts that pass the
filter (TPC-H Q17 at 0.1 %: 6 parts, not the 5,888 that the changed lineitems name), and a
full computation averages those parts only.

The partner's predicates are those that hold for every row the join sees: conjuncts of the
enclosing inner joins and filters on the partner's alias alone, and semi-joins of it. A
partner that no predicate narrows is left alone (the semi-join would cost for nothing).

>>> from dvm.catalog import CatalogFacts, Column, SourceTable
>>> from dvm.dialect import parse_one
>>> from dvm.operators import explain_tree
>>> from dvm.resolve import resolve
>>> i = Column("id", "integer")
>>> p = SourceTable(1, "public", "p", (i, Column("brand", "text")), ("id",))
>>> cols = (i, Column("pid", "integer"), Column("q", "integer"))
>>> l = SourceTable(2, "public", "l", cols, ("id",))
>>> q = ("select sum(q) from l, p where p.id = l.pid and brand = 'x'"
...      " and q < (select avg(q) from l l2 where l2.pid = p.id)")
>>> tree = resolve(parse_one(q), q, CatalogFacts({("public", "p"): p, ("public", "l"): l})).tree
>>> print("\\n".join(explain_tree(transferred(tree))[7:]))
      └─ SubqueryScan scalar subquery AS __pgt_s1 (avg, __pgt_c1)
         └─ Aggregate group by "l2"."pid"
            │  AVG("l2"."q"): ALGEBRAIC_VIA_AUX (sum and count kept beside it)
            └─ SemiJoin [key transfer] on "l2"."pid" = "__pgt_k1"."__pgt_key"
               ├─ Scan public.l AS l2 [keyed by id] reads id, pid, q
               └─ SubqueryScan keys of p.id AS __pgt_k1 (__pgt_key)
                  └─ Project "p"."id" AS __pgt_key
                     └─ Filter "p"."brand" = 'x'
                        └─ Scan public.p AS p [keyed by id] reads id, brand
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

from sqlglot import exp

from dvm import sql
from dvm.dialect import render
from dvm.operators import (
    Aggregate,
    Filter,
    InnerJoin,
    JoinKind,
    Operator,
    OuterJoin,
    Output,
    Project,
    Relation,
    Rows,
    Scan,
    SemiJoin,
    SubqueryScan,
    children,
    walk,
)
from dvm.rules.join import aliases

KEY = "__pgt_key"
WRITTEN = "key transfer"


Restriction = exp.Expr | SemiJoin
"""What a node asks of the rows it passes on: a predicate (its conjuncts on one alias are
what a domain takes), or a semi-join."""


def transferred(tree: Relation) -> Relation:
    """``tree`` with every grouped subquery that a join ties by a group key to a narrowed
    partner reading only that partner's keys (the same node where nothing applies)."""
    taken = {n.alias for n in walk(tree) if isinstance(n, Scan | SubqueryScan)}
    counter = itertools.count(1)

    def fresh() -> str:
        while (name := f"__pgt_k{next(counter)}") in taken:
            pass
        return name

    memo: dict[int, Operator] = {}

    def visit(node: Operator, above: tuple[Restriction, ...] = ()) -> Operator:
        """``node`` rebuilt; ``above``: the restrictions of the filters and semi-joins
        directly above it (a row they drop is not seen, whatever it joined)."""
        # a node reached twice (a CTE read twice) stays one node; such a node is a
        # subquery's, which nothing restricts from above
        found = memo.get(id(node)) if not above else None
        if found is not None:
            return found
        below: dict[int, tuple[Restriction, ...]] = {}
        if isinstance(node, Filter):
            below[id(node.input)] = (*above, node.predicate)
        elif isinstance(node, SemiJoin):
            below[id(node.input)] = (*above, node)
        rebuilt = _with_children(
            node, {id(c): visit(c, below.get(id(c), ())) for c in children(node)}
        )
        if isinstance(rebuilt, InnerJoin) and rebuilt.condition is not None:
            rebuilt = _narrow_inner(rebuilt, above, fresh)
        elif isinstance(rebuilt, OuterJoin):
            rebuilt = _narrow_outer(rebuilt, above, fresh)
        if not above:
            memo[id(node)] = rebuilt
        return rebuilt

    root = visit(tree)
    assert isinstance(root, Relation), "a node is rebuilt as a node of its kind"
    return root


def _with_children(node: Operator, new: dict[int, Operator]) -> Operator:
    """``node`` with its children replaced by ``new`` (by the old child's id)."""
    changes: dict[str, Any] = {}
    for f in fields(node):
        value = getattr(node, f.name)
        if isinstance(value, tuple) and any(id(v) in new for v in value):
            changed = tuple(new.get(id(v), v) for v in value)
            if any(a is not b for a, b in zip(changed, value, strict=True)):
                changes[f.name] = changed
        elif id(value) in new and new[id(value)] is not value:
            changes[f.name] = new[id(value)]
    return replace(node, **changes) if changes else node


def _narrow_inner(
    node: InnerJoin, above: tuple[Restriction, ...], fresh: Callable[[], str]
) -> InnerJoin:
    inputs = list(node.inputs)
    for i, grouped in enumerate(inputs):
        if not isinstance(grouped, SubqueryScan):
            continue
        partner = InnerJoin(tuple(p for j, p in enumerate(inputs) if j != i), node.condition)
        inputs[i] = _narrowed(grouped, partner, node.condition, above, fresh)
    if all(a is b for a, b in zip(inputs, node.inputs, strict=True)):
        return node
    return replace(node, inputs=tuple(inputs))


def _narrow_outer(
    node: OuterJoin, above: tuple[Restriction, ...], fresh: Callable[[], str]
) -> OuterJoin:
    # only the side whose rows all need a partner to be seen can be narrowed by the other
    if node.kind is JoinKind.LEFT and isinstance(node.right, SubqueryScan):
        right = _narrowed(node.right, node.left, node.condition, above, fresh)
        return node if right is node.right else replace(node, right=right)
    if node.kind is JoinKind.RIGHT and isinstance(node.left, SubqueryScan):
        left = _narrowed(node.left, node.right, node.condition, above, fresh)
        return node if left is node.left else replace(node, left=left)
    return node


def _narrowed(
    grouped: SubqueryScan,
    partner: Rows,
    condition: exp.Expr | None,
    above: tuple[Restriction, ...],
    fresh: Callable[[], str],
) -> SubqueryScan:
    """``grouped`` reading only the groups whose key a row of ``partner`` can equal under
    ``condition``; ``grouped`` itself when it is not grouped or nothing narrows it."""
    aggregate = grouped.query
    if (
        not isinstance(aggregate, Aggregate)
        or aggregate.scalar
        or not aggregate.group_by
        or len(aggregate.columns) != len(grouped.columns)
    ):
        return grouped
    keys = {render(key) for key in aggregate.group_by}
    for other, mine in sql.equated(condition, aliases(partner), {grouped.alias}):
        if not isinstance(other, exp.Column) or mine.name not in grouped.columns:
            continue
        key = aggregate.outputs[grouped.columns.index(mine.name)].expression
        if not isinstance(key, exp.Column) or render(key) not in keys:
            continue
        found = _domain(partner, other)
        if found is None:
            continue
        domain, narrowed = _restricted(found, above, other.table)
        if not narrowed:
            continue
        alias = fresh()
        values = Project(domain, (Output(KEY, other.copy()),))
        keys_of = SubqueryScan(values, alias, (KEY,), f"keys of {other.table}.{other.name}")
        semi = SemiJoin(
            aggregate.input, keys_of, key.copy().eq(sql.col(alias, KEY)), False, WRITTEN
        )
        return replace(grouped, query=replace(aggregate, input=semi))
    return grouped


def _domain(node: Rows, column: exp.Column) -> tuple[Rows, bool] | None:
    """The rows of the scan ``column`` is of, under the restrictions ``node`` applies to
    them alone, and whether there are any; None when the column's values are not a scan's."""
    alias = column.table
    if isinstance(node, Scan):
        return (node, False) if node.alias == alias else None
    if isinstance(node, InnerJoin):
        for input in node.inputs:
            if alias in aliases(input):
                found = _domain(input, column)
                return None if found is None else _restricted(found, (node.condition,), alias)
        return None
    if isinstance(node, Filter | SemiJoin):
        found = _domain(node.input, column)
        restriction = node.predicate if isinstance(node, Filter) else node
        return None if found is None else _restricted(found, (restriction,), alias)
    if isinstance(node, OuterJoin):
        # a row of the preserved side is seen whether or not it has a partner
        preserved = {JoinKind.LEFT: node.left, JoinKind.RIGHT: node.right}.get(node.kind)
        if preserved is not None and alias in aliases(preserved):
            return _domain(preserved, column)
    return None


def _restricted(
    found: tuple[Rows, bool], restrictions: tuple[Restriction | None, ...], alias: str
) -> tuple[Rows, bool]:
    """``found`` under the parts of ``restrictions`` that read ``alias`` alone."""
    rows, narrowed = found
    for restriction in restrictions:
        if isinstance(restriction, SemiJoin):
            if _reads_only(restriction.condition, {alias, restriction.subquery.alias}):
                rows, narrowed = replace(restriction, input=rows), True
            continue
        local = [c.copy() for c in sql.conjuncts(restriction) if _reads_only(c, {alias})]
        predicate = sql.and_all(local)
        if predicate is not None:
            rows, narrowed = Filter(rows, predicate), True
    return rows, narrowed


def _reads_only(expression: exp.Expr, allowed: set[str]) -> bool:
    """Whether ``expression`` reads columns, all of them of ``allowed`` aliases, and no
    subquery."""
    tables = {column.table for column in expression.find_all(exp.Column)}
    return bool(tables) and tables <= allowed and expression.find(exp.Query) is None
