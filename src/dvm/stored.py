"""The compiled plan as the catalog keeps it: what a refresh needs, frozen and versioned.

``StoredPlan`` is written to ``pgtrickle.stream_tables.plan`` (jsonb) when a stream table is
created and read back by every refresh. Its JSON carries a ``version``; a document written by
an older pgtrickle is read by the rule of its version, and one from a newer pgtrickle is
refused rather than misread.

>>> from dvm.catalog import CatalogFacts, Column, SourceTable
>>> from dvm.compile import compile_query
>>> t = SourceTable(16384, "public", "t", (Column("id", "integer"), Column("v", "text")), ("id",))
>>> plan = stored_plan(compile_query("select v from t", CatalogFacts({("public", "t"): t}),
...                                  ("public", "st")))
>>> plan.apply_strategy, plan.user_columns, dict(plan.columns_read)
(<ApplyStrategy.BAG: 'bag'>, ('v',), {16384: ('id', 'v')})
>>> StoredPlan.from_json(plan.to_json()) == plan
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dvm.catalog import CatalogFacts, facts_from_json, facts_to_json
from dvm.compile import compile_query
from dvm.errors import PgTrickleError
from dvm.kept import Kept
from dvm.plan import ApplyStrategy, DeltaPlan
from dvm.reason import Reason

VERSION = 5
"""The version this code writes. 0 is the untagged document of the first releases; 2 adds
the guard; 3 the catalog facts the plan was compiled from; 4 which staged deltas the apply
statement reads from the indexed temp tables; 5 the conditions a change must meet to be
staged."""


class UnreadablePlan(PgTrickleError, code="PGT211"):
    """A stored plan was written by a newer pgtrickle, or is damaged."""


@dataclass(frozen=True)
class StoredPlan:
    query: str
    """The normalized defining query: what check mode and FULL refreshes run."""
    storage_query: str
    """Row id, user columns and auxiliary columns of the whole result: populates storage."""
    delta_query: str | None
    apply_sql: str | None
    """ONE statement that applies the staged deltas to the storage table."""
    apply_strategy: ApplyStrategy
    user_columns: tuple[str, ...]
    hidden_columns: tuple[str, ...]
    columns_read: Mapping[int, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Source oid -> the columns the query reads of it (an UPDATE of others is no work)."""
    differentiable: bool = False
    reasons: tuple[Reason, ...] = ()
    explain: str = ""
    guard_query: str | None = None
    """One boolean: whether ``apply_sql`` is valid for this refresh (else refresh fully).
    Plans written since the apply statement returns the guard's verdict itself have none."""
    aggregates: tuple[tuple[str, str, str], ...] = ()
    """(call, class, why) of each aggregate maintained: what ``explain`` lists."""
    catalog: CatalogFacts | None = None
    """The facts of the relations the query reads, as compiled: what ``refresh_apply_sql``
    compiles the delta again from (plans of versions before 3 have none)."""
    indexed_deltas: tuple[int, ...] | None = None
    """The sources whose staged delta ``apply_sql`` reads from the indexed temp table, the
    others' from the plain one (``dvm.rules.scan.delta_relation``); None in plans of versions
    before 4, which read every one from the indexed table."""
    staging_filters: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    """Source oid -> the condition a changed row must meet to be staged (``dvm.relevance``);
    none in plans of versions before 5, which stage every change."""
    kept: Kept | None = None
    """The hidden table of every group of a TopK over an aggregate (``dvm.kept``), which
    ``apply_sql`` maintains; the stream table is then replaced by its first rows
    (``kept.top_sql``). None in plans of versions before 5."""

    @property
    def source_oids(self) -> tuple[int, ...]:
        return tuple(self.columns_read)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": VERSION,
                "query": self.query,
                "storage_query": self.storage_query,
                "delta_query": self.delta_query,
                "apply_sql": self.apply_sql,
                "apply_strategy": self.apply_strategy.value,
                "user_columns": list(self.user_columns),
                "hidden_columns": list(self.hidden_columns),
                "columns_read": {str(oid): list(cols) for oid, cols in self.columns_read.items()},
                "differentiable": self.differentiable,
                "reasons": [reason.to_json() for reason in self.reasons],
                "explain": self.explain,
                "guard_query": self.guard_query,
                "aggregates": [list(item) for item in self.aggregates],
                "catalog": facts_to_json(self.catalog) if self.catalog is not None else None,
                "indexed_deltas": (
                    list(self.indexed_deltas) if self.indexed_deltas is not None else None
                ),
                "staging_filters": {str(oid): c for oid, c in self.staging_filters.items()},
                "kept": _kept_to_json(self.kept) if self.kept is not None else None,
            },
            # jsonb keeps keys in an order of its own: sorted, two equal plans read the same
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, document: str | Mapping[str, Any]) -> StoredPlan:
        data: Mapping[str, Any] = json.loads(document) if isinstance(document, str) else document
        version = data.get("version", 0)
        if version not in (0, 1, 2, 3, 4, VERSION):
            raise UnreadablePlan(
                f"the stored plan has version {version}; this pgtrickle reads up to {VERSION}",
                detail="the stream table was created by a newer version of pgtrickle",
                hint="upgrade pgtrickle, or re-create the stream table with this version",
            )
        try:
            reasons = tuple(
                # version 0 kept each reason as the text "construct: why"
                Reason(*item.split(": ", 1)) if version == 0 else Reason.from_json(item)
                for item in data.get("reasons", ())
            )
            return cls(
                query=data["query"],
                storage_query=data["storage_query"],
                delta_query=data.get("delta_query"),
                apply_sql=data.get("apply_sql"),
                apply_strategy=ApplyStrategy(data["apply_strategy"]),
                user_columns=tuple(data["user_columns"]),
                hidden_columns=tuple(data["hidden_columns"]),
                columns_read=MappingProxyType(
                    {int(oid): tuple(cols) for oid, cols in data.get("columns_read", {}).items()}
                ),
                differentiable=bool(data.get("differentiable", False)),
                reasons=reasons,
                explain=str(data.get("explain", "")),
                guard_query=data.get("guard_query"),
                aggregates=tuple(
                    (str(call), str(kind), str(why))
                    for call, kind, why in data.get("aggregates", ())
                ),
                catalog=(
                    facts_from_json(data["catalog"]) if data.get("catalog") is not None else None
                ),
                indexed_deltas=(
                    tuple(int(oid) for oid in data["indexed_deltas"])
                    if data.get("indexed_deltas") is not None
                    else None
                ),
                staging_filters=MappingProxyType(
                    {int(oid): str(c) for oid, c in data.get("staging_filters", {}).items()}
                ),
                kept=_kept_from_json(data["kept"]) if data.get("kept") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise UnreadablePlan(
                "the stored plan of a stream table cannot be read",
                detail=f"{type(error).__name__}: {error}",
                hint="re-create the stream table (change its query, or drop and apply it)",
            ) from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredPlan):
            return NotImplemented
        return self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())


def stored_plan(plan: DeltaPlan) -> StoredPlan:
    """What of a compiled plan a refresh needs."""
    return StoredPlan(
        query=plan.query,
        storage_query=plan.storage_query,
        delta_query=plan.delta_query,
        apply_sql=plan.apply_sql() if plan.delta_query else None,
        apply_strategy=plan.apply_strategy,
        user_columns=plan.user_columns,
        hidden_columns=plan.hidden_columns,
        columns_read=MappingProxyType(dict(plan.columns_read)),
        differentiable=plan.differentiable,
        reasons=plan.reasons,
        explain=plan.explain(),
        # the apply statement evaluates the guard itself (a third value: valid)
        guard_query=None,
        aggregates=tuple((call, kind.value, why) for call, kind, why in plan.aggregate_classes()),
        catalog=plan.catalog if plan.differentiable else None,
        indexed_deltas=tuple(sorted(plan.indexed_deltas)),
        staging_filters=MappingProxyType(dict(plan.staging_filters)),
        kept=plan.kept,
    )


def _kept_to_json(kept: Kept) -> dict[str, Any]:
    return {
        "table": list(kept.table),
        "storage_query": kept.storage_query,
        "columns": list(kept.columns),
        "hidden_columns": list(kept.hidden_columns),
        "order": [list(item) for item in kept.order] if kept.order is not None else None,
        "top_sql": kept.top_sql,
    }


def _kept_from_json(data: Mapping[str, Any]) -> Kept:
    schema, name = data["table"]
    order = data.get("order")
    return Kept(
        table=(str(schema), str(name)),
        storage_query=str(data["storage_query"]),
        columns=tuple(data["columns"]),
        hidden_columns=tuple(data["hidden_columns"]),
        order=(
            tuple((str(c), bool(d), bool(n)) for c, d, n in order) if order is not None else None
        ),
        top_sql=str(data["top_sql"]),
    )


@dataclass(frozen=True)
class RefreshStatement:
    """What a refresh in which only some sources changed runs (``refresh_apply_sql``)."""

    apply_sql: str
    indexed_deltas: frozenset[int]
    """The sources whose staged delta it reads from the indexed temp table."""
    reduced_filters: Mapping[int, str]
    """Source oid -> the condition a staged row must meet at the refresh's snapshot, given
    the sources that did not change (``dvm.relevance.reduced_rows``)."""


def refresh_apply_sql(
    plan: StoredPlan, query: str, storage: tuple[str, str], changed: frozenset[int]
) -> RefreshStatement | None:
    """The apply statement for one refresh in which only the sources ``changed`` (oids)
    staged rows: the delta of ``query`` (as declared: the normalized text may name its
    outputs otherwise) compiled again for them (``compile_query``'s ``changed``). None when
    the plan cannot be compiled again as it was (no facts stored, or this compiler makes
    another storage of them): then the stored ``apply_sql`` serves."""
    if plan.catalog is None or plan.apply_sql is None or plan.guard_query is not None:
        return None
    try:
        again = compile_query(query, plan.catalog, storage, changed=changed)
    except PgTrickleError:
        return None
    same = (
        again.differentiable
        and again.kept == plan.kept
        and again.storage_query == plan.storage_query
        and again.user_columns == plan.user_columns
        and again.hidden_columns == plan.hidden_columns
        and again.apply_strategy is plan.apply_strategy
    )
    if not same:
        return None
    return RefreshStatement(again.apply_sql(), again.indexed_deltas, again.reduced_filters)
