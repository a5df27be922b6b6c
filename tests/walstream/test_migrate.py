from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.fixtures.cluster import Database
from walstream.errors import CatalogTooNew
from walstream.migrate import applied_versions, apply_pending, known_migrations, migrate


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
