"""Catalog facts the compiler needs about source tables, gathered by the caller.

dvm never reads the catalog itself: the service looks tables up (``format_type()`` text for
types, primary key columns in key order) and passes them in, so compiling stays pure.

>>> t = SourceTable(16384, "public", "t", (Column("id", "integer", True),), ("id",))
>>> CatalogFacts({("public", "t"): t}).lookup(None, "t") is t
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    """``format_type()`` text, e.g. ``integer``, ``numeric(12,2)``, ``double precision``."""
    not_null: bool = False


@dataclass(frozen=True)
class SourceTable:
    oid: int
    schema: str
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    """Empty for a keyless source: its rows have no identity (bag semantics)."""

    @property
    def keyed(self) -> bool:
        return bool(self.primary_key)

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    def column(self, name: str) -> Column | None:
        for column in self.columns:
            if column.name == name:
                return column
        return None

    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)


@dataclass(frozen=True)
class View:
    """A view a query may read: expanded to its definition and differentiated through."""

    schema: str
    name: str
    definition: str
    """``pg_get_viewdef()`` text."""
    columns: tuple[str, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class CatalogFacts:
    tables: Mapping[tuple[str, str], SourceTable]
    search_path: tuple[str, ...] = ("public",)
    views: Mapping[tuple[str, str], View] = field(default_factory=dict)

    def lookup_relation(self, schema: str | None, name: str) -> SourceTable | View | None:
        """The table or view ``schema.name``, or the first ``name`` along the search path."""
        schemas = (schema,) if schema is not None else self.search_path
        for candidate in schemas:
            found = self.tables.get((candidate, name)) or self.views.get((candidate, name))
            if found is not None:
                return found
        return None

    def lookup(self, schema: str | None, name: str) -> SourceTable | None:
        """The table ``schema.name``, or the first ``name`` along the search path."""
        if schema is not None:
            return self.tables.get((schema, name))
        for candidate in self.search_path:
            table = self.tables.get((candidate, name))
            if table is not None:
                return table
        return None


def facts_to_json(facts: CatalogFacts) -> dict[str, Any]:
    """``facts`` as a JSON document (``facts_from_json`` reads it back)."""
    return {
        "search_path": list(facts.search_path),
        "tables": [
            {
                "oid": t.oid,
                "schema": t.schema,
                "name": t.name,
                "columns": [[c.name, c.type, c.not_null] for c in t.columns],
                "primary_key": list(t.primary_key),
            }
            for t in facts.tables.values()
        ],
        "views": [
            {
                "schema": v.schema,
                "name": v.name,
                "definition": v.definition,
                "columns": list(v.columns),
            }
            for v in facts.views.values()
        ],
    }


def facts_from_json(document: Mapping[str, Any]) -> CatalogFacts:
    tables = [
        SourceTable(
            int(t["oid"]),
            str(t["schema"]),
            str(t["name"]),
            tuple(Column(str(n), str(ty), bool(nn)) for n, ty, nn in t["columns"]),
            tuple(str(k) for k in t["primary_key"]),
        )
        for t in document["tables"]
    ]
    views = [
        View(str(v["schema"]), str(v["name"]), str(v["definition"]), tuple(v["columns"]))
        for v in document["views"]
    ]
    return CatalogFacts(
        tables={(t.schema, t.name): t for t in tables},
        search_path=tuple(str(s) for s in document["search_path"]),
        views={(v.schema, v.name): v for v in views},
    )
