"""The state of every stream table, as `pgtrickle status` and the demo show it."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from walstream.capture import SLOT_NAME
from walstream.catalog import list_stream_tables


def reader_status(dsn: str) -> dict[str, Any]:
    """The slot: whether a reader streams from it, how far it confirmed, what WAL it holds."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT active AS reader_active, confirmed_flush_lsn::text AS confirmed_lsn,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_wal_bytes,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
            " AS unconfirmed_wal_bytes"
            " FROM pg_replication_slots WHERE slot_name = %s",
            (SLOT_NAME,),
        ).fetchone()
    return dict(row) if row else {"reader_active": False, "slot": None}


def status_rows(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        out = []
        for st in list_stream_tables(conn):
            with conn.cursor(row_factory=dict_row) as cur:
                row = cur.execute(
                    sql.SQL(
                        "SELECT (SELECT count(*) FROM {}) AS rows,"
                        " extract(epoch FROM clock_timestamp() - %s::timestamptz)::float8"
                        " AS staleness_seconds"
                    ).format(st.qualified_name),
                    (st.data_timestamp,),
                ).fetchone()
            assert row is not None
            out.append(
                {
                    "name": st.display_name,
                    "refresh_mode": st.refresh_mode,
                    "effective_refresh_mode": st.effective_refresh_mode,
                    "fallback_reason": st.fallback_reason,
                    "schedule": st.schedule,
                    "status": st.status,
                    "rows": row["rows"],
                    "staleness_seconds": row["staleness_seconds"],
                    "last_refresh_at": st.last_refresh_at,
                    "frontier_lsn": st.frontier_lsn,
                    "consecutive_errors": st.consecutive_errors,
                    "last_error": st.last_error,
                }
            )
        return out
