"""Parsing and printing SQL: sqlglot's postgres dialect, minus one rewrite that changes types.

sqlglot parses ``date_part('year', x)`` into ``EXTRACT(YEAR FROM x)``, which returns numeric
instead of double precision on PostgreSQL 14+. This dialect keeps ``date_part`` a plain call.

>>> render(parse_one("select date_part('year', x) from t"))
"SELECT DATE_PART('year', x) FROM t"
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import SqlglotError
from sqlglot.parsers.postgres import PostgresParser

from dvm.errors import InvalidQuery


class PgTricklePostgres(Postgres):
    """PostgreSQL as sqlglot knows it, with ``date_part`` kept as written."""

    class Parser(PostgresParser):
        FUNCTION_PARSERS = {
            name: parse
            for name, parse in PostgresParser.FUNCTION_PARSERS.items()
            if name != "DATE_PART"
        }


DIALECT = PgTricklePostgres()


def parse_statements(sql: str) -> list[exp.Expr]:
    """Every statement of ``sql``; a syntax error becomes :class:`InvalidQuery`."""
    try:
        statements = DIALECT.parse(sql)
    except SqlglotError as error:
        raise InvalidQuery(
            "syntax error in the defining query",
            detail=str(error).splitlines()[0] if str(error) else None,
            hint="the defining query must be one valid PostgreSQL SELECT statement",
        ) from error
    # A comment after the last semicolon parses as an empty statement of its own.
    found = [s for s in statements if s is not None and not isinstance(s, exp.Semicolon)]
    for statement in found:
        # Comments are dropped: sqlglot would copy user text into the generated SQL.
        for node in statement.walk():
            node.pop_comments()
    return found


def parse_one(sql: str) -> exp.Expr:
    statements = parse_statements(sql)
    if len(statements) != 1:
        raise InvalidQuery(f"expected one statement, got {len(statements)}")
    return statements[0]


def render(expression: exp.Expr) -> str:
    """PostgreSQL text of ``expression``."""
    return expression.sql(dialect=DIALECT)


def render_pretty(expression: exp.Expr) -> str:
    return expression.sql(dialect=DIALECT, pretty=True)
