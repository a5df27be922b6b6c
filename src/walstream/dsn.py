"""Connecting to the user's database: one place that turns libpq's failures into our errors.

Every connection pgtrickle opens goes through ``connect``, so that a malformed connection
string, a server that is not running, a refused login or a missing database each end in one
error with a DETAIL and a HINT, and never with a password in it:

>>> try:
...     connect("host=db password=s3cret oops")
... except InvalidDsn as err:
...     print(err.message, "|", err.detail)
the connection string is not valid | libpq says: missing "…" after "…" in connection info string
>>> redact("host=db password=s3cret user=app"), redact("postgresql://app:pw@db/x")
('host=db password=******** user=app', 'postgresql://app:********@db/x')
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from walstream.errors import ConnectionFailed, InvalidDsn

_SECRETS = [
    (re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE), r"\1********"),
    (re.compile(r"(postgres(?:ql)?://[^:/@\s]+:)([^@\s]*)(@)", re.IGNORECASE), r"\1********\3"),
]
# libpq quotes the piece of the connection string it could not read, which may be part of a
# password: what it quotes is never repeated.
_QUOTED = re.compile(r'"[^"]*"')

_DSN_FORMS = (
    'write it as key=value pairs, e.g. "host=localhost port=5432 dbname=shop user=app", '
    "or as a URI, e.g. postgresql://app@localhost:5432/shop"
)

# What libpq says, and what the user can do about it. The first that matches wins.
_CAUSES: tuple[tuple[str, str], ...] = (
    ("password authentication failed", "check the user and the password"),
    ("no password supplied", "give a password (PGPASSWORD or ~/.pgpass keep it out of the DSN)"),
    ("no pg_hba.conf entry", "the server's pg_hba.conf does not let this user in from here"),
    ("does not exist", "name an existing database and role, or create them"),
    ("too many connections", "the server has no connection slot free; raise max_connections"),
    ("the database system is starting up", "the server is starting; try again in a moment"),
    ("the database system is shutting down", "the server is shutting down"),
    ("timeout expired", "the server did not answer in time: check the host, port and network"),
    ("could not translate host name", "check the host name in the connection string"),
    ("failed to resolve host", "check the host name and port in the connection string"),
)
_NOT_RUNNING = "is PostgreSQL running there? check host and port in --dsn or PGTRICKLE_DSN"


def redact(text: str) -> str:
    """Hide passwords in connection strings and URIs within ``text``."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def parse_dsn(dsn: str) -> dict[str, str]:
    """The key/value pairs of ``dsn``; raise ``InvalidDsn`` if libpq cannot read it."""
    try:
        return {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
    except psycopg.ProgrammingError as error:
        raise _invalid(error) from None


def describe(dsn: str) -> str:
    """Where ``dsn`` points, without its password: ``database "shop" on db:5432 as app``.

    >>> describe("host=db port=6432 dbname=shop user=app password=x")
    'database "shop" on db:6432 as user "app"'
    """
    parts = parse_dsn(dsn)
    host = parts.get("host") or parts.get("hostaddr") or "the local socket"
    where = f"{host}:{parts['port']}" if "port" in parts else host
    text = f'database "{parts["dbname"]}" on {where}' if "dbname" in parts else where
    return f'{text} as user "{parts["user"]}"' if "user" in parts else text


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """``psycopg.connect`` whose failures are ``InvalidDsn`` or ``ConnectionFailed``.

    Connections say who they are in ``pg_stat_activity`` (``fallback_application_name``,
    which an ``application_name`` in the DSN overrides).
    """
    parse_dsn(dsn)
    kwargs.setdefault("fallback_application_name", "pgtrickle")
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.ProgrammingError as error:
        raise _invalid(error) from None
    except psycopg.OperationalError as error:
        raise connection_failed(dsn, error) from None


def connection_failed(dsn: str, error: psycopg.Error) -> ConnectionFailed:
    """Our error for a connection that could not be opened, or broke."""
    text = redact(str(error).strip())
    hint = next((what for clue, what in _CAUSES if clue in text), _NOT_RUNNING)
    return ConnectionFailed(
        f"cannot connect to {describe(dsn)}",
        detail=" ".join(text.split()),
        hint=hint,
    )


def _invalid(error: psycopg.Error) -> InvalidDsn:
    complaint = _QUOTED.sub('"…"', str(error).strip())
    return InvalidDsn(
        "the connection string is not valid",
        detail=f"libpq says: {complaint}",
        hint=_DSN_FORMS,
    )
