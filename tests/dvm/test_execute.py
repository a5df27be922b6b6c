"""Execute mode: every supported shape, maintained over rounds of random changes."""

from __future__ import annotations

import random

import psycopg
import pytest

from tests.dvm.harness import SPECS, Maintained, create_tables, mutate, run_rounds
from tests.fixtures.cluster import Database

SEEDS = [1, 2]
SOAK_SEEDS = list(range(100, 120))

SHAPES = {
    "filter_project_keyed": (
        "SELECT id, cid, amount * 2 AS doubled, upper(note) AS loud FROM orders WHERE qty > 2",
        ["orders"],
    ),
    "star_keyed_json": ("SELECT * FROM customers", ["customers"]),
    "filter_project_keyless": (
        "SELECT kind, v + 1 AS v1, w FROM events WHERE v IS DISTINCT FROM 3",
        ["events"],
    ),
    "order_by_ignored": ("SELECT id, note FROM orders ORDER BY note", ["orders"]),
    "join_keyed": (
        "SELECT o.id, o.amount, c.name, c.region FROM orders o JOIN customers c"
        " ON o.cid = c.id WHERE o.qty > 0",
        ["orders", "customers"],
    ),
    "join_comma": (
        "SELECT o.id, c.region FROM orders o, customers c"
        " WHERE o.cid = c.id AND c.region <> 'east'",
        ["orders", "customers"],
    ),
    "join_star_keyed_keyless": (
        "SELECT * FROM tags JOIN customers ON tags.cid = customers.id",
        ["customers", "tags"],
    ),
    "join_keyless": (
        "SELECT e.kind, t.tag FROM events e JOIN tags t ON e.v = t.cid",
        ["events", "tags"],
    ),
    "self_join": (
        "SELECT a.id, b.id AS other FROM orders a JOIN orders b ON a.cid = b.cid AND a.id < b.id",
        ["orders"],
    ),
    "group_count_sum_avg": (
        "SELECT cid, count(*) AS n, count(amount) AS na, sum(amount) AS total,"
        " avg(qty) AS aq, avg(amount) AS aa, sum(qty) / count(*) AS ratio, sum(heavy),"
        " avg(heavy) FROM orders GROUP BY cid",
        ["orders"],
    ),
    "group_sum_of_any_scale": (
        "SELECT g, count(*) AS n, sum(v) AS total, avg(v) AS mean, sum(v) FILTER"
        " (WHERE v > 0) AS gains FROM ledger GROUP BY g",
        ["ledger"],
    ),
    "top_sum_of_any_scale": (
        "SELECT g, sum(v) AS total FROM ledger GROUP BY g ORDER BY total DESC NULLS LAST, g"
        " LIMIT 2",
        ["ledger"],
    ),
    "group_keyless": (
        "SELECT kind, count(*), count(v) AS nv, sum(v), avg(v) FROM events GROUP BY kind",
        ["events"],
    ),
    "group_expression": (
        "SELECT qty % 3 AS bucket, count(*), sum(amount * qty) FROM orders GROUP BY 1",
        ["orders"],
    ),
    "join_aggregate": (
        "SELECT c.region, count(*), sum(o.amount), avg(o.qty) FROM orders o"
        " JOIN customers c ON o.cid = c.id GROUP BY c.region",
        ["orders", "customers"],
    ),
    "join_aggregate_keyless": (
        "SELECT t.tag, count(*), sum(e.v) FROM events e JOIN tags t USING (kind) GROUP BY t.tag",
        ["events", "tags"],
    ),
    "having_rescan": (
        "SELECT cid, sum(qty), count(*) FROM orders GROUP BY cid HAVING count(*) > 4",
        ["orders"],
    ),
    "scalar": ("SELECT count(*), sum(amount), avg(amount) FROM orders", ["orders"]),
    "scalar_keyless_filtered": (
        "SELECT count(*), sum(v) AS total FROM events WHERE v > 1",
        ["events"],
    ),
    "float_sum_rescan": (
        "SELECT kind, sum(w), avg(w), count(*) FROM events GROUP BY kind",
        ["events"],
    ),
    "float_scalar_rescan": ("SELECT sum(w) FROM events", ["events"]),
    "group_without_aggregates": (
        "SELECT cid, qty > 3 AS big FROM orders GROUP BY cid, 2",
        ["orders"],
    ),
    "quoted_names_filter": ('SELECT * FROM "Odd Table" WHERE "select" > -2', ["Odd Table"]),
    "quoted_names_aggregate": (
        'SELECT "Grp", count(*) AS "N", sum("select") AS "Σ" FROM "Odd Table" GROUP BY "Grp"',
        ["Odd Table"],
    ),
    "scalar_having": ("SELECT count(*) FROM orders HAVING count(*) > 31", ["orders"]),
    "having_join_keyless": (
        "SELECT t.tag, count(*) FROM events e JOIN tags t ON t.cid = e.v"
        " GROUP BY t.tag HAVING sum(e.v) > 3",
        ["events", "tags"],
    ),
    "table_column_aliases": (
        "SELECT o.a, o.b, c.name FROM orders AS o(a, b) JOIN customers c ON c.id = o.b",
        ["orders", "customers"],
    ),
    # joins of any kind and number
    "join_three": (
        "SELECT o.id, c.name, t.tag FROM orders o JOIN customers c ON o.cid = c.id"
        " JOIN tags t ON t.cid = c.id",
        ["orders", "customers", "tags"],
    ),
    "join_left": (
        "SELECT o.id, o.qty, c.name FROM orders o LEFT JOIN customers c ON o.cid = c.id",
        ["orders", "customers"],
    ),
    "join_right_keyless": (
        "SELECT e.kind, t.tag FROM events e RIGHT JOIN tags t ON e.v = t.cid",
        ["events", "tags"],
    ),
    "join_full_non_equi": (
        "SELECT o.id, c.id AS c FROM orders o FULL JOIN customers c"
        " ON o.cid = c.id AND o.qty > c.id",
        ["orders", "customers"],
    ),
    "join_nested_parenthesized": (
        "SELECT o.id, c.name, t.tag FROM orders o LEFT JOIN (customers c JOIN tags t"
        " ON t.cid = c.id) ON o.cid = c.id",
        ["orders", "customers", "tags"],
    ),
    "join_left_then_inner": (
        "SELECT o.id, c.region, t.tag FROM orders o LEFT JOIN customers c ON o.cid = c.id"
        " JOIN tags t ON t.cid = o.cid",
        ["orders", "customers", "tags"],
    ),
    "join_using_natural": (
        "SELECT * FROM events NATURAL JOIN tags",
        ["events", "tags"],
    ),
    "join_left_aggregate": (
        "SELECT c.id, count(o.id) AS n, sum(o.qty) FROM customers c"
        " LEFT JOIN orders o ON o.cid = c.id GROUP BY c.id",
        ["customers", "orders"],
    ),
    # subqueries
    "derived_table": (
        "SELECT s.cid, s.q2 FROM (SELECT cid, qty * 2 AS q2 FROM orders WHERE qty > 1) AS s"
        " WHERE s.q2 < 12",
        ["orders"],
    ),
    "derived_aggregate_grouped_again": (
        "SELECT n, count(*) AS customers FROM (SELECT cid, count(*) AS n FROM orders"
        " GROUP BY cid) AS per (cid, n) GROUP BY n",
        ["orders"],
    ),
    "cte_used_twice": (
        "WITH big AS (SELECT cid, sum(qty) AS total FROM orders GROUP BY cid)"
        " SELECT b.cid, b.total FROM big b WHERE b.total = (SELECT max(total) FROM big)",
        ["orders"],
    ),
    "exists": (
        "SELECT c.id, c.name FROM customers c WHERE EXISTS (SELECT 1 FROM orders o"
        " WHERE o.cid = c.id AND o.qty > 3)",
        ["customers", "orders"],
    ),
    "not_exists": (
        "SELECT c.id FROM customers c WHERE NOT EXISTS (SELECT * FROM orders o WHERE o.cid = c.id)",
        ["customers", "orders"],
    ),
    "in_subquery": (
        "SELECT id, qty FROM orders WHERE cid IN (SELECT id FROM customers WHERE region = 'north')",
        ["orders", "customers"],
    ),
    "not_in_with_nulls": (
        "SELECT id FROM orders WHERE cid NOT IN (SELECT cid FROM tags)",
        ["orders", "tags"],
    ),
    "in_grouped_having": (
        "SELECT id, cid FROM orders WHERE cid IN (SELECT cid FROM orders GROUP BY cid"
        " HAVING sum(qty) > 15)",
        ["orders"],
    ),
    "scalar_uncorrelated": (
        "SELECT id, qty FROM orders WHERE qty > (SELECT avg(qty) FROM orders)",
        ["orders"],
    ),
    "scalar_correlated": (
        "SELECT o.id FROM orders o WHERE o.qty < (SELECT 0.8 * avg(p.qty) FROM orders p"
        " WHERE p.cid = o.cid)",
        ["orders"],
    ),
    "scalar_correlated_count": (
        "SELECT c.id, (SELECT count(*) FROM orders o WHERE o.cid = c.id) AS n FROM customers c",
        ["customers", "orders"],
    ),
    "scalar_in_select": (
        "SELECT id, qty - (SELECT min(qty) FROM orders) AS above FROM orders",
        ["orders"],
    ),
    "having_scalar_subquery": (
        "SELECT cid, sum(qty) FROM orders GROUP BY cid"
        " HAVING sum(qty) > (SELECT sum(qty) / 8 FROM orders)",
        ["orders"],
    ),
    # aggregates of every class
    "min_max": (
        "SELECT cid, min(qty), max(amount), min(note) AS first_note FROM orders GROUP BY cid",
        ["orders"],
    ),
    "distinct_and_filter_aggregates": (
        "SELECT cid, count(DISTINCT qty) AS kinds, count(*) FILTER (WHERE qty > 3) AS many,"
        " sum(amount) FILTER (WHERE note = 'a') AS sa FROM orders GROUP BY cid",
        ["orders"],
    ),
    "bool_aggregates": (
        "SELECT cid, bool_and(qty > 1) AS a, bool_or(note = 'a') AS o, every(amount > 3) AS e,"
        " bool_and(qty > 2) FILTER (WHERE note <> 'b') AS f FROM orders GROUP BY cid",
        ["orders"],
    ),
    "rescanned_aggregates": (
        "SELECT kind, bool_and(v > 1), bool_or(v > 3), every(v < 4),"
        " string_agg(coalesce(v::text, '-'), ',' ORDER BY v, w), array_agg(v ORDER BY v, w),"
        " json_agg(w ORDER BY w, v), stddev(v), variance(v) FROM events GROUP BY kind",
        ["events"],
    ),
    "case_in_sum": (
        "SELECT note, sum(CASE WHEN cid > 3 THEN amount ELSE 0 END) AS big,"
        " 100.00 * sum(CASE WHEN note LIKE 'a%' THEN qty ELSE 0 END) / nullif(sum(qty), 0) AS pct"
        " FROM orders GROUP BY note",
        ["orders"],
    ),
    # DISTINCT and set operations
    "distinct": ("SELECT DISTINCT cid, qty > 3 AS big FROM orders", ["orders"]),
    "distinct_keyless": ("SELECT DISTINCT kind, v FROM events", ["events"]),
    "union": ("SELECT cid FROM orders UNION SELECT cid FROM tags", ["orders", "tags"]),
    "union_all": (
        "SELECT cid, 'o' AS side FROM orders UNION ALL SELECT cid, tag FROM tags",
        ["orders", "tags"],
    ),
    "intersect": ("SELECT cid FROM orders INTERSECT SELECT cid FROM tags", ["orders", "tags"]),
    "intersect_all": (
        "SELECT cid FROM orders INTERSECT ALL SELECT cid FROM tags",
        ["orders", "tags"],
    ),
    "except": ("SELECT cid FROM orders EXCEPT SELECT cid FROM tags", ["orders", "tags"]),
    "except_all": (
        "SELECT cid FROM tags EXCEPT ALL SELECT cid FROM orders",
        ["orders", "tags"],
    ),
    # TopK
    "top_k": ("SELECT id, qty, amount FROM orders ORDER BY qty DESC, id LIMIT 5", ["orders"]),
    "top_k_aggregate": (
        "SELECT cid, sum(qty) AS total FROM orders GROUP BY cid ORDER BY total DESC, cid LIMIT 3",
        ["orders"],
    ),
    "top_k_offset": (
        "SELECT id, qty, amount FROM orders ORDER BY qty DESC, id LIMIT 4 OFFSET 3",
        ["orders"],
    ),
    "top_k_aggregate_offset": (
        "SELECT cid, sum(qty) AS total FROM orders GROUP BY cid ORDER BY total, cid"
        " OFFSET 2 ROWS FETCH FIRST 3 ROWS ONLY",
        ["orders"],
    ),
    "top_k_offset_in_a_subquery": (
        "SELECT count(*), sum(qty) FROM"
        " (SELECT id, qty FROM orders ORDER BY qty, id LIMIT 5 OFFSET 2) AS t",
        ["orders"],
    ),
    # row identity by value
    "numeric_keys_by_value": (
        "SELECT amount / 1 AS a, count(*) FROM orders GROUP BY 1",
        ["orders"],
    ),
}


@pytest.mark.pg15
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_maintained_table_equals_its_query(any_db: Database, shape: str, seed: int) -> None:
    query, tables = SHAPES[shape]
    with psycopg.connect(any_db.dsn) as conn:
        run_rounds(conn, query, tables, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SOAK_SEEDS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_maintained_table_equals_its_query_over_many_rounds(
    db: Database, shape: str, seed: int
) -> None:
    query, tables = SHAPES[shape]
    with psycopg.connect(db.dsn) as conn:
        run_rounds(conn, query, tables, seed, rounds=25)


NO_OP_SHAPES = ["filter_project_keyed", "join_keyed", "join_keyless", "group_count_sum_avg"]


@pytest.mark.parametrize("shape", NO_OP_SHAPES)
def test_changes_that_cancel_out_produce_an_empty_delta(db: Database, shape: str) -> None:
    query, tables = SHAPES[shape]
    rng = random.Random(7)
    with psycopg.connect(db.dsn) as conn:
        create_tables(conn, tables, rng)
        maintained = Maintained(conn, query)
        maintained.snapshot()
        maintained.stage(rng, noise=5)
        assert maintained.delta_rows() == []


REDUCED = {
    "join": "SELECT o.id, o.amount, c.name FROM orders o JOIN customers c ON o.cid = c.id"
    " WHERE c.region = 'north'",
    "key_transfer": "SELECT sum(o.amount) AS total FROM orders o JOIN customers c"
    " ON c.id = o.cid WHERE c.region = 'north'"
    " AND o.qty < (SELECT avg(i.qty) FROM orders i WHERE i.cid = c.id)",
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", sorted(REDUCED))
def test_changes_of_one_source_are_staged_only_where_its_unchanged_partner_can_match(
    db: Database, shape: str, seed: int
) -> None:
    rng = random.Random(seed)
    with psycopg.connect(db.dsn) as conn:
        create_tables(conn, ["orders", "customers"], rng)
        maintained = Maintained(conn, REDUCED[shape])
        for _ in range(6):
            maintained.snapshot()
            for _ in range(rng.randint(2, 12)):
                mutate(conn, SPECS["orders"], rng)
            conn.commit()
            maintained.stage(rng)
            # every other refresh runs the statement compiled for the changed sources,
            # whose conditions over the unchanged customers drop rows before it applies
            maintained.refresh()
        assert maintained.reduced > 0, "no refresh dropped a row of the changed source"


def test_an_update_of_a_row_deletes_its_old_version_and_inserts_the_new(db: Database) -> None:
    rng = random.Random(8)
    with psycopg.connect(db.dsn) as conn:
        create_tables(conn, ["orders"], rng)
        maintained = Maintained(conn, "SELECT id, note, qty FROM orders")
        maintained.snapshot()
        conn.execute(
            "UPDATE orders SET note = 'changed', qty = qty + 1"
            " WHERE id = (SELECT min(id) FROM orders)"
        )
        conn.commit()
        maintained.stage(rng, noise=0)
        rows = maintained.delta_rows()
        assert sorted((weight, note) for _, weight, _, note, _ in rows) == [
            (-1, rows[0][3] if rows[0][1] == -1 else rows[1][3]),
            (1, "changed"),
        ]
        maintained.refresh()


def test_a_primary_key_update_deletes_the_old_row_id(db: Database) -> None:
    rng = random.Random(9)
    with psycopg.connect(db.dsn) as conn:
        create_tables(conn, ["orders"], rng)
        maintained = Maintained(conn, "SELECT id, note FROM orders")
        maintained.snapshot()
        conn.execute("UPDATE orders SET id = 1000 WHERE id = (SELECT min(id) FROM orders)")
        conn.commit()
        maintained.stage(rng, noise=0)
        assert sorted(weight for _, weight, *_ in maintained.delta_rows()) == [-1, 1]
        maintained.refresh()


def test_a_group_emptied_by_deletes_is_deleted(db: Database) -> None:
    rng = random.Random(10)
    with psycopg.connect(db.dsn) as conn:
        create_tables(conn, ["orders"], rng)
        maintained = Maintained(conn, "SELECT cid, count(*) FROM orders GROUP BY cid")
        maintained.snapshot()
        conn.execute("DELETE FROM orders WHERE cid = 1")
        conn.commit()
        maintained.stage(rng, noise=0)
        assert [action for _, action, *_ in maintained.delta_rows()] == ["D"]
        maintained.refresh()


def test_a_scalar_aggregate_keeps_its_row_when_the_table_empties(db: Database) -> None:
    rng = random.Random(11)
    with psycopg.connect(db.dsn) as conn:
        create_tables(conn, ["orders"], rng)
        maintained = Maintained(conn, "SELECT count(*) AS n, sum(qty) AS total FROM orders")
        maintained.snapshot()
        conn.execute("DELETE FROM orders")
        conn.commit()
        maintained.stage(rng, noise=0)
        maintained.refresh()
        assert conn.execute("SELECT n, total FROM st").fetchall() == [(0, None)]


def test_generated_sql_keeps_the_meaning_of_literals_and_operators(db: Database) -> None:
    query = (
        "SELECT id, 'it''s' AS quote, 'a\\b' AS backslash, $$x'y$$ AS dollar, E'\\t' AS tab,"
        " note || '-' AS concatenated, note ~ '^[ab]' AS matches, qty::numeric / 3 AS third,"
        " date_part('year', DATE '2020-02-01') AS year, 2 ^ qty AS power, qty % 3 AS modulo,"
        " -qty AS negated FROM orders -- a comment"
    )
    with psycopg.connect(db.dsn) as conn:
        create_tables(conn, ["orders"], random.Random(12))
        maintained = Maintained(conn, query)
        maintained.check("literals")
