"""`pgtrickle apply`: creates, re-creates, alters and drops stream tables, all or nothing."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from dvm.errors import InvalidQuery, PgTrickleError, UnsupportedQuery
from pgtrickle.declarations import parse_declarations
from pgtrickle.dev.workload import create_schema
from pgtrickle.errors import DependentObjects, NameTaken, PruneRequired
from pgtrickle.reconcile import ApplyPlan, ChangeKind, EffectKind, apply
from scheduler.errors import QueryFailed
from scheduler.refresh import Refresher
from tests.fixtures.cluster import Database
from tests.fixtures.streams import mismatched, running_reader
from walstream.catalog import get_stream_table


def decls(body: str) -> str:
    return "stream_tables:\n" + body


def one(name: str, query: str, mode: str = "auto", schedule: str = "1m") -> str:
    return (
        f"  - name: {name}\n    query: {query}\n    schedule: {schedule}\n"
        f"    refresh_mode: {mode}\n"
    )


def apply_text(dsn: str, text: str, *, dry_run: bool = False, prune: bool = False) -> ApplyPlan:
    return apply(
        dsn, parse_declarations(decls(text), "pgtrickle.yaml"), dry_run=dry_run, prune=prune
    )


@pytest.fixture
def shop(db: Database) -> Database:
    create_schema(db.dsn, customers=10, orders=100, events=20)
    return db


def stream_table_names(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('pgtrickle.stream_tables')").fetchone() == (None,):
            return []
        rows = conn.execute("SELECT name FROM pgtrickle.stream_tables ORDER BY name").fetchall()
    return [r[0] for r in rows]


def scalar(dsn: str, query: str) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return row[0]


def refused(dsn: str, text: str, **kwargs: bool) -> PgTrickleError:
    with pytest.raises(PgTrickleError) as caught:
        apply_text(dsn, text, **kwargs)
    assert caught.value.hint, "every refusal carries a HINT"
    return caught.value


# -- what it does


def test_apply_creates_and_populates_stream_tables(shop: Database) -> None:
    plan = apply_text(shop.dsn, one("paid", "SELECT id, amount FROM orders WHERE status = 'paid'"))
    assert [(c.kind, c.name) for c in plan.changes] == [(ChangeKind.CREATE, "paid")]
    assert stream_table_names(shop.dsn) == ["paid"]
    assert mismatched(shop.dsn) == {}


def test_schedule_change_alters_query_change_recreates_missing_drops_with_prune(
    shop: Database,
) -> None:
    apply_text(shop.dsn, one("a", "SELECT id FROM orders") + one("b", "SELECT id FROM customers"))
    plan = apply_text(
        shop.dsn, one("a", "SELECT id, status FROM orders", schedule="5s"), prune=True
    )
    assert {c.name: c.kind for c in plan.changes} == {
        "a": ChangeKind.RECREATE,
        "b": ChangeKind.DROP,
    }
    assert stream_table_names(shop.dsn) == ["a"]
    assert scalar(shop.dsn, "SELECT to_regclass('public.b')") is None
    assert (
        scalar(shop.dsn, "SELECT relreplident FROM pg_class WHERE oid = 'customers'::regclass")
        == "d"
    ), "a source nobody reads gets its replica identity back"
    plan = apply_text(shop.dsn, one("a", "SELECT id, status FROM orders", schedule="9s"))
    assert [c.kind for c in plan.changes] == [ChangeKind.ALTER]
    assert mismatched(shop.dsn) == {}


def test_applying_the_same_declarations_again_changes_nothing(shop: Database) -> None:
    text = (
        one(
            "joined", "SELECT o.id, c.region FROM orders o JOIN customers c ON c.id = o.customer_id"
        )
        + one(
            "totals", "SELECT status, count(*) AS n, sum(amount) AS s FROM orders GROUP BY status"
        )
        + one("statuses", "SELECT DISTINCT ON (status) status FROM orders")
    )
    apply_text(shop.dsn, text)
    revisions = scalar(
        shop.dsn, "SELECT array_agg(revision ORDER BY id) FROM pgtrickle.stream_tables"
    )
    plan = apply_text(shop.dsn, text)
    assert [c.kind for c in plan.changes] == [ChangeKind.UNCHANGED] * 3
    assert plan.side_effects == ()
    assert scalar(
        shop.dsn, "SELECT array_agg(revision ORDER BY id) FROM pgtrickle.stream_tables"
    ) == (revisions)


def test_a_query_that_only_differs_in_comments_and_spacing_is_not_recreated(shop: Database) -> None:
    apply_text(shop.dsn, one("a", "SELECT id FROM orders"))
    plan = apply_text(shop.dsn, one("a", '"SELECT  id -- the key\\n FROM orders;"'))
    assert [(c.kind, c.reasons) for c in plan.changes] == [
        (ChangeKind.ALTER, ("query text (the same query)",))
    ]


def test_sources_get_replica_identity_full_and_user_dml_keeps_working(shop: Database) -> None:
    apply_text(shop.dsn, one("ev", "SELECT kind, n FROM events"))
    assert (
        scalar(shop.dsn, "SELECT relreplident FROM pg_class WHERE oid = 'events'::regclass") == "f"
    )
    with psycopg.connect(shop.dsn) as conn:
        conn.execute("UPDATE events SET n = n + 1")
        conn.execute("DELETE FROM events WHERE n > 3")


# -- the query as written


@pytest.mark.parametrize(
    "query",
    [
        '"SELECT id, amount FROM orders WHERE amount > 5;"',
        '"SELECT id, amount FROM orders -- the big ones\\nWHERE amount > 5"',
        '"/* big */ SELECT id,\\n\\t  amount\\n   FROM   orders WHERE amount > 5  ;  "',
    ],
    ids=["trailing semicolon", "line comment", "block comment and odd white space"],
)
def test_comments_semicolons_and_white_space_work_end_to_end(shop: Database, query: str) -> None:
    apply_text(shop.dsn, one("big", query, mode="differential"))
    with psycopg.connect(shop.dsn) as conn:
        conn.execute("UPDATE orders SET amount = 50 WHERE id <= 10")
    refresh_once(shop.dsn, "big")
    assert mismatched(shop.dsn) == {}


def test_quoted_identifiers_work_end_to_end(shop: Database) -> None:
    with psycopg.connect(shop.dsn) as conn:
        conn.execute('CREATE TABLE "Mixed Case" ("Id" int PRIMARY KEY, "Value;--" text)')
        conn.execute("""INSERT INTO "Mixed Case" VALUES (1, 'a'), (2, 'b')""")
    apply_text(
        shop.dsn,
        one(
            "quoted",
            """'SELECT "Id", "Value;--" AS "v" FROM "Mixed Case" WHERE "Id" > 0'""",
            mode="differential",
        ),
    )
    with psycopg.connect(shop.dsn) as conn:
        conn.execute("""UPDATE "Mixed Case" SET "Value;--" = 'c' WHERE "Id" = 1""")
    refresh_once(shop.dsn, "quoted")
    assert mismatched(shop.dsn) == {}
    assert scalar(shop.dsn, 'SELECT v FROM quoted WHERE "Id" = 1') == "c"


def refresh_once(dsn: str, name: str) -> None:
    with running_reader(dsn) as reader, Refresher(dsn, reader, check=True) as refresher:
        refresher.refresh(get_stream_table(refresher.staging, name))


# -- what it refuses, having changed nothing


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


def test_differential_refuses_an_unsupported_construct_naming_it(shop: Database) -> None:
    error = refused(
        shop.dsn, one("x", "SELECT DISTINCT ON (status) status FROM orders", mode="differential")
    )
    assert isinstance(error, UnsupportedQuery)
    assert "DISTINCT" in error.message


def test_auto_falls_back_to_full_and_records_why(shop: Database) -> None:
    apply_text(shop.dsn, one("x", "SELECT DISTINCT ON (status) status FROM orders"))
    assert scalar(shop.dsn, "SELECT effective_refresh_mode FROM pgtrickle.stream_tables") == "full"
    reason = scalar(shop.dsn, "SELECT fallback_reason FROM pgtrickle.stream_tables")
    assert isinstance(reason, str) and "DISTINCT" in reason


def test_one_bad_declaration_means_nothing_is_created(shop: Database) -> None:
    refused(
        shop.dsn, one("good", "SELECT id FROM orders") + one("bad", "SELECT id FROM nosuchtable")
    )
    assert stream_table_names(shop.dsn) == []
    assert scalar(shop.dsn, "SELECT to_regclass('public.good')") is None
    assert scalar(shop.dsn, "SELECT to_regnamespace('pgtrickle')") is None, "not even the catalog"


def test_a_query_failing_while_populating_creates_nothing(shop: Database) -> None:
    error = refused(
        shop.dsn,
        one("good", "SELECT id FROM orders")
        + one("bad", "SELECT id, 1 / (id - id) AS boom FROM orders"),
    )
    assert isinstance(error, QueryFailed)
    assert '"bad"' in error.message and "division by zero" in error.message
    assert stream_table_names(shop.dsn) == []
    assert scalar(shop.dsn, "SELECT to_regclass('public.good')") is None
    assert scalar(shop.dsn, "SELECT count(*) FROM pgtrickle.sources") == 0
    assert (
        scalar(shop.dsn, "SELECT relreplident FROM pg_class WHERE oid = 'orders'::regclass") == "d"
    )
    assert scalar(shop.dsn, "SELECT count(*) FROM pg_replication_slots") == 0, (
        "the slot is gone again"
    )


@pytest.mark.parametrize(
    ("ddl", "kind"),
    [
        ("CREATE TABLE taken (a int)", "table"),
        ("CREATE VIEW taken AS SELECT 1 AS a", "view"),
        ("CREATE MATERIALIZED VIEW taken AS SELECT 1 AS a", "materialized view"),
        ("CREATE SEQUENCE taken", "sequence"),
        ("CREATE INDEX taken ON orders (status)", "index"),
        ("CREATE TYPE taken AS (a int)", "composite type"),
        ("CREATE TYPE taken AS ENUM ('a')", "type"),
    ],
)
def test_a_name_held_by_any_relation_or_type_is_refused_naming_it(
    shop: Database, ddl: str, kind: str
) -> None:
    with psycopg.connect(shop.dsn) as conn:
        conn.execute(ddl.encode())
    error = refused(shop.dsn, one("taken", "SELECT id FROM orders"))
    assert isinstance(error, NameTaken)
    assert f"a {kind} of that name already exists" in error.message
    assert stream_table_names(shop.dsn) == []


def test_a_missing_schema_is_refused(shop: Database) -> None:
    error = refused(shop.dsn, one("nowhere.x", "SELECT id FROM orders"))
    assert 'schema "nowhere" does not exist' in error.message


def test_dropping_needs_prune_and_changes_nothing_without_it(shop: Database) -> None:
    apply_text(shop.dsn, one("a", "SELECT id FROM orders") + one("b", "SELECT id FROM customers"))
    error = refused(shop.dsn, one("a", "SELECT id, status FROM orders"))
    assert isinstance(error, PruneRequired)
    assert "b" in error.message and "--prune" in (error.hint or "")
    assert stream_table_names(shop.dsn) == ["a", "b"]
    assert scalar(
        shop.dsn, "SELECT plan->>'query' FROM pgtrickle.stream_tables WHERE name = 'a'"
    ) == ("SELECT id FROM orders"), "not even the re-create of a"


def test_an_empty_list_drops_everything_only_with_prune(shop: Database) -> None:
    apply_text(shop.dsn, one("a", "SELECT id FROM orders"))
    with pytest.raises(PruneRequired):
        apply(shop.dsn, parse_declarations("stream_tables: []"))
    apply(shop.dsn, parse_declarations("stream_tables: []"), prune=True)
    assert stream_table_names(shop.dsn) == []


# -- the dry run


def test_dry_run_on_a_fresh_database_lists_every_side_effect_and_writes_nothing(
    shop: Database,
) -> None:
    plan = apply_text(shop.dsn, one("paid", "SELECT id FROM orders"), dry_run=True)
    assert [c.kind for c in plan.changes] == [ChangeKind.CREATE]
    kinds = [e.kind for e in plan.side_effects]
    assert kinds == [
        EffectKind.CATALOG,
        EffectKind.PUBLICATION,
        EffectKind.SLOT,
        EffectKind.REPLICA_IDENTITY,
        EffectKind.PUBLISH,
        EffectKind.BUFFER,
    ]
    assert scalar(shop.dsn, "SELECT to_regnamespace('pgtrickle')") is None
    assert scalar(shop.dsn, "SELECT count(*) FROM pg_publication") == 0
    assert scalar(shop.dsn, "SELECT count(*) FROM pg_replication_slots") == 0
    assert (
        scalar(shop.dsn, "SELECT relreplident FROM pg_class WHERE oid = 'orders'::regclass") == "d"
    )


def test_dry_run_lists_what_a_drop_releases(shop: Database) -> None:
    apply_text(shop.dsn, one("a", "SELECT id FROM orders") + one("b", "SELECT id FROM customers"))
    plan = apply_text(shop.dsn, one("a", "SELECT id FROM orders"), dry_run=True)
    assert [(c.name, c.kind) for c in plan.changes] == [
        ("a", ChangeKind.UNCHANGED),
        ("b", ChangeKind.DROP),
    ]
    assert [e.kind for e in plan.side_effects] == [EffectKind.RELEASE]
    assert "public.customers" in plan.side_effects[0].description
    assert stream_table_names(shop.dsn) == ["a", "b"]


# -- re-creating, atomically


def test_a_failed_recreate_leaves_the_old_stream_table_untouched_and_refreshing(
    shop: Database,
) -> None:
    apply_text(shop.dsn, one("a", "SELECT id, amount FROM orders", mode="differential"))
    before = scalar(shop.dsn, "SELECT count(*) FROM a")
    with pytest.raises(QueryFailed):
        apply_text(
            shop.dsn, one("a", "SELECT id, 1 / (id - id) AS boom FROM orders", mode="differential")
        )
    assert scalar(shop.dsn, "SELECT count(*) FROM a") == before
    assert (
        scalar(shop.dsn, "SELECT plan->>'query' FROM pgtrickle.stream_tables")
        == "SELECT id, amount FROM orders"
    )
    with psycopg.connect(shop.dsn) as conn:
        conn.execute("INSERT INTO orders VALUES (777, 1, 1.5, 'new')")
    refresh_once(shop.dsn, "a")
    assert scalar(shop.dsn, "SELECT amount::text FROM a WHERE id = 777") == "1.50"
    assert mismatched(shop.dsn) == {}


def test_a_recreate_keeps_grants_owner_and_user_indexes(shop: Database) -> None:
    apply_text(shop.dsn, one("a", "SELECT id, status FROM orders"))
    reader = f"reader_{shop.name}"
    with psycopg.connect(shop.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(reader)))
        conn.execute(sql.SQL("GRANT SELECT ON a TO {}").format(sql.Identifier(reader)))
        conn.execute("CREATE INDEX a_status ON a (status)")
    apply_text(shop.dsn, one("a", "SELECT id, status, amount FROM orders"))
    assert scalar(shop.dsn, f"SELECT has_table_privilege('{reader}', 'public.a', 'SELECT')") is True
    assert (
        scalar(
            shop.dsn,
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'a' AND indexname = 'a_status'",
        )
        == 1
    )
    assert scalar(shop.dsn, "SELECT count(*) FROM pg_class WHERE relname LIKE '__pgt_build%'") == 0
    assert mismatched(shop.dsn) == {}


def test_a_view_on_a_stream_table_blocks_its_recreate_and_drop_with_a_clear_error(
    shop: Database,
) -> None:
    apply_text(shop.dsn, one("a", "SELECT id, status FROM orders"))
    with psycopg.connect(shop.dsn) as conn:
        conn.execute("CREATE VIEW a_view AS SELECT id FROM a")
    error = refused(shop.dsn, one("a", "SELECT id, amount FROM orders"))
    assert isinstance(error, DependentObjects)
    assert "re-create" in error.message and "view public.a_view" in (error.detail or "")
    with pytest.raises(DependentObjects) as caught:
        apply(shop.dsn, parse_declarations("stream_tables: []"), prune=True)
    assert "drop" in caught.value.message
    assert stream_table_names(shop.dsn) == ["a"]


# -- privileges


@pytest.fixture
def other_owner(shop: Database) -> Iterator[tuple[Database, str]]:
    """A role of its own that may replicate and create, but owns no table of the shop."""
    role = f"applier_{shop.name}"
    with psycopg.connect(shop.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(shop.name), sql.Identifier(role)
            )
        )
        conn.execute(
            sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(sql.Identifier(role))
        )
        conn.execute(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(
                sql.Identifier(role)
            )
        )
    yield shop, shop.dsn.replace("user=postgres", f"user={role}")
    with psycopg.connect(shop.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_source_the_role_does_not_own_is_refused_before_anything_changes(
    other_owner: tuple[Database, str],
) -> None:
    shop, dsn = other_owner
    error = refused(dsn, one("paid", "SELECT id FROM orders"))
    assert "does not own table public.orders" in error.message
    assert scalar(shop.dsn, "SELECT to_regnamespace('pgtrickle')") is None


def test_a_source_the_role_may_not_read_is_refused(other_owner: tuple[Database, str]) -> None:
    shop, dsn = other_owner
    with psycopg.connect(shop.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE secret (id int PRIMARY KEY)")
    error = refused(dsn, one("s", "SELECT id FROM secret"))
    assert "may not" in error.message and "secret" in error.message
