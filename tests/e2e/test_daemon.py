"""The daemon picks up stream tables applied while it runs, and schedules refreshes."""

from __future__ import annotations

import time

import psycopg

from pgtrickle.declarations import parse_declarations
from pgtrickle.dev.workload import create_schema
from pgtrickle.reconcile import apply
from scheduler.progress import wait_caught_up
from tests.fixtures.plugin import Database
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


def test_the_schedule_refreshes_a_stream_table_without_changes(db: Database) -> None:
    create_schema(db.dsn, customers=10, orders=100, events=10)
    apply(db.dsn, parse_declarations(YAML))
    with psycopg.connect(db.dsn, autocommit=True) as conn, running_daemon(db.dsn):
        first = conn.execute("SELECT data_timestamp FROM pgtrickle.stream_tables").fetchone()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = conn.execute("SELECT data_timestamp FROM pgtrickle.stream_tables").fetchone()
            if now != first:
                break
            time.sleep(0.05)
    assert now != first
