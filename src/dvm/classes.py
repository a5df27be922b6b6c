"""Each aggregate call's class: how it is maintained, and why.

The class follows the aggregate's *result* type, inferred from the argument's expression:
``sum(CASE WHEN p_type LIKE 'PROMO%' THEN price ELSE 0 END)`` sums numerics, whatever
``p_type`` is. Sums of floating point values are rescanned: adding and subtracting them in
another order gives other results.

>>> from dvm.dialect import parse_one
>>> q = ("select sum(case when t like 'P%' then x else 0 end), avg(x), max(x),"
...      " string_agg(t, ',') from r")
>>> types = {"x": "numeric(15,2)", "t": "character varying(25)"}
>>> for node in parse_one(q).expressions:
...     call = classify(node, q, lambda e: types.get(e.name) if isinstance(e, exp.Column) else None)
...     print(call.name, call.kind.value, call.why)
sum ALGEBRAIC_VIA_AUX values of scales 0 and 2: a count per scale kept beside it
avg ALGEBRAIC_VIA_AUX sum and count kept beside it
max SEMI_ALGEBRAIC inserts combine; a group is rescanned when its extreme leaves
string_agg GROUP_RESCAN its value depends on every row of the group
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from dvm import sql
from dvm.operators import AggregateCall, AggregateClass
from dvm.support import function_name

TypeOf = Callable[[exp.Expr], str | None]

_EXACT_NAMES = (
    "smallint",
    "integer",
    "bigint",
    "numeric",
    "decimal",
    "int",
    "int2",
    "int4",
    "int8",
)
_INEXACT_NAMES = ("real", "double precision", "float", "float4", "float8")


def classify(node: exp.Expr, query: str, type_of: TypeOf) -> AggregateCall:
    """The class of the aggregate call ``node`` (as parsed from ``query``)."""
    call = node.this if isinstance(node, exp.Filter) else node
    name = function_name(call, query)
    condition = node.expression.this if isinstance(node, exp.Filter) else None

    def rescan(why: str) -> AggregateCall:
        return AggregateCall(name, node, None, AggregateClass.GROUP_RESCAN, why)

    if isinstance(call, exp.Min | exp.Max) and not call.args.get("expressions"):
        argument = call.this
        if isinstance(argument, exp.Distinct):  # min(DISTINCT x) is min(x)
            argument = argument.expressions[0] if len(argument.expressions) == 1 else None
        if argument is not None and not isinstance(argument, exp.Order):
            if condition is not None:
                argument = exp.Case(ifs=[exp.If(this=condition.copy(), true=argument.copy())])
            return AggregateCall(
                name,
                node,
                argument,
                AggregateClass.SEMI_ALGEBRAIC,
                "inserts combine; a group is rescanned when its extreme leaves",
            )
    boolean = _boolean_argument(call, name)
    if boolean is not None:
        if condition is not None:
            boolean = exp.Case(ifs=[exp.If(this=condition.copy(), true=boolean.copy())])
        return AggregateCall(
            "bool_or" if name == "bool_or" else "bool_and",
            node,
            boolean,
            AggregateClass.ALGEBRAIC_VIA_AUX,
            "counts of non-null and of " + ("true" if name == "bool_or" else "false") + " values",
        )
    if not isinstance(call, exp.Count | exp.Sum | exp.Avg):
        return rescan("its value depends on every row of the group")
    argument = call.this
    if isinstance(argument, exp.Distinct):
        return rescan(f"{name}(DISTINCT ...): affected groups are recomputed")
    if isinstance(argument, exp.Order) or call.args.get("expressions"):
        return rescan("ORDER BY or several arguments")
    if isinstance(call, exp.Count) and isinstance(argument, exp.Star):
        if condition is None:
            return AggregateCall(name, node, None, AggregateClass.ALGEBRAIC_INVERTIBLE, "count")
        # count(*) FILTER (WHERE p) counts the rows where p holds: count(CASE WHEN p THEN 1 END)
        argument = sql.lit(1)
    if condition is not None:
        argument = exp.Case(ifs=[exp.If(this=condition.copy(), true=argument.copy())])
    if isinstance(call, exp.Count):
        return AggregateCall(name, node, argument, AggregateClass.ALGEBRAIC_INVERTIBLE, "count")
    if exactness(argument, type_of) is not True:
        what = (
            "floating point"
            if exactness(argument, type_of) is False
            else "a type not known to be exact"
        )
        return rescan(f"{name} over {what} is inexact")
    possible = scales(argument, type_of)
    if possible is None:
        # a numeric sum shows the largest scale of the values summed (0 + 1.50 is 1.50):
        # which scales are left after a delete is known from a count of values per scale
        return AggregateCall(
            name,
            node,
            argument,
            AggregateClass.ALGEBRAIC_VIA_AUX,
            "numeric values of any scale: a count per scale kept beside it",
            open_scale=True,
        )
    if len(possible) > 1:
        # which scales are left after a delete is known from a count of values per scale
        listed = " and ".join(map(str, sorted(possible)))
        return AggregateCall(
            name,
            node,
            argument,
            AggregateClass.ALGEBRAIC_VIA_AUX,
            f"values of scales {listed}: a count per scale kept beside it",
            tuple(sorted(possible)),
        )
    if isinstance(call, exp.Sum):
        return AggregateCall(
            name, node, argument, AggregateClass.ALGEBRAIC_INVERTIBLE, "sum of exact numbers"
        )
    return AggregateCall(
        name, node, argument, AggregateClass.ALGEBRAIC_VIA_AUX, "sum and count kept beside it"
    )


def _boolean_argument(call: exp.Expr, name: str) -> exp.Expr | None:
    """The one argument of bool_and, bool_or or every."""
    argument: exp.Expr
    if isinstance(call, exp.LogicalAnd | exp.LogicalOr):
        argument = call.this
    elif isinstance(call, exp.Anonymous) and name == "every" and len(call.expressions) == 1:
        argument = call.expressions[0]
    else:
        return None
    if isinstance(argument, exp.Distinct | exp.Order):
        return None
    return argument


def exactness(expression: exp.Expr, type_of: TypeOf) -> bool | None:
    """True: integer or numeric for sure; False: floating point; None: not known."""
    if isinstance(expression, exp.Paren | exp.Neg | exp.Abs):
        return exactness(expression.this, type_of)
    if isinstance(expression, exp.Null):
        return True
    if isinstance(expression, exp.Literal):
        return None if expression.is_string else True
    if isinstance(expression, exp.Column):
        return _type_exactness(type_of(expression))
    if isinstance(expression, exp.Cast):
        return _type_exactness(expression.to.sql(dialect="postgres").lower())
    if isinstance(expression, exp.Add | exp.Sub | exp.Mul | exp.Div | exp.Mod):
        return _all([expression.this, expression.expression], type_of)
    if isinstance(expression, exp.Case):
        branches = [branch.args["true"] for branch in expression.args.get("ifs") or []]
        default = expression.args.get("default")
        return _all(branches + ([default] if default is not None else []), type_of)
    if isinstance(expression, exp.Coalesce | exp.Greatest | exp.Least):
        return _all([expression.this, *expression.expressions], type_of)
    if isinstance(expression, exp.Nullif):
        return exactness(expression.this, type_of)
    if isinstance(expression, exp.Extract):
        return True  # numeric since PostgreSQL 14
    if isinstance(expression, exp.Round | exp.Floor | exp.Ceil):
        return exactness(expression.this, type_of)
    return None


def scales(expression: exp.Expr, type_of: TypeOf) -> frozenset[int] | None:
    """The numbers of decimal digits the values of ``expression`` can have, when known."""
    if isinstance(expression, exp.Paren | exp.Neg | exp.Abs):
        return scales(expression.this, type_of)
    if isinstance(expression, exp.Literal) and not expression.is_string:
        text = str(expression.this)
        return frozenset(
            {len(text.split(".")[1]) if "." in text and "e" not in text.lower() else 0}
        )
    if isinstance(expression, exp.Column | exp.Cast):
        type_ = (
            type_of(expression)
            if isinstance(expression, exp.Column)
            else expression.to.sql(dialect="postgres").lower()
        )
        fixed = _type_scale(type_)
        return frozenset({fixed}) if fixed is not None else None
    if isinstance(expression, exp.Add | exp.Sub | exp.Mul):
        left, right = scales(expression.this, type_of), scales(expression.expression, type_of)
        if left is None or right is None:
            return None
        if isinstance(expression, exp.Mul):
            return frozenset(a + b for a in left for b in right)
        return frozenset(max(a, b) for a in left for b in right)
    if isinstance(expression, exp.Case | exp.Coalesce):
        if isinstance(expression, exp.Case):
            branches = [branch.args["true"] for branch in expression.args.get("ifs") or []]
            default = expression.args.get("default")
            branches += [default] if default is not None else []
        else:
            branches = [expression.this, *expression.expressions]
        found: set[int] = set()
        for branch in branches:
            if isinstance(branch, exp.Null):
                continue
            of_branch = scales(branch, type_of)
            if of_branch is None:
                return None
            found |= of_branch
        return frozenset(found) if found else None
    return None


def _type_scale(type_: str | None) -> int | None:
    if type_ is None:
        return None
    base, _, modifier = type_.partition("(")
    base = base.strip()
    if base in ("smallint", "integer", "bigint", "int", "int2", "int4", "int8"):
        return 0
    if base in ("numeric", "decimal") and modifier:
        parts = modifier.rstrip(")").split(",")
        return int(parts[1]) if len(parts) == 2 else 0
    return None


def _all(expressions: list[exp.Expr], type_of: TypeOf) -> bool | None:
    found = [exactness(e, type_of) for e in expressions]
    if any(f is False for f in found):
        return False
    if all(f is True for f in found):
        return True
    return None


def _type_exactness(type_: str | None) -> bool | None:
    if type_ is None:
        return None
    base = type_.split("(")[0].strip()
    if base in _EXACT_NAMES:
        return True
    if base in _INEXACT_NAMES:
        return False
    return None
