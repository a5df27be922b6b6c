"""``pgtrickle apply``: reconcile the declarations of pgtrickle.yaml with the catalog.

Everything is validated before anything changes: each query is compiled and also described by
the server (which catches what the compiler does not resolve), and every problem is reported
against the file and the stream table. Then drops, alters and creates run; a stream table is
created, populated and recorded in one transaction, so none is ever half-created.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import psycopg
import structlog
from psycopg import sql

from dvm.catalog import CatalogFacts
from dvm.compile import compile_query, effective_mode
from dvm.plan import ApplyStrategy, DeltaPlan, RefreshMode
from walstream.capture import (
    capture_source,
    ensure_slot_and_publication,
    load_sources,
    release_source,
    wait_for_older_transactions,
)
from walstream.catalog import StreamTable, catalog_facts, list_stream_tables
from walstream.declarations import Declarations, StreamTableDecl
from walstream.errors import InvalidDeclaration, InvalidQuery, PgTrickleError, UnsupportedQuery
from walstream.migrate import migrate
from walstream.sessions import pin_storage_settings

log = structlog.get_logger("pgtrickle.apply")


class ChangeKind(StrEnum):
    CREATE = "create"
    DROP = "drop"
    RECREATE = "recreate"
    ALTER = "alter"
    UNCHANGED = "unchanged"


@dataclass
class Change:
    kind: ChangeKind
    name: str
    reasons: list[str] = field(default_factory=list)
    decl: StreamTableDecl | None = None
    plan: DeltaPlan | None = None
    effective_mode: RefreshMode | None = None
    fallback_reason: str | None = None
    existing: StreamTable | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.kind.value, "stream_table": self.name}
        if self.reasons:
            out["changes"] = self.reasons
        if self.effective_mode is not None:
            out["effective_refresh_mode"] = self.effective_mode.value
        if self.fallback_reason:
            out["fallback_reason"] = self.fallback_reason
        return out


def display(schema: str, name: str) -> str:
    return name if schema == "public" else f"{schema}.{name}"


def plan_changes(conn: psycopg.Connection[Any], decls: Declarations) -> list[Change]:
    """What apply would do; raises on the first invalid declaration, having changed nothing."""
    existing = {(st.schema, st.name): st for st in list_stream_tables(conn)}
    facts = catalog_facts(conn)
    stream_table_oids = _stream_table_oids(conn)
    changes: list[Change] = []
    for decl in decls.stream_tables:
        name = display(decl.schema, decl.name)
        plan, mode, reason = _compile(conn, facts, decls.path, decl, stream_table_oids)
        current = existing.pop((decl.schema, decl.name), None)
        change = Change(ChangeKind.CREATE, name, decl=decl, plan=plan, effective_mode=mode)
        change.fallback_reason = reason
        if current is None:
            schema_exists = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (decl.schema,)
            ).fetchone()
            if not schema_exists:
                raise InvalidDeclaration(
                    f'{decls.path}: stream table "{name}": schema "{decl.schema}" does not exist',
                    detail="the storage table is created in the schema the name gives",
                    hint=f'CREATE SCHEMA "{decl.schema}" first, or drop the schema from the name',
                )
            if facts.lookup(decl.schema, decl.name) is not None:
                raise InvalidDeclaration(
                    f'{decls.path}: stream table "{name}": a table of that name already exists',
                    detail="pgtrickle creates and owns the storage table of a stream table",
                    hint="choose another name, or drop or rename the existing table",
                )
        else:
            change.existing = current
            if current.query.strip() != decl.query.strip():
                change.reasons.append("query")
            if current.refresh_mode != decl.refresh_mode:
                change.reasons.append(f"refresh_mode {current.refresh_mode} -> {decl.refresh_mode}")
            if current.schedule != decl.schedule:
                change.reasons.append(f"schedule {current.schedule} -> {decl.schedule}")
            if any(r == "query" or r.startswith("refresh_mode") for r in change.reasons):
                change.kind = ChangeKind.RECREATE
            elif change.reasons:
                change.kind = ChangeKind.ALTER
            else:
                change.kind = ChangeKind.UNCHANGED
        changes.append(change)
    for st in existing.values():
        changes.append(Change(ChangeKind.DROP, st.display_name, existing=st))
    return changes


def _stream_table_oids(conn: psycopg.Connection[Any]) -> set[int]:
    rows = conn.execute(
        "SELECT to_regclass(format('%I.%I', schema_name, name))::oid FROM pgtrickle.stream_tables"
    ).fetchall()
    return {int(r[0]) for r in rows if r[0] is not None}


def _compile(
    conn: psycopg.Connection[Any],
    facts: CatalogFacts,
    path: str,
    decl: StreamTableDecl,
    stream_table_oids: set[int],
) -> tuple[DeltaPlan, RefreshMode, str | None]:
    name = display(decl.schema, decl.name)
    where = f'{path}: stream table "{name}"'
    if decl.line:
        where = f'{path}:{decl.line}: stream table "{name}"'
    try:
        _describe(conn, decl.query)
        plan = compile_query(decl.query, facts, (decl.schema, decl.name))
        mode, reason = effective_mode(plan, RefreshMode(decl.refresh_mode))
    except PgTrickleError as exc:
        raise type(exc)(f"{where}: {exc.message}", detail=exc.detail, hint=exc.hint) from exc
    for source in plan.sources:
        if source.oid in stream_table_oids:
            raise UnsupportedQuery(
                f'{where}: reads stream table "{source.name}"',
                detail="stream tables that read other stream tables are not supported yet",
                hint="define it over the base tables instead",
            )
    return plan, mode, reason


def _describe(conn: psycopg.Connection[Any], query: str) -> None:
    """Let the server parse and analyze the query; its error becomes ours."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("SELECT * FROM ({}) q LIMIT 0").format(sql.SQL(query)))
    except psycopg.errors.SyntaxError as exc:
        raise InvalidQuery(
            f"the query is not valid SQL: {exc.diag.message_primary}",
            detail=exc.diag.message_detail,
            hint=exc.diag.message_hint or "the query must be a single SELECT statement",
        ) from exc
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.OperationalError):
            raise
        raise InvalidQuery(
            f"the query was refused by PostgreSQL: {exc.diag.message_primary}",
            detail=exc.diag.message_detail,
            hint=exc.diag.message_hint or "fix the query; it must run as a plain SELECT",
        ) from exc


def apply(dsn: str, decls: Declarations, *, dry_run: bool = False) -> list[Change]:
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        changes = plan_changes(conn, decls)
        if dry_run:
            return changes
        if any(c.kind in (ChangeKind.CREATE, ChangeKind.RECREATE) for c in changes):
            ensure_slot_and_publication(conn)
        for change in changes:
            if change.kind in (ChangeKind.DROP, ChangeKind.RECREATE):
                assert change.existing is not None
                drop_stream_table(conn, change.existing)
        for change in changes:
            if change.kind == ChangeKind.ALTER:
                assert change.existing is not None and change.decl is not None
                conn.execute(
                    "UPDATE pgtrickle.stream_tables SET schedule = %s, updated_at = now()"
                    " WHERE id = %s",
                    (change.decl.schedule, change.existing.id),
                )
            elif change.kind in (ChangeKind.CREATE, ChangeKind.RECREATE):
                create_stream_table(conn, change)
        return changes


def drop_stream_table(conn: psycopg.Connection[Any], st: StreamTable) -> None:
    with conn.transaction():
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(st.qualified_name))
        conn.execute("DELETE FROM pgtrickle.stream_tables WHERE id = %s", (st.id,))
        orphans = conn.execute(
            "SELECT s.source_oid FROM pgtrickle.sources s WHERE NOT EXISTS"
            " (SELECT 1 FROM pgtrickle.dependencies d WHERE d.source_oid = s.source_oid)"
        ).fetchall()
        sources = load_sources(conn)
        for (oid,) in orphans:
            release_source(conn, sources[int(oid)])
    log.info("dropped stream table", stream_table=st.display_name)


def create_stream_table(conn: psycopg.Connection[Any], change: Change) -> None:
    decl, plan, mode = change.decl, change.plan, change.effective_mode
    assert decl is not None and plan is not None and mode is not None
    with conn.transaction():
        for table in plan.sources:
            capture_source(conn, table)
    wait_for_older_transactions(conn)
    target = sql.SQL("{}.{}").format(sql.Identifier(decl.schema), sql.Identifier(decl.name))
    storage_query = sql.SQL(plan.storage_query)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text"
            ).fetchone()
            assert row is not None
            snapshot, lsn = row
            pin_storage_settings(conn, local=True)
            conn.execute(
                sql.SQL("CREATE TABLE {} AS {} WITH NO DATA").format(target, storage_query)
            )
            unique = mode == RefreshMode.DIFFERENTIAL and (
                plan.apply_strategy == ApplyStrategy.KEYED
            )
            conn.execute(
                sql.SQL("CREATE {} INDEX ON {} (__pgt_row_id)").format(
                    sql.SQL("UNIQUE" if unique else ""), target
                )
            )
            cur = conn.execute(
                sql.SQL("INSERT INTO {} SELECT * FROM ({}) q").format(target, storage_query)
            )
            populated = max(cur.rowcount, 0)
            row = conn.execute(
                "INSERT INTO pgtrickle.stream_tables (schema_name, name, query, schedule,"
                " refresh_mode, effective_refresh_mode, fallback_reason, plan, frontier,"
                " frontier_lsn, status, last_refresh_at, data_timestamp)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::pg_snapshot, %s::pg_lsn,"
                " 'active', clock_timestamp(), now()) RETURNING id",
                (
                    decl.schema,
                    decl.name,
                    decl.query,
                    decl.schedule,
                    decl.refresh_mode,
                    mode.value,
                    change.fallback_reason,
                    json.dumps(plan_document(plan)),
                    snapshot,
                    lsn,
                ),
            ).fetchone()
            assert row is not None
            st_id = row[0]
            for source in plan.sources:
                conn.execute(
                    "INSERT INTO pgtrickle.dependencies (stream_table_id, source_oid,"
                    " columns_read) VALUES (%s, %s, %s)",
                    (st_id, source.oid, list(plan.columns_read.get(source.oid, ()))),
                )
            conn.execute(
                "INSERT INTO pgtrickle.refresh_history (stream_table_id, action, status,"
                " started_at, finished_at, frontier_lsn, rows_changed)"
                " VALUES (%s, 'initialize', 'ok', now(), clock_timestamp(), %s::pg_lsn, %s)",
                (st_id, lsn, populated),
            )
    finally:
        conn.isolation_level = None
    log.info(
        "created stream table",
        stream_table=change.name,
        rows=populated,
        effective_refresh_mode=mode.value,
        fallback_reason=change.fallback_reason,
    )


def plan_document(plan: DeltaPlan) -> dict[str, Any]:
    """What a refresh needs of the compiled plan, stored with the stream table."""
    return {
        "query": plan.query,
        "storage_query": plan.storage_query,
        "delta_query": plan.delta_query,
        "apply_sql": plan.apply_sql() if plan.delta_query else None,
        "apply_strategy": plan.apply_strategy.value,
        "user_columns": list(plan.user_columns),
        "hidden_columns": list(plan.hidden_columns),
        "columns_read": {str(oid): list(cols) for oid, cols in plan.columns_read.items()},
        "differentiable": plan.differentiable,
        "reasons": list(plan.reasons),
        "explain": plan.explain(),
    }
