"""One generic check over the golden plan fixtures, and their SQL run once on the server."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from dvm.compile import compile_query, delta_relation
from tests.dvm.golden import STORAGE, compiled, load
from tests.dvm.harness import catalog_of
from tests.fixtures.cluster import Database

DOCUMENT, CATALOG, CASES = load()


def test_golden_plans_are_as_recorded() -> None:
    for expected, got in zip(CASES, compiled(CASES, CATALOG), strict=True):
        assert got == expected, f"{expected.name}:\n{got.explain}"


def _create_catalog_tables(conn: psycopg.Connection[Any]) -> None:
    for table in DOCUMENT["catalog"]["tables"]:
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c["name"]), sql.SQL(c["type"]))
            for c in table["columns"]
        )
        key = table.get("primary_key")
        primary = (
            sql.SQL(", PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, key)))
            if key
            else sql.SQL("")
        )
        conn.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table["schema"]))
        )
        conn.execute(
            sql.SQL("CREATE TABLE {} ({}{})").format(
                sql.Identifier(table["schema"], table["name"]), columns, primary
            )
        )


@pytest.mark.pg15
def test_golden_plans_sql_runs_on_the_server(any_db: Database) -> None:
    with psycopg.connect(any_db.dsn) as conn:
        _create_catalog_tables(conn)
        catalog = catalog_of(conn)
        for table in catalog.tables.values():
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type))
                for c in table.columns
            )
            conn.execute(
                sql.SQL("CREATE TEMP TABLE {} (__pgt_w integer, {})").format(
                    sql.Identifier(delta_relation(table)), columns
                )
            )
        conn.commit()
        for case in CASES:
            plan = compile_query(case.query, catalog, STORAGE)
            storage = sql.Identifier(*STORAGE)
            query = sql.SQL(plan.storage_query)
            try:
                with conn.transaction(force_rollback=True):
                    conn.execute(
                        sql.SQL("CREATE TABLE {} AS {} WITH NO DATA").format(storage, query)
                    )
                    conn.execute(sql.SQL("INSERT INTO {} {}").format(storage, query))
                    if plan.delta_query is not None:
                        conn.execute(sql.SQL(plan.delta_query)).fetchall()
                        conn.execute(sql.SQL(plan.apply_sql()))
            except psycopg.Error as error:
                raise AssertionError(f"{case.name}: {error}") from error
