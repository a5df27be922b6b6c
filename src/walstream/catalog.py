"""Reads the ``pgtrickle`` catalog into typed rows, and gives the compiler its catalog facts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from dvm.catalog import CatalogFacts, Column, SourceTable, View
from dvm.plan import RefreshMode
from dvm.stored import StoredPlan
from walstream.errors import NotFound

# Schemas whose tables are never sources: the system's and pgtrickle's own.
_INTERNAL_SCHEMAS = ("pg_catalog", "information_schema", "pgtrickle", "pgtrickle_changes")


def catalog_facts(conn: psycopg.Connection[Any]) -> CatalogFacts:
    """Every user table of the database with its columns and primary key, and the search path."""
    rows = conn.execute(
        """
        SELECT c.oid, n.nspname, c.relname,
               array_agg(a.attname ORDER BY a.attnum),
               array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum),
               array_agg(a.attnotnull ORDER BY a.attnum),
               (SELECT array_agg(ka.attname ORDER BY k.ord)
                  FROM pg_index i
                  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                  JOIN pg_attribute ka ON ka.attrelid = i.indrelid AND ka.attnum = k.attnum
                 WHERE i.indrelid = c.oid AND i.indisprimary)
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relkind IN ('r', 'p')
           AND n.nspname <> ALL (%s)
           AND n.nspname NOT LIKE 'pg\\_%%'
         GROUP BY c.oid, n.nspname, c.relname
        """,
        (list(_INTERNAL_SCHEMAS),),
    ).fetchall()
    tables = {
        (schema, name): SourceTable(
            oid=int(oid),
            schema=schema,
            name=name,
            columns=tuple(
                Column(n, t, bool(nn)) for n, t, nn in zip(names, types, notnull, strict=True)
            ),
            primary_key=tuple(pk or ()),
        )
        for oid, schema, name, names, types, notnull, pk in rows
    }
    view_rows = conn.execute(
        """
        SELECT n.nspname, c.relname, pg_get_viewdef(c.oid),
               array_agg(a.attname ORDER BY a.attnum)
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relkind = 'v'
           AND n.nspname <> ALL (%s)
           AND n.nspname NOT LIKE 'pg\\_%%'
         GROUP BY c.oid, n.nspname, c.relname
        """,
        (list(_INTERNAL_SCHEMAS),),
    ).fetchall()
    views = {
        (schema, name): View(schema, name, definition, tuple(columns))
        for schema, name, definition, columns in view_rows
    }
    path_row = conn.execute("SELECT current_schemas(false)").fetchone()
    search_path = tuple(path_row[0]) if path_row else ("public",)
    return CatalogFacts(tables=tables, search_path=search_path, views=views)


class StreamTableStatus(StrEnum):
    INITIALIZING = "initializing"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    """Stopped until an operator acts: a source changed in a way the plan cannot follow."""
    ERROR = "error"
    """The last refresh failed; the daemon keeps retrying with backoff."""


@dataclass(frozen=True)
class StreamTable:
    """A row of ``pgtrickle.stream_tables``."""

    id: int
    schema: str
    name: str
    query: str
    """The defining query as declared; ``plan.query`` is the normalized text to run."""
    schedule: str
    refresh_mode: RefreshMode
    effective_refresh_mode: RefreshMode
    fallback_reason: str | None
    plan: StoredPlan
    frontier: str | None
    frontier_lsn: str | None
    status: StreamTableStatus
    last_error: str | None
    consecutive_errors: int
    last_refresh_at: datetime | None
    data_timestamp: datetime | None
    source_oids: tuple[int, ...]
    revision: int
    """Bumped by every change of the declaration: a refresh holding an older one reloads."""

    @property
    def qualified_name(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.name))

    @property
    def display_name(self) -> str:
        return self.name if self.schema == "public" else f"{self.schema}.{self.name}"


_SELECT = """
    SELECT st.id, st.schema_name AS schema, st.name, st.query, st.schedule, st.refresh_mode,
           st.effective_refresh_mode, st.fallback_reason, st.plan, st.frontier::text AS frontier,
           st.frontier_lsn::text AS frontier_lsn, st.status, st.last_error,
           st.consecutive_errors, st.last_refresh_at, st.data_timestamp, st.revision,
           coalesce((SELECT array_agg(d.source_oid::bigint ORDER BY d.source_oid)
                       FROM pgtrickle.dependencies d WHERE d.stream_table_id = st.id),
                    '{}') AS source_oids
      FROM pgtrickle.stream_tables st
"""


def _row(record: dict[str, Any]) -> StreamTable:
    record = {
        **record,
        "refresh_mode": RefreshMode(record["refresh_mode"]),
        "effective_refresh_mode": RefreshMode(record["effective_refresh_mode"]),
        "status": StreamTableStatus(record["status"]),
        "plan": StoredPlan.from_json(record["plan"]),
        "source_oids": tuple(int(o) for o in record["source_oids"]),
    }
    return StreamTable(**record)


def list_stream_tables(conn: psycopg.Connection[Any]) -> list[StreamTable]:
    with conn.cursor(row_factory=dict_row) as cur:
        return [_row(r) for r in cur.execute(_SELECT + " ORDER BY st.id").fetchall()]


def split_name(name: str) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return (schema or "public", table)


def find_stream_table(conn: psycopg.Connection[Any], st_id: int) -> StreamTable | None:
    """The stream table with catalog id ``st_id``, None once it was dropped."""
    with conn.cursor(row_factory=dict_row) as cur:
        record = cur.execute(_SELECT + " WHERE st.id = %s", (st_id,)).fetchone()
    return _row(record) if record is not None else None


def get_stream_table(conn: psycopg.Connection[Any], name: str) -> StreamTable:
    schema, table = split_name(name)
    with conn.cursor(row_factory=dict_row) as cur:
        record = cur.execute(
            _SELECT + " WHERE st.schema_name = %s AND st.name = %s", (schema, table)
        ).fetchone()
    if record is None:
        known = [st.display_name for st in list_stream_tables(conn)]
        raise NotFound(
            f'stream table "{name}" does not exist',
            detail=f"stream tables: {', '.join(known) or '(none)'}",
            hint="declare it in pgtrickle.yaml and run `pgtrickle apply`",
        )
    return _row(record)
