"""The apply statement of a stream table for the sources that changed in one refresh.

A delta compiled for "whatever changed" reads each source's state before the refresh as its
table and its staged delta in a union, which has no statistics; compiled for the sources
that staged rows, it reads the others as plain tables and expands joins into terms over new
states and deltas only (``dvm.zset.Context.changed``). Compiling takes tens to hundreds of
milliseconds, so each statement is compiled once per stream table revision and set of
changed sources, and kept for the session.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import structlog

from dvm.stored import refresh_apply_sql
from walstream.catalog import StreamTable

__all__ = ["ApplyStatement", "ApplyStatements"]

log = structlog.get_logger("pgtrickle.refresh")


@dataclass(frozen=True)
class ApplyStatement:
    sql: str
    specialized: bool
    """Compiled for the sources that changed; else the stored statement."""
    indexed: frozenset[int] | None
    """The sources whose staged delta it reads from the indexed temp table (None: all)."""
    reduced: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    """Source oid -> the condition a staged row must meet at the refresh's snapshot (see
    ``dvm.stored.RefreshStatement``); none for the stored statement."""

    def reads_indexed(self, oid: int) -> bool:
        return self.indexed is None or oid in self.indexed


class ApplyStatements:
    """A bounded cache: (stream table id, revision, changed sources) -> apply statement."""

    def __init__(self, size: int = 256, *, strict: bool = False) -> None:
        """``strict``: a failure to compile is raised, not logged (check mode: tests)."""
        self.size = size
        self.strict = strict
        self._statements: OrderedDict[tuple[int, int, frozenset[int]], ApplyStatement] = (
            OrderedDict()
        )

    def statement(self, st: StreamTable, changed: frozenset[int]) -> ApplyStatement:
        """The statement applying a refresh in which only ``changed`` (oids) have changes
        (or the stored one, when the plan cannot be compiled for them)."""
        stored = st.plan.apply_sql
        assert stored is not None, "a differential plan has an apply statement"
        key = (st.id, st.revision, changed)
        found = self._statements.get(key)
        if found is not None:
            self._statements.move_to_end(key)
            return found
        started = time.perf_counter()
        try:
            compiled = refresh_apply_sql(st.plan, st.query, (st.schema, st.name), changed)
        except Exception as error:
            # a bug of the per-refresh compile must not fail a refresh that the stored
            # statement can do
            if self.strict:
                raise
            log.warning(
                "could not compile the delta for the sources that changed; applying the stored one",
                stream_table=st.display_name,
                error=f"{type(error).__name__}: {error}",
            )
            compiled = None
        log.debug(
            "compiled the delta for the sources that changed",
            stream_table=st.display_name,
            sources=sorted(changed),
            ms=round((time.perf_counter() - started) * 1000, 1),
            specialized=compiled is not None,
        )
        plan = st.plan
        statement = (
            ApplyStatement(
                compiled.apply_sql, True, compiled.indexed_deltas, compiled.reduced_filters
            )
            if compiled is not None
            else ApplyStatement(
                stored,
                False,
                None if plan.indexed_deltas is None else frozenset(plan.indexed_deltas),
            )
        )
        self._statements[key] = statement
        if len(self._statements) > self.size:
            self._statements.popitem(last=False)
        return statement
