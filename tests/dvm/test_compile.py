"""Parsing, name resolution and refusals: what the compiler accepts, and how it says no."""

from __future__ import annotations

import pytest

from dvm.catalog import CatalogFacts, Column, SourceTable
from dvm.compile import compile_query, delta_relation, effective_mode
from dvm.errors import InvalidQuery, UnsupportedQuery
from dvm.plan import ApplyStrategy, DeltaPlan, RefreshMode

ORDERS = SourceTable(
    100,
    "public",
    "orders",
    (
        Column("id", "integer", True),
        Column("cid", "integer"),
        Column("amount", "numeric(12,2)"),
        Column("qty", "integer"),
        Column("note", "text"),
    ),
    ("id",),
)
CUSTOMERS = SourceTable(
    101,
    "public",
    "customers",
    (Column("id", "integer", True), Column("name", "text"), Column("region", "text")),
    ("id",),
)
EVENTS = SourceTable(
    102, "public", "events", (Column("kind", "text"), Column("w", "double precision"))
)
ODD = SourceTable(
    103, "sales", "Odd", (Column("Id", "integer", True), Column("select", "integer")), ("Id",)
)
CATALOG = CatalogFacts(
    {
        ("public", "orders"): ORDERS,
        ("public", "customers"): CUSTOMERS,
        ("public", "events"): EVENTS,
        ("sales", "Odd"): ODD,
    }
)


def plan(query: str, catalog: CatalogFacts = CATALOG) -> DeltaPlan:
    return compile_query(query, catalog, ("public", "st"))


# Not a single SELECT: InvalidQuery with message, detail and hint.


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("SELECT 1; SELECT 2", "one statement, got 2"),
        ("", "one statement, got 0"),
        ("INSERT INTO orders (id) VALUES (1)", "got INSERT"),
        ("UPDATE orders SET qty = 1", "got UPDATE"),
        ("DELETE FROM orders", "got DELETE"),
        ("CREATE TABLE x (a int)", "got CREATE"),
        ("DROP TABLE orders", "got DROP"),
    ],
)
def test_anything_but_one_select_is_an_invalid_query(query: str, named: str) -> None:
    with pytest.raises(InvalidQuery) as raised:
        plan(query)
    assert named in raised.value.message
    assert raised.value.hint


def test_a_trailing_semicolon_and_comments_are_fine() -> None:
    assert plan("/* a */ SELECT id, -- b\n note FROM orders; -- c").user_columns == ("id", "note")


def test_a_syntax_error_is_an_invalid_query_with_the_parser_detail() -> None:
    with pytest.raises(InvalidQuery) as raised:
        plan("SELECT FROM WHERE")
    assert "syntax error" in raised.value.message
    assert raised.value.detail and raised.value.hint


def test_select_into_is_refused() -> None:
    with pytest.raises(InvalidQuery, match="SELECT INTO"):
        plan("SELECT * INTO copy FROM orders")


def test_an_unknown_table_is_named_with_a_hint_about_the_search_path() -> None:
    with pytest.raises(InvalidQuery) as raised:
        plan("SELECT * FROM ordrs")
    assert '"ordrs"' in raised.value.message
    assert "search_path" in (raised.value.hint or "")
    assert "public" in (raised.value.detail or "")


def test_an_unknown_table_inside_a_subquery_is_named_too() -> None:
    with pytest.raises(InvalidQuery, match="nope"):
        plan("SELECT * FROM orders WHERE cid IN (SELECT id FROM nope)")


def test_an_unknown_column_names_the_column_and_its_table() -> None:
    with pytest.raises(InvalidQuery) as raised:
        plan("SELECT amunt FROM orders")
    assert '"amunt"' in raised.value.message and "public.orders" in raised.value.message
    assert "amount" in (raised.value.detail or "")


def test_an_unknown_qualified_column_names_the_column_and_its_table() -> None:
    with pytest.raises(InvalidQuery, match=r'"nam" does not exist in table public\.customers'):
        plan("SELECT c.nam FROM orders o JOIN customers c ON o.cid = c.id")


def test_an_unknown_alias_is_a_missing_from_entry() -> None:
    with pytest.raises(InvalidQuery, match='missing FROM-clause entry for table "x"'):
        plan("SELECT x.id FROM orders")


def test_a_using_column_missing_on_one_side_is_refused() -> None:
    with pytest.raises(InvalidQuery, match=r'"region" specified in USING .* right table'):
        plan("SELECT * FROM customers JOIN orders USING (region)")


def test_an_ambiguous_column_is_refused() -> None:
    with pytest.raises(InvalidQuery, match='"id" is ambiguous'):
        plan("SELECT id FROM orders o JOIN customers c ON o.cid = c.id")


def test_unknown_columns_are_found_even_in_queries_that_are_not_differentiable() -> None:
    with pytest.raises(InvalidQuery, match='"nope"'):
        plan("SELECT DISTINCT nope FROM orders")


def test_duplicate_output_names_are_refused() -> None:
    with pytest.raises(InvalidQuery, match='"count" appears more than once'):
        plan("SELECT count(*), count(qty) FROM orders")


def test_hidden_column_names_are_reserved() -> None:
    with pytest.raises(InvalidQuery, match="reserved"):
        plan("SELECT id AS __pgt_row_id FROM orders")


def test_aggregates_in_where_are_refused() -> None:
    with pytest.raises(InvalidQuery, match="not allowed in WHERE"):
        plan("SELECT cid FROM orders WHERE sum(qty) > 1 GROUP BY cid")


def test_parameters_are_refused() -> None:
    with pytest.raises(InvalidQuery, match=r"parameter \$1"):
        plan("SELECT id FROM orders WHERE qty = $1")


def test_interval_literals_that_sqlglot_would_mangle_are_refused() -> None:
    with pytest.raises(UnsupportedQuery, match="interval"):
        plan("SELECT id FROM orders WHERE qty < 3 AND now() - interval '90' day (3) < now()")


# Not differentiable: the plan says which construct and why; FULL still works.


REFUSED = [
    ("SELECT DISTINCT ON (cid) cid, id FROM orders", "DISTINCT ON"),
    ("SELECT id FROM orders ORDER BY id OFFSET 5", "OFFSET without LIMIT"),
    ("SELECT id FROM orders LIMIT 5", "LIMIT without ORDER BY"),
    ("SELECT id, row_number() OVER (ORDER BY id) FROM orders", "window function row_number()"),
    ("SELECT id, random() AS r FROM orders", "random()"),
    ("SELECT id, now() AS t FROM orders", "now()"),
    ("SELECT id FROM orders WHERE current_timestamp > '2020-01-01'", "current_timestamp()"),
    ("SELECT id, clock_timestamp() AS t FROM orders", "clock_timestamp()"),
    ("SELECT id, nextval('s') AS n FROM orders", "nextval()"),
    ("SELECT id, gen_random_uuid() AS u FROM orders", "gen_random_uuid()"),
    ("SELECT cid FROM orders GROUP BY ROLLUP (cid)", "ROLLUP"),
    ("SELECT cid FROM orders GROUP BY GROUPING SETS ((cid), ())", "GROUPING SETS"),
    ("SELECT 1 AS one", "SELECT without FROM"),
    ("SELECT x FROM generate_series(1, 3) AS x", "function or VALUES in FROM"),
    ("SELECT id, qty FROM orders GROUP BY id", "outside GROUP BY"),
    ("WITH RECURSIVE r AS (SELECT 1 AS n) SELECT n FROM r", "WITH RECURSIVE"),
    ("SELECT id FROM orders o WHERE o.qty > 1 OR EXISTS (SELECT 1 FROM customers)", "EXISTS"),
    ("SELECT id FROM orders WHERE qty = ANY (SELECT qty FROM orders)", "ANY/ALL"),
    (
        "SELECT c.id, (SELECT max(o.qty) FROM orders o WHERE o.cid > c.id) FROM customers c",
        "correlated aggregate subquery",
    ),
]


@pytest.mark.parametrize(("query", "construct"), REFUSED)
def test_a_refused_construct_is_named_in_the_reasons(query: str, construct: str) -> None:
    compiled = plan(query)
    assert not compiled.differentiable
    assert compiled.delta_query is None
    assert any(construct in reason.construct for reason in compiled.reasons), compiled.reasons
    assert compiled.storage_query.startswith("SELECT HASHTEXTEXTENDED(CAST(ROW(")


@pytest.mark.parametrize(("query", "construct"), REFUSED)
def test_differential_mode_refuses_with_message_detail_and_hint(query: str, construct: str) -> None:
    with pytest.raises(UnsupportedQuery) as raised:
        effective_mode(plan(query), RefreshMode.DIFFERENTIAL)
    error = raised.value
    assert construct.split("(")[0].split()[0] in error.message
    assert error.detail and construct in error.detail
    assert error.hint and "full" in error.hint


def test_auto_mode_falls_back_to_full_with_the_reason() -> None:
    mode, reasons = effective_mode(
        plan("SELECT DISTINCT ON (cid) cid FROM orders"), RefreshMode.AUTO
    )
    assert mode is RefreshMode.FULL
    assert [reason.construct for reason in reasons] == ["DISTINCT ON"]


def test_auto_mode_is_differential_when_possible() -> None:
    assert effective_mode(plan("SELECT id FROM orders"), RefreshMode.AUTO) == (
        RefreshMode.DIFFERENTIAL,
        (),
    )


def test_full_mode_is_always_full() -> None:
    assert effective_mode(plan("SELECT id FROM orders"), RefreshMode.FULL) == (
        RefreshMode.FULL,
        (),
    )


def test_immediate_mode_is_not_supported_yet() -> None:
    with pytest.raises(UnsupportedQuery, match="immediate") as raised:
        effective_mode(plan("SELECT id FROM orders"), RefreshMode.IMMEDIATE)
    assert raised.value.hint == "use differential or auto"


def test_full_only_plans_name_their_outputs_even_through_subqueries_and_ctes() -> None:
    compiled = plan(
        "WITH big AS (SELECT * FROM orders WHERE qty > 3) "
        "SELECT b.*, c.name FROM big b JOIN customers c ON b.cid = c.id"
    )
    assert compiled.user_columns == ("id", "cid", "amount", "qty", "note", "name")
    assert [s.name for s in compiled.sources] == ["orders", "customers"]


def test_full_only_plans_of_set_operations_take_the_first_branch_names() -> None:
    compiled = plan("SELECT id AS k, random() FROM orders UNION SELECT id, 1 FROM customers")
    assert not compiled.differentiable
    assert compiled.user_columns == ("k", "random")
    assert compiled.apply_strategy is ApplyStrategy.BAG


def test_set_operations_take_the_first_branch_names() -> None:
    compiled = plan("SELECT id AS k FROM orders UNION SELECT id FROM customers")
    assert compiled.differentiable
    assert compiled.user_columns == ("k",)


def test_full_only_star_over_a_table_function_cannot_be_named() -> None:
    with pytest.raises(UnsupportedQuery, match="output columns"):
        plan("SELECT * FROM orders, generate_series(1, 3) AS g")


# What is accepted, and the notes that come with it.


def test_order_by_without_limit_is_accepted_and_noted() -> None:
    compiled = plan("SELECT id, note FROM orders ORDER BY note")
    assert compiled.differentiable
    assert any(reason.construct == "ORDER BY" for reason in compiled.reasons)
    assert "ORDER BY" not in compiled.storage_query


def test_having_recomputes_affected_groups() -> None:
    compiled = plan("SELECT cid, sum(qty) FROM orders GROUP BY cid HAVING count(*) > 1")
    assert compiled.differentiable
    assert compiled.hidden_columns == ("__pgt_row_id",)
    assert compiled.apply_strategy is ApplyStrategy.KEYED


def test_a_float_sum_recomputes_affected_groups() -> None:
    compiled = plan("SELECT kind, sum(w) FROM events GROUP BY kind")
    assert compiled.differentiable
    assert "GROUP_RESCAN (sum over floating point is inexact)" in compiled.explain()


def test_integer_and_numeric_sums_keep_auxiliary_columns() -> None:
    compiled = plan("SELECT cid, sum(qty * 2), avg(amount), count(note) FROM orders GROUP BY cid")
    assert compiled.reasons == ()
    assert compiled.hidden_columns == (
        "__pgt_row_id",
        "__pgt_count",
        "__pgt_sum_1",
        "__pgt_nn_1",
        "__pgt_sum_2",
        "__pgt_nn_2",
        "__pgt_nn_3",
    )


def test_a_keyless_source_without_aggregate_is_applied_as_a_bag() -> None:
    assert plan("SELECT kind FROM events").apply_strategy is ApplyStrategy.BAG
    joined = plan("SELECT o.id, e.kind FROM orders o JOIN events e ON e.w = o.qty")
    assert joined.apply_strategy is ApplyStrategy.BAG


def test_an_aggregate_over_a_keyless_source_is_keyed_by_its_group() -> None:
    assert plan("SELECT kind, count(*) FROM events GROUP BY kind").apply_strategy is (
        ApplyStrategy.KEYED
    )


def test_stars_expand_from_the_catalog_with_using_columns_first() -> None:
    compiled = plan("SELECT * FROM orders JOIN customers USING (id)")
    assert compiled.user_columns == ("id", "cid", "amount", "qty", "note", "name", "region")


def test_table_star_expands_one_table() -> None:
    compiled = plan("SELECT c.*, o.id AS order_id FROM orders o JOIN customers c ON o.cid = c.id")
    assert compiled.user_columns == ("id", "name", "region", "order_id")


def test_output_names_follow_postgresql() -> None:
    compiled = plan(
        "SELECT cid, count(*), sum(qty), avg(qty), sum(qty) / count(*), cid::text AS c2, "
        "max(qty) FROM orders GROUP BY cid"
    )
    assert compiled.user_columns == ("cid", "count", "sum", "avg", "?column?", "c2", "max")


def test_unquoted_names_fold_to_lower_case_and_quoted_names_keep_theirs() -> None:
    compiled = plan(
        'SELECT "Id", "select" AS "Sel", ID2 FROM sales."Odd" AS o, (SELECT 1 AS id2) s'
    )
    assert compiled.user_columns == ("Id", "Sel", "id2")
    assert plan('SELECT "Id" FROM sales."Odd"').differentiable
    with pytest.raises(InvalidQuery, match=r'"id" does not exist in table sales\.Odd'):
        plan('SELECT Id FROM sales."Odd"')


def test_tables_are_found_along_the_search_path() -> None:
    catalog = CatalogFacts(CATALOG.tables, search_path=("sales", "public"))
    assert plan('SELECT "Id" FROM "Odd"', catalog).sources == (ODD,)
    with pytest.raises(InvalidQuery, match='relation "Odd" does not exist'):
        plan('SELECT "Id" FROM "Odd"')


def test_sources_are_deduplicated_in_order_of_appearance() -> None:
    compiled = plan("SELECT a.id, b.id AS other FROM orders a JOIN orders b ON a.cid = b.cid")
    assert compiled.sources == (ORDERS,)


def test_columns_read_include_the_primary_key() -> None:
    compiled = plan("SELECT o.note, c.name FROM orders o JOIN customers c ON o.cid = c.id")
    assert dict(compiled.columns_read) == {100: ("id", "cid", "note"), 101: ("id", "name")}


def test_columns_read_of_a_keyless_source_are_only_those_named() -> None:
    assert dict(plan("SELECT kind FROM events").columns_read) == {102: ("kind",)}


def test_delta_relations_are_named_by_oid_and_whether_they_are_indexed() -> None:
    assert delta_relation(ORDERS) == "__pgt_delta_100"
    assert delta_relation(ORDERS, indexed=False) == "__pgt_delta_100_p"


def test_a_delta_reads_the_indexed_table_of_a_source_only_where_it_looks_rows_up_by_key() -> None:
    alone = plan("SELECT id FROM orders")
    assert alone.indexed_deltas == frozenset()
    assert '"pg_temp"."__pgt_delta_100_p"' in (alone.delta_query or "")
    assert '"pg_temp"."__pgt_delta_100"' not in (alone.delta_query or "")
    # a join's terms read a source before the refresh as its table and its negated delta
    joined = plan("SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.cid")
    assert joined.indexed_deltas == frozenset()
    # an existence test reads the customers before the refresh by key, once per order
    tested = plan(
        "SELECT o.id FROM orders o WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = o.cid)"
    )
    assert tested.indexed_deltas == frozenset({CUSTOMERS.oid})
    assert '"pg_temp"."__pgt_delta_101"' in (tested.delta_query or "")
    assert '"pg_temp"."__pgt_delta_101_p"' not in (tested.delta_query or "")
    assert '"pg_temp"."__pgt_delta_100_p"' in (tested.delta_query or "")


def test_user_identifiers_are_always_quoted_in_generated_sql() -> None:
    compiled = plan('SELECT "select" FROM sales."Odd" WHERE "select" > 0')
    assert '"Odd"."select"' in (compiled.delta_query or "")


def test_date_part_is_kept_as_written() -> None:
    compiled = plan("SELECT id, date_part('year', now()) AS y FROM orders")
    assert "DATE_PART('year'" in compiled.storage_query


def test_apply_sql_of_a_full_only_plan_is_refused() -> None:
    with pytest.raises(ValueError, match="not differentiable"):
        plan("SELECT DISTINCT ON (cid) cid FROM orders").apply_sql()
