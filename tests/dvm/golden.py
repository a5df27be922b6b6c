"""Golden plan fixtures, as sqlglot's optimizer fixtures: a query in, what it compiles to out.

``tests/dvm/fixtures/plans.yaml`` holds a catalog and the cases. Each case records what the
compiler makes of its query: the explain text, the apply strategy, whether it is
differentiable, the delta SQL and the guard SQL (pretty-printed, so that a diff shows what
changed in the generated SQL). ``execute`` (default: whether the plan is differentiable) says
whether ``test_golden`` also maintains the query over random changes on the servers; a catalog
table's ``rows`` and ``ids`` size its random contents (``tests.dvm.harness.RandomTable``).

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
from dvm.dialect import parse_one, render_pretty

PLANS = Path(__file__).parent / "fixtures" / "plans.yaml"
STORAGE = ("public", "st")


@dataclass(frozen=True)
class Case:
    name: str
    query: str
    differentiable: bool = False
    """This and what follows are what the compiler said: a new case needs a name and a query,
    the rewrite fills in the rest."""
    strategy: str = ""
    explain: str = ""
    delta: str | None = None
    """``plan.delta_query``, pretty-printed; none for a plan that is not differentiable."""
    guard: str | None = None
    """``plan.guard_query``, pretty-printed, for the plans that have one (TopK)."""
    execute: bool | None = None
    """Maintain the query over random changes; unset: whether the plan is differentiable."""

    @property
    def executed(self) -> bool:
        return self.differentiable if self.execute is None else self.execute

    def recorded(self) -> dict[str, Any]:
        """The case as plans.yaml spells it: ``execute`` when set, the SQL when there is some."""
        fields: dict[str, Any] = {"name": self.name, "query": self.query}
        if self.execute is not None:
            fields["execute"] = self.execute
        fields |= {
            "differentiable": self.differentiable,
            "strategy": self.strategy,
            "explain": self.explain,
        }
        for name, text in (("delta", self.delta), ("guard", self.guard)):
            if text is not None:
                fields[name] = text
        return fields


def load() -> tuple[dict[str, Any], CatalogFacts, list[Case]]:
    document = yaml.safe_load(PLANS.read_text())
    cases = [Case(**case) for case in document["plans"]]
    names = [case.name for case in cases]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{PLANS}: case names used twice: {', '.join(duplicates)}")
    return document, catalog(document["catalog"]), cases


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
    document["plans"] = [case.recorded() for case in cases]
    PLANS.write_text(
        yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    )


def pretty(query: str | None) -> str | None:
    """Generated SQL one clause a line, as the fixtures record it."""
    return None if query is None else render_pretty(parse_one(query)) + "\n"


def compiled(case: Case, facts: CatalogFacts) -> Case:
    """The case as the current compiler sees it (``execute`` is the fixture's own)."""
    plan = compile_query(case.query, facts, STORAGE)
    return Case(
        case.name,
        case.query,
        plan.differentiable,
        plan.apply_strategy.value,
        plan.explain() + "\n",
        pretty(plan.delta_query),
        pretty(plan.guard_query),
        case.execute,
    )


def _rewrite() -> None:
    document, facts, cases = load()
    out = []
    for case in cases:
        try:
            out.append(compiled(case, facts))
        except Exception as error:
            raise SystemExit(f"case {case.name}: {type(error).__name__}: {error}") from error
    save(document, out)
    print(f"rewrote {PLANS} ({len(cases)} cases); review the diff")


if __name__ == "__main__":
    _rewrite()
