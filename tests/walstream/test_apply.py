"""`pgtrickle apply`: creates, alters and drops stream tables; refuses bad input whole."""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.plugin import Database
from tests.fixtures.streams import mismatched
from walstream.apply import ChangeKind, apply
from walstream.declarations import parse_declarations
from walstream.errors import InvalidQuery, PgTrickleError, UnsupportedQuery
from walstream.workload import create_schema


def decls(body: str) -> str:
    return "stream_tables:\n" + body


def one(name: str, query: str, mode: str = "auto", schedule: str = "1m") -> str:
    return decls(
        f"  - name: {name}\n    query: {query}\n    schedule: {schedule}\n"
        f"    refresh_mode: {mode}\n"
    )


@pytest.fixture
def shop(db: Database) -> Database:
    create_schema(db.dsn, customers=10, orders=100, events=20)
    return db


def stream_table_names(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT name FROM pgtrickle.stream_tables ORDER BY name").fetchall()
    return [r[0] for r in rows]


def refused(dsn: str, text: str) -> PgTrickleError:
    with pytest.raises(PgTrickleError) as caught:
        apply(dsn, parse_declarations(text, "pgtrickle.yaml"))
    return caught.value


def test_apply_creates_and_populates_stream_tables(shop: Database) -> None:
    changes = apply(
        shop.dsn,
        parse_declarations(one("paid", "SELECT id, amount FROM orders WHERE status = 'paid'")),
    )
    assert [(c.kind, c.name) for c in changes] == [(ChangeKind.CREATE, "paid")]
    assert stream_table_names(shop.dsn) == ["paid"]
    assert mismatched(shop.dsn) == {}


def test_dry_run_prints_the_plan_and_changes_nothing(shop: Database) -> None:
    changes = apply(
        shop.dsn, parse_declarations(one("paid", "SELECT id FROM orders")), dry_run=True
    )
    assert [c.kind for c in changes] == [ChangeKind.CREATE]
    assert stream_table_names(shop.dsn) == []


def test_schedule_change_alters_query_change_recreates_missing_drops(shop: Database) -> None:
    apply(shop.dsn, parse_declarations(one("a", "SELECT id FROM orders") + "  - name: b\n"
                                        "    query: SELECT id FROM customers\n"))  # fmt: skip
    changes = apply(
        shop.dsn, parse_declarations(one("a", "SELECT id, status FROM orders", schedule="5s"))
    )
    kinds = {c.name: c.kind for c in changes}
    assert kinds == {"a": ChangeKind.RECREATE, "b": ChangeKind.DROP}
    assert stream_table_names(shop.dsn) == ["a"]
    with psycopg.connect(shop.dsn) as conn:
        assert conn.execute("SELECT to_regclass('public.b')").fetchone() == (None,)
        identity = conn.execute(
            "SELECT relreplident FROM pg_class WHERE oid = 'customers'::regclass"
        ).fetchone()
    assert identity == ("d",), "a source nobody reads gets its replica identity back"
    changes = apply(
        shop.dsn, parse_declarations(one("a", "SELECT id, status FROM orders", schedule="9s"))
    )
    assert [c.kind for c in changes] == [ChangeKind.ALTER]


def test_sources_get_replica_identity_full_and_user_dml_keeps_working(shop: Database) -> None:
    apply(shop.dsn, parse_declarations(one("ev", "SELECT kind, n FROM events")))
    with psycopg.connect(shop.dsn) as conn:
        identity = conn.execute(
            "SELECT relreplident FROM pg_class WHERE oid = 'events'::regclass"
        ).fetchone()
        assert identity == ("f",)
        conn.execute("UPDATE events SET n = n + 1")
        conn.execute("DELETE FROM events WHERE n > 3")


def test_unknown_table_is_refused_naming_file_stream_table_and_table(shop: Database) -> None:
    error = refused(shop.dsn, one("x", "SELECT id FROM nosuchtable"))
    assert isinstance(error, InvalidQuery)
    assert "pgtrickle.yaml" in error.message and '"x"' in error.message
    assert "nosuchtable" in error.message


def test_unknown_column_is_refused_naming_it(shop: Database) -> None:
    error = refused(shop.dsn, one("x", "SELECT nosuchcolumn FROM orders"))
    assert isinstance(error, InvalidQuery)
    assert "nosuchcolumn" in error.message and '"x"' in error.message


@pytest.mark.parametrize(
    "query",
    [
        '"SELECT 1; SELECT 2"',
        "\"INSERT INTO orders VALUES (1, 1, 1, 'x')\"",
        '"SELEC id FROM orders"',
    ],
)
def test_a_query_that_is_not_a_single_select_is_refused(shop: Database, query: str) -> None:
    error = refused(shop.dsn, one("x", query))
    assert isinstance(error, InvalidQuery)
    assert '"x"' in error.message
    assert error.hint


def test_differential_refuses_an_unsupported_construct_naming_it(shop: Database) -> None:
    error = refused(shop.dsn, one("x", "SELECT DISTINCT status FROM orders", mode="differential"))
    assert isinstance(error, UnsupportedQuery)
    assert "DISTINCT" in error.message
    assert error.hint


def test_auto_falls_back_to_full_and_records_why(shop: Database) -> None:
    apply(shop.dsn, parse_declarations(one("x", "SELECT DISTINCT status FROM orders")))
    with psycopg.connect(shop.dsn) as conn:
        row = conn.execute(
            "SELECT effective_refresh_mode, fallback_reason FROM pgtrickle.stream_tables"
        ).fetchone()
    assert row is not None
    assert row[0] == "full"
    assert row[1] and "DISTINCT" in row[1]


def test_one_bad_declaration_means_nothing_is_created(shop: Database) -> None:
    text = one("good", "SELECT id FROM orders") + (
        "  - name: bad\n    query: SELECT id FROM nosuchtable\n"
    )
    refused(shop.dsn, text)
    assert stream_table_names(shop.dsn) == []
    with psycopg.connect(shop.dsn) as conn:
        assert conn.execute("SELECT to_regclass('public.good')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM pgtrickle.sources").fetchone() == (0,)


def test_a_name_taken_by_a_table_is_refused(shop: Database) -> None:
    error = refused(shop.dsn, one("orders", "SELECT id FROM customers"))
    assert "already exists" in error.message


def test_a_missing_schema_is_refused(shop: Database) -> None:
    error = refused(shop.dsn, one("nowhere.x", "SELECT id FROM orders"))
    assert 'schema "nowhere" does not exist' in error.message
    assert error.hint
