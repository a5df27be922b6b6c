"""A refresh stages only the changes that can matter to the query: rows that fail a
condition on the source alone, and, when a partner it joins did not change, rows that match
none of the partner's few rows that qualify."""

from __future__ import annotations

from contextlib import ExitStack

import psycopg
import pytest

from pgtrickle.declarations import parse_declarations
from pgtrickle.reconcile import apply
from scheduler.refresh import RefreshAction, RefreshResult
from tests.e2e.test_refresh import CountsStaging, StartsReaderLate
from tests.fixtures.cluster import Database
from tests.fixtures.streams import mismatched, running_reader
from walstream.catalog import get_stream_table
from walstream.replication import parse_lsn

ORDERS = """
CREATE TABLE orders (id integer PRIMARY KEY, amount integer NOT NULL, status text NOT NULL);
INSERT INTO orders SELECT i, i, 'open' FROM generate_series(1, 2000) i;
"""

FILTERED = """
stream_tables:
  - name: big_orders
    query: SELECT id, amount FROM orders WHERE amount > 1000 AND status <> 'void'
    refresh_mode: differential
"""

PARTS = """
CREATE TABLE parts (id integer PRIMARY KEY, brand text NOT NULL);
INSERT INTO parts SELECT i, CASE WHEN i % 500 = 0 THEN 'rare' ELSE 'common' END
FROM generate_series(1, 2000) i;
CREATE TABLE items (id integer PRIMARY KEY, part_id integer NOT NULL, qty integer NOT NULL);
INSERT INTO items SELECT i, 1 + i % 2000, i % 7 FROM generate_series(1, 4000) i;
ANALYZE parts;
"""

RARE = """
stream_tables:
  - name: rare_items
    query: >
      SELECT p.brand, sum(i.qty) AS qty, count(*) AS items FROM items i
      JOIN parts p ON p.id = i.part_id WHERE p.brand = 'rare' GROUP BY p.brand
    refresh_mode: differential
"""


def declared(dsn: str, tables: str, declarations: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(tables)
    apply(dsn, parse_declarations(declarations))


def refreshed(refresher: CountsStaging, name: str) -> RefreshResult:
    return refresher.refresh(get_stream_table(refresher.staging, name))


def buffered(dsn: str, refresher: CountsStaging) -> None:
    """Wait until the reader buffered every change so far: the refresh then stages them
    itself, at its snapshot."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_logical_emit_message(true, 't', '')")
        lsn = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert lsn is not None
    assert refresher.waiter.wait_for(parse_lsn(lsn[0]), 30)


def test_changes_that_fail_the_condition_on_their_source_are_not_staged(db: Database) -> None:
    declared(db.dsn, ORDERS, FILTERED)
    with running_reader(db.dsn) as reader, CountsStaging(db.dsn, reader) as refresher:
        with psycopg.connect(db.dsn) as conn:
            conn.execute("UPDATE orders SET amount = amount - 1 WHERE amount <= 1000")
            conn.execute("UPDATE orders SET status = 'void' WHERE id = 2000")
        result = refreshed(refresher, "big_orders")
        # 1,000 rows changed below the threshold, one left the stream table
        assert result.action is RefreshAction.DIFFERENTIAL and result.delta_rows == 1
        with psycopg.connect(db.dsn) as conn:
            conn.execute("UPDATE orders SET amount = 0 WHERE amount <= 1000")
        assert refreshed(refresher, "big_orders").action is RefreshAction.NO_DATA
    assert mismatched(db.dsn) == {}


@pytest.mark.parametrize("path", ["in the refresh transaction", "relayed"])
def test_changes_that_join_no_qualifying_row_of_an_unchanged_partner_are_not_staged(
    db: Database, path: str
) -> None:
    declared(db.dsn, PARTS, RARE)
    with ExitStack() as stack:
        if path == "relayed":
            waiter = StartsReaderLate(db.dsn, stack)
            refresher = stack.enter_context(CountsStaging(db.dsn, waiter))
        else:
            reader = stack.enter_context(running_reader(db.dsn))
            refresher = stack.enter_context(CountsStaging(db.dsn, reader))
        with psycopg.connect(db.dsn) as conn:
            # 400 items, 8 of them of the rare parts 500, 1000, 1500 and 2000
            conn.execute("UPDATE items SET qty = qty + 1 WHERE id % 10 = 9")
        if path != "relayed":
            buffered(db.dsn, refresher)
        result = refreshed(refresher, "rare_items")
        assert result.action is RefreshAction.DIFFERENTIAL
        assert result.delta_rows == 16  # their old and new versions
        assert (refresher.relayed > 0) == (path == "relayed")
        with psycopg.connect(db.dsn) as conn:
            # the partner changes too: nothing is known of it, every change is staged
            conn.execute("UPDATE parts SET brand = 'rare' WHERE id = 10")
            conn.execute("UPDATE items SET qty = qty + 1 WHERE id % 10 = 9")
        if path != "relayed":
            buffered(db.dsn, refresher)
        result = refreshed(refresher, "rare_items")
        assert result.delta_rows is not None and result.delta_rows >= 800
    assert mismatched(db.dsn) == {}


def test_the_values_of_an_unchanged_partner_are_computed_once_while_it_does_not_change(
    db: Database,
) -> None:
    declared(db.dsn, PARTS, RARE)
    with running_reader(db.dsn) as reader, CountsStaging(db.dsn, reader) as refresher:

        def change(statement: str) -> RefreshResult:
            with psycopg.connect(db.dsn) as conn:
                conn.execute(statement)
            buffered(db.dsn, refresher)
            return refreshed(refresher, "rare_items")

        items = "UPDATE items SET qty = qty + 1 WHERE id % 10 = 9"
        assert change(items).delta_rows == 16
        assert change(items).delta_rows == 16
        assert refresher.partner_keys.fills == 1
        # the partner changes: its values are not used, then computed again
        result = change("UPDATE parts SET brand = 'rare' WHERE id = 10")
        assert result.compiled_for is not None and len(result.compiled_for) == 1
        assert change(items).delta_rows == 20  # and the two items of part 10
        assert change(items).delta_rows == 20
        assert refresher.partner_keys.fills == 2
    assert mismatched(db.dsn) == {}
