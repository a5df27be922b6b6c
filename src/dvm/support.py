"""Which constructs the compiler can differentiate, and why not the others.

A reason reads ``"<construct>: <why>"``; the first part names what the user wrote.

>>> from dvm.dialect import parse_one
>>> volatile_calls(parse_one("select now(), random() from t"), "select now(), random() from t")
['now()', 'random()']
"""

from __future__ import annotations

from sqlglot import exp

from dvm.errors import UnsupportedQuery
from dvm.naming import fold

_VOLATILE_NODES: tuple[type[exp.Expr], ...] = (
    exp.Rand,
    exp.CurrentTimestamp,
    exp.CurrentDate,
    exp.CurrentTime,
    exp.Localtime,
    exp.Localtimestamp,
    exp.Uuid,
    exp.CurrentUser,
    exp.SessionUser,
)

_VOLATILE_NAMES = frozenset(
    {
        "random",
        "random_normal",
        "setseed",
        "now",
        "clock_timestamp",
        "statement_timestamp",
        "transaction_timestamp",
        "timeofday",
        "nextval",
        "currval",
        "setval",
        "lastval",
        "gen_random_uuid",
        "uuidv4",
        "uuidv7",
        "uuid_generate_v1",
        "uuid_generate_v1mc",
        "uuid_generate_v4",
        "txid_current",
        "txid_current_if_assigned",
        "pg_current_xact_id",
        "pg_current_xact_id_if_assigned",
        "pg_backend_pid",
        "pg_sleep",
        "age",
    }
)

# Built-in aggregates sqlglot parses as plain calls (its own aggregate classes are AggFunc).
_AGGREGATE_NAMES = frozenset(
    {
        "jsonb_agg",
        "jsonb_object_agg",
        "every",
        "xmlagg",
        "range_agg",
        "range_intersect_agg",
        "bit_or",
        "bit_xor",
        "bool_and",
        "bool_or",
        "regr_count",
        "regr_avgx",
        "regr_avgy",
        "regr_intercept",
        "regr_r2",
        "regr_sxx",
        "regr_sxy",
        "regr_syy",
        "json_agg_strict",
        "jsonb_agg_strict",
        "json_object_agg_strict",
        "jsonb_object_agg_strict",
        "any_value",
        "stddev_samp",
        "var_samp",
    }
)


# sqlglot's names for calls it parses into its own classes, when no source position is kept.
_CLASS_NAMES: dict[type[exp.Expr], str] = {
    exp.GroupConcat: "string_agg",
    exp.JSONArrayAgg: "json_agg",
    exp.ArrayAgg: "array_agg",
    exp.LogicalAnd: "bool_and",
    exp.LogicalOr: "bool_or",
    exp.CurrentTimestamp: "current_timestamp",
    exp.CurrentDate: "current_date",
    exp.CurrentTime: "current_time",
    exp.Localtime: "localtime",
    exp.Localtimestamp: "localtimestamp",
    exp.CurrentUser: "current_user",
    exp.SessionUser: "session_user",
}


def function_name(node: exp.Expr, query: str) -> str:
    """The name of a function call as written in ``query`` (lower case)."""
    start, end = node.meta.get("start"), node.meta.get("end")
    if isinstance(start, int) and isinstance(end, int) and query[start : end + 1]:
        return fold(query[start : end + 1].strip('"').split(".")[-1])
    if isinstance(node, exp.Anonymous):
        return fold(node.name)
    for kind, name in _CLASS_NAMES.items():
        if isinstance(node, kind):
            return name
    if isinstance(node, exp.Func):
        return fold(node.sql_name())
    return fold(type(node).__name__)


def is_aggregate(node: exp.Expr, query: str) -> bool:
    if isinstance(node, exp.WithinGroup):
        return True
    if isinstance(node, exp.AggFunc):
        return not isinstance(node, exp.Grouping)
    return isinstance(node, exp.Anonymous) and function_name(node, query) in _AGGREGATE_NAMES


def aggregate_calls(expression: exp.Expr, query: str) -> list[exp.Expr]:
    """Aggregate calls in ``expression``, outermost only, excluding window functions."""
    found: list[exp.Expr] = []

    def visit(node: exp.Expr) -> None:
        if isinstance(node, exp.Window):
            return
        if isinstance(node, exp.Filter) and is_aggregate(node.this, query):
            found.append(node)  # count(*) FILTER (WHERE ...) is one call, FILTER included
            return
        if is_aggregate(node, query):
            found.append(node)
            return
        for child in node.iter_expressions():
            visit(child)

    visit(expression)
    return found


def volatile_calls(expression: exp.Expr, query: str) -> list[str]:
    """Calls whose result changes between refreshes, as ``name()``."""
    calls = []
    for node in expression.walk():
        if isinstance(node, _VOLATILE_NODES) or (
            isinstance(node, exp.Func) and function_name(node, query) in _VOLATILE_NAMES
        ):
            calls.append(f"{function_name(node, query)}()")
    return calls


def check_renderable(statement: exp.Expr) -> None:
    """Refuse what sqlglot would print as different or invalid SQL."""
    for node in statement.find_all(exp.Interval):
        unit = node.args.get("unit")
        if unit is not None and not isinstance(unit, exp.Var):
            raise UnsupportedQuery(
                "interval literal with a field precision is not supported",
                detail=f"in {node.sql(dialect='postgres')}",
                hint="write the interval as a single string, e.g. interval '90 days'",
            )
