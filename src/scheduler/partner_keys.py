"""The values of unchanged partners that a refresh stages a source's changes by, kept in the
worker's session from one refresh to the next while the partners do not change.

A condition of ``dvm.relevance.reduced_rows`` tests a changed row against the values of a
partner the source joins (``l_partkey IN (SELECT p_partkey FROM part WHERE p_brand = …)``).
Computing those values reads the partner, often whole (TPC-H Q17: 25 of its 35 ms of
staging at 0.1 % changed orders read all of ``part``). They are the same at the next refresh
when none of the tables they read changed in between, which the next refresh knows: its
window holds no change of them and its frontier is the snapshot they were computed at. So
they are kept in a temp table of the session, filled at a refresh's snapshot and read again
by the next refresh of the same stream table as long as that holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from dvm.relevance import partner_queries, tables_read, with_keys


@dataclass
class _Values:
    table: str
    """The temp table holding them (column ``k``)."""
    reads: frozenset[int]
    """The oids of the tables the query reads."""
    valid_at: str | None = None
    """The snapshot (text) they are the values at, as committed; None: not known."""
    created: bool = False


@dataclass
class PartnerKeys:
    """The kept values of one session (one ``Refresher``)."""

    fills: int = 0
    """How many times values were computed (rather than read from an earlier refresh)."""
    _values: dict[tuple[int, str], _Values] = field(default_factory=dict)
    _count: int = 0
    # the refresh in progress: its stream table, frontier, snapshot, the sources with
    # changes in its window, and the values it filled or read (and created)
    _refresh: tuple[int, str, str] | None = None
    _pending: frozenset[int] = frozenset()
    _used: set[tuple[int, str]] = field(default_factory=set)
    _created: set[tuple[int, str]] = field(default_factory=set)

    def begin(self, st_id: int, frontier: str, snapshot: str, pending: frozenset[int]) -> None:
        """A refresh of ``st_id`` from ``frontier`` to ``snapshot`` whose window has changes
        of ``pending`` (oids) starts staging."""
        self._refresh = (st_id, frontier, snapshot)
        self._pending = pending
        self._used.clear()
        self._created.clear()

    def condition(
        self, conn: psycopg.Connection[Any], condition: str, sources: Mapping[tuple[str, str], int]
    ) -> str | None:
        """``condition`` reading each partner's values from a kept table, filled now (at the
        refresh's snapshot) where the kept values are not those of this refresh; None when
        a table it reads is not captured (whether it changed cannot be told)."""
        assert self._refresh is not None, "begin() first"
        st_id, frontier, _ = self._refresh
        tables: dict[str, str] = {}
        for query, _ in partner_queries(condition):
            read = [sources.get(table) for table in tables_read(query)]
            if None in read:
                return None
            oids = frozenset(oid for oid in read if oid is not None)
            key = (st_id, query)
            values = self._values.get(key)
            if values is None:
                self._count += 1
                values = _Values(f"__pgt_keys_{self._count}", oids)
                self._values[key] = values
            if values.valid_at != frontier or values.reads & self._pending:
                self._fill(conn, key, values, query)
            self._used.add(key)
            tables[query] = values.table
        return with_keys(condition, tuple(tables.items()))

    def _fill(
        self, conn: psycopg.Connection[Any], key: tuple[int, str], values: _Values, query: str
    ) -> None:
        table = sql.Identifier("pg_temp", values.table)
        # rendered by the compiler from a parsed condition, never text the user wrote
        computed = sql.SQL(query)
        if not values.created:
            conn.execute(
                sql.SQL("CREATE TEMP TABLE {} (k) AS {} WITH NO DATA").format(
                    sql.Identifier(values.table), computed
                )
            )
            values.created = True
            self._created.add(key)
        conn.execute(sql.SQL("DELETE FROM {}").format(table))
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT DISTINCT * FROM ({}) AS q").format(table, computed)
        )
        conn.execute(sql.SQL("ANALYZE {}").format(table))
        values.valid_at = None  # until the refresh commits
        self.fills += 1

    def committed(self) -> None:
        """The refresh committed: the values it used are those of its snapshot, and so are
        the others of its stream table whose tables did not change in its window."""
        if self._refresh is None:
            return
        st_id, frontier, snapshot = self._refresh
        for (owner, query), values in self._values.items():
            if owner != st_id:
                continue
            used = (owner, query) in self._used
            unchanged = values.valid_at == frontier and not values.reads & self._pending
            values.valid_at = snapshot if used or unchanged else None
        self._refresh = None

    def rolled_back(self) -> None:
        """The refresh rolled back: tables it created are gone, values it filled are again
        what they were, at a snapshot no longer known."""
        for key in self._used:
            values = self._values.get(key)
            if values is None:
                continue
            if key in self._created:
                del self._values[key]
            else:
                values.valid_at = None
        self._refresh = None
