"""The stored plan: what the catalog keeps of a compiled plan, and reading older versions."""

from __future__ import annotations

import json

import pytest

from dvm.catalog import CatalogFacts, Column, SourceTable
from dvm.compile import compile_query
from dvm.plan import ApplyStrategy
from dvm.reason import Reason
from dvm.stored import VERSION, StoredPlan, UnreadablePlan, refresh_apply_sql, stored_plan

ORDERS = SourceTable(
    16384, "public", "orders", (Column("id", "integer"), Column("status", "text")), ("id",)
)
CUSTOMERS = SourceTable(16390, "public", "customers", (Column("id", "integer"),), ("id",))
CATALOG = CatalogFacts({("public", "orders"): ORDERS, ("public", "customers"): CUSTOMERS})


DISTINCT = Reason("DISTINCT", "not differentiable yet (needs row multiplicities)")


def plan(query: str) -> StoredPlan:
    return stored_plan(compile_query(query, CATALOG, ("public", "st")))


def test_a_plan_reads_back_equal_to_itself_whatever_the_order_of_its_keys() -> None:
    joined = plan("SELECT o.id FROM orders o JOIN customers c ON c.id = o.id")
    document = json.loads(joined.to_json())
    reordered = {key: document[key] for key in reversed(list(document))}
    reordered["columns_read"] = dict(reversed(list(document["columns_read"].items())))
    assert StoredPlan.from_json(json.dumps(reordered)) == joined
    assert document["version"] == VERSION


def test_reasons_are_kept_as_data() -> None:
    distinct = plan("SELECT DISTINCT ON (status) status FROM orders")
    assert distinct.apply_strategy is ApplyStrategy.BAG and not distinct.differentiable
    back = StoredPlan.from_json(distinct.to_json())
    assert back.reasons == (Reason("DISTINCT ON", "not differentiable yet"),)


def test_a_document_of_the_first_release_is_read_by_its_own_rule() -> None:
    document = json.loads(plan("SELECT DISTINCT status FROM orders").to_json())
    del document["version"]
    document["reasons"] = ["DISTINCT: not differentiable yet (needs row multiplicities)"]
    back = StoredPlan.from_json(document)
    assert back.reasons == (
        Reason("DISTINCT", "not differentiable yet (needs row multiplicities)"),
    )


def test_a_plan_from_a_newer_pgtrickle_is_refused_rather_than_misread() -> None:
    document = json.loads(plan("SELECT id FROM orders").to_json())
    document["version"] = VERSION + 1
    with pytest.raises(UnreadablePlan) as caught:
        StoredPlan.from_json(document)
    assert "newer" in (caught.value.detail or "") and caught.value.hint


def test_a_damaged_plan_is_refused_with_a_hint() -> None:
    with pytest.raises(UnreadablePlan) as caught:
        StoredPlan.from_json({"version": VERSION, "query": "SELECT 1"})
    assert caught.value.hint and "re-create" in caught.value.hint


JOIN = "SELECT o.id, o.status FROM orders o JOIN customers c ON c.id = o.id"


def test_a_plan_keeps_the_catalog_facts_of_what_it_reads_and_reads_them_back() -> None:
    joined = plan(JOIN)
    assert joined.catalog is not None
    assert set(joined.catalog.tables) == {("public", "orders"), ("public", "customers")}
    assert StoredPlan.from_json(joined.to_json()).catalog == joined.catalog


def test_a_refresh_in_which_one_source_changed_reads_the_other_as_its_table() -> None:
    joined = plan(JOIN)
    assert joined.apply_sql is not None
    customers_before = 'SELECT "c"."id", 1 AS "__pgt_w" FROM "public"."customers" AS "c" UNION ALL'
    assert customers_before in joined.apply_sql
    compiled = refresh_apply_sql(joined, JOIN, ("public", "st"), frozenset({ORDERS.oid}))
    assert compiled is not None
    only_orders, indexed = compiled.apply_sql, compiled.indexed_deltas
    assert customers_before not in only_orders
    assert '"pg_temp"."__pgt_delta_16390' not in only_orders  # nor the empty delta
    # nothing looks the orders' delta up by key: it is read from the plain temp table
    assert indexed == frozenset()
    assert '"pg_temp"."__pgt_delta_16384_p"' in only_orders


def test_a_refresh_of_two_changed_sources_subtracts_the_product_of_their_deltas() -> None:
    joined = plan(JOIN)
    compiled = refresh_apply_sql(
        joined, JOIN, ("public", "st"), frozenset({ORDERS.oid, CUSTOMERS.oid})
    )
    assert compiled is not None
    both = compiled.apply_sql
    assert '-("o"."__pgt_w" * "c"."__pgt_w")' in both
    assert "UNION ALL" in both and "NOT EXISTS" not in both  # no state before the refresh


def test_a_plan_without_facts_or_compiled_otherwise_keeps_its_stored_statement() -> None:
    document = json.loads(plan(JOIN).to_json())
    document["version"] = 2
    del document["catalog"]
    older = StoredPlan.from_json(document)
    assert refresh_apply_sql(older, JOIN, ("public", "st"), frozenset({ORDERS.oid})) is None
    renamed = "SELECT o.id AS key, o.status FROM orders o JOIN customers c ON c.id = o.id"
    assert refresh_apply_sql(plan(JOIN), renamed, ("public", "st"), frozenset()) is None


def test_a_refresh_stages_of_a_changed_source_only_rows_its_unchanged_partner_can_match() -> None:
    query = (
        "SELECT o.id, c.id AS customer FROM orders o JOIN customers c ON c.id = o.id"
        " WHERE o.status = 'paid' AND c.id > 10"
    )
    compiled = refresh_apply_sql(plan(query), query, ("public", "st"), frozenset({ORDERS.oid}))
    assert compiled is not None
    assert dict(compiled.reduced_filters) == {
        ORDERS.oid: '"status" = \'paid\' AND "id" IN (SELECT "__pgt_r1"."id"'
        ' FROM "public"."customers" AS "__pgt_r1" WHERE "__pgt_r1"."id" > 10)'
    }
    # both changed: neither can say which of the other's rows matter
    both = refresh_apply_sql(
        plan(query), query, ("public", "st"), frozenset({ORDERS.oid, CUSTOMERS.oid})
    )
    assert both is not None and dict(both.reduced_filters) == {}


def test_a_plan_says_which_staged_deltas_its_statement_reads_from_the_indexed_tables() -> None:
    tested = plan(
        "SELECT o.id FROM orders o WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = o.id)"
    )
    assert tested.indexed_deltas == (CUSTOMERS.oid,)
    assert StoredPlan.from_json(tested.to_json()).indexed_deltas == (CUSTOMERS.oid,)
    # before version 4 every statement read them all from the indexed tables
    document = json.loads(tested.to_json())
    document["version"] = 3
    del document["indexed_deltas"]
    older = StoredPlan.from_json(document)
    assert older.indexed_deltas is None
