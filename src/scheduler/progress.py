"""Whether stream tables have caught up with a WAL position: what `pgtrickle wait` waits for.

A stream table has caught up with L when the reader has buffered everything through L and no
buffered change committed at or before L belongs to a transaction its frontier does not see.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from scheduler.errors import UpstreamSchemaChanged, WaitTimeout
from scheduler.refresh import settled_lsn, wal_segment_size
from scheduler.suspend import SchemaChangeHandler
from walstream.buffers import CapturedSource, behind_query, load_sources
from walstream.catalog import StreamTable, StreamTableStatus, list_stream_tables
from walstream.dsn import connect
from walstream.migrate import check_current
from walstream.position import SlotPosition
from walstream.replication import format_lsn, parse_lsn


def behind(
    conn: psycopg.Connection[Any],
    st: StreamTable,
    lsn: int,
    sources: dict[int, CapturedSource] | None = None,
) -> bool:
    """True when a change committed at or before ``lsn`` is not yet in the stream table."""
    if st.frontier is None:
        return True
    if sources is None:
        sources = load_sources(conn)
    for oid in st.source_oids:
        source = sources.get(oid)
        if source is None:
            continue
        row = conn.execute(behind_query(source, format_lsn(lsn), st.frontier)).fetchone()
        if row and row[0]:
            return True
    return False


def wait_caught_up(dsn: str, timeout: float, poll: float = 0.02) -> list[StreamTable]:
    """Block until every stream table reflects every change committed before the call.

    A suspended stream table will not catch up until it is re-created: once the others have,
    that is an ``UpstreamSchemaChanged`` error rather than a wait until the timeout.
    """
    deadline = time.monotonic() + timeout
    with connect(dsn, autocommit=True) as conn:
        check_current(conn)
        position = SlotPosition(dsn, on_schema_change=SchemaChangeHandler(dsn))
        try:
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
            assert row is not None
            target = settled_lsn(parse_lsn(row[0]), wal_segment_size(conn))
            next_nudge = 0.0
            while True:
                current, _active = position.current()
                tables: list[StreamTable] = []
                suspended: list[StreamTable] = []
                for st in list_stream_tables(conn):
                    (suspended if st.status is StreamTableStatus.SUSPENDED else tables).append(st)
                if current >= target:
                    sources = load_sources(conn)
                    lagging = [st for st in tables if behind(conn, st, target, sources)]
                    if not lagging and suspended:
                        raise _suspended(suspended)
                    if not lagging:
                        return tables
                else:
                    lagging = tables
                    if time.monotonic() >= next_nudge:
                        # a flushed commit past the target, for a walsender that waits
                        conn.execute("SELECT pg_logical_emit_message(true, 'pgtrickle', '')")
                        next_nudge = time.monotonic() + 0.5
                if time.monotonic() > deadline:
                    names = ", ".join(st.display_name for st in lagging) or "(the reader)"
                    raise WaitTimeout(
                        f"stream tables did not catch up within {timeout:g} s",
                        detail=(
                            f"behind WAL position {format_lsn(target)}: {names}; "
                            f"the reader has buffered up to {format_lsn(current)}"
                        ),
                        hint="is `pgtrickle run` running? `pgtrickle status` shows errors",
                    )
                time.sleep(poll)
        finally:
            position.close()


def _suspended(tables: list[StreamTable]) -> UpstreamSchemaChanged:
    names = ", ".join(st.display_name for st in tables)
    return UpstreamSchemaChanged(
        f"suspended stream tables will not catch up: {names}",
        detail="; ".join(
            f"{st.display_name}: {(st.last_error or 'suspended').splitlines()[0]}" for st in tables
        ),
        hint="change their queries (or restore their sources), then run `pgtrickle apply`;"
        " the other stream tables have caught up",
    )
