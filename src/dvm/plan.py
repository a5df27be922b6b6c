"""What the compiler hands the refresh executor: a DeltaPlan.

>>> from dvm.catalog import CatalogFacts, Column, SourceTable
>>> from dvm.compile import compile_query
>>> columns = (Column("id", "integer"), Column("v", "integer"))
>>> t = SourceTable(16384, "public", "t", columns, ("id",))
>>> plan = compile_query("select v from t", CatalogFacts({("public", "t"): t}), ("public", "st"))
>>> print(plan.explain())
refresh: differential
apply: bag (row id: hash of the output values)
columns: v
hidden: __pgt_row_id
sources: public.t (oid 16384) reads id, v
Project "t"."v"
└─ Scan public.t AS t [keyed by id] reads id, v
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from sqlglot import exp

from dvm import apply
from dvm.catalog import CatalogFacts, SourceTable
from dvm.dialect import parse_one, render
from dvm.kept import Kept
from dvm.operators import Aggregate, AggregateClass, Operator, explain_tree, walk
from dvm.reason import Reason
from dvm.zset import GUARD

ROW_ID_SETTINGS: tuple[tuple[str, str], ...] = (
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
)
"""Settings that change the text of values, hence row ids (``hashtextextended(ROW(..)::text)``).

Every session that populates a storage table or applies a delta must use these values (e.g.
``SET LOCAL`` in the refresh transaction), and one unchanging ``TimeZone``: otherwise the
same row gets another id and keyed storage collects duplicates.
"""


class RefreshMode(StrEnum):
    FULL = "full"
    DIFFERENTIAL = "differential"
    IMMEDIATE = "immediate"
    AUTO = "auto"


class ApplyStrategy(StrEnum):
    KEYED = "keyed"
    """Row ids are unique in storage; the delta upserts or deletes one row per id (MERGE)."""
    BAG = "bag"
    """Duplicates allowed (a keyless source); the delta adds or removes copies."""


@dataclass(frozen=True)
class DeltaPlan:
    query: str
    """The defining query, normalized (see ``dvm.compile.normalize``)."""
    sources: tuple[SourceTable, ...]
    columns_read: Mapping[int, tuple[str, ...]]
    user_columns: tuple[str, ...]
    hidden_columns: tuple[str, ...]
    storage_query: str
    delta_query: str | None
    apply_strategy: ApplyStrategy
    differentiable: bool
    reasons: tuple[Reason, ...]
    """Why a plan is not differentiable; notes (strategies, ignored clauses) when it is."""
    storage: tuple[str, str]
    """(schema, name) of the storage table, as given to ``compile_query``."""
    tree: Operator | None = field(default=None, compare=False)
    """The operator tree of a differentiable plan."""
    guard_query: str | None = None
    """One boolean: whether ``delta_query`` is valid for this refresh (TopK); else FULL."""
    catalog: CatalogFacts | None = field(default=None, compare=False)
    """The catalog facts the plan was compiled from, only the relations the query reads:
    enough to compile it again, for one refresh (see ``compile_query``'s ``changed``)."""
    indexed_deltas: frozenset[int] = frozenset()
    """The sources (oids) whose staged delta the delta looks up by key: it reads them from
    the indexed temp tables, the others' from the plain ones (``delta_relation``)."""
    staging_filters: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    """Source oid -> the condition (over its bare column names) a changed row must meet to be
    staged: the others cannot change what the query shows (``dvm.relevance``)."""
    reduced_filters: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    """For a plan compiled for one refresh (``compile_query``'s ``changed``): source oid ->
    the condition a staged row must meet, given which sources did not change, with
    subqueries over them (``dvm.relevance.reduced_rows``); it holds at the refresh's
    snapshot only."""
    kept: Kept | None = None
    """A TopK over an aggregate: the aggregate of every group, kept in a hidden table that
    the delta is applied to (``dvm.kept``); the stream table is then made its first rows."""

    @property
    def aux_columns(self) -> tuple[str, ...]:
        return self.hidden_columns[1:]

    def explain(self) -> str:
        """The operator tree and the strategies, as ``pgtrickle explain`` prints them."""
        lines = [
            f"refresh: {'differential' if self.differentiable else 'full only'}",
            f"apply: {self.apply_strategy.value} (row id: {self._row_identity()})",
            f"columns: {', '.join(self.user_columns)}",
            f"hidden: {', '.join(self.hidden_columns)}",
        ]
        for source in self.sources:
            read = ", ".join(self.columns_read.get(source.oid, ()))
            lines.append(f"sources: {source.qualified_name} (oid {source.oid}) reads {read}")
        for source in self.sources:
            condition = self.staging_filters.get(source.oid)
            if condition is not None:
                lines.append(f"staged: changes of {source.qualified_name} where {condition}")
        lines.extend(f"note: {reason}" for reason in self.reasons)
        if self.guard_query is not None:
            lines.append("guard: the first rows are checked at each refresh (else full)")
        if self.kept is not None:
            schema, name = self.kept.table
            lines.append(
                f'kept: every group in "{schema}"."{name}" (hidden:'
                f" {', '.join(self.kept.hidden_columns)}); the stream table is its first rows"
            )
        if self.tree is not None:
            lines.extend(explain_tree(self.tree))
        return "\n".join(lines)

    def aggregate_classes(self) -> list[tuple[str, AggregateClass, str]]:
        """(call as written, class, why) of every aggregate the plan maintains."""
        if self.tree is None:
            return []
        return [
            (render(call.expression), call.kind, call.why)
            for node in walk(self.tree)
            if isinstance(node, Aggregate)
            for call in node.calls
        ]

    def _row_identity(self) -> str:
        node = self.tree
        if node is None:
            return "hash of the whole row"
        if self.kept is not None:
            return "hash of the group key values in the kept table, of the output values here"
        if isinstance(node, Aggregate) and self.apply_strategy is ApplyStrategy.KEYED:
            return "hash of the group key values" if node.group_by else "constant (one row)"
        return "hash of the output values"

    def apply_sql(self) -> str:
        """ONE statement applying ``delta_query`` to the storage table.

        KEYED: a MERGE on ``__pgt_row_id``. BAG: data-modifying CTEs that delete and insert
        copies, returning one row ``(deleted, inserted)``.
        """
        if self.delta_query is None:
            raise ValueError("a plan that is not differentiable has no delta to apply")
        delta = parse_one(self.delta_query)
        assert isinstance(delta, exp.Query)
        if self.kept is not None:
            # the delta is the aggregate's, applied to the kept table
            kept_columns = [*self.kept.columns, *self.kept.aux_columns]
            return render(apply.merge(self.kept.table, delta, kept_columns))
        columns = [*self.user_columns, *self.aux_columns]
        if self.apply_strategy is ApplyStrategy.KEYED:
            return render(apply.merge(self.storage, delta, columns))
        guard = GUARD if self.guard_query is not None else None
        return render(apply.bag(self.storage, delta, columns, guard=guard))
