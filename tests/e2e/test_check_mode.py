"""The harness can fail: a refresh whose deltas and base tables disagree is caught.

The correctness tests trust the check that every refresh makes in check mode (the stream
table equals its query at the refresh's snapshot). Here a refresher with the naive staging
window (every buffered change its frontier lacks, including transactions that committed after
its snapshot) runs against concurrent writers, and the check must catch it.
"""

from __future__ import annotations

import threading
import time

import pytest
from psycopg import sql

from pgtrickle.declarations import parse_declarations
from pgtrickle.dev.workload import Writer, create_schema
from pgtrickle.reconcile import apply
from scheduler.errors import RefreshMismatch
from scheduler.refresh import Refresher
from tests.fixtures.cluster import Database
from tests.fixtures.streams import running_reader
from walstream.catalog import get_stream_table

JOIN_AGGREGATE = """
stream_tables:
  - name: revenue_by_region
    query: >
      SELECT c.region, count(*) AS orders, sum(o.amount) AS revenue
      FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY c.region
    refresh_mode: differential
"""


class NaiveRefresher(Refresher):
    def staging_window(self, snapshot: str, frontier: str) -> sql.Composable:
        return sql.SQL("NOT pg_visible_in_snapshot(b.xid, {}::pg_snapshot)").format(
            sql.Literal(frontier)
        )


def refresh_until_mismatch(dsn: str, refresher_class: type[Refresher], seconds: float) -> int:
    """Refresh in a loop while writers run; the number of refreshes that failed the check."""
    stop = threading.Event()
    writers = [Writer(dsn, seed=seed, async_share=0.0) for seed in (3, 4)]
    threads = [threading.Thread(target=w.run, args=(stop,)) for w in writers]
    for thread in threads:
        thread.start()
    failures = 0
    try:
        with running_reader(dsn) as reader, refresher_class(dsn, reader, check=True) as refresher:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not failures:
                try:
                    refresher.refresh(get_stream_table(refresher.staging, "revenue_by_region"))
                except RefreshMismatch:
                    failures += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return failures


@pytest.fixture
def shop(db: Database) -> Database:
    create_schema(db.dsn)
    apply(db.dsn, parse_declarations(JOIN_AGGREGATE))
    return db


def test_check_mode_catches_deltas_staged_past_the_refresh_snapshot(shop: Database) -> None:
    assert refresh_until_mismatch(shop.dsn, NaiveRefresher, seconds=20) > 0


def test_the_real_staging_window_passes_the_same_check(shop: Database) -> None:
    assert refresh_until_mismatch(shop.dsn, Refresher, seconds=5) == 0
