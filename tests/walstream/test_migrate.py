from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from pgtrickle.declarations import parse_declarations
from pgtrickle.dev.workload import create_schema
from pgtrickle.reconcile import apply
from scheduler.refresh import Refresher
from tests.fixtures.cluster import Database
from tests.fixtures.streams import mismatched
from walstream.catalog import list_stream_tables
from walstream.errors import CatalogTooNew
from walstream.migrate import applied_versions, apply_pending, known_migrations, migrate
from walstream.position import SlotPosition


def test_migrations_apply_once_in_order_and_are_recorded(db: Database) -> None:
    first = migrate(db.dsn)
    again = migrate(db.dsn)
    assert [m.version for m in first] == [m.version for m in known_migrations()]
    assert again == []
    with psycopg.connect(db.dsn) as conn:
        assert applied_versions(conn) == [m.version for m in known_migrations()]
        assert conn.execute("SELECT to_regclass('pgtrickle.stream_tables')").fetchone() != (None,)


def test_a_catalog_newer_than_the_code_is_refused(db: Database) -> None:
    migrate(db.dsn)
    with psycopg.connect(db.dsn) as conn:
        conn.execute("INSERT INTO pgtrickle.schema_migrations VALUES (9999, 'from_the_future')")
    with pytest.raises(CatalogTooNew) as caught:
        migrate(db.dsn)
    assert "newer than this version of pgtrickle" in caught.value.message
    assert caught.value.detail is not None and "9999" in caught.value.detail
    assert caught.value.hint


def test_a_failing_migration_leaves_nothing_behind(db: Database, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE pgtrickle.a();")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE pgtrickle.b(); SELECT 1/0;")
    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate(db.dsn, tmp_path)
    with psycopg.connect(db.dsn) as conn:
        assert applied_versions(conn) == [1]
        assert conn.execute("SELECT to_regclass('pgtrickle.b')").fetchone() == (None,)


def test_a_catalog_created_meanwhile_by_another_session_is_seen_in_the_same_transaction(
    db: Database,
) -> None:
    with psycopg.connect(db.dsn) as conn:
        assert applied_versions(conn) == []  # inside a transaction, before the other commits
        migrate(db.dsn)
        assert applied_versions(conn) == [m.version for m in known_migrations()]
        assert apply_pending(conn) == []


def test_a_catalog_and_plans_of_the_first_release_are_upgraded_and_keep_refreshing(
    db: Database,
) -> None:
    create_schema(db.dsn, customers=10, orders=50, events=10)
    apply(db.dsn, parse_declarations(FIRST_RELEASE_YAML))
    with psycopg.connect(db.dsn) as conn:
        # what the first release left: no revision column, plans without a version whose
        # reasons are "construct: why" strings
        conn.execute("ALTER TABLE pgtrickle.stream_tables DROP COLUMN revision")
        conn.execute("ALTER TABLE pgtrickle.refresh_history DROP COLUMN reason")
        conn.execute("ALTER TABLE pgtrickle.refresh_history DROP COLUMN window_rows")
        conn.execute("DROP SCHEMA pgtrickle_state")
        conn.execute("DELETE FROM pgtrickle.schema_migrations WHERE version >= 2")
        conn.execute(
            "UPDATE pgtrickle.stream_tables SET plan = (plan - 'version') || jsonb_build_object("
            "'reasons', (SELECT coalesce(jsonb_agg((r->>'construct') || ': ' || (r->>'why')),"
            " '[]') FROM jsonb_array_elements(plan->'reasons') r))"
        )
        conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 20")
    assert [m.version for m in migrate(db.dsn)] == [2, 3, 4, 5]
    with psycopg.connect(db.dsn) as conn:
        tables = {st.name: st for st in list_stream_tables(conn)}
    assert {st.revision for st in tables.values()} == {1}
    assert [str(r) for r in tables["statuses"].plan.reasons] == [
        "DISTINCT ON: not differentiable yet"
    ]
    position = SlotPosition(db.dsn)
    try:
        with Refresher(db.dsn, position, check=True) as refresher:
            for st in tables.values():
                refresher.refresh(st)
    finally:
        position.close()
    assert mismatched(db.dsn) == {}


FIRST_RELEASE_YAML = """
stream_tables:
  - name: paid
    query: SELECT id, amount FROM orders WHERE status = 'paid'
    refresh_mode: differential
  - name: statuses
    query: SELECT DISTINCT ON (status) status FROM orders
"""
