"""Aggregate (any aggregate, HAVING, DISTINCT) inside a query: the affected groups rescanned.

The groups the input's delta touches are computed from the new and from the old state of the
input: Δ = +new rows - old rows of those groups (a group unchanged cancels when the delta is
consolidated). Without GROUP BY the one row is recomputed when anything changed. The stored
relation of a stream table is maintained better (``dvm.aggregate``): this rule is for
aggregates below a join, in a subquery or a CTE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sqlglot import exp

from dvm import sql
from dvm.dialect import render
from dvm.operators import Aggregate
from dvm.rules import Derived, rows, rule
from dvm.rules.project import outputs_of
from dvm.zset import (
    WEIGHT,
    Context,
    DerivedRelation,
    DerivedRows,
    Term,
    aliased,
    cte_item,
    live,
    union_all,
)


def grouped(
    node: Aggregate,
    term: Term,
    columns: list[exp.Expr],
    *,
    restriction: exp.Expr | None = None,
) -> exp.Select:
    """``SELECT columns FROM term GROUP BY keys HAVING having``, restricted to some groups."""
    # clauses follow: the term's own FROM and WHERE (a fenced select has another FROM)
    select = term.select(columns, weighted=False, fenced=False)
    if node.group_by:
        select = select.group_by(*[sql.group_key(key) for key in node.group_by], copy=False)
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
        return exp.or_(*[term.exists() for term in live(input.delta)])
    keys = [f"__pgt_k{i}" for i in range(1, len(node.group_by) + 1)]
    listed = [sql.alias(key.copy(), name) for key, name in zip(node.group_by, keys, strict=True)]
    changed = union_all([term.select(listed, weighted=False) for term in live(input.delta)])
    distinct = exp.select(exp.Star()).from_(changed.subquery(sql.ident("__pgt_c")), copy=False)
    distinct.set("distinct", exp.Distinct())
    name = context.cte(distinct, "g")
    found = exp.select(*[sql.col("a", k) for k in keys]).from_(cte_item(name, "a"))
    # the first key known not to be NULL on its own as well: a condition on one table's
    # column that the planner can push down to that table's index (a tuple IN spans the
    # join). One only: each further IN multiplies the planner's misestimate of the groups.
    each: list[exp.Expr] = [
        exp.In(
            this=key.copy(),
            query=exp.select(sql.col("a", k)).from_(cte_item(name, "a")).subquery(),
        )
        for key, k, not_null in zip(node.group_by, keys, node.not_null, strict=True)
        if not_null and len(keys) > 1
    ]
    del each[1:]
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


def _netted_old_groups(
    node: Aggregate, input: DerivedRows, touched: exp.Expr, context: Context
) -> exp.Select | None:
    """The affected groups' old rows (weight -1), computed from the input's old state as a
    Z-set: its rows restricted to the affected groups (which the planner takes by index),
    netted per value of the columns the aggregate reads, each kept as often as its net
    weight says. None when the input has no such state (then the exact old state serves).

    For a refresh whose changed sources are known, that Z-set is new - Δ: the new state and
    the delta's terms negated, which read no old state (no union without statistics).
    """
    if input.weighted_old is None and context.changed is None:
        return None
    expressions = [*node.group_by, *(o.expression for o in node.outputs)]
    expressions += [node.having] if node.having is not None else []
    names: dict[tuple[str, str], str] = {}
    for expression in expressions:
        for column in expression.find_all(exp.Column):
            names.setdefault((column.table, column.name), f"__pgt_v{len(names) + 1}")
    read = [sql.alias(sql.col(t, c), name) for (t, c), name in names.items()]
    if context.changed is not None:
        terms = [input.new, *[term.negated() for term in live(input.delta)]]
    else:
        assert input.weighted_old is not None
        terms = [input.weighted_old]
    if node.group_by:
        terms = [term.where(touched.copy()) for term in terms]
    rows = union_all(
        [term.select(read or [sql.alias(sql.lit(0), "__pgt_v0")], weighted=True) for term in terms]
    )
    values = [sql.col("r", name) for name in names.values()] or [sql.col("r", "__pgt_v0")]
    known = {(table, column): type_ for table, column, type_ in node.input_types}
    types = [known.get(key) for key in names] or ["integer"]
    copies = _copies(rows, values, types)

    def rewrite(expression: exp.Expr) -> exp.Expr:
        def replace(found: exp.Expr) -> exp.Expr:
            if isinstance(found, exp.Column) and (found.table, found.name) in names:
                return sql.col("__pgt_o", names[(found.table, found.name)])
            return found

        return expression.copy().transform(replace, copy=False)

    over = replace(
        node,
        group_by=tuple(rewrite(k) for k in node.group_by),
        having=rewrite(node.having) if node.having is not None else None,
    )
    columns: list[exp.Expr] = [
        sql.alias(sql.lit(-1), WEIGHT),
        *[sql.alias(rewrite(o.expression), o.name) for o in node.outputs],
    ]
    restriction = None if node.group_by else exp.or_(*[t.exists() for t in live(input.delta)])
    return grouped(over, Term((aliased(copies, "__pgt_o"),)), columns, restriction=restriction)


def _copies(rows: exp.Query, values: list[exp.Column], types: Sequence[str | None]) -> exp.Select:
    """The values of the weighted ``rows`` (alias ``r``), each as often as its net weight
    says (none where it is not positive): netted by a GROUP BY where their types allow it
    (``sql.identity``), else per text of the row (Q18 at 0.1 %: sorting 9,000 rows by it
    took 20 of the term's 48 ms)."""
    source = rows.subquery(sql.ident("r"))
    net: exp.Expr = exp.Sum(this=sql.col("r", WEIGHT))
    if all(sql.groupable(t) for t in types):
        keys = [
            item for v, t in zip(values, types, strict=True) if t for item in sql.identity(v, t)
        ]
        netted = (
            exp.select(*[sql.alias(v.copy(), v.name) for v in values], sql.alias(net, "__pgt_net"))
            .from_(source, copy=False)
            .group_by(*keys, copy=False)
            .having(exp.GT(this=net.copy(), expression=sql.lit(0)), copy=False)
        )
        kept: exp.Expr | None = None
    else:
        same = sql.row_text(values)
        netted = exp.select(
            *values,
            sql.alias(exp.Window(this=net, partition_by=[same]), "__pgt_net"),
            sql.alias(exp.Window(this=exp.RowNumber(), partition_by=[same.copy()]), "__pgt_n"),
        ).from_(source, copy=False)
        kept = exp.and_(
            exp.EQ(this=sql.col("n", "__pgt_n"), expression=sql.lit(1)),
            exp.GT(this=sql.col("n", "__pgt_net"), expression=sql.lit(0)),
        )
    copies = (
        exp.select(*[sql.col("n", v.name) for v in values])
        .from_(netted.subquery(sql.ident("n")), copy=False)
        .join(
            exp.Table(
                this=sql.func("GENERATE_SERIES", sql.lit(1), sql.col("n", "__pgt_net")),
                alias=exp.TableAlias(this=sql.ident("__pgt_copy")),
            ),
            join_type="cross",
            copy=False,
        )
    )
    return copies.where(kept, copy=False) if kept is not None else copies


@rule(Aggregate)
def aggregate(node: Aggregate, inputs: tuple[Derived], context: Context) -> DerivedRelation:
    (derived,) = inputs
    input = rows(derived)
    columns = outputs_of(node.outputs)
    touched = affected_groups(node, input, context)

    def signed(term: Term, sign: int) -> exp.Select:
        weight = sql.alias(sql.lit(sign), WEIGHT)
        return grouped(node, term, [weight, *columns], restriction=touched.copy())

    old_groups = _netted_old_groups(node, input, touched, context)
    if old_groups is None:
        old_groups = signed(input.old, -1)
    delta = exp.union(signed(input.new, 1), old_groups, distinct=False, copy=False)

    def restricted(column: str, values: exp.Query) -> tuple[exp.Query, exp.Query] | None:
        # an output that is a group key: the condition goes inside, where the planner can
        # use the input's indexes (it does not push a join into a GROUP BY query)
        keys = [render(k) for k in node.group_by]
        output = next((o for o in node.outputs if o.name == column), None)
        if output is None or render(output.expression) not in keys:
            return None
        condition = exp.In(this=output.expression.copy(), query=values.subquery())
        return (
            grouped(node, input.new, columns, restriction=condition),
            grouped(node, input.old, columns, restriction=condition.copy()),
        )

    return DerivedRelation(
        columns=node.columns,
        new=grouped(node, input.new, columns),
        old=grouped(node, input.old, columns),
        delta=context.cte(delta),
        restricted=restricted if node.group_by else None,
    )
