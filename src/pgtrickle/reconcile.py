"""``pgtrickle apply``: reconcile the declarations of pgtrickle.yaml with the catalog.

All or nothing: every stream table the declarations touch is created, re-created, altered or
dropped, or none is. The steps:

1. **Plan** (what ``--dry-run`` prints, and all it does): inside a transaction that is rolled
   back, the catalog is brought up to date and every declaration is checked against the
   server: its query is compiled and described, its name must be free (of tables, views,
   sequences, types...), its schema must exist and take new tables, its sources must be
   readable and, when pgtrickle starts capturing them, owned by the role; nothing may depend
   on what is dropped or re-created. Each side effect on the user's database is listed.
2. **Capture** the new sources (replica identity, change buffer, publication: committed, as
   decoding needs), then wait until the transactions older than that have ended.
3. **Swap**, in ONE transaction at one snapshot: drops; re-creates, each built and populated
   beside the old storage table, which is then dropped and replaced under its name (grants,
   owner and users' indexes carried over); creates; alters. If anything fails, everything
   rolls back, and the old stream tables keep refreshing as they were.
4. **Release** the sources no stream table reads any more, and after a failure those step 2
   captured for nothing.

A stream table no longer declared is dropped, with its data, only with ``prune`` (or when
``confirm_drop`` says yes): otherwise the whole apply is refused.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg
import structlog
from psycopg import sql

from dvm.catalog import CatalogFacts, SourceTable
from dvm.compile import compile_query, effective_mode, normalize
from dvm.errors import InvalidQuery, PgTrickleError, UnsupportedQuery
from dvm.operators import AggregateClass
from dvm.plan import DeltaPlan, RefreshMode
from dvm.reason import Reason, summary
from dvm.stored import StoredPlan, stored_plan
from pgtrickle import relations
from pgtrickle.declarations import Declarations, StreamTableDecl
from pgtrickle.errors import DependentObjects, InvalidDeclaration, NameTaken, PruneRequired
from scheduler.history import record_populated
from scheduler.populate import create_storage, drop_kept, index_storage, lock_before_snapshot
from walstream.buffers import BUFFER_SCHEMA, load_sources
from walstream.capture import (
    PUBLICATION_NAME,
    SLOT_NAME,
    capture_source,
    ensure_slot_and_publication,
    publication_exists,
    release_source,
    wait_for_older_transactions,
)
from walstream.catalog import StreamTable, StreamTableStatus, catalog_facts, list_stream_tables
from walstream.dsn import connect
from walstream.errors import DatabaseError, MissingPrivilege
from walstream.locks import APPLY_LOCK, refresh_lock
from walstream.migrate import apply_pending, migrate, pending_migrations
from walstream.replication import drop_slot
from walstream.server import ServerFacts, check_capture, server_facts

log = structlog.get_logger("pgtrickle.apply")

# ALTER TABLE of a user's table waits for every lock on it; a stuck apply says so instead.
LOCK_TIMEOUT = "30s"


class ChangeKind(StrEnum):
    CREATE = "create"
    DROP = "drop"
    RECREATE = "recreate"
    ALTER = "alter"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Change:
    """What apply does to one stream table, and why."""

    kind: ChangeKind
    name: str
    reasons: tuple[str, ...] = ()
    decl: StreamTableDecl | None = None
    plan: DeltaPlan | None = None
    stored: StoredPlan | None = None
    """What the catalog keeps of ``plan`` (rendered once: it renders the apply statement)."""
    effective_mode: RefreshMode | None = None
    fallback: tuple[Reason, ...] = ()
    existing: StreamTable | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.kind.value, "stream_table": self.name}
        if self.reasons:
            out["changes"] = list(self.reasons)
        if self.effective_mode is not None:
            out["effective_refresh_mode"] = self.effective_mode.value
        if self.fallback:
            out["fallback_reasons"] = [reason.to_json() for reason in self.fallback]
        return out


class EffectKind(StrEnum):
    CATALOG = "catalog"
    PUBLICATION = "publication"
    SLOT = "slot"
    REPLICA_IDENTITY = "replica_identity"
    PUBLISH = "publish"
    BUFFER = "buffer"
    KEPT = "kept"
    RELEASE = "release"


@dataclass(frozen=True)
class SideEffect:
    """Something apply does to the user's database besides the stream tables themselves."""

    kind: EffectKind
    description: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind.value, "description": self.description}


@dataclass(frozen=True)
class ApplyPlan:
    changes: tuple[Change, ...]
    side_effects: tuple[SideEffect, ...]
    new_sources: tuple[SourceTable, ...]

    @property
    def drops(self) -> list[Change]:
        return [c for c in self.changes if c.kind is ChangeKind.DROP]

    @property
    def builds(self) -> list[Change]:
        return [c for c in self.changes if c.kind in (ChangeKind.CREATE, ChangeKind.RECREATE)]


def display(schema: str, name: str) -> str:
    return name if schema == "public" else f"{schema}.{name}"


# -- the whole apply ----------------------------------------------------------------------


def apply(
    dsn: str,
    decls: Declarations,
    *,
    dry_run: bool = False,
    prune: bool = False,
    confirm_drop: Callable[[Sequence[str]], bool] | None = None,
) -> ApplyPlan:
    """Reconcile ``decls`` with the catalog of ``dsn``'s database; return what was (or, with
    ``dry_run``, would be) done. Raises before changing anything if any of it is refused."""
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (LOCK_TIMEOUT,))
        APPLY_LOCK.lock(conn)
        try:
            with conn.transaction(force_rollback=True):
                plan = plan_apply(conn, decls)
            if dry_run:
                return plan
            drops = [change.name for change in plan.drops]
            if drops and not prune and not (confirm_drop is not None and confirm_drop(drops)):
                raise _prune_required(drops)
            # the plan holds: the apply lock keeps other applies out, and a migration adds
            # columns without changing what the plan read
            migrate(dsn)
            _execute(conn, plan)
            return plan
        finally:
            if not conn.closed and not conn.broken:
                APPLY_LOCK.unlock(conn)


def _prune_required(names: Sequence[str]) -> PruneRequired:
    return PruneRequired(
        f"apply would drop {len(names)} stream table(s) that are no longer declared,"
        f" and their data: {', '.join(names)}",
        detail="a stream table in the catalog but not in the file is dropped by apply",
        hint="run apply with --prune to drop them, or declare them again to keep them",
    )


# -- 1. the plan --------------------------------------------------------------------------


def plan_apply(conn: psycopg.Connection[Any], decls: Declarations) -> ApplyPlan:
    """What apply would do; raises on the first refused declaration. Call it in a transaction
    that is rolled back: it brings the catalog up to date first."""
    facts = server_facts(conn)
    check_capture(facts)
    effects: list[SideEffect] = []
    pending = pending_migrations(conn)
    if pending:
        if not facts.can_create_in_database:
            raise MissingPrivilege(
                f'role "{facts.role}" may not create the pgtrickle catalog in this database',
                detail="the catalog lives in the schemas pgtrickle, pgtrickle_changes and"
                " pgtrickle_state",
                hint=f'GRANT CREATE ON DATABASE ... TO "{facts.role}", or apply as its owner',
            )
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
        effects.append(SideEffect(EffectKind.CATALOG, f"create or upgrade the catalog: {names}"))
        apply_pending(conn)
    existing = {(st.schema, st.name): st for st in list_stream_tables(conn)}
    catalog = catalog_facts(conn)
    storage_oids = _storage_oids(conn)
    captured = set(load_sources(conn))
    changes: list[Change] = []
    new_sources: dict[int, SourceTable] = {}
    for decl in decls.stream_tables:
        change = _plan_one(conn, catalog, decls.path, decl, existing, storage_oids, facts)
        changes.append(change)
        if change.plan is not None:
            for table in change.plan.sources:
                if table.oid not in captured:
                    new_sources.setdefault(table.oid, table)
    for st in existing.values():
        _check_droppable(conn, st, "drop")
        changes.append(Change(ChangeKind.DROP, st.display_name, existing=st))
    builds = [c for c in changes if c.kind in (ChangeKind.CREATE, ChangeKind.RECREATE)]
    if builds:
        if not publication_exists(conn):
            effects.append(
                SideEffect(EffectKind.PUBLICATION, f'create publication "{PUBLICATION_NAME}"')
            )
        if not facts.slot_exists:
            effects.append(
                SideEffect(
                    EffectKind.SLOT,
                    f'create logical replication slot "{SLOT_NAME}" (it keeps WAL until'
                    " `pgtrickle run` confirms it)",
                )
            )
    for change in builds:
        if change.plan is not None and change.plan.kept is not None:
            schema, name = change.plan.kept.table
            effects.append(
                SideEffect(
                    EffectKind.KEPT,
                    f'create table "{schema}"."{name}" for {change.name}: every group of the'
                    " aggregate under its LIMIT, of which it holds the first rows",
                )
            )
    for table in new_sources.values():
        effects.extend(_capture_effects(conn, table, facts))
    effects.extend(_release_effects(conn, changes))
    return ApplyPlan(tuple(changes), tuple(effects), tuple(new_sources.values()))


def _plan_one(
    conn: psycopg.Connection[Any],
    catalog: CatalogFacts,
    path: str,
    decl: StreamTableDecl,
    existing: dict[tuple[str, str], StreamTable],
    storage_oids: set[int],
    facts: ServerFacts,
) -> Change:
    name = display(decl.schema, decl.name)
    where = f'{path}:{decl.line}: stream table "{name}"' if decl.line else f'{path}: "{name}"'
    try:
        plan, mode, fallback = _compile(conn, catalog, decl, storage_oids)
        for table in plan.sources:
            _check_source(conn, table, facts)
    except PgTrickleError as exc:
        raise exc.with_context(where) from exc
    stored = stored_plan(plan)
    current = existing.pop((decl.schema, decl.name), None)
    if current is None:
        _check_name_free(conn, where, decl)
        return Change(
            ChangeKind.CREATE,
            name,
            decl=decl,
            plan=plan,
            stored=stored,
            effective_mode=mode,
            fallback=fallback,
        )
    reasons: list[str] = []
    if current.plan.query != plan.query:
        reasons.append("query")
    elif current.query != decl.query:
        reasons.append("query text (the same query)")
    if current.refresh_mode is not decl.refresh_mode:
        reasons.append(f"refresh_mode {current.refresh_mode} -> {decl.refresh_mode}")
    if current.status is StreamTableStatus.SUSPENDED:
        reasons.append("suspended (a source changed)")
    if not reasons and current.plan != stored:
        reasons.append("compiled plan (a source table or pgtrickle changed)")
    if current.schedule != decl.schedule:
        reasons.append(f"schedule {current.schedule} -> {decl.schedule}")
    rebuild = any(not r.startswith(("schedule", "query text")) for r in reasons)
    if rebuild:
        _check_droppable(conn, current, "re-create", where)
    kind = ChangeKind.RECREATE if rebuild else ChangeKind.ALTER if reasons else ChangeKind.UNCHANGED
    return Change(
        kind,
        name,
        tuple(reasons),
        decl=decl,
        plan=plan,
        stored=stored,
        effective_mode=mode,
        fallback=fallback,
        existing=current,
    )


def _compile(
    conn: psycopg.Connection[Any],
    catalog: CatalogFacts,
    decl: StreamTableDecl,
    storage_oids: set[int],
) -> tuple[DeltaPlan, RefreshMode, tuple[Reason, ...]]:
    _describe(conn, normalize(decl.query))
    plan = compile_query(decl.query, catalog, (decl.schema, decl.name))
    mode, fallback = effective_mode(plan, decl.refresh_mode)
    for source in plan.sources:
        if source.oid in storage_oids:
            raise UnsupportedQuery(
                f'reads stream table "{source.name}"',
                detail="stream tables that read other stream tables are not supported yet",
                hint="define it over the base tables instead",
            )
    if fallback:
        log.info("falls back to full refresh", stream_table=decl.name, reasons=summary(fallback))
    rescanned = [
        f"{call} ({why})"
        for call, kind, why in plan.aggregate_classes()
        if kind is AggregateClass.GROUP_RESCAN
    ]
    if mode is RefreshMode.DIFFERENTIAL and rescanned:
        log.warning(
            "aggregates recomputed for every group a change touches",
            stream_table=decl.name,
            aggregates=rescanned,
        )
    return plan, mode, fallback


def _describe(conn: psycopg.Connection[Any], query: str) -> None:
    """Let the server parse and analyze the (normalized) query; its error becomes ours."""
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SELECT * FROM ({}) q LIMIT 0").format(sql.SQL(query)))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise MissingPrivilege(
            f"the query may not be run by this role: {exc.diag.message_primary}",
            detail=exc.diag.message_detail,
            hint="GRANT SELECT on the tables it reads to the role pgtrickle connects as",
        ) from exc
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


def _check_source(conn: psycopg.Connection[Any], table: SourceTable, facts: ServerFacts) -> None:
    access = relations.table_access(conn, table.oid)
    if access is None:
        return  # dropped since the catalog was read: the describe above says so
    if not access.readable:
        raise MissingPrivilege(
            f'role "{facts.role}" may not read table {table.qualified_name}',
            detail="pgtrickle reads the sources to populate and refresh the stream table",
            hint=f'GRANT SELECT ON {table.qualified_name} TO "{facts.role}"',
        )


def _check_name_free(conn: psycopg.Connection[Any], where: str, decl: StreamTableDecl) -> None:
    if not relations.schema_exists(conn, decl.schema):
        raise InvalidDeclaration(
            f'{where}: schema "{decl.schema}" does not exist',
            detail="the storage table is created in the schema the name gives",
            hint=f'CREATE SCHEMA "{decl.schema}" first, or drop the schema from the name',
        )
    if not relations.may_create_in(conn, decl.schema):
        raise MissingPrivilege(
            f'{where}: this role may not create tables in schema "{decl.schema}"',
            detail="the stream table's storage is an ordinary table in that schema",
            hint=f'GRANT CREATE ON SCHEMA "{decl.schema}" TO the role pgtrickle connects as',
        )
    held_by = relations.occupant(conn, decl.schema, decl.name)
    if held_by is not None:
        raise NameTaken(
            f"{where}: a {held_by} of that name already exists",
            detail="pgtrickle creates and owns the storage table of a stream table",
            hint=f"choose another name, or drop or rename the existing {held_by}",
        )


def _check_droppable(
    conn: psycopg.Connection[Any], st: StreamTable, action: str, where: str | None = None
) -> None:
    where = where or f'stream table "{st.display_name}"'
    oid = _storage_oid(conn, st)
    if oid is None:
        return
    access = relations.table_access(conn, oid)
    if access is not None and not access.owned:
        raise MissingPrivilege(
            f"{where}: apply would {action} it, but this role does not own its storage table",
            detail=f'it is owned by "{access.owner}"',
            hint=f'apply as "{access.owner}" (or a member of it)',
        )
    found = relations.dependents(conn, oid)
    if found:
        raise DependentObjects(
            f"{where}: apply would {action} it, but other objects depend on it",
            detail="depending on it: " + ", ".join(found),
            hint="drop them first (and create them again afterwards); pgtrickle never drops"
            " objects it did not create",
        )


def _capture_effects(
    conn: psycopg.Connection[Any], table: SourceTable, facts: ServerFacts
) -> list[SideEffect]:
    access = relations.table_access(conn, table.oid)
    if access is None:
        return []
    if not access.owned:
        raise MissingPrivilege(
            f'role "{facts.role}" does not own table {table.qualified_name}, which a stream'
            " table reads",
            detail="capturing its changes alters it: REPLICA IDENTITY FULL, and it joins"
            " pgtrickle's publication; both need its owner",
            hint=f'apply as "{access.owner}" (or a member of it), or set REPLICA IDENTITY FULL'
            " and add it to the publication as its owner first",
        )
    effects = []
    if access.replica_identity != "f":
        effects.append(
            SideEffect(
                EffectKind.REPLICA_IDENTITY,
                f"ALTER TABLE {table.qualified_name} REPLICA IDENTITY FULL (UPDATE and DELETE"
                " then log the whole old row)",
            )
        )
    effects.append(
        SideEffect(
            EffectKind.PUBLISH,
            f'add {table.qualified_name} to publication "{PUBLICATION_NAME}"',
        )
    )
    effects.append(
        SideEffect(
            EffectKind.BUFFER,
            f"create change buffer {BUFFER_SCHEMA}.changes_{table.oid} for {table.qualified_name}",
        )
    )
    return effects


def _release_effects(conn: psycopg.Connection[Any], changes: list[Change]) -> list[SideEffect]:
    """Sources only dropped or re-created-away stream tables read."""
    still_read: set[int] = set()
    for change in changes:
        if change.plan is not None:
            still_read.update(t.oid for t in change.plan.sources)
        elif change.kind is not ChangeKind.DROP and change.existing is not None:
            still_read.update(change.existing.source_oids)
    return [
        SideEffect(
            EffectKind.RELEASE,
            f"stop capturing {source.display_name}: leave the publication, restore its replica"
            " identity, drop its change buffer",
        )
        for oid, source in load_sources(conn).items()
        if oid not in still_read
    ]


def _storage_oids(conn: psycopg.Connection[Any]) -> set[int]:
    rows = conn.execute(
        "SELECT to_regclass(format('%I.%I', schema_name, name))::oid FROM pgtrickle.stream_tables"
    ).fetchall()
    return {int(r[0]) for r in rows if r[0] is not None}


def _storage_oid(conn: psycopg.Connection[Any], st: StreamTable) -> int | None:
    row = conn.execute(
        "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))::oid", (st.schema, st.name)
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


# -- 2.-4. doing it -----------------------------------------------------------------------


def _execute(conn: psycopg.Connection[Any], plan: ApplyPlan) -> None:
    slot_created = False
    failed = True
    try:
        if plan.builds:
            slot_created = not server_facts(conn).slot_exists
            ensure_slot_and_publication(conn)
        if plan.new_sources:
            with conn.transaction():
                for table in plan.new_sources:
                    capture_source(conn, table)
            wait_for_older_transactions(conn)
        _swap(conn, plan)
        failed = False
    except psycopg.errors.LockNotAvailable as exc:
        raise DatabaseError(
            "apply could not lock a table in time",
            detail=exc.diag.message_primary,
            hint="a long transaction holds a lock on a source or a stream table"
            " (pg_locks and pg_stat_activity show it); end it and apply again",
        ) from exc
    finally:
        _release_unread(conn)
        if failed and slot_created:
            _drop_unused_slot(conn)
    for change in plan.changes:
        if change.kind is not ChangeKind.UNCHANGED:
            log.info(
                f"{change.kind.value} stream table",
                stream_table=change.name,
                effective_refresh_mode=change.effective_mode,
                fallback=summary(change.fallback) or None,
            )


def _swap(conn: psycopg.Connection[Any], plan: ApplyPlan) -> None:
    touched = sorted(
        c.existing.id
        for c in plan.changes
        if c.existing is not None and c.kind is not ChangeKind.UNCHANGED
    )
    locks = [refresh_lock(st_id) for st_id in touched]
    # session locks, before the snapshot: a refresh in flight finishes first
    for lock in locks:
        lock.lock(conn)
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            read = {t.oid: t for c in plan.builds if c.plan is not None for t in c.plan.sources}
            lock_before_snapshot(conn, [_qualified(t.schema, t.name) for t in read.values()])
            row = conn.execute(
                "SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text"
            ).fetchone()
            assert row is not None
            snapshot, lsn = row
            for change in plan.changes:
                if change.existing is not None and change.kind is not ChangeKind.UNCHANGED:
                    _check_unchanged_since_plan(conn, change.existing)
            for change in plan.drops:
                assert change.existing is not None
                _drop(conn, change.existing)
            for change in plan.changes:
                if change.kind is ChangeKind.ALTER:
                    _alter(conn, change)
                elif change.kind is ChangeKind.RECREATE:
                    _recreate(conn, change, snapshot, lsn)
                elif change.kind is ChangeKind.CREATE:
                    _create(conn, change, snapshot, lsn)
    finally:
        conn.isolation_level = None
        if not conn.closed and not conn.broken:
            for lock in locks:
                lock.unlock(conn)


def _check_unchanged_since_plan(conn: psycopg.Connection[Any], st: StreamTable) -> None:
    row = conn.execute(
        "SELECT revision FROM pgtrickle.stream_tables WHERE id = %s", (st.id,)
    ).fetchone()
    if row is None or row[0] != st.revision:
        raise DatabaseError(
            f'stream table "{st.display_name}" changed while apply was planning',
            hint="run apply again",
        )


def _drop(conn: psycopg.Connection[Any], st: StreamTable) -> None:
    _drop_table(conn, st.qualified_name, st.display_name)
    drop_kept(conn, st.plan)
    conn.execute("DELETE FROM pgtrickle.stream_tables WHERE id = %s", (st.id,))


def _drop_table(conn: psycopg.Connection[Any], target: sql.Composable, name: str) -> None:
    try:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
    except psycopg.errors.DependentObjectsStillExist as exc:
        # created between the plan and now: the plan checked
        raise DependentObjects(
            f'stream table "{name}": other objects depend on it',
            detail=exc.diag.message_detail,
            hint="drop them first; pgtrickle never drops objects it did not create",
        ) from exc


def _alter(conn: psycopg.Connection[Any], change: Change) -> None:
    assert change.existing is not None and change.decl is not None
    conn.execute(
        "UPDATE pgtrickle.stream_tables SET schedule = %s, query = %s, revision = revision + 1,"
        " updated_at = now() WHERE id = %s",
        (change.decl.schedule, change.decl.query, change.existing.id),
    )


def _create(conn: psycopg.Connection[Any], change: Change, snapshot: str, lsn: str) -> None:
    decl, mode = change.decl, change.effective_mode
    assert decl is not None and mode is not None
    target = _qualified(decl.schema, decl.name)
    stored = change.stored
    assert stored is not None
    started = time.perf_counter()
    rows = create_storage(conn, target, stored, what=f'stream table "{change.name}"')
    populate_ms = (time.perf_counter() - started) * 1000.0
    index_storage(conn, target, stored, mode, what=f'stream table "{change.name}"')
    state: list[tuple[str, object]] = [("schema_name", decl.schema), ("name", decl.name)]
    state += _populated_state(change, stored, snapshot, lsn)
    row = conn.execute(
        sql.SQL(
            "INSERT INTO pgtrickle.stream_tables ({}, last_refresh_at, data_timestamp)"
            " VALUES ({}, clock_timestamp(), now()) RETURNING id"
        ).format(
            sql.SQL(", ").join(sql.Identifier(column) for column, _ in state),
            sql.SQL(", ").join(sql.Placeholder() for _ in state),
        ),
        [value for _, value in state],
    ).fetchone()
    assert row is not None
    _record_dependencies(conn, row[0], change, lsn, rows, populate_ms)


def _recreate(conn: psycopg.Connection[Any], change: Change, snapshot: str, lsn: str) -> None:
    decl, mode, st = change.decl, change.effective_mode, change.existing
    assert decl is not None and mode is not None and st is not None
    build_name = f"__pgt_build_{st.id}"
    build = _qualified(decl.schema, build_name)
    stored = change.stored
    assert stored is not None
    # the old storage table does not read its kept table; a new one is created in its place
    drop_kept(conn, st.plan)
    started = time.perf_counter()
    rows = create_storage(conn, build, stored, what=f'stream table "{change.name}"')
    populate_ms = (time.perf_counter() - started) * 1000.0
    old_oid = _storage_oid(conn, st)
    keep_grants = relations.grants(conn, old_oid) if old_oid is not None else []
    keep_indexes = relations.user_indexes(conn, old_oid) if old_oid is not None else []
    owner = relations.table_access(conn, old_oid) if old_oid is not None else None
    _drop_table(conn, st.qualified_name, st.display_name)
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(build, sql.Identifier(decl.name)))
    target = _qualified(decl.schema, decl.name)
    index_storage(conn, target, stored, mode, what=f'stream table "{change.name}"')
    for grant in keep_grants:
        conn.execute(grant.statement(target))
    if owner is not None:
        conn.execute(
            sql.SQL("ALTER TABLE {} OWNER TO {}").format(target, sql.Identifier(owner.owner))
        )
    for index, definition in keep_indexes:
        try:
            with conn.transaction():
                # the server's own text of the index, which names the table as it is now
                conn.execute(definition.encode())
        except psycopg.Error as exc:
            log.warning(
                "index not carried over to the re-created stream table",
                stream_table=change.name,
                index=index,
                error=exc.diag.message_primary,
            )
    state = _populated_state(change, stored, snapshot, lsn)
    conn.execute(
        sql.SQL(
            "UPDATE pgtrickle.stream_tables SET {}, last_error = NULL, consecutive_errors = 0,"
            " last_refresh_at = clock_timestamp(), data_timestamp = now(),"
            " revision = revision + 1, updated_at = now() WHERE id = {}"
        ).format(
            sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder())
                for column, _ in state
            ),
            sql.Placeholder(),
        ),
        [*(value for _, value in state), st.id],
    )
    conn.execute("DELETE FROM pgtrickle.dependencies WHERE stream_table_id = %s", (st.id,))
    _record_dependencies(conn, st.id, change, lsn, rows, populate_ms)


def _populated_state(
    change: Change, stored: StoredPlan, snapshot: str, lsn: str
) -> list[tuple[str, object]]:
    """The catalog columns of a stream table just populated at ``snapshot`` (and ``lsn``)."""
    decl, mode = change.decl, change.effective_mode
    assert decl is not None and mode is not None
    return [
        ("query", decl.query),
        ("schedule", decl.schedule),
        ("refresh_mode", decl.refresh_mode.value),
        ("effective_refresh_mode", mode.value),
        ("fallback_reason", summary(change.fallback) or None),
        ("plan", stored.to_json()),
        ("frontier", snapshot),  # text, cast by the server to the column's pg_snapshot
        ("frontier_lsn", lsn),
        ("status", StreamTableStatus.ACTIVE.value),
    ]


def _record_dependencies(
    conn: psycopg.Connection[Any],
    st_id: int,
    change: Change,
    lsn: str,
    rows: int,
    populate_ms: float,
) -> None:
    assert change.plan is not None
    for source in change.plan.sources:
        conn.execute(
            "INSERT INTO pgtrickle.dependencies (stream_table_id, source_oid, columns_read)"
            " VALUES (%s, %s, %s)",
            (st_id, source.oid, list(change.plan.columns_read.get(source.oid, ()))),
        )
    record_populated(conn, st_id, lsn, rows, populate_ms)


def _release_unread(conn: psycopg.Connection[Any]) -> None:
    """Stop capturing every source no stream table reads (each on its own; a failure is left
    for the next apply, which tries again)."""
    if not _catalog_exists(conn):
        return
    orphans = conn.execute(
        "SELECT s.source_oid FROM pgtrickle.sources s WHERE NOT EXISTS"
        " (SELECT 1 FROM pgtrickle.dependencies d WHERE d.source_oid = s.source_oid)"
    ).fetchall()
    sources = load_sources(conn)
    for (oid,) in orphans:
        source = sources[int(oid)]
        try:
            with conn.transaction():
                release_source(conn, source)
        except psycopg.Error as exc:
            log.warning(
                "could not stop capturing a source; the next apply tries again",
                source=source.display_name,
                error=exc.diag.message_primary or str(exc),
            )


def _catalog_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('pgtrickle.sources') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _drop_unused_slot(conn: psycopg.Connection[Any]) -> None:
    """A slot this apply created for stream tables that did not come to be holds WAL for
    nobody: drop it again (unless a daemon is reading it already)."""
    row = conn.execute("SELECT count(*) FROM pgtrickle.stream_tables").fetchone()
    if row and row[0] == 0:
        with contextlib.suppress(psycopg.Error):
            drop_slot(conn, SLOT_NAME)


def _qualified(schema: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


__all__ = ["ApplyPlan", "Change", "ChangeKind", "SideEffect", "apply", "plan_apply"]
