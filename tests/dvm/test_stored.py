"""The stored plan: what the catalog keeps of a compiled plan, and reading older versions."""

from __future__ import annotations

import json

import pytest

from dvm.catalog import CatalogFacts, Column, SourceTable
from dvm.compile import compile_query
from dvm.plan import ApplyStrategy
from dvm.reason import Reason
from dvm.stored import VERSION, StoredPlan, UnreadablePlan, stored_plan

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
