"""Golden plan fixtures: "defining query -> explain, strategy, differentiable" pairs.

``tests/dvm/fixtures/plans.yaml`` holds a catalog and the pairs; ``test_golden`` checks them all.
``python -m tests.dvm.golden`` rewrites the expectations from the current compiler (then
review the diff); the test itself only ever compares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dvm.catalog import CatalogFacts, Column, SourceTable
from dvm.compile import compile_query

PLANS = Path(__file__).parent / "fixtures" / "plans.yaml"
STORAGE = ("public", "st")


@dataclass(frozen=True)
class Case:
    name: str
    query: str
    differentiable: bool
    strategy: str
    explain: str


def load() -> tuple[dict[str, Any], CatalogFacts, list[Case]]:
    document = yaml.safe_load(PLANS.read_text())
    return document, catalog(document["catalog"]), [Case(**case) for case in document["plans"]]


def catalog(spec: dict[str, Any]) -> CatalogFacts:
    tables = {}
    for table in spec["tables"]:
        columns = tuple(
            Column(c["name"], c["type"], bool(c.get("not_null", False))) for c in table["columns"]
        )
        source = SourceTable(
            table["oid"],
            table["schema"],
            table["name"],
            columns,
            tuple(table.get("primary_key", ())),
        )
        tables[(source.schema, source.name)] = source
    return CatalogFacts(tables, tuple(spec.get("search_path", ["public"])))


class _Dumper(yaml.SafeDumper):
    pass


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def save(document: dict[str, Any], cases: list[Case]) -> None:
    document = dict(document)
    document["plans"] = [case.__dict__ for case in cases]
    PLANS.write_text(
        yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    )


def compiled(cases: list[Case], facts: CatalogFacts) -> list[Case]:
    """The cases as the current compiler sees them."""
    out = []
    for case in cases:
        plan = compile_query(case.query, facts, STORAGE)
        out.append(
            Case(
                case.name,
                case.query,
                plan.differentiable,
                plan.apply_strategy.value,
                plan.explain() + "\n",
            )
        )
    return out


if __name__ == "__main__":
    DOCUMENT, FACTS, CASES = load()
    save(DOCUMENT, compiled(CASES, FACTS))
    print(f"rewrote {PLANS}; review the diff")
