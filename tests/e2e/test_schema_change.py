"""A source's schema changes: added columns are harmless; a dropped one suspends its readers."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from pgtrickle.declarations import parse_declarations
from pgtrickle.dev.workload import create_schema
from pgtrickle.reconcile import apply
from scheduler.errors import UpstreamSchemaChanged
from scheduler.progress import wait_caught_up
from tests.fixtures.cluster import Database
from tests.fixtures.streams import mismatched, running_daemon

YAML = """
stream_tables:
  - name: paid
    query: SELECT id, amount FROM orders WHERE status = 'paid'
    refresh_mode: differential
  - name: regions
    query: SELECT id, region FROM customers
    refresh_mode: differential
"""


def status_of(dsn: str, name: str) -> tuple[str, str | None]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT status, last_error FROM pgtrickle.stream_tables WHERE name = %s", (name,)
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_an_added_column_changes_nothing_and_a_dropped_one_suspends(db: Database) -> None:
    create_schema(db.dsn, customers=10, orders=100, events=10)
    apply(db.dsn, parse_declarations(YAML))
    with running_daemon(db.dsn):
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE orders ADD COLUMN note text")
            conn.execute("INSERT INTO orders VALUES (9001, 1, 5, 'paid', 'hello')")
        wait_caught_up(db.dsn, timeout=60)
        assert mismatched(db.dsn) == {}

        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE orders DROP COLUMN amount")
            conn.execute("INSERT INTO orders VALUES (9002, 1, 'paid', 'again')")
            conn.execute("UPDATE customers SET region = 'moon' WHERE id = 1")
        deadline = time.monotonic() + 30
        while status_of(db.dsn, "paid")[0] != "suspended" and time.monotonic() < deadline:
            time.sleep(0.05)
        status, error = status_of(db.dsn, "paid")
        assert status == "suspended"
        assert error is not None and "column amount no longer exists" in error
        assert "HINT: " in error
        with pytest.raises(UpstreamSchemaChanged) as caught:
            wait_caught_up(db.dsn, timeout=30)
        assert "paid" in caught.value.message
        # the service stays up: the other stream table keeps up
        deadline = time.monotonic() + 30
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute("SELECT region FROM regions WHERE id = 1").fetchone()
                if row == ("moon",):
                    break
                time.sleep(0.05)
        assert row == ("moon",)


@pytest.fixture
def suspended(db: Database) -> Iterator[Database]:
    """The stream table "paid" suspended (its source lost a column), the daemon running."""
    create_schema(db.dsn, customers=10, orders=100, events=10)
    apply(db.dsn, parse_declarations(YAML))
    with running_daemon(db.dsn):
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE orders DROP COLUMN amount")
            conn.execute("INSERT INTO orders VALUES (9002, 1, 'paid')")
        deadline = time.monotonic() + 30
        while status_of(db.dsn, "paid")[0] != "suspended" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status_of(db.dsn, "paid")[0] == "suspended"
        yield db


def assert_resumed(dsn: str) -> None:
    wait_caught_up(dsn, timeout=60)
    assert status_of(dsn, "paid") == ("active", None)
    assert mismatched(dsn) == {}


def test_restoring_the_column_and_applying_again_resumes_a_suspended_stream_table(
    suspended: Database,
) -> None:
    with psycopg.connect(suspended.dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE orders ADD COLUMN amount numeric(10, 2)")
    apply(suspended.dsn, parse_declarations(YAML))
    with psycopg.connect(suspended.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (9003, 1, 'paid', 7)")
        conn.execute("UPDATE orders SET amount = 3 WHERE status = 'paid'")
    assert_resumed(suspended.dsn)


def test_declaring_the_readers_of_a_changed_source_anew_captures_it_as_it_is_now(
    suspended: Database,
) -> None:
    regions = "stream_tables:\n  - name: regions" + YAML.split("  - name: regions")[1]
    apply(suspended.dsn, parse_declarations(regions), prune=True)
    new_paid = regions + (
        "  - name: paid\n    query: SELECT id, status FROM orders WHERE status = 'paid'\n"
        "    refresh_mode: differential\n"
    )
    apply(suspended.dsn, parse_declarations(new_paid))
    with psycopg.connect(suspended.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (9004, 1, 'paid')")
        conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 10")
    assert_resumed(suspended.dsn)
