"""From a resolved SELECT to the operator tree, or the reasons it cannot be differentiated.

>>> from dvm.catalog import CatalogFacts, Column, SourceTable
>>> from dvm.dialect import parse_one
>>> from dvm.operators import explain_tree
>>> from dvm.resolve import resolve_select
>>> t = SourceTable(1, "public", "t", (Column("g", "integer"), Column("x", "double precision")))
>>> q = "select g, sum(x) from t group by g"
>>> tree, notes = translate(resolve_select(parse_one(q), q, CatalogFacts({("public", "t"): t})), q)
>>> print("\\n".join(explain_tree(tree)))
Project "t"."g", SUM("t"."x") AS sum
└─ Aggregate [rescan (sum(x) over double precision is inexact)] group by "t"."g": SUM("t"."x")
   └─ Scan public.t AS t [keyless] reads g, x
"""

from __future__ import annotations

from sqlglot import exp

from dvm.dialect import render
from dvm.errors import InvalidQuery
from dvm.operators import (
    Aggregate,
    AggregateCall,
    AggregateFunction,
    AggregateStrategy,
    Filter,
    Join,
    Operator,
    Project,
    Scan,
)
from dvm.reason import Reason
from dvm.resolve import ResolvedSelect
from dvm.support import aggregate_calls, function_name, volatile_calls


class NotDifferentiable(Exception):
    """The query can be computed (FULL) but not maintained incrementally; says why."""

    def __init__(self, reasons: list[Reason]) -> None:
        super().__init__("; ".join(map(str, reasons)))
        self.reasons = reasons


_EXACT_TYPES = ("smallint", "integer", "bigint")


def translate(resolved: ResolvedSelect, query: str) -> tuple[Operator, list[Reason]]:
    """The operator tree and notes (strategies, ignored clauses) for a resolved SELECT."""
    reasons = _construct_reasons(resolved, query)
    if reasons:
        raise NotDifferentiable(reasons)
    scans = [Scan(r.table, r.alias, resolved.columns_read[r.alias]) for r in resolved.relations]
    node: Operator = scans[0]
    if len(scans) == 2:
        node = Join(scans[0], scans[1], resolved.joins[0].condition)
    if resolved.where is not None:
        node = Filter(node, resolved.where)
    notes: list[Reason] = []
    if resolved.ordered:
        notes.append(Reason("ORDER BY", "ignored, a stream table has no row order"))
    calls = _calls(resolved, query)
    if resolved.group_by is not None or calls:
        node = _aggregate(node, resolved, calls, query)
        if node.strategy is AggregateStrategy.RESCAN:
            assert node.strategy_reason is not None
            notes.append(Reason(node.strategy_reason, "affected groups are recomputed"))
    return Project(node, resolved.outputs), notes


def _construct_reasons(resolved: ResolvedSelect, query: str) -> list[Reason]:
    for clause, expression in [("WHERE", resolved.where), ("GROUP BY", None)] + [
        ("JOIN conditions", step.condition) for step in resolved.joins
    ]:
        for key in resolved.group_by or () if clause == "GROUP BY" else (expression,):
            if key is not None and aggregate_calls(key, query):
                raise InvalidQuery(
                    f"aggregate functions are not allowed in {clause}",
                    detail=f"in {render(key)}",
                    hint="filter groups with HAVING instead",
                )
    reasons = []
    if resolved.distinct is not None:
        reasons.append(
            Reason(resolved.distinct, "not differentiable yet (needs row multiplicities)")
        )
    if resolved.limited:
        reasons.append(Reason("LIMIT/OFFSET", "TopK queries are not differentiable yet"))
    for step in resolved.joins:
        if step.kind not in ("inner", "cross"):
            reasons.append(
                Reason(
                    f"{step.kind.upper()} JOIN",
                    "outer, semi and anti joins are not differentiable yet",
                )
            )
    if len(resolved.relations) > 2:
        reasons.append(
            Reason(
                f"join of {len(resolved.relations)} tables",
                "only joins of two tables are differentiable yet",
            )
        )
    expressions = [output.expression for output in resolved.outputs]
    expressions += [e for e in (resolved.where, resolved.having) if e is not None]
    expressions += list(resolved.group_by or ())
    expressions += [step.condition for step in resolved.joins if step.condition is not None]
    for expression in expressions:
        for window in expression.find_all(exp.Window):
            name = function_name(window.this, query)
            reasons.append(Reason(f"window function {name}()", "not differentiable yet"))
        for call in volatile_calls(expression, query):
            reasons.append(
                Reason(call, "volatile or time-dependent functions change between refreshes")
            )
    return list(dict.fromkeys(reasons))


def _calls(resolved: ResolvedSelect, query: str) -> list[exp.Expr]:
    found: list[exp.Expr] = []
    for expression in [o.expression for o in resolved.outputs] + (
        [resolved.having] if resolved.having is not None else []
    ):
        found.extend(aggregate_calls(expression, query))
    return found


def _aggregate(
    input: Operator, resolved: ResolvedSelect, found: list[exp.Expr], query: str
) -> Aggregate:
    keys = resolved.group_by or ()
    reasons: list[Reason] = []
    calls: dict[str, AggregateCall] = {}
    inexact: str | None = None
    for node in found:
        call = _call(node, query, reasons)
        if call is None:
            continue
        calls.setdefault(render(node), call)
        if (
            call.function in (AggregateFunction.SUM, AggregateFunction.AVG)
            and call.argument is not None
            and inexact is None
            and not _exact(call.argument, resolved)
        ):
            argument = f"{call.function.value}({_short(call.argument)})"
            inexact = f"{argument} over {_type_of(call.argument, resolved)} is inexact"
    reasons.extend(_ungrouped(resolved, keys, [render(node) for node in found], query))
    if reasons:
        raise NotDifferentiable(list(dict.fromkeys(reasons)))
    strategy, why = AggregateStrategy.ALGEBRAIC, None
    if resolved.having is not None:
        strategy, why = AggregateStrategy.RESCAN, "HAVING"
    elif inexact is not None:
        strategy, why = AggregateStrategy.RESCAN, inexact
    return Aggregate(input, keys, tuple(calls.values()), resolved.having, strategy, why)


def _call(node: exp.Expr, query: str, reasons: list[Reason]) -> AggregateCall | None:
    name = function_name(node, query)
    if isinstance(node, exp.Filter) or isinstance(node.parent, exp.Filter):
        reasons.append(
            Reason(f"{name}() FILTER", "aggregate FILTER clauses are not differentiable yet")
        )
        return None
    if not isinstance(node, exp.Count | exp.Sum | exp.Avg):
        reasons.append(
            Reason(f"aggregate {name}()", "only count, sum and avg are differentiable yet")
        )
        return None
    argument = node.this
    if isinstance(argument, exp.Distinct):
        reasons.append(
            Reason(f"{name}(DISTINCT ...)", "DISTINCT aggregates are not differentiable yet")
        )
        return None
    if isinstance(argument, exp.Order) or node.args.get("expressions"):
        reasons.append(Reason(f"{name}() with ORDER BY or several arguments", "not differentiable"))
        return None
    if isinstance(node, exp.Count):
        if isinstance(argument, exp.Star):
            return AggregateCall(AggregateFunction.COUNT_STAR, None, node)
        return AggregateCall(AggregateFunction.COUNT, argument, node)
    function = AggregateFunction.SUM if isinstance(node, exp.Sum) else AggregateFunction.AVG
    return AggregateCall(function, argument, node)


def _ungrouped(
    resolved: ResolvedSelect, keys: tuple[exp.Expr, ...], calls: list[str], query: str
) -> list[Reason]:
    """Columns used outside aggregates and group keys (PostgreSQL allows them when the
    primary key is grouped, but the compiler does not follow functional dependencies)."""
    covered = {render(key) for key in keys} | set(calls)
    reasons = []

    def visit(node: exp.Expr) -> None:
        if render(node) in covered:
            return
        if isinstance(node, exp.Column):
            reasons.append(
                Reason(
                    f"column {render(node)} outside GROUP BY",
                    "only grouped columns and aggregates can be differentiated",
                )
            )
            return
        for child in node.iter_expressions():
            visit(child)

    for expression in [o.expression for o in resolved.outputs] + (
        [resolved.having] if resolved.having is not None else []
    ):
        visit(expression)
    return reasons


def _exact(expression: exp.Expr, resolved: ResolvedSelect) -> bool:
    """Integer or numeric for sure: sums of it do not depend on the order of addition."""
    if isinstance(expression, exp.Paren | exp.Neg):
        return _exact(expression.this, resolved)
    if isinstance(expression, exp.Add | exp.Sub | exp.Mul):
        return _exact(expression.this, resolved) and _exact(expression.expression, resolved)
    if isinstance(expression, exp.Column):
        type_ = resolved.column_type(expression) or ""
        return type_ in _EXACT_TYPES or type_ == "numeric" or type_.startswith("numeric(")
    return isinstance(expression, exp.Literal) and not expression.is_string


def _type_of(expression: exp.Expr, resolved: ResolvedSelect) -> str:
    for column in expression.find_all(exp.Column):
        type_ = resolved.column_type(column)
        if type_ is not None and not _exact(column, resolved):
            return type_
    return "a type not known to be exact"


def _short(expression: exp.Expr) -> str:
    """An argument as the user would write it: unqualified, unquoted columns."""

    def strip(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column):
            return exp.column(node.name)
        return node

    return render(expression.copy().transform(strip, copy=False))
