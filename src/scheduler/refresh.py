"""One refresh of one stream table: the snapshot-aligned protocol of DESIGN.md.

1. A session advisory lock keeps a second refresh of the same stream table out; it is taken
   before the transaction, so before the snapshot.
2. ``REPEATABLE READ``; the first statement reads the snapshot S and the WAL insert position L.
3. Wait until the reader has buffered everything decoded through L (nudging the walsender with
   a transactional logical message when it lags).
4. Stage, from a second autocommit connection, the buffered changes of transactions visible in
   S and not in the stored frontier F, into the session's temp tables (COPY out, COPY in).
5. Run the compiled delta against the staged changes and the base tables at S, MERGE it into
   the storage table, store S as the new frontier, commit.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import psycopg
import structlog
from psycopg import sql

from dvm.catalog import SourceTable
from dvm.compile import delta_relation
from dvm.errors import PgTrickleError
from walstream.capture import CapturedSource, buffer_columns, load_sources
from walstream.catalog import StreamTable
from walstream.migrate import LOCK_CLASS
from walstream.replication import format_lsn, parse_lsn
from walstream.sessions import pin_storage_settings

log = structlog.get_logger("pgtrickle.refresh")

REFRESH_LOCK_CLASS = LOCK_CLASS + 1
XLOG_BLCKSZ = 8192
SHORT_PAGE_HEADER = 24
LONG_PAGE_HEADER = 40
NUDGE_AFTER = 0.005
WAIT_TIMEOUT = 60.0


class RefreshAction(StrEnum):
    FULL = "full"
    DIFFERENTIAL = "differential"
    NO_DATA = "no_data"
    INITIALIZE = "initialize"


class RefreshMismatch(PgTrickleError):
    """Check mode: after a refresh the stream table differed from its query at S."""


class PositionWaiter(Protocol):
    """Something that knows how far the change reader has buffered."""

    def wait_for(self, lsn: int, timeout: float) -> bool: ...


@dataclass
class RefreshResult:
    action: RefreshAction
    frontier_lsn: int
    delta_rows: int = 0
    rows_changed: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def settled_lsn(lsn: int, segment_size: int) -> int:
    """The position a walsender can reach for an insert position ``lsn``.

    At the start of a page the insert position points past the page header, where decoding
    only arrives once more WAL is written; the end of the previous page is equivalent.

    >>> settled_lsn(0x1000018, 16 << 20), settled_lsn(0x1002018, 16 << 20)
    (16777216, 16785408)
    """
    if lsn % segment_size == LONG_PAGE_HEADER:
        return lsn - LONG_PAGE_HEADER
    if lsn % XLOG_BLCKSZ == SHORT_PAGE_HEADER:
        return lsn - SHORT_PAGE_HEADER
    return lsn


def wal_segment_size(conn: psycopg.Connection[Any]) -> int:
    # reported in bytes since PostgreSQL 11
    row = conn.execute("SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'")
    found = row.fetchone()
    return int(found[0]) if found else 16 << 20


def check_mode_enabled() -> bool:
    return os.environ.get("PGTRICKLE_CHECK_REFRESH", "") not in ("", "0", "false")


class Refresher:
    """Refreshes stream tables on its own pair of connections (one per worker)."""

    def __init__(self, dsn: str, waiter: PositionWaiter, *, check: bool | None = None) -> None:
        self.dsn = dsn
        self.waiter = waiter
        self.check = check_mode_enabled() if check is None else check
        self.conn: psycopg.Connection[Any] = psycopg.connect(dsn, autocommit=True)
        pin_storage_settings(self.conn)
        self.staging: psycopg.Connection[Any] = psycopg.connect(dsn, autocommit=True)
        self.staging.execute("SET synchronous_commit = on")
        self.segment_size = wal_segment_size(self.conn)
        self._temp_tables: set[int] = set()

    def close(self) -> None:
        self.conn.close()
        self.staging.close()

    def __enter__(self) -> Refresher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the protocol ---------------------------------------------------------------------

    def refresh(self, st: StreamTable, *, full: bool = False) -> RefreshResult:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        sources = load_sources(self.conn)
        st_sources = [sources[oid] for oid in st.source_oids if oid in sources]
        differential = st.effective_refresh_mode == "differential" and not full
        if differential:
            self._ensure_temp_tables(st_sources)
        self.conn.execute("SELECT pg_advisory_lock(%s, %s)", (REFRESH_LOCK_CLASS, st.id))
        try:
            self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with self.conn.transaction():
                t0 = time.perf_counter()
                row = self.conn.execute(
                    "SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text,"
                    " frontier::text FROM pgtrickle.stream_tables WHERE id = %s",
                    (st.id,),
                ).fetchone()
                if row is None:
                    raise PgTrickleError(f'stream table "{st.display_name}" was dropped')
                snapshot, lsn_text, frontier = row
                lsn = parse_lsn(lsn_text)
                timings["snapshot_ms"] = _ms(t0)
                result = RefreshResult(RefreshAction.FULL, lsn, timings=timings)
                if differential and frontier is not None:
                    t0 = time.perf_counter()
                    self._wait_buffered(lsn)
                    timings["wait_ms"] = _ms(t0)
                    t0 = time.perf_counter()
                    truncated, staged = self._stage(st_sources, st, snapshot, frontier)
                    timings["stage_ms"] = _ms(t0)
                    t0 = time.perf_counter()
                    if truncated:
                        result.rows_changed = self._recompute(st)
                    elif staged:
                        result.action = RefreshAction.DIFFERENTIAL
                        result.delta_rows = staged
                        cur = self.conn.execute(st.plan["apply_sql"].encode())
                        if st.plan["apply_strategy"] == "bag":
                            counts = cur.fetchone()  # (deleted, inserted)
                            result.rows_changed = sum(counts) if counts else 0
                        else:
                            result.rows_changed = max(cur.rowcount, 0)
                    else:
                        result.action = RefreshAction.NO_DATA
                    timings["apply_ms"] = _ms(t0)
                else:
                    t0 = time.perf_counter()
                    result.rows_changed = self._recompute(st)
                    timings["apply_ms"] = _ms(t0)
                if self.check and result.action != RefreshAction.NO_DATA:
                    self._check_equal(st)
                self._record(st, snapshot, result)
                if result.action != RefreshAction.NO_DATA:
                    # in the refresh's own transaction: a second commit would cost a WAL flush
                    timings["total_ms"] = _ms(started)
                    self._history(st, result)
                t0 = time.perf_counter()
            timings["commit_ms"] = _ms(t0)
            timings["total_ms"] = _ms(started)
            return result
        finally:
            self.conn.isolation_level = None
            if not self.conn.closed and not self.conn.broken:
                self.conn.execute("SELECT pg_advisory_unlock(%s, %s)", (REFRESH_LOCK_CLASS, st.id))

    def _wait_buffered(self, lsn: int) -> None:
        target = settled_lsn(lsn, self.segment_size)
        if self.waiter.wait_for(target, NUDGE_AFTER):
            return
        deadline = time.monotonic() + WAIT_TIMEOUT
        while time.monotonic() < deadline:
            # a flushed commit record the walsender can decode past L
            self.staging.execute("SELECT pg_logical_emit_message(true, 'pgtrickle', '')")
            if self.waiter.wait_for(target, 0.25):
                return
        raise PgTrickleError(
            "the change reader did not catch up with the refresh snapshot",
            detail=f"waited {WAIT_TIMEOUT:.0f} s for WAL position {format_lsn(target)}",
            hint="is `pgtrickle run` running, and can it connect to the database?",
        )

    def _ensure_temp_tables(self, sources: list[CapturedSource]) -> None:
        for source in sources:
            if source.oid in self._temp_tables:
                continue
            name = delta_relation(_as_source_table(source))
            columns = [sql.SQL("__pgt_w integer")] + [
                sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t))
                for c, t in zip(source.columns, source.column_types, strict=True)
            ]
            self.conn.execute(
                sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
                    sql.Identifier(name), sql.SQL(", ").join(columns)
                )
            )
            self._temp_tables.add(source.oid)

    def _stage(
        self, sources: list[CapturedSource], st: StreamTable, snapshot: str, frontier: str
    ) -> tuple[bool, int]:
        """Copy this refresh's changes into the temp tables; (a TRUNCATE among them, rows)."""
        total = 0
        columns_read: dict[str, list[str]] = st.plan.get("columns_read", {})
        for source in sources:
            window = self.staging_window(snapshot, frontier)
            truncated = self.staging.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {} b WHERE {} AND b.action = 'T')").format(
                    source.buffer, window
                )
            ).fetchone()
            if truncated and truncated[0]:
                return True, 0
            query = _staging_query(source, window, columns_read.get(str(source.oid)))
            target = sql.Identifier(delta_relation(_as_source_table(source)))
            with (
                self.staging.cursor().copy(
                    sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(query)
                ) as out,
                self.conn.cursor() as cur,
            ):
                with cur.copy(
                    sql.SQL("COPY pg_temp.{} FROM STDIN (FORMAT binary)").format(target)
                ) as into:
                    for block in out:
                        into.write(block)
                total += max(cur.rowcount, 0)
        return False, total

    def staging_window(self, snapshot: str, frontier: str) -> sql.Composable:
        """Buffer rows (alias ``b``) of transactions visible in S and not in the frontier.

        The bounds on ``xid`` only let the index narrow the scan; visibility decides.
        """
        s, f = sql.Literal(snapshot), sql.Literal(frontier)
        return sql.SQL(
            "b.xid >= pg_snapshot_xmin({f}::pg_snapshot)"
            " AND b.xid < pg_snapshot_xmax({s}::pg_snapshot)"
            " AND pg_visible_in_snapshot(b.xid, {s}::pg_snapshot)"
            " AND NOT pg_visible_in_snapshot(b.xid, {f}::pg_snapshot)"
        ).format(s=s, f=f)

    def _recompute(self, st: StreamTable) -> int:
        self.conn.execute(sql.SQL("DELETE FROM {}").format(st.qualified_name))
        cur = self.conn.execute(
            sql.SQL("INSERT INTO {} SELECT * FROM ({}) q").format(
                st.qualified_name,
                sql.SQL(st.plan["storage_query"]),
            )
        )
        return max(cur.rowcount, 0)

    def _check_equal(self, st: StreamTable) -> None:
        extra, missing = differences(self.conn, st)
        if extra or missing:
            raise RefreshMismatch(
                f'stream table "{st.display_name}" differs from its query after a refresh',
                detail=f"{extra} extra rows, {missing} missing rows",
            )

    def _record(self, st: StreamTable, snapshot: str, result: RefreshResult) -> None:
        self.conn.execute(
            "UPDATE pgtrickle.stream_tables SET frontier = %s::pg_snapshot,"
            " frontier_lsn = %s::pg_lsn, last_refresh_at = clock_timestamp(),"
            " data_timestamp = now(), status = 'active', last_error = NULL,"
            " consecutive_errors = 0 WHERE id = %s",
            (snapshot, format_lsn(result.frontier_lsn), st.id),
        )

    def _history(self, st: StreamTable, result: RefreshResult) -> None:
        """One row of refresh_history; its total_ms ends before the commit (commit_ms is NULL)."""
        t = result.timings
        self.conn.execute(
            "INSERT INTO pgtrickle.refresh_history (stream_table_id, action, status, started_at,"
            " finished_at, frontier_lsn, delta_rows, rows_changed, snapshot_ms, wait_ms,"
            " stage_ms, apply_ms, commit_ms, total_ms) VALUES (%s, %s, 'ok',"
            " clock_timestamp() - make_interval(secs => %s / 1000.0), clock_timestamp(),"
            " %s::pg_lsn, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                st.id,
                result.action.value,
                t.get("total_ms", 0.0),
                format_lsn(result.frontier_lsn),
                result.delta_rows,
                result.rows_changed,
                t.get("snapshot_ms"),
                t.get("wait_ms"),
                t.get("stage_ms"),
                t.get("apply_ms"),
                t.get("commit_ms"),
                t.get("total_ms"),
            ),
        )


def differences(conn: psycopg.Connection[Any], st: StreamTable) -> tuple[int, int]:
    """(rows only in the stream table, rows only in its query), compared as multisets."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in st.plan["user_columns"])
    query = sql.SQL(st.plan["query"])
    row = conn.execute(
        sql.SQL(
            "SELECT (SELECT count(*) FROM (SELECT {cols} FROM {st} EXCEPT ALL"
            " SELECT * FROM ({q}) q) a), (SELECT count(*) FROM (SELECT * FROM ({q}) q"
            " EXCEPT ALL SELECT {cols} FROM {st}) b)"
        ).format(cols=columns, st=st.qualified_name, q=query)
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def record_failure(dsn: str, st: StreamTable, error: BaseException) -> None:
    """Mark a stream table's failed refresh in the catalog (on a fresh connection)."""
    message = str(error).strip()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE pgtrickle.stream_tables SET status = 'error', last_error = %s,"
            " consecutive_errors = consecutive_errors + 1 WHERE id = %s",
            (message, st.id),
        )
        conn.execute(
            "INSERT INTO pgtrickle.refresh_history (stream_table_id, action, status, started_at,"
            " finished_at, error) VALUES (%s, %s, 'error', now(), now(), %s)",
            (st.id, st.effective_refresh_mode, message),
        )


def _staging_query(
    source: CapturedSource, window: sql.Composable, columns_read: list[str] | None
) -> sql.Composed:
    """Buffer rows as weighted rows: an insert +1 new, a delete -1 old, an update both.

    An UPDATE that changed no column the stream table reads is left out.
    """
    n = len(source.columns)
    names = buffer_columns(n)
    old, new = names[:n], names[n:]
    values = sql.SQL("(-1, {}), (1, {})").format(
        sql.SQL(", ").join(sql.SQL("b.{}").format(sql.Identifier(c)) for c in old),
        sql.SQL(", ").join(sql.SQL("b.{}").format(sql.Identifier(c)) for c in new),
    )
    read = [i for i, c in enumerate(source.columns) if columns_read is None or c in columns_read]
    changed = (
        sql.SQL(" OR ").join(
            sql.SQL("b.{} IS DISTINCT FROM b.{}").format(
                sql.Identifier(old[i]), sql.Identifier(new[i])
            )
            for i in read
        )
        if read
        else sql.SQL("false")
    )
    value_names = sql.SQL(", ").join(sql.Identifier(f"c{i}") for i in range(n))
    return sql.SQL(
        "SELECT v.* FROM {buffer} b CROSS JOIN LATERAL (VALUES {values}) AS v(w, {names})"
        " WHERE {window} AND CASE b.action WHEN 'I' THEN v.w = 1 WHEN 'D' THEN v.w = -1"
        " ELSE ({changed}) END"
    ).format(buffer=source.buffer, values=values, names=value_names, window=window, changed=changed)


def _as_source_table(source: CapturedSource) -> SourceTable:
    return SourceTable(oid=source.oid, schema=source.schema, name=source.name, columns=())


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0
