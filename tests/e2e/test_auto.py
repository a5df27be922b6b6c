"""``auto`` decides per refresh: it recomputes when its own refresh times say that is cheaper
than applying the changes staged, records why, and applies them otherwise."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from scheduler.refresh import RefreshAction, Refresher
from tests.fixtures.cluster import Database
from tests.fixtures.streams import declared_refresher, mismatched
from walstream.catalog import get_stream_table

YAML = """
stream_tables:
  - name: paid
    query: SELECT id, amount FROM orders WHERE status = 'paid'
    refresh_mode: auto
"""


@pytest.fixture
def refresher(db: Database) -> Iterator[Refresher]:
    with declared_refresher(db.dsn, YAML) as refresher:
        yield refresher


def measured_history(
    dsn: str, full_ms: float, per_row_ms: float, sizes: tuple[int, ...] = (10, 20, 40)
) -> None:
    """A history that says: a full computation takes ``full_ms``, applying n changed rows
    ``per_row_ms`` each (what the decision reads, made up so the test does not time)."""
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM pgtrickle.refresh_history")
        conn.execute(
            "INSERT INTO pgtrickle.refresh_history (stream_table_id, action, status,"
            " started_at, finished_at, delta_rows, apply_ms)"
            " SELECT id, 'initialize', 'ok', now(), now(), 0, %s FROM pgtrickle.stream_tables",
            (full_ms,),
        )
        for rows in sizes:
            conn.execute(
                "INSERT INTO pgtrickle.refresh_history (stream_table_id, action, status,"
                " started_at, finished_at, delta_rows, apply_ms)"
                " SELECT id, 'differential', 'ok', now(), now(), %s, %s"
                " FROM pgtrickle.stream_tables",
                (rows, rows * per_row_ms),
            )


def last_reason(dsn: str) -> str | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT reason FROM pgtrickle.refresh_history ORDER BY id DESC LIMIT 1"
        ).fetchone()
    return row[0] if row else None


def test_many_changes_are_recomputed_when_that_is_measured_to_be_cheaper(
    refresher: Refresher, db: Database
) -> None:
    measured_history(db.dsn, full_ms=5.0, per_row_ms=1.0)
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET amount = amount + 1 WHERE status = 'paid'")
    result = refresher.refresh(get_stream_table(refresher.staging, "paid"))
    assert result.action is RefreshAction.FULL
    reason = last_reason(db.dsn)
    # 6 buffered rows already cost more than recomputing: the rest are not counted
    assert reason is not None and reason.startswith("auto: a differential refresh of at least")
    assert mismatched(db.dsn) == {}


def test_a_count_below_the_cap_is_reported_as_it_is(refresher: Refresher, db: Database) -> None:
    measured_history(db.dsn, full_ms=5.0, per_row_ms=1.0)
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET amount = amount + 1 WHERE id IN (1, 2, 3)")
    result = refresher.refresh(get_stream_table(refresher.staging, "paid"))
    assert result.action is RefreshAction.FULL
    # three updates stage about six rows (old and new values): 6 ms against 5
    assert last_reason(db.dsn) == (
        "auto: a differential refresh of about 6 changed rows would take about 6 ms,"
        " recomputing about 5 ms"
    )
    assert mismatched(db.dsn) == {}


def test_one_measured_differential_refresh_is_enough_to_decide(
    refresher: Refresher, db: Database
) -> None:
    measured_history(db.dsn, full_ms=5.0, per_row_ms=1.0, sizes=(10,))
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET amount = amount + 1 WHERE status = 'paid'")
    result = refresher.refresh(get_stream_table(refresher.staging, "paid"))
    assert result.action is RefreshAction.FULL
    assert mismatched(db.dsn) == {}


def test_few_changes_are_applied(refresher: Refresher, db: Database) -> None:
    measured_history(db.dsn, full_ms=5000.0, per_row_ms=1.0)
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET amount = amount + 1 WHERE id IN (1, 2, 3)")
    result = refresher.refresh(get_stream_table(refresher.staging, "paid"))
    assert result.action in (RefreshAction.DIFFERENTIAL, RefreshAction.NO_DATA)
    assert last_reason(dsn=db.dsn) is None
    assert mismatched(db.dsn) == {}


def recomputed(dsn: str, times: int) -> None:
    """``times`` refreshes that recomputed, after the history's differential ones."""
    with psycopg.connect(dsn) as conn:
        for _ in range(times):
            conn.execute(
                "INSERT INTO pgtrickle.refresh_history (stream_table_id, action, status,"
                " started_at, finished_at, delta_rows, apply_ms, reason)"
                " SELECT id, 'full', 'ok', now(), now(), 6, 5, 'auto: ...'"
                " FROM pgtrickle.stream_tables"
            )


@pytest.mark.parametrize(
    ("since", "expected"), [(0, RefreshAction.FULL), (10, RefreshAction.DIFFERENTIAL)]
)
def test_a_close_call_is_measured_again_after_ten_recomputations(
    refresher: Refresher, db: Database, since: int, expected: RefreshAction
) -> None:
    # one sample of 10 rows in 10 ms: 3 updated rows (6 staged) would take about 8 ms, a
    # recomputation 5 ms
    measured_history(db.dsn, full_ms=5.0, per_row_ms=1.0, sizes=(10,))
    recomputed(db.dsn, since)
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET amount = amount + 1 WHERE id IN (1, 2, 3)")
    result = refresher.refresh(get_stream_table(refresher.staging, "paid"))
    assert result.action is expected
    assert mismatched(db.dsn) == {}


def test_costs_are_measured_per_row_of_the_window_so_filtered_changes_do_not_mislead_it(
    refresher: Refresher, db: Database
) -> None:
    """The refresh counts the window's rows before it stages the ones that can matter
    (``status = 'paid'`` here): its measured cost is per row counted, as its decision."""
    st = get_stream_table(refresher.staging, "paid")
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET amount = amount + 1 WHERE status <> 'paid'")
        conn.execute(
            "UPDATE orders SET amount = amount + 1"
            " WHERE id = (SELECT min(id) FROM orders WHERE status = 'paid')"
        )
    result = refresher.refresh(st)
    assert result.action is RefreshAction.DIFFERENTIAL
    assert result.window_rows is not None and result.window_rows > 2 * result.delta_rows
    with psycopg.connect(db.dsn) as conn:
        row = conn.execute(
            "SELECT window_rows, delta_rows FROM pgtrickle.refresh_history ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert row == (result.window_rows, result.delta_rows)
