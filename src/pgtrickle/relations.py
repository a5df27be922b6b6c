"""What ``apply`` must know of the user's relations before it touches any: who holds a name,
who may alter a table, what depends on a storage table, and what to carry over when one is
re-created (its grants, its owner, the indexes users put on it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from dvm.zset import ROW_ID

# pg_class.relkind, as a user would call it
_KINDS = {
    "r": "table",
    "p": "partitioned table",
    "v": "view",
    "m": "materialized view",
    "S": "sequence",
    "i": "index",
    "I": "partitioned index",
    "f": "foreign table",
    "c": "composite type",
    "t": "TOAST table",
}


def occupant(conn: psycopg.Connection[Any], schema: str, name: str) -> str | None:
    """What already holds ``schema.name`` (a CREATE TABLE there would fail), or None."""
    row = conn.execute(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (schema, name),
    ).fetchone()
    if row is not None:
        return _KINDS.get(row[0], "relation")
    # a table brings a composite type of its name along: a type of that name blocks it too
    row = conn.execute(
        "SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
        " WHERE n.nspname = %s AND t.typname = %s",
        (schema, name),
    ).fetchone()
    return "type" if row is not None else None


def schema_exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
    return row.fetchone() is not None


def may_create_in(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute("SELECT has_schema_privilege(%s, 'CREATE')", (schema,)).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class TableAccess:
    owner: str
    owned: bool
    """The current role owns it (or is a member of its owner): ALTER and DROP are allowed."""
    readable: bool
    replica_identity: str
    """``pg_class.relreplident``: d default, n nothing, f full, i index."""


def table_access(conn: psycopg.Connection[Any], oid: int) -> TableAccess | None:
    row = conn.execute(
        "SELECT pg_get_userbyid(c.relowner), pg_has_role(current_user, c.relowner, 'USAGE'),"
        " has_table_privilege(c.oid, 'SELECT'), c.relreplident FROM pg_class c WHERE c.oid = %s",
        (oid,),
    ).fetchone()
    return TableAccess(row[0], bool(row[1]), bool(row[2]), row[3]) if row else None


def dependents(conn: psycopg.Connection[Any], oid: int) -> list[str]:
    """Views, materialized views and foreign keys that depend on relation ``oid``: a DROP
    without CASCADE fails while they exist, and pgtrickle never drops a user's objects."""
    rows = conn.execute(
        "SELECT DISTINCT format('%%s %%I.%%I', CASE v.relkind WHEN 'm' THEN 'materialized view'"
        " ELSE 'view' END, vn.nspname, v.relname)"
        " FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid"
        " JOIN pg_class v ON v.oid = r.ev_class JOIN pg_namespace vn ON vn.oid = v.relnamespace"
        " WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass"
        " AND d.refobjid = %s AND r.ev_class <> %s"
        " UNION SELECT format('foreign key %%I of %%s', con.conname, con.conrelid::regclass)"
        " FROM pg_constraint con WHERE con.contype = 'f' AND con.confrelid = %s"
        " ORDER BY 1",
        (oid, oid, oid),
    ).fetchall()
    return [r[0] for r in rows]


@dataclass(frozen=True)
class Grant:
    grantee: str | None
    """None for PUBLIC."""
    privilege: str
    grantable: bool

    def statement(self, target: sql.Composable) -> sql.Composed:
        grantee = sql.Identifier(self.grantee) if self.grantee else sql.SQL("PUBLIC")
        return sql.SQL("GRANT {} ON {} TO {}{}").format(
            sql.SQL(self.privilege),
            target,
            grantee,
            sql.SQL(" WITH GRANT OPTION" if self.grantable else ""),
        )


def grants(conn: psycopg.Connection[Any], oid: int) -> list[Grant]:
    """The privileges others hold on relation ``oid`` (the owner's own are implicit)."""
    rows = conn.execute(
        "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,"
        " a.privilege_type, a.is_grantable"
        " FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a"
        " WHERE c.oid = %s AND a.grantee <> c.relowner ORDER BY 1, 2",
        (oid,),
    ).fetchall()
    return [Grant(grantee, privilege, bool(grantable)) for grantee, privilege, grantable in rows]


def user_indexes(conn: psycopg.Connection[Any], oid: int) -> list[tuple[str, str]]:
    """(name, definition) of the indexes on ``oid`` that pgtrickle did not create."""
    rows = conn.execute(
        "SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x"
        " JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = %s"
        " AND NOT (x.indnatts = 1 AND EXISTS (SELECT 1 FROM pg_attribute a"
        " WHERE a.attrelid = x.indrelid AND a.attnum = x.indkey[0] AND a.attname = %s))"
        " ORDER BY 1",
        (oid, ROW_ID),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]
