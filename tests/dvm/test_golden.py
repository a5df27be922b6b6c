"""The golden plan fixtures: one check per case; the recorded SQL run on the servers, and the
cases flagged ``execute`` maintained by it over random changes (on PostgreSQL 18 and 15).

On a server the tables have other oids than in the fixture, and so the delta tables other
names (``pg_temp."__pgt_delta_<oid>"``): the recorded plan is run with those names replaced,
once the server's tables are checked to be the fixture's but for their oids.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
import zlib
from types import MappingProxyType
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dvm.catalog import CatalogFacts, SourceTable
from dvm.compile import compile_query, delta_relation
from dvm.plan import DeltaPlan
from tests.dvm.golden import STORAGE, Case, compiled, load
from tests.dvm.harness import RandomTable, catalog_of, create_random_tables, maintain_at_random
from tests.fixtures.cluster import Database

DOCUMENT, CATALOG, CASES = load()
EXECUTED = [case for case in CASES if case.executed]
ROUNDS = 4
OPTIONS = "-c jit=off"
"""JIT compiling the delta queries (on by default where the server has it: Debian's 15) costs
seconds each, more than running them over the few rows of the tests."""


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_golden_plan_is_as_recorded(case: Case) -> None:
    got = compiled(case, CATALOG)
    assert got == case, f"{case.name}: rewrite with python -m tests.dvm.golden\n{got.explain}"


@functools.cache
def _plan(case: Case) -> DeltaPlan:
    """The case's plan over the fixture's catalog: the one recorded."""
    return compile_query(case.query, CATALOG, STORAGE)


@functools.cache
def _apply_sql(case: Case) -> str:
    return _plan(case).apply_sql()


def seed_of(case: Case) -> int:
    """A case's seed: the same at every run, another for every case."""
    return zlib.crc32(case.name.encode())


def _random_tables(names: set[tuple[str, str]]) -> list[RandomTable]:
    """The catalog's tables in ``names``, with the sizes plans.yaml gives them."""
    sizes = {(t["schema"], t["name"]): t for t in DOCUMENT["catalog"]["tables"]}
    return [
        RandomTable(
            table,
            rows=sizes[key].get("rows", RandomTable.rows),
            ids=sizes[key].get("ids", RandomTable.ids),
        )
        for key, table in CATALOG.tables.items()
        if key in names
    ]


def _without_oids(tables: tuple[SourceTable, ...]) -> list[SourceTable]:
    return [dataclasses.replace(table, oid=0) for table in tables]


class _OnServer:
    """The fixture's delta table names replaced by those of the server's tables."""

    def __init__(self, server: CatalogFacts, sources: tuple[SourceTable, ...]) -> None:
        self.tables = tuple(server.tables[(s.schema, s.name)] for s in sources)
        assert _without_oids(self.tables) == _without_oids(sources), (
            "the server's tables are not the fixture's"
        )
        self.oids = {s.oid: t.oid for s, t in zip(sources, self.tables, strict=True)}
        self.names = {
            delta_relation(s, indexed=indexed): delta_relation(t, indexed=indexed)
            for s, t in zip(sources, self.tables, strict=True)
            for indexed in (True, False)
        }

    def sql(self, text: str) -> str:
        return re.sub(
            r'"(__pgt_delta_\d+(?:_p)?)"', lambda m: f'"{self.names.get(m[1], m[1])}"', text
        )

    def plan(self, plan: DeltaPlan) -> DeltaPlan:
        """``plan`` as compiled over the server's tables (but for ``tree``, kept as it was)."""
        return dataclasses.replace(
            plan,
            sources=self.tables,
            columns_read=MappingProxyType(
                {self.oids[oid]: read for oid, read in plan.columns_read.items()}
            ),
            delta_query=None if plan.delta_query is None else self.sql(plan.delta_query),
            guard_query=None if plan.guard_query is None else self.sql(plan.guard_query),
            indexed_deltas=frozenset(self.oids[oid] for oid in plan.indexed_deltas),
            catalog=None
            if plan.catalog is None
            else dataclasses.replace(
                plan.catalog, tables={(t.schema, t.name): t for t in self.tables}
            ),
        )


def _search_path(conn: psycopg.Connection[Any]) -> None:
    """Every schema of the catalog on the search path: the staging names tables unqualified."""
    schemas = dict.fromkeys([*CATALOG.search_path, *(s for s, _ in CATALOG.tables)])
    conn.execute(
        sql.SQL("SET search_path TO {}").format(sql.SQL(", ").join(map(sql.Identifier, schemas)))
    )
    conn.commit()


@pytest.mark.pg15
def test_golden_plans_sql_runs_on_the_server(any_db: Database) -> None:
    with psycopg.connect(any_db.dsn, options=OPTIONS) as conn:
        empty = [dataclasses.replace(t, rows=0) for t in _random_tables(set(CATALOG.tables))]
        create_random_tables(conn, empty, random.Random(0))
        server = catalog_of(conn)
        assert {key: dataclasses.replace(t, oid=0) for key, t in server.tables.items()} == {
            key: dataclasses.replace(t, oid=0) for key, t in CATALOG.tables.items()
        }
        on_server = _OnServer(server, tuple(CATALOG.tables.values()))
        for table in server.tables.values():
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type))
                for c in table.columns
            )
            for indexed in (True, False):
                conn.execute(
                    sql.SQL("CREATE TEMP TABLE {} (__pgt_w integer, {})").format(
                        sql.Identifier(delta_relation(table, indexed=indexed)), columns
                    )
                )
        conn.commit()
        storage = sql.Identifier(*STORAGE)
        for case in CASES:
            plan = _plan(case)
            query = sql.SQL(plan.storage_query)
            try:
                with conn.transaction(force_rollback=True):
                    if plan.kept is not None:
                        # the stream table is made from its kept aggregate: made first
                        kept = sql.Identifier(*plan.kept.table)
                        conn.execute(
                            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                                sql.Identifier(plan.kept.table[0])
                            )
                        )
                        conn.execute(
                            sql.SQL("CREATE TABLE {} AS {}").format(
                                kept, sql.SQL(plan.kept.storage_query)
                            )
                        )
                    conn.execute(
                        sql.SQL("CREATE TABLE {} AS {} WITH NO DATA").format(storage, query)
                    )
                    conn.execute(sql.SQL("INSERT INTO {} {}").format(storage, query))
                    if plan.guard_query is not None:
                        conn.execute(sql.SQL(on_server.sql(plan.guard_query))).fetchall()
                    if plan.delta_query is not None:
                        conn.execute(sql.SQL(on_server.sql(plan.delta_query))).fetchall()
                        conn.execute(sql.SQL(on_server.sql(_apply_sql(case))))
                    if plan.kept is not None:
                        conn.execute(sql.SQL(plan.kept.top_sql)).fetchall()
            except psycopg.Error as error:
                raise AssertionError(f"{case.name}: {error}") from error


@pytest.mark.pg15
@pytest.mark.parametrize("case", EXECUTED, ids=[case.name for case in EXECUTED])
def test_golden_plan_maintains_its_query(any_db: Database, case: Case) -> None:
    plan = _plan(case)
    tables = _random_tables({(source.schema, source.name) for source in plan.sources})
    seed = seed_of(case)

    def recorded(conn: psycopg.Connection[Any]) -> DeltaPlan:
        return _OnServer(catalog_of(conn), plan.sources).plan(plan)

    with psycopg.connect(any_db.dsn, options=OPTIONS) as conn:
        _search_path(conn)
        try:
            maintain_at_random(conn, case.query, tables, seed, rounds=ROUNDS, planner=recorded)
        except AssertionError as error:
            raise AssertionError(f"{case.name} (seed {seed}): {error}") from error
