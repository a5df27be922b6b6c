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
    old one's name (the index is named after the table).
    """
    pin_storage_settings(conn, local=True)
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
    unique = mode is RefreshMode.DIFFERENTIAL and plan.apply_strategy is ApplyStrategy.KEYED
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
    """Replace every row of ``target`` with the query's result (a FULL refresh)."""
    conn.execute(sql.SQL("DELETE FROM {}").format(target))
    return insert_all(conn, target, plan, what=what)


def insert_all(
    conn: psycopg.Connection[Any], target: sql.Composable, plan: StoredPlan, *, what: str
) -> int:
    # rendered by the compiler from the parsed query, never the text the user wrote
    storage_query = sql.SQL(plan.storage_query)
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
