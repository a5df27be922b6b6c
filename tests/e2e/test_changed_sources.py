"""A refresh applies a delta compiled for the sources with changes in its window."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from scheduler.refresh import RefreshAction, Refresher
from tests.fixtures.cluster import Database
from tests.fixtures.streams import declared_refresher, mismatched
from walstream.catalog import get_stream_table

YAML = """
stream_tables:
  - name: spend
    query: >
      SELECT c.region, sum(o.amount) AS total, count(*) AS orders
      FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.region
    refresh_mode: differential
"""


@pytest.fixture
def refresher(db: Database) -> Iterator[Refresher]:
    with declared_refresher(db.dsn, YAML) as refresher:
        yield refresher


def oids(dsn: str, *names: str) -> frozenset[int]:
    with psycopg.connect(dsn) as conn:
        return frozenset(
            int(conn.execute("SELECT %s::regclass::oid", (name,)).fetchone()[0])  # type: ignore[index]
            for name in names
        )


def test_each_refresh_is_compiled_for_the_sources_with_changes(
    refresher: Refresher, db: Database
) -> None:
    st = get_stream_table(refresher.staging, "spend")
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET amount = amount + 1 WHERE id % 7 = 0")
    result = refresher.refresh(st)
    assert result.action is RefreshAction.DIFFERENTIAL
    assert result.compiled_for == oids(db.dsn, "orders")
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE customers SET region = region || '!' WHERE id % 3 = 0")
        conn.execute("DELETE FROM orders WHERE id % 5 = 0")
    result = refresher.refresh(st)
    assert result.compiled_for == oids(db.dsn, "orders", "customers")
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE customers SET region = region || '?' WHERE id % 2 = 0")
    assert refresher.refresh(st).compiled_for == oids(db.dsn, "customers")
    assert mismatched(db.dsn) == {}
