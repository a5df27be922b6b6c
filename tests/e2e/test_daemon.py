"""The daemon picks up stream tables applied while it runs, and schedules refreshes."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from pgtrickle.declarations import parse_declarations
from pgtrickle.dev.workload import create_schema
from pgtrickle.reconcile import apply
from scheduler.progress import wait_caught_up
from tests.fixtures.cluster import Database
from tests.fixtures.streams import mismatched, running_daemon

YAML = """
stream_tables:
  - name: paid
    query: SELECT id, amount FROM orders WHERE status = 'paid'
    schedule: 200ms
    refresh_mode: differential
"""


def test_a_stream_table_applied_while_the_daemon_runs_is_maintained(db: Database) -> None:
    create_schema(db.dsn, customers=10, orders=100, events=10)
    with running_daemon(db.dsn):
        time.sleep(0.5)
        apply(db.dsn, parse_declarations(YAML))
        with psycopg.connect(db.dsn) as conn:
            conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 30")
            conn.execute("INSERT INTO orders VALUES (5000, 1, 10, 'paid')")
        wait_caught_up(db.dsn, timeout=60)
        assert mismatched(db.dsn) == {}


SCHEDULED = """
stream_tables:
  - name: every_300ms
    query: SELECT id, amount FROM orders WHERE status = 'paid'
    schedule: 300ms
    refresh_mode: differential
  - name: hourly
    query: SELECT id, amount FROM orders WHERE status = 'new'
    schedule: 1h
    refresh_mode: differential
"""


def refresh_times(conn: psycopg.Connection[Any]) -> dict[str, object]:
    rows = conn.execute("SELECT name, last_refresh_at FROM pgtrickle.stream_tables").fetchall()
    return {name: at for name, at in rows}


@pytest.mark.timing
def test_schedules_refresh_unchanged_stream_tables_as_often_as_they_say(db: Database) -> None:
    create_schema(db.dsn, customers=10, orders=100, events=10)
    apply(db.dsn, parse_declarations(SCHEDULED))
    seen: dict[str, set[object]] = {"every_300ms": set(), "hourly": set()}
    with psycopg.connect(db.dsn, autocommit=True) as conn, running_daemon(db.dsn):
        time.sleep(1.0)  # the daemon's first look refreshes both, whatever their schedule
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for name, at in refresh_times(conn).items():
                seen[name].add(at)
            time.sleep(0.02)
    assert len(seen["every_300ms"]) >= 4, "a 300 ms schedule refreshes about ten times in 3 s"
    assert len(seen["hourly"]) == 1, "an hourly schedule does not refresh within 3 s"
