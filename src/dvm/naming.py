"""Output column names, chosen the way PostgreSQL names the columns of a SELECT.

PostgreSQL (``FigureColname``) names an unaliased output after its column, its function or its
cast type, and ``?column?`` otherwise; the stream table's columns get the same names.

>>> from dvm.dialect import parse_one
>>> q = "select o.amount, count(*), sum(x) / 2, x::int, 1::int, y as total from t"
>>> select = parse_one(q)
>>> [output_name(e, q) for e in select.expressions]
['amount', 'count', '?column?', 'x', 'int4', 'total']
"""

from __future__ import annotations

from sqlglot import exp

UNNAMED = "?column?"

# PostgreSQL's internal names for the types sqlglot knows under its own names.
_TYPE_NAMES = {
    exp.DataType.Type.INT: "int4",
    exp.DataType.Type.BIGINT: "int8",
    exp.DataType.Type.SMALLINT: "int2",
    exp.DataType.Type.DOUBLE: "float8",
    exp.DataType.Type.FLOAT: "float4",
    exp.DataType.Type.DECIMAL: "numeric",
    exp.DataType.Type.BOOLEAN: "bool",
    exp.DataType.Type.CHAR: "bpchar",
    exp.DataType.Type.VARCHAR: "varchar",
    exp.DataType.Type.TEXT: "text",
    exp.DataType.Type.DATE: "date",
    exp.DataType.Type.TIMESTAMP: "timestamp",
    exp.DataType.Type.TIMESTAMPTZ: "timestamptz",
    exp.DataType.Type.TIME: "time",
    exp.DataType.Type.TIMETZ: "timetz",
    exp.DataType.Type.INTERVAL: "interval",
    exp.DataType.Type.JSON: "json",
    exp.DataType.Type.JSONB: "jsonb",
    exp.DataType.Type.UUID: "uuid",
    exp.DataType.Type.VARBINARY: "bytea",
}

_FIXED_NAMES: dict[type[exp.Expr], str] = {
    exp.Array: "array",
    exp.Coalesce: "coalesce",
    exp.Greatest: "greatest",
    exp.Least: "least",
    exp.Nullif: "nullif",
    exp.Exists: "exists",
}


def fold(name: str) -> str:
    """PostgreSQL folds unquoted identifiers to lower case (ASCII letters only)."""
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def identifier_name(identifier: exp.Expr) -> str:
    """The name an identifier stands for: folded unless it was quoted."""
    if isinstance(identifier, exp.Identifier):
        return identifier.this if identifier.quoted else fold(identifier.this)
    return fold(identifier.name)


def output_name(expression: exp.Expr, query: str) -> str:
    """The name PostgreSQL gives the output ``expression`` of ``query`` (the text parsed)."""
    if isinstance(expression, exp.Alias):
        return identifier_name(expression.args["alias"])
    name, _ = _figure(expression, query)
    return name or UNNAMED


def _figure(node: exp.Expr, query: str) -> tuple[str | None, int]:
    """(name, strength) as in PostgreSQL's FigureColnameInternal: 2 real name, 1 type name."""
    if isinstance(node, (exp.Paren, exp.Window, exp.Filter)):
        return _figure(node.this, query)
    if isinstance(node, exp.Subquery) and isinstance(node.this, exp.Select):
        first = node.this.expressions[0] if node.this.expressions else None
        if isinstance(first, exp.Alias):
            return identifier_name(first.args["alias"]), 2
        return _figure(first, query) if first is not None else (None, 0)
    if isinstance(node, exp.Trim):
        return "btrim", 2
    if isinstance(node, exp.Column):
        return identifier_name(node.args["this"]), 2
    if isinstance(node, exp.Dot):
        return identifier_name(node.expression), 2
    if isinstance(node, (exp.Cast, exp.TryCast)):
        name, strength = _figure(node.this, query)
        if strength <= 1:
            return _type_name(node.to), 1
        return name, strength
    for kind, fixed in _FIXED_NAMES.items():
        if isinstance(node, kind):
            return fixed, 2
    if isinstance(node, exp.Case):
        default = node.args.get("default")
        name, strength = _figure(default, query) if default is not None else (None, 0)
        if strength <= 1:
            return "case", 1
        return name, strength
    if isinstance(node, exp.Anonymous):
        return _function_name(node, query) or identifier_name(exp.to_identifier(node.name)), 2
    if isinstance(node, exp.Func) and not isinstance(node, exp.Binary):
        return _function_name(node, query) or fold(node.sql_name()), 2
    return None, 0


def _function_name(node: exp.Expr, query: str) -> str | None:
    """The function name as written, from the parser's source positions."""
    start, end = node.meta.get("start"), node.meta.get("end")
    if not isinstance(start, int) or not isinstance(end, int):
        return None
    written = query[start : end + 1]
    if not written:
        return None
    if written.startswith('"') and written.endswith('"'):
        return written[1:-1]
    return fold(written.split(".")[-1])


def _type_name(data_type: exp.DataType) -> str:
    kind = data_type.this
    if kind in _TYPE_NAMES:
        return _TYPE_NAMES[kind]
    if kind == exp.DataType.Type.USERDEFINED:
        return identifier_name(exp.to_identifier(data_type.args.get("kind") or "unknown"))
    return fold(data_type.sql(dialect="postgres").split("(")[0])
