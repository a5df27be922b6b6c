"""Golden plan fixtures: "defining query -> explain, strategy, differentiable" pairs.

``tests/dvm/fixtures/plans.yaml`` holds a catalog and the pairs; ``test_golden`` checks them all.
Set ``PGTRICKLE_REGEN_GOLDEN=1`` to rewrite the expectations from the current compiler (then
review the diff).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dvm.catalog import CatalogFacts, Column, SourceTable

PLANS = Path(__file__).parent / "fixtures" / "plans.yaml"


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
