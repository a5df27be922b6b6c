"""Filling a storage table from its query at the snapshot of the caller's transaction.

Populating a new stream table, re-creating one beside the old and a FULL refresh are the same
refresh without a delta: the storage query at a snapshot S, inserted whole. The caller holds
the ``REPEATABLE READ`` transaction whose snapshot S becomes the frontier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from dvm.kept import Kept
from dvm.plan import ApplyStrategy, RefreshMode
from dvm.stored import StoredPlan
from dvm.zset import ROW_ID
from scheduler.errors import QueryFailed
from scheduler.sessions import pin_storage_settings


def lock_before_snapshot(conn: psycopg.Connection[Any], tables: Sequence[sql.Composable]) -> None:
    """``LOCK TABLE ... IN ACCESS SHARE MODE``, as the first statement of a transaction that
    reads ``tables`` at its snapshot: a TRUNCATE (not MVCC-safe: a snapshot taken before it
    sees the table empty once it committed) then either committed before the snapshot or
    waits for the transaction to end."""
    if not tables:
        return
    try:
        conn.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.SQL(", ").join(tables))
        )
    except psycopg.errors.UndefinedTable as error:
        raise QueryFailed(
            f"a table the query reads no longer exists: {error.diag.message_primary}",
            detail="it was dropped or renamed since the stream table was declared",
            hint="declare the stream table over tables that exist, then run `pgtrickle apply`",
        ) from error


def create_storage(
    conn: psycopg.Connection[Any], target: sql.Composable, plan: StoredPlan, *, what: str
) -> int:
    """Create ``target`` from ``plan``'s storage query and fill it; the number of rows.

    ``what`` names the stream table in an error. Index it with ``index_storage`` after the
    rows are in (one bulk build) and, when it is built beside an old one, after it took the
    old one's name (the index is named after the table). A plan with a kept table
    (``dvm.kept``) has it created, filled and indexed first: the storage query reads it.
    """
    pin_storage_settings(conn, local=True)
    if plan.kept is not None:
        _create_kept(conn, plan.kept, what=what)
    # rendered by the compiler from the parsed query, never the text the user wrote
    storage_query = sql.SQL(plan.storage_query)
    conn.execute(sql.SQL("CREATE TABLE {} AS {} WITH NO DATA").format(target, storage_query))
    return insert_all(conn, target, plan, what=what)


def index_storage(
    conn: psycopg.Connection[Any],
    target: sql.Composable,
    plan: StoredPlan,
    mode: RefreshMode,
    *,
    what: str,
) -> None:
    """Index the row ids: uniquely when deltas are applied by row id, which also proves that
    the ids are unique."""
    unique = (
        mode is RefreshMode.DIFFERENTIAL
        and plan.apply_strategy is ApplyStrategy.KEYED
        # a kept table's deltas are MERGEd into it; the stream table holds its first rows,
        # which may repeat
        and plan.kept is None
    )
    try:
        conn.execute(
            sql.SQL("CREATE {} INDEX ON {} ({})").format(
                sql.SQL("UNIQUE" if unique else ""), target, sql.Identifier(ROW_ID)
            )
        )
    except psycopg.errors.UniqueViolation as error:
        raise query_failed(what, error) from error


def recompute(
    conn: psycopg.Connection[Any], target: sql.Composable, plan: StoredPlan, *, what: str
) -> int:
    """Replace every row of ``target`` with the query's result (a FULL refresh); the kept
    table first, when the plan has one (the storage query reads it)."""
    if plan.kept is not None:
        kept = sql.Identifier(*plan.kept.table)
        conn.execute(sql.SQL("DELETE FROM {}").format(kept))
        _insert_computed(conn, kept, sql.SQL(plan.kept.storage_query), what=what)
    conn.execute(sql.SQL("DELETE FROM {}").format(target))
    return insert_all(conn, target, plan, what=what)


def _create_kept(conn: psycopg.Connection[Any], kept: Kept, *, what: str) -> None:
    """The kept table, filled, with a unique index on its row ids (its deltas are MERGEd by
    them) and one in the TopK's order (the first rows are its first entries)."""
    target = sql.Identifier(*kept.table)
    # rendered by the compiler from the parsed query, never the text the user wrote
    query = sql.SQL(kept.storage_query)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
    conn.execute(sql.SQL("CREATE TABLE {} AS {} WITH NO DATA").format(target, query))
    _insert_computed(conn, target, query, what=what)
    try:
        conn.execute(
            sql.SQL("CREATE UNIQUE INDEX ON {} ({})").format(target, sql.Identifier(ROW_ID))
        )
    except psycopg.errors.UniqueViolation as error:
        raise query_failed(what, error) from error
    if kept.order is not None:
        conn.execute(
            sql.SQL("CREATE INDEX ON {} ({})").format(
                target,
                sql.SQL(", ").join(
                    sql.SQL("{} {} NULLS {}").format(
                        sql.Identifier(column),
                        sql.SQL("DESC" if descending else "ASC"),
                        sql.SQL("FIRST" if nulls_first else "LAST"),
                    )
                    for column, descending, nulls_first in kept.order
                ),
            )
        )


def drop_kept(conn: psycopg.Connection[Any], plan: StoredPlan) -> None:
    """Drop the kept table of ``plan``, if it has one (with the stream table)."""
    if plan.kept is not None:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(*plan.kept.table)))


def insert_all(
    conn: psycopg.Connection[Any], target: sql.Composable, plan: StoredPlan, *, what: str
) -> int:
    # rendered by the compiler from the parsed query, never the text the user wrote
    return _insert_computed(conn, target, sql.SQL(plan.storage_query), what=what)


def _insert_computed(
    conn: psycopg.Connection[Any], target: sql.Composable, storage_query: sql.SQL, *, what: str
) -> int:
    computed = sql.Identifier("pg_temp", COMPUTED)
    try:
        # PostgreSQL plans an INSERT … SELECT without parallel workers, and CREATE TABLE AS
        # with them: the rows are computed into a temp table first (TPC-H Q17 at SF 1: a
        # serial plan reads all of lineitem by index, over 30 s, against 1.2 s for REFRESH
        # MATERIALIZED VIEW). The price is a temp table per full refresh, created and
        # dropped (REFRESH MATERIALIZED VIEW makes a new heap every time too).
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(computed))
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} AS {}").format(sql.Identifier(COMPUTED), storage_query)
        )
        cur = conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(target, computed))
        conn.execute(sql.SQL("DROP TABLE {}").format(computed))
    except (psycopg.DataError, psycopg.ProgrammingError, psycopg.IntegrityError) as error:
        raise query_failed(what, error) from error
    return max(cur.rowcount, 0)


COMPUTED = "__pgt_computed"
"""The temp table a full computation goes through (see ``insert_all``)."""


def query_failed(what: str, error: psycopg.Error) -> QueryFailed:
    diag = error.diag
    return QueryFailed(
        f"{what}: the query failed: {diag.message_primary or str(error).strip()}",
        detail=diag.message_detail or f"SQLSTATE {diag.sqlstate}",
        hint=diag.message_hint
        or "run the query by hand to see which rows fail, and change it or the data",
    )
