"""Single refreshes: TRUNCATE, updates of columns nobody reads, pruning of applied changes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack

import psycopg
import pytest
from psycopg import sql

from scheduler.refresh import PositionWaiter, RefreshAction, Refresher, planner_settings
from tests.fixtures.cluster import Database
from tests.fixtures.streams import (
    declared_refresher,
    declared_workload,
    mismatched,
    running_reader,
)
from walstream.buffers import Staging, load_sources, prune
from walstream.catalog import get_stream_table
from walstream.locks import APPLY_LOCK
from walstream.reader import ChangeReader
from walstream.replication import parse_lsn

YAML = """
stream_tables:
  - name: paid
    query: SELECT id, amount FROM orders WHERE status = 'paid'
    refresh_mode: differential
"""


@pytest.fixture
def refresher(db: Database) -> Iterator[Refresher]:
    with declared_refresher(db.dsn, YAML) as refresher:
        yield refresher


def refresh(refresher: Refresher) -> RefreshAction:
    return refresher.refresh(get_stream_table(refresher.staging, "paid")).action


def buffered_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        (source,) = load_sources(conn).values()
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(source.buffer)).fetchone()
    assert row is not None
    return int(row[0])


def test_truncate_of_a_source_reinitializes_the_stream_table(
    refresher: Refresher, db: Database
) -> None:
    with psycopg.connect(db.dsn) as conn:
        conn.execute("TRUNCATE orders")
        conn.execute("INSERT INTO orders VALUES (1, 1, 10, 'paid')")
    assert refresh(refresher) == RefreshAction.FULL
    assert mismatched(db.dsn) == {}


def test_an_update_of_columns_the_query_does_not_read_is_no_work(
    refresher: Refresher, db: Database
) -> None:
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET customer_id = customer_id + 1")
    assert refresh(refresher) == RefreshAction.NO_DATA
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET amount = amount + 1 WHERE status = 'paid'")
    assert refresh(refresher) == RefreshAction.DIFFERENTIAL
    assert mismatched(db.dsn) == {}


def test_applied_changes_are_pruned_and_pending_ones_kept(
    refresher: Refresher, db: Database
) -> None:
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 10")
    refresh(refresher)
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET status = 'new' WHERE id <= 5")
        conn.execute("SELECT pg_logical_emit_message(true, 't', '')")
    # buffered, but not applied yet: pruning must keep it for the next refresh
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        lsn = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert lsn is not None
        assert refresher.waiter.wait_for(parse_lsn(lsn[0]), 30)
        prune(conn)
    assert buffered_rows(db.dsn) == 5
    refresh(refresher)
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        prune(conn)
    assert buffered_rows(db.dsn) == 0
    assert mismatched(db.dsn) == {}


def test_nothing_is_pruned_while_an_apply_may_be_installing_an_older_frontier(
    refresher: Refresher, db: Database
) -> None:
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 10")
    refresh(refresher)
    with psycopg.connect(db.dsn, autocommit=True) as apply_session:
        APPLY_LOCK.lock(apply_session)
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            assert prune(conn) == 0
        assert buffered_rows(db.dsn) == 10
        APPLY_LOCK.unlock(apply_session)
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        assert prune(conn) == 10
    assert buffered_rows(db.dsn) == 0


class TruncatesWhileRefreshing(Refresher):
    """Starts a TRUNCATE of the source once the refresh has its snapshot, and gives it time."""

    def __init__(self, dsn: str, waiter: PositionWaiter, *, check: bool) -> None:
        super().__init__(dsn, waiter, check=check)
        self.truncates: list[threading.Thread] = []

    def staging_window(self, snapshot: str, frontier: str) -> sql.Composable:
        def truncate() -> None:
            with psycopg.connect(self.dsn) as conn:
                conn.execute("TRUNCATE orders")
                conn.execute("INSERT INTO orders VALUES (1, 1, 10, 'paid')")

        thread = threading.Thread(target=truncate)
        thread.start()
        self.truncates.append(thread)
        thread.join(timeout=0.5)  # without the refresh's lock it commits now
        return super().staging_window(snapshot, frontier)


def test_a_truncate_racing_a_refresh_waits_for_it_instead_of_emptying_its_snapshot(
    db: Database, refresher: Refresher
) -> None:
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 10")
    racing = TruncatesWhileRefreshing(db.dsn, refresher.waiter, check=True)
    try:
        racing.refresh(get_stream_table(racing.staging, "paid"))
        for thread in racing.truncates:
            thread.join()
    finally:
        racing.close()
    assert refresh(refresher) == RefreshAction.FULL
    assert mismatched(db.dsn) == {}


def test_a_delta_statement_plans_with_its_settings_and_leaves_the_sessions_own(
    db: Database,
) -> None:
    with psycopg.connect(db.dsn) as conn:
        conn.execute("SET random_page_cost = 2")
        conn.execute("SET enable_mergejoin = off")
        shown = "SELECT current_setting('enable_mergejoin'), current_setting('random_page_cost')"
        with planner_settings(conn, (("enable_mergejoin", "on"), ("random_page_cost", "1.1"))):
            assert conn.execute(shown).fetchone() == ("on", "1.1")
        assert conn.execute(shown).fetchone() == ("off", "2")


class CountsStaging(Refresher):
    """Counts how the changes of each source reached the temp tables."""

    def __init__(self, dsn: str, waiter: PositionWaiter) -> None:
        super().__init__(dsn, waiter, check=True)
        self.in_transaction = self.relayed = 0

    def _stage_here(self, table: Staging, query: sql.Composable) -> int:
        self.in_transaction += 1
        return super()._stage_here(table, query)

    def _relay(self, table: Staging, query: sql.Composable) -> int:
        self.relayed += 1
        return super()._relay(table, query)


class StartsReaderLate:
    """A change reader that starts when a refresh first waits for it: the changes committed
    before then are buffered after that refresh's snapshot."""

    def __init__(self, dsn: str, stack: ExitStack) -> None:
        self.dsn = dsn
        self.stack = stack
        self.reader: ChangeReader | None = None

    def wait_for(self, lsn: int, timeout: float) -> bool:
        if self.reader is None:
            self.reader = self.stack.enter_context(running_reader(self.dsn))
        return self.reader.wait_for(lsn, timeout)


def test_changes_buffered_after_the_snapshot_are_relayed_from_the_staging_session(
    db: Database,
) -> None:
    declared_workload(db.dsn, YAML)
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 10")
        conn.execute("DELETE FROM orders WHERE id BETWEEN 11 AND 20 AND status = 'paid'")
    with ExitStack() as stack:
        refresher = stack.enter_context(CountsStaging(db.dsn, StartsReaderLate(db.dsn, stack)))
        assert refresh(refresher) == RefreshAction.DIFFERENTIAL
        assert (refresher.relayed, refresher.in_transaction) == (1, 0)
    assert mismatched(db.dsn) == {}


def test_changes_buffered_before_the_snapshot_are_staged_by_the_refresh_itself(
    db: Database,
) -> None:
    declared_workload(db.dsn, YAML)
    with running_reader(db.dsn) as reader, CountsStaging(db.dsn, reader) as refresher:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 10")
            conn.execute("SELECT pg_logical_emit_message(true, 't', '')")
            lsn = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
            assert lsn is not None
        assert reader.wait_for(parse_lsn(lsn[0]), 30)
        assert refresh(refresher) == RefreshAction.DIFFERENTIAL
        assert (refresher.relayed, refresher.in_transaction) == (0, 1)
    assert mismatched(db.dsn) == {}
