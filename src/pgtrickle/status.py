"""The state of every stream table and of the reader, as `pgtrickle status` and the demo show."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from dvm.plan import RefreshMode
from walstream.capture import SLOT_NAME
from walstream.catalog import StreamTableStatus, list_stream_tables
from walstream.migrate import check_current


@dataclass(frozen=True)
class ReaderState:
    """The slot: whether a reader streams from it, how far it confirmed, what WAL it holds."""

    slot: str | None
    reader_active: bool
    confirmed_lsn: str | None = None
    retained_wal_bytes: int | None = None
    unconfirmed_wal_bytes: int | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StreamTableState:
    name: str
    refresh_mode: RefreshMode
    effective_refresh_mode: RefreshMode
    fallback_reason: str | None
    schedule: str
    status: StreamTableStatus
    rows: int | None
    """None when the storage table cannot be read (dropped by hand, say)."""
    staleness_seconds: float | None
    last_refresh_at: datetime | None
    frontier_lsn: str | None
    consecutive_errors: int
    last_error: str | None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_refresh_at"] = self.last_refresh_at.isoformat() if self.last_refresh_at else None
        return data


def reader_state(conn: psycopg.Connection[Any]) -> ReaderState:
    row = conn.execute(
        "SELECT active, confirmed_flush_lsn::text,"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (SLOT_NAME,),
    ).fetchone()
    if row is None:
        return ReaderState(slot=None, reader_active=False)
    return ReaderState(SLOT_NAME, bool(row[0]), row[1], row[2], row[3])


def stream_table_states(conn: psycopg.Connection[Any]) -> list[StreamTableState]:
    """Every stream table's state; ``conn`` is in autocommit mode."""
    check_current(conn)
    out = []
    for st in list_stream_tables(conn):
        try:  # in autocommit, a failed statement leaves the connection usable
            row = conn.execute(
                sql.SQL(
                    "SELECT (SELECT count(*) FROM {}),"
                    " extract(epoch FROM clock_timestamp() - %s::timestamptz)::float8"
                ).format(st.qualified_name),
                (st.data_timestamp,),
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            row = None
        out.append(
            StreamTableState(
                name=st.display_name,
                refresh_mode=st.refresh_mode,
                effective_refresh_mode=st.effective_refresh_mode,
                fallback_reason=st.fallback_reason,
                schedule=st.schedule,
                status=st.status,
                rows=int(row[0]) if row else None,
                staleness_seconds=row[1] if row else None,
                last_refresh_at=st.last_refresh_at,
                frontier_lsn=st.frontier_lsn,
                consecutive_errors=st.consecutive_errors,
                last_error=st.last_error,
            )
        )
    return out
