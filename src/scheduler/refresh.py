"""One refresh of one stream table: the snapshot-aligned protocol of DESIGN.md.

1. A session advisory lock keeps a second refresh of the same stream table out; it is taken
   before the transaction, so before the snapshot.
2. ``REPEATABLE READ``. Its first statement locks the sources (ACCESS SHARE, before the
   snapshot: TRUNCATE is not MVCC-safe, and a snapshot taken before a TRUNCATE that commits
   before the tables are read sees them empty), then the next one reads the snapshot S, the
   WAL insert position L and the stream table's catalog row (its frontier, and its revision:
   a declaration changed since the caller read it is reloaded here, at S).
3. Wait until the reader has buffered everything decoded through L (nudging the walsender with
   a transactional logical message when it lags).
4. Stage the buffered changes of transactions visible in S and not in the stored frontier F
   into the session's temp tables. A second autocommit connection sees them all and counts
   them; when the reader had committed them before S (the reader's position S sees is past
   the newest of them), the refresh transaction stages them itself, else they are relayed
   from the second connection (COPY out, COPY in).
5. Run the compiled delta against the staged changes and the base tables at S, MERGE it into
   the storage table, store S as the new frontier, commit.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

import psycopg
import structlog
from psycopg import sql

from dvm.plan import ApplyStrategy, RefreshMode
from dvm.relevance import partner_queries
from dvm.zset import ROW_ID
from scheduler.errors import ReaderBehind, RefreshMismatch, UpstreamSchemaChanged
from scheduler.history import Measured, RefreshAction, RefreshResult, measured, record_refresh
from scheduler.partner_keys import PartnerKeys
from scheduler.populate import lock_before_snapshot, query_failed, recompute
from scheduler.sessions import pin_storage_settings
from scheduler.variants import ApplyStatement, ApplyStatements
from walstream.buffers import (
    CapturedSource,
    Staging,
    analyze_staging,
    copy_into_staging,
    create_staging_table,
    insert_into_staging,
    load_sources,
    reduce_staging,
    staging_query,
    visible_window,
    window_query,
)
from walstream.capture import SLOT_NAME
from walstream.catalog import StreamTable, StreamTableStatus, find_stream_table
from walstream.dsn import connect
from walstream.errors import NotFound
from walstream.locks import refresh_lock
from walstream.replication import format_lsn, parse_lsn

__all__ = [
    "RefreshAction",
    "RefreshResult",
    "Refresher",
    "differences",
    "settled_lsn",
    "wal_segment_size",
]

log = structlog.get_logger("pgtrickle.refresh")

XLOG_BLCKSZ = 8192
SHORT_PAGE_HEADER = 24
LONG_PAGE_HEADER = 40
NUDGE_AFTER = 0.005
WAIT_TIMEOUT = 60.0

# Errors of the server that are not the query's fault: the caller retries them.
TRANSIENT_ERRORS: tuple[type[psycopg.Error], ...] = (
    psycopg.OperationalError,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.LockNotAvailable,
)


class PositionWaiter(Protocol):
    """Something that knows how far the change reader has buffered."""

    def wait_for(self, lsn: int, timeout: float) -> bool: ...


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


EXPLORE_AFTER = 10
"""auto: after this many refreshes that recomputed, a differential one when the estimate
says it is at most twice as slow (it may be wrong, and recomputing never corrects it)."""

APPLY_PLANNER_SETTINGS = (("enable_mergejoin", "off"), ("random_page_cost", "1.1"))
"""The planner's settings for a delta statement, which joins a few thousand changed rows to
whole tables. Merge joins sort whole tables that a nested loop over an index avoids (TPC-H
Q3 at 0.1 %: 216 -> 11 ms); and the default random_page_cost of 4 prices an index probe as a
disk read, so a thousand probes of ``customer`` look dearer than hashing all of it (Q18:
hashing 150,000 customers took 65 of its 388 ms), where the probed pages are cached."""

STAGING_WORK_MEM = "64MB"
"""The staging session's memory for netting the changed rows."""

STAGING_SETTINGS = (
    ("work_mem", STAGING_WORK_MEM),
    ("enable_sort", "off"),
    ("default_statistics_target", "10"),
)
"""The refresh transaction's settings while it stages. Netting hashes the rows (the buffers'
statistics say little of a window, and the planner sorts 6,000 lineitems by seven keys to
group them, a tenth slower). ANALYZE samples 300 rows per unit of the target: at 10, 3,000
rows tell a delta's row count and distinct values as well as 30,000 do, in a tenth of the
time (60,000 staged lineitems: 100 -> 12 ms)."""

REDUCE_BELOW = 0.02
"""The share of an unchanged partner's rows below which staging keeps only the changed rows
that can join one of them (see ``Refresher._reducing_partners``)."""

COPY_CHUNK = 64 * 1024
"""Bytes of staged rows sent to the refresh session per write."""


@contextlib.contextmanager
def planner_settings(
    conn: psycopg.Connection[Any], settings: Sequence[tuple[str, str]]
) -> Iterator[None]:
    """``settings`` for the statements run inside, as they were after them (set local to the
    refresh transaction: a failure rolls them back with it)."""
    names = [name for name, _ in settings]
    # one round trip each way: the settings as they were, then as wanted
    row = conn.execute(
        sql.SQL("SELECT {}, {}").format(
            sql.SQL(", ").join(sql.SQL("current_setting(%s)") for _ in settings),
            sql.SQL(", ").join(sql.SQL("set_config(%s, %s, true)") for _ in settings),
        ),
        [*names, *[part for pair in settings for part in pair]],
    ).fetchone()
    assert row is not None
    yield
    conn.execute(
        sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(sql.SQL("set_config(%s, %s, true)") for _ in settings)
        ),
        [part for name, before in zip(names, row, strict=False) for part in (name, str(before))],
    )


class Refresher:
    """Refreshes stream tables on its own pair of connections (one per worker)."""

    def __init__(
        self,
        dsn: str,
        waiter: PositionWaiter,
        *,
        check: bool | None = None,
        slot: str = SLOT_NAME,
    ) -> None:
        self.dsn = dsn
        self.waiter = waiter
        self.slot = slot
        self.check = check_mode_enabled() if check is None else check
        self.conn: psycopg.Connection[Any] = connect(
            dsn, autocommit=True, fallback_application_name="pgtrickle-refresh"
        )
        pin_storage_settings(self.conn)
        self.staging: psycopg.Connection[Any] = connect(
            dsn, autocommit=True, fallback_application_name="pgtrickle-staging"
        )
        self.staging.execute("SET synchronous_commit = on")
        # netting sorts every staged row: at the default 4 MB, the 60,000 lineitems of a
        # 1 % change at SF 1 sort on disk
        self.staging.execute(sql.SQL("SET work_mem = {}").format(sql.Literal(STAGING_WORK_MEM)))
        self.segment_size = wal_segment_size(self.conn)
        # the columns of each source's temp tables (indexed or not): a source captured
        # again may have others; and those this refresh's transaction created
        self._temp_tables: dict[tuple[int, bool], tuple[str, ...]] = {}
        self._created_here: list[tuple[int, bool]] = []
        # rows in each temp table (and columns read) when it was last analyzed, committed;
        # and what this refresh's transaction analyzed, which its rollback undoes
        self._analyzed: dict[tuple[int, bool, tuple[str, ...] | None], int] = {}
        self._analyzed_here: dict[tuple[int, bool, tuple[str, ...] | None], int] = {}
        self._statements = ApplyStatements(strict=self.check)
        # conditions over unchanged sources (their text): whether they are worth staging by
        self._reducing: dict[str, bool] = {}
        self.partner_keys = PartnerKeys()

    def close(self) -> None:
        self.conn.close()
        self.staging.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the protocol ---------------------------------------------------------------------

    def refresh(self, st: StreamTable, *, full: bool = False) -> RefreshResult:
        """Refresh ``st``, differentially unless it is FULL or ``full`` asks for it.

        Raises ``NotFound`` once the stream table is dropped, ``UpstreamSchemaChanged`` while
        it is suspended, ``QueryFailed`` when its query or delta fails on the server; the
        ``TRANSIENT_ERRORS`` of psycopg propagate as they are, for the caller to retry.
        """
        try:
            try:
                return self._refresh(st, full)
            except _ReadsOtherSources as changed:
                # its new declaration reads sources this transaction had not locked: again
                return self._refresh(changed.stream_table, full)
        except TRANSIENT_ERRORS:
            raise
        except psycopg.Error as error:
            raise query_failed(_what(st), error) from error

    def _refresh(self, st: StreamTable, full: bool) -> RefreshResult:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        sources = load_sources(self.conn)
        lock = refresh_lock(st.id)
        lock.lock(self.conn)
        try:
            self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with self.conn.transaction():
                t0 = time.perf_counter()
                locked = [sources[oid] for oid in st.source_oids if oid in sources]
                lock_before_snapshot(self.conn, [source.qualified_name for source in locked])
                row = self.conn.execute(
                    "SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text,"
                    " frontier::text, revision, status, (SELECT r.buffered_lsn::text"
                    " FROM pgtrickle.reader_state r WHERE r.slot_name = %s)"
                    " FROM pgtrickle.stream_tables WHERE id = %s",
                    (self.slot, st.id),
                ).fetchone()
                if row is None:
                    raise NotFound(
                        f'stream table "{st.display_name}" was dropped',
                        hint="`pgtrickle status` lists the stream tables there are",
                    )
                snapshot, lsn_text, frontier, revision, status, reader_at = row
                if revision != st.revision or status != st.status.value:
                    reloaded = find_stream_table(self.conn, st.id)
                    assert reloaded is not None  # the row was just read in this snapshot
                    if not set(reloaded.source_oids) <= {source.oid for source in locked}:
                        raise _ReadsOtherSources(reloaded)
                    st = reloaded
                if st.status is StreamTableStatus.SUSPENDED:
                    raise UpstreamSchemaChanged(
                        f'stream table "{st.display_name}" is suspended',
                        detail=(st.last_error or "").splitlines()[0] or None,
                        hint="`pgtrickle status` says why and what to do",
                    )
                lsn = parse_lsn(lsn_text)
                timings["snapshot_ms"] = _ms(t0)
                result = RefreshResult(RefreshAction.FULL, lsn, st, timings=timings)
                differential = st.effective_refresh_mode is RefreshMode.DIFFERENTIAL and not full
                if differential and frontier is not None:
                    seen = Seen(snapshot, frontier, parse_lsn(reader_at) if reader_at else None)
                    self._differential(st, sources, seen, result)
                else:
                    t0 = time.perf_counter()
                    result.rows_changed = recompute(
                        self.conn, st.qualified_name, st.plan, what=_what(st)
                    )
                    timings["apply_ms"] = _ms(t0)
                if self.check and result.action is not RefreshAction.NO_DATA:
                    self._check_equal(st)
                self._record(st, snapshot, result)
                if result.action is not RefreshAction.NO_DATA:
                    timings["total_ms"] = _ms(started)
                    record_refresh(self.conn, st.id, result)
                t0 = time.perf_counter()
            timings["commit_ms"] = _ms(t0)
            timings["total_ms"] = _ms(started)
            self._analyzed.update(self._analyzed_here)
            self.partner_keys.committed()
            return result
        except BaseException:
            self.partner_keys.rolled_back()
            # temp tables created in a transaction that rolled back are gone again
            for key in self._created_here:
                self._temp_tables.pop(key, None)
                self._forget_statistics(*key)
            raise
        finally:
            self._analyzed_here.clear()
            self._created_here.clear()
            self.conn.isolation_level = None
            if not self.conn.closed and not self.conn.broken:
                lock.unlock(self.conn)

    def _differential(
        self,
        st: StreamTable,
        sources: dict[int, CapturedSource],
        seen: Seen,
        result: RefreshResult,
    ) -> None:
        timings = result.timings
        snapshot, frontier = seen.snapshot, seen.frontier
        t0 = time.perf_counter()
        costs = self._auto_costs(st)
        # auto decides before staging: rows staged only to be recomputed are a cost for
        # nothing (600,000 lineitems: 4 s); and it stops counting them where applying would
        # be dearer whatever the rest
        cap = None if costs is None else _rows_beyond(costs)
        # the rows buffered so far are some of the window's: when they already reach the
        # cap, recomputing need not wait for the reader to buffer the rest; and when the
        # reader had buffered them all before they were counted, the count is the window's
        target = settled_lsn(result.frontier_lsn, self.segment_size)
        buffered = cap is not None and self.waiter.wait_for(target, 0)
        early = None if cap is None else self._window(st, sources, snapshot, frontier, cap)
        timings["count_ms"] = _ms(t0)
        t0 = time.perf_counter()
        if early is None or not early.capped:
            self._wait_buffered(result.frontier_lsn)
        timings["wait_ms"] = _ms(t0)
        t0 = time.perf_counter()
        window = (
            early
            if early is not None and (early.capped or buffered)
            else self._window(st, sources, snapshot, frontier, cap)
        )
        truncated, expected = window.truncated, window.rows
        result.window_rows = expected
        reason = (
            _auto_reason(costs, expected, window.capped)
            if costs is not None and expected and (window.capped or not truncated)
            else None
        )
        if truncated or reason is not None:
            timings["stage_ms"] = _ms(t0)
            if reason is not None:
                result.reason = reason
                result.delta_rows = expected
                log.info(
                    "recomputing instead of applying", stream_table=st.display_name, reason=reason
                )
            t0 = time.perf_counter()
            result.rows_changed = recompute(self.conn, st.qualified_name, st.plan, what=_what(st))
            timings["apply_ms"] = _ms(t0)
            return
        # compiled for the sources with changes before they are staged: the statement says
        # which temp tables it reads them from
        started = time.perf_counter()
        statement = self._statements.statement(st, frozenset(window.pending))
        timings["compile_ms"] = _ms(started)
        result.compiled_for = frozenset(window.pending) if statement.specialized else None
        self._ensure_temp_tables(st, sources, statement)
        staged = self._stage(st, sources, window, statement, seen, timings)
        # without compiling the delta for the sources that changed: once per session and
        # set of sources, so not a cost of the refresh (auto weighs stage_ms and apply_ms
        # per changed row, and a first refresh that compiled for 300 ms made it recompute
        # from then on)
        timings["stage_ms"] = _ms(t0) - timings["compile_ms"]
        t0 = time.perf_counter()
        if staged and not self._guard_holds(st):
            result.reason = _TOPK_MISSED
            log.warning(
                "recomputing the first rows", stream_table=st.display_name, reason=result.reason
            )
            result.delta_rows = staged
            result.rows_changed = recompute(self.conn, st.qualified_name, st.plan, what=_what(st))
        elif staged:
            result.delta_rows = staged
            applied = self._apply_delta(st, statement)
            if applied is None:
                result.reason = _TOPK_MISSED
                log.warning(
                    "recomputing the first rows",
                    stream_table=st.display_name,
                    reason=result.reason,
                )
                result.rows_changed = recompute(
                    self.conn, st.qualified_name, st.plan, what=_what(st)
                )
            else:
                result.action = RefreshAction.DIFFERENTIAL
                result.rows_changed = applied
        else:
            result.action = RefreshAction.NO_DATA
        timings["apply_ms"] = _ms(t0)

    def _window(
        self,
        st: StreamTable,
        sources: dict[int, CapturedSource],
        snapshot: str,
        frontier: str,
        cap: int | None,
    ) -> Window:
        """What this refresh's changes are, by one scan of each buffer on the staging session
        (which sees them all), in one statement; with ``cap``, stopping once that many rows
        of a source are counted (then there are at least ``cap``)."""
        window = self.staging_window(snapshot, frontier)
        counted = [sources[oid] for oid in st.source_oids if oid in sources]
        truncated, total = False, 0
        pending: dict[int, int] = {}
        newest: dict[int, int] = {}
        if counted:
            query = sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {}::integer, w.* FROM ({}) w").format(
                    sql.Literal(index), window_query(source, window, cap)
                )
                for index, source in enumerate(counted)
            )
            for index, flag, rows, buffered, lsn in sorted(self.staging.execute(query).fetchall()):
                truncated = truncated or bool(flag)
                total += int(buffered)
                if rows:
                    pending[counted[index].oid] = int(rows)
                    newest[counted[index].oid] = parse_lsn(lsn)
        capped = cap is not None and total >= cap
        return Window(truncated, pending, capped, newest)

    def _auto_costs(self, st: StreamTable) -> Measured | None:
        """For ``auto``, the stream table's measured refresh times, once they can decide:
        one applied refresh is enough to act on (waiting for more makes a table whose
        differential refresh is ten times slower pay for it again and again)."""
        if st.refresh_mode is not RefreshMode.AUTO:
            return None
        costs = measured(self.conn, st.id)
        if costs.full_ms is None or costs.samples == 0:
            return None
        return costs

    def _guard_holds(self, st: StreamTable) -> bool:
        """Whether the plan's delta is valid for this refresh (a plan without a guard: yes)."""
        if st.plan.guard_query is None:
            return True
        row = self.conn.execute(st.plan.guard_query.encode()).fetchone()
        return bool(row and row[0])

    def _apply_delta(self, st: StreamTable, statement: ApplyStatement) -> int | None:
        """Rows changed; None when the statement's own guard failed and it changed nothing."""
        # Prepared from the first refresh (psycopg would from the fifth): the statement has
        # no parameters, so the server plans it once and keeps the plan until a temp table
        # it reads is analyzed again, which ``_analyze`` does when the delta's size moved by
        # more than 2x. Parsing and planning the statement is a third of a small refresh's
        # apply (Q10 at 0.1 %: 58 -> 38 ms; Q18 264 -> 228 ms).
        with planner_settings(self.conn, APPLY_PLANNER_SETTINGS):
            cur = self.conn.execute(statement.sql.encode(), prepare=True)
        if st.plan.kept is not None:
            # the delta went into the kept table: the stream table becomes its first rows
            row = self.conn.execute(st.plan.kept.top_sql.encode(), prepare=True).fetchone()
            return int(row[0]) + int(row[1]) if row is not None else 0
        if st.plan.apply_strategy is ApplyStrategy.BAG:
            # (deleted, inserted), and for a TopK whether its guard held
            row = cur.fetchone()
            if row is None:
                return 0
            if len(row) > 2 and not row[2]:
                return None
            return int(row[0]) + int(row[1])
        return max(cur.rowcount, 0)

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
        raise ReaderBehind(
            "the change reader did not catch up with the refresh snapshot",
            detail=f"waited {WAIT_TIMEOUT:.0f} s for WAL position {format_lsn(target)}",
            hint="is `pgtrickle run` running, and can it connect to the database?",
        )

    def _ensure_temp_tables(
        self, st: StreamTable, sources: dict[int, CapturedSource], statement: ApplyStatement
    ) -> None:
        """The temp tables ``statement`` reads the staged deltas of ``st``'s sources from, in
        the layout of those sources (created once per session, unless a rollback undoes it)."""
        for oid in st.source_oids:
            source = sources.get(oid)
            indexed = statement.reads_indexed(oid)
            if source is None or self._temp_tables.get((oid, indexed)) == source.columns:
                continue
            key = _key(st, oid) if indexed else ()
            create_staging_table(self.conn, source, replace=True, key=key, indexed=indexed)
            self._temp_tables[(oid, indexed)] = source.columns
            self._created_here.append((oid, indexed))
            self._forget_statistics(oid, indexed)

    def _stage(
        self,
        st: StreamTable,
        sources: dict[int, CapturedSource],
        window: Window,
        statement: ApplyStatement,
        seen: Seen,
        timings: dict[str, float],
    ) -> int:
        """Copy this refresh's changes (no TRUNCATE among them) into the temp tables that
        ``statement`` reads; the rows staged. ``window``: what the staging session counted
        (the sources without changes there stage nothing, and their temp tables are empty
        since the last commit). ``timings`` gets the parts: ``stage_copy_ms`` and
        ``stage_analyze_ms``."""
        total = 0
        timings["stage_copy_ms"] = timings["stage_analyze_ms"] = 0.0
        where = self.staging_window(seen.snapshot, seen.frontier)
        self.partner_keys.begin(st.id, seen.frontier, seen.snapshot, frozenset(window.pending))
        by_name = {(s.schema, s.name): s.oid for s in sources.values()}
        with planner_settings(self.conn, STAGING_SETTINGS):
            for oid in st.source_oids:
                source = sources.get(oid)
                if source is None or oid not in window.pending:
                    continue
                read = st.plan.columns_read.get(oid)
                table = Staging(source, statement.reads_indexed(oid), read)
                relevant = st.plan.staging_filters.get(oid)
                t0 = time.perf_counter()
                # conditions over the unchanged sources hold at S, where the refresh
                # transaction reads the partners
                reduced = statement.reduced.get(oid)
                if reduced is not None and self._reducing_partners(reduced):
                    # the partners' values kept from an earlier refresh, or computed now
                    reduced = self.partner_keys.condition(self.conn, reduced, by_name)
                else:
                    reduced = None
                if self._sees_all(seen, window, oid):
                    query = staging_query(source, where, table.read, relevant, reduced)
                    copied = self._stage_here(table, query)
                else:
                    copied = self._relay(table, staging_query(source, where, table.read, relevant))
                    if reduced is not None:
                        copied -= self._reduce(table, reduced)
                total += copied
                timings["stage_copy_ms"] += _ms(t0)
                t0 = time.perf_counter()
                self._analyze(table, copied)
                timings["stage_analyze_ms"] += _ms(t0)
        return total

    def _sees_all(self, seen: Seen, window: Window, oid: int) -> bool:
        """Whether the refresh transaction sees all of source ``oid``'s window itself: the
        reader commits each batch of buffer rows with the position it reached, so when the
        position S sees is past the window's newest change, the batches holding the window
        were committed before S. A capped count saw only some of the window, so not its
        newest change: relayed.

        (A buffered change is deleted only by pruning, once every stream table reading it
        has applied it, so never one of a window's.)"""
        if window.capped or seen.reader_at is None:
            return False
        return window.newest[oid] <= seen.reader_at

    def _reducing_partners(self, condition: str) -> bool:
        """Whether a condition over unchanged sources (``dvm.relevance.reduced_rows``) keeps
        few enough of their rows to pay for itself. The delta statement probes the same
        partners for the rows it keeps, so a condition keeping most of them only adds a test
        to the staging, where one keeping a thousandth (TPC-H Q17's parts of a brand in a
        container) spares the statement almost all of its work (apply 55 -> 9 ms). Decided
        from the planner's estimates, once per condition and session."""
        known = self._reducing.get(condition)
        if known is not None:
            return known
        worth = True
        for query, (schema, name) in partner_queries(condition):
            plan = self.conn.execute(
                sql.SQL("EXPLAIN (FORMAT JSON) {}").format(sql.SQL(query))
            ).fetchone()
            row = self.conn.execute(
                "SELECT greatest(reltuples, 1) FROM pg_class"
                " WHERE oid = to_regclass(format('%%I.%%I', %s::text, %s::text))",
                (schema, name),
            ).fetchone()
            estimate = float(plan[0][0]["Plan"]["Plan Rows"]) if plan else 0.0
            if row is None or estimate > REDUCE_BELOW * float(row[0]):
                worth = False
        self._reducing[condition] = worth
        return worth

    def _reduce(self, table: Staging, condition: str) -> int:
        """Delete the relayed rows that fail ``condition`` (at S); how many."""
        statement = reduce_staging(table, condition)
        if statement is None:
            return 0
        return max(self.conn.execute(statement).rowcount, 0)

    def _stage_here(self, table: Staging, query: sql.Composable) -> int:
        """Stage by one statement of the refresh transaction (6,000 lineitems: 37 -> 23 ms,
        the relay's rows crossing the client twice)."""
        cur = self.conn.execute(insert_into_staging(table, query))
        return max(cur.rowcount, 0)

    def _relay(self, table: Staging, query: sql.Composable) -> int:
        """Stage from the staging session, which sees changes the reader committed after S."""
        with (
            self.staging.cursor().copy(
                sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(query)
            ) as out,
            self.conn.cursor() as cur,
        ):
            with cur.copy(copy_into_staging(table)) as into:
                # COPY TO hands out a row per block and each write is a round of the
                # socket: sending ~64 KB at a time (6,000 lineitems: 73 -> 60 ms)
                chunk = bytearray()
                for block in out:
                    chunk += block
                    if len(chunk) >= COPY_CHUNK:
                        into.write(chunk)
                        chunk = bytearray()
                if chunk:
                    into.write(chunk)
            return max(cur.rowcount, 0)

    def _analyze(self, table: Staging, rows: int) -> None:
        """Statistics of the staged columns, when those the session has are of a delta of
        another size.

        The planner's guess for a table never analyzed is a few rows whatever is staged. Once
        analyzed, it scales the row count by the table's pages and keeps the distinct
        values as fractions, and the statistics outlive the rows deleted at commit: a delta
        about as large as the one analyzed is planned as well without (a lineitem delta's
        9 columns: 9 ms a refresh)."""
        key = (table.source.oid, table.indexed, table.read)
        last = self._analyzed_here.get(key, self._analyzed.get(key))
        if last is not None and last // 2 <= rows <= 2 * last:
            return
        self.conn.execute(analyze_staging(table))
        self._analyzed_here[key] = rows

    def _forget_statistics(self, oid: int, indexed: bool) -> None:
        for key in [k for k in self._analyzed if k[:2] == (oid, indexed)]:
            del self._analyzed[key]

    def staging_window(self, snapshot: str, frontier: str) -> sql.Composable:
        """Which buffer rows this refresh applies (a test overrides it to prove the check)."""
        return visible_window(snapshot, frontier)

    def _check_equal(self, st: StreamTable) -> None:
        checked = (
            ("differs from its query", differences(self.conn, st)),
            ("its kept aggregate differs from the query", kept_differences(self.conn, st)),
        )
        for what, (extra, missing) in checked:
            if extra or missing:
                raise RefreshMismatch(
                    f'stream table "{st.display_name}": {what} after a refresh',
                    detail=f"{extra} extra rows, {missing} missing rows",
                    hint="this is a bug in pgtrickle: please report it with the stream table's"
                    " query",
                )

    def _record(self, st: StreamTable, snapshot: str, result: RefreshResult) -> None:
        self.conn.execute(
            "UPDATE pgtrickle.stream_tables SET frontier = %s::pg_snapshot,"
            " frontier_lsn = %s::pg_lsn, last_refresh_at = clock_timestamp(),"
            " data_timestamp = now(), status = %s, last_error = NULL,"
            " consecutive_errors = 0 WHERE id = %s",
            (snapshot, format_lsn(result.frontier_lsn), StreamTableStatus.ACTIVE.value, st.id),
        )


class _ReadsOtherSources(Exception):
    def __init__(self, stream_table: StreamTable) -> None:
        super().__init__(stream_table.display_name)
        self.stream_table = stream_table


def differences(conn: psycopg.Connection[Any], st: StreamTable) -> tuple[int, int]:
    """(rows only in the stream table, rows only in its query), compared as multisets.

    Values are compared as text: stricter than equality (1.5 and 1.50 differ, as they do on
    the screen), and it works for json, xml and point, which have no equality operator.
    """
    # the compiler's normalized text
    return _multiset_differences(conn, st.qualified_name, st.plan.user_columns, st.plan.query)


def kept_differences(conn: psycopg.Connection[Any], st: StreamTable) -> tuple[int, int]:
    """As ``differences``, for the kept table of a TopK over an aggregate (row ids and
    columns; auxiliary sums may show another scale than a recomputation, and what they
    hold shows in the columns) against its storage query; (0, 0) without one."""
    kept = st.plan.kept
    if kept is None:
        return 0, 0
    table = sql.Identifier(*kept.table)
    return _multiset_differences(conn, table, (ROW_ID, *kept.columns), kept.storage_query)


def _multiset_differences(
    conn: psycopg.Connection[Any], table: sql.Composable, names: Sequence[str], query: str
) -> tuple[int, int]:
    """(rows only in ``table``, rows only in ``query``), its columns ``names``, as text."""
    as_text = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in names)
    outputs = sql.SQL(", ").join(sql.Identifier(c) for c in names)
    # rendered by the compiler from the parsed query, never the text the user wrote
    computed = sql.SQL(query)
    row = conn.execute(
        sql.SQL(
            "SELECT (SELECT count(*) FROM (SELECT {t} FROM {st} EXCEPT ALL"
            " SELECT {t} FROM ({q}) AS q({o})) a),"
            " (SELECT count(*) FROM (SELECT {t} FROM ({q}) AS q({o}) EXCEPT ALL"
            " SELECT {t} FROM {st}) b)"
        ).format(t=as_text, st=table, q=computed, o=outputs)
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


_TOPK_MISSED = "TopK: a row that was not among the stored first rows came in"


def _what(st: StreamTable) -> str:
    return f'stream table "{st.display_name}"'


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0


def _key(st: StreamTable, oid: int) -> tuple[str, ...]:
    """The primary key of source ``oid`` as ``st``'s plan knows it (none: not indexed)."""
    facts = st.plan.catalog
    if facts is None:
        return ()
    return next((t.primary_key for t in facts.tables.values() if t.oid == oid), ())


@dataclass(frozen=True)
class Seen:
    """What the refresh transaction read with its snapshot."""

    snapshot: str
    frontier: str
    """The stream table's frontier F (a snapshot, text)."""
    reader_at: int | None
    """How far the reader had buffered, as committed before the snapshot (None: no
    position stored for the slot)."""


@dataclass(frozen=True)
class Window:
    """What a refresh's window of buffered changes holds, as counted before staging."""

    truncated: bool
    """A TRUNCATE of a source is among them (of the rows counted, when ``capped``)."""
    pending: dict[int, int]
    """For each source with changes, about as many rows as staging them gives."""
    capped: bool
    """Counting stopped at the cap: there are at least ``rows``."""
    newest: dict[int, int]
    """For each source with changes, the newest commit end (LSN) among the rows counted
    (all of them unless ``capped``)."""

    @property
    def rows(self) -> int:
        return sum(self.pending.values())


def _full_above(costs: Measured) -> float:
    """The differential estimate (ms) above which ``auto`` recomputes."""
    assert costs.full_ms is not None  # ``_auto_costs`` gives none without
    if costs.recomputed_since >= EXPLORE_AFTER:
        # recomputing adds no differential sample: a close call is measured again now and
        # then, or one bad estimate would decide for good
        return 2 * costs.full_ms
    return costs.full_ms


def _rows_beyond(costs: Measured) -> int | None:
    return costs.rows_beyond(_full_above(costs))


def _auto_reason(costs: Measured, rows: int, capped: bool) -> str | None:
    """Why recomputing is cheaper than applying ``rows`` changed rows (at least that many
    when ``capped``); None to apply them."""
    expected = costs.differential_ms(rows)
    if expected <= _full_above(costs):
        return None
    about = "at least" if capped else "about"
    return (
        f"auto: a differential refresh of {about} {rows} changed rows would take {about}"
        f" {expected:.0f} ms, recomputing about {costs.full_ms or 0:.0f} ms"
    )
