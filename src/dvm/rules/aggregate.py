"""Aggregate (any aggregate, HAVING, DISTINCT) inside a query: the affected groups rescanned.

The groups the input's delta touches are computed from the new and from the old state of the
input: Δ = +new rows - old rows of those groups (a group unchanged cancels when the delta is
consolidated). Without GROUP BY the one row is recomputed when anything changed. The stored
relation of a stream table is maintained better (``dvm.aggregate``): this rule is for
aggregates below a join, in a subquery or a CTE.
"""

from __future__ import annotations

from sqlglot import exp

from dvm import sql
from dvm.operators import Aggregate
from dvm.rules import Derived, rows, rule
from dvm.rules.project import outputs_of
from dvm.zset import WEIGHT, Context, DerivedRelation, DerivedRows, Term, cte_item, union_all


def grouped(
    node: Aggregate,
    term: Term,
    columns: list[exp.Expr],
    *,
    restriction: exp.Expr | None = None,
) -> exp.Select:
    """``SELECT columns FROM term GROUP BY keys HAVING having``, restricted to some groups."""
    select = term.select(columns, weighted=False)
    if node.group_by:
        select = select.group_by(*[key.copy() for key in node.group_by], copy=False)
        if restriction is not None:
            select = select.where(restriction, copy=False)
    elif restriction is not None:
        # one row without GROUP BY, even over no rows: HAVING is what leaves it out
        select = select.having(restriction, copy=False)
    if node.having is not None:
        select = select.having(node.having.copy(), copy=False)
    return select


def affected_groups(node: Aggregate, input: DerivedRows, context: Context) -> exp.Expr:
    """A condition on the input's rows: their group is one the delta touches."""
    if not node.group_by:
        return exp.or_(*[term.exists() for term in input.delta])
    keys = [f"__pgt_k{i}" for i in range(1, len(node.group_by) + 1)]
    listed = [sql.alias(key.copy(), name) for key, name in zip(node.group_by, keys, strict=True)]
    changed = union_all([term.select(listed, weighted=False) for term in input.delta])
    distinct = exp.select(exp.Star()).from_(changed.subquery(sql.ident("__pgt_c")), copy=False)
    distinct.set("distinct", exp.Distinct())
    name = context.cte(distinct, "g")
    found = exp.select(*[sql.col("a", k) for k in keys]).from_(cte_item(name, "a"))
    # each key known not to be NULL on its own as well: a condition on one table's column
    # that the planner can push down to that table's index (a tuple IN spans the join)
    each: list[exp.Expr] = [
        exp.In(
            this=key.copy(),
            query=exp.select(sql.col("a", k)).from_(cte_item(name, "a")).subquery(),
        )
        for key, k, not_null in zip(node.group_by, keys, node.not_null, strict=True)
        if not_null and len(keys) > 1
    ]
    if node.not_null_keys:
        left: exp.Expr = (
            node.group_by[0].copy()
            if len(keys) == 1
            else exp.Tuple(expressions=[k.copy() for k in node.group_by])
        )
        return exp.and_(*each, exp.In(this=left, query=found.subquery()))
    hashed = exp.select(sql.value_hash([sql.col("a", k) for k in keys], node.key_types)).from_(
        cte_item(name, "a")
    )
    whole = exp.In(
        this=sql.value_hash(list(node.group_by), node.key_types), query=hashed.subquery()
    )
    return exp.and_(*each, whole)


@rule(Aggregate)
def aggregate(node: Aggregate, inputs: tuple[Derived], context: Context) -> DerivedRelation:
    (derived,) = inputs
    input = rows(derived)
    columns = outputs_of(node.outputs)
    touched = affected_groups(node, input, context)

    def signed(term: Term, sign: int) -> exp.Select:
        weight = sql.alias(sql.lit(sign), WEIGHT)
        return grouped(node, term, [weight, *columns], restriction=touched.copy())

    delta = exp.union(signed(input.new, 1), signed(input.old, -1), distinct=False, copy=False)
    return DerivedRelation(
        columns=node.columns,
        new=grouped(node, input.new, columns),
        old=grouped(node, input.old, columns),
        delta=context.cte(delta),
    )
