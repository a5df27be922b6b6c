"""A TopK stream table holds exactly the first rows: a change among them is applied; one
that needs a row it did not store is recomputed, and the refresh history says why. Over an
aggregate, every group is kept in a hidden table, so nothing is ever recomputed."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from pgtrickle.declarations import parse_declarations
from pgtrickle.reconcile import apply
from scheduler.refresh import RefreshAction, Refresher
from tests.e2e.test_auto import last_reason
from tests.fixtures.cluster import Database
from tests.fixtures.streams import declared_refresher, declared_workload, mismatched
from walstream.catalog import get_stream_table

YAML = """
stream_tables:
  - name: biggest
    query: SELECT id, amount FROM orders ORDER BY amount DESC NULLS LAST, id LIMIT 5
    refresh_mode: differential
"""


@pytest.fixture
def refresher(db: Database) -> Iterator[Refresher]:
    with declared_refresher(db.dsn, YAML) as refresher:
        yield refresher


def stored_ids(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id FROM biggest ORDER BY amount DESC NULLS LAST, id")
        return [row[0] for row in rows]


def test_a_new_first_row_is_applied(refresher: Refresher, db: Database) -> None:
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET amount = 99999999 WHERE id = 7")
    result = refresher.refresh(get_stream_table(refresher.staging, "biggest"))
    assert result.action is RefreshAction.DIFFERENTIAL
    assert stored_ids(db.dsn)[0] == 7
    assert mismatched(db.dsn) == {}


def test_a_first_row_leaving_is_recomputed_with_the_reason(
    refresher: Refresher, db: Database
) -> None:
    first = stored_ids(db.dsn)[0]
    with psycopg.connect(db.dsn) as conn:
        # the 6th row, which the stream table does not hold, comes in
        conn.execute("DELETE FROM orders WHERE id = %s", (first,))
    result = refresher.refresh(get_stream_table(refresher.staging, "biggest"))
    assert result.action is RefreshAction.FULL
    reason = last_reason(db.dsn)
    assert reason is not None and reason.startswith("TopK:")
    assert first not in stored_ids(db.dsn) and len(stored_ids(db.dsn)) == 5
    assert mismatched(db.dsn) == {}


OFFSET_YAML = """
stream_tables:
  - name: next_biggest
    query: SELECT id, amount FROM orders ORDER BY amount DESC NULLS LAST, id LIMIT 5 OFFSET 5
    refresh_mode: differential
"""


def test_with_an_offset_a_change_after_the_skipped_rows_is_applied_one_before_recomputed(
    db: Database,
) -> None:
    with declared_refresher(db.dsn, OFFSET_YAML) as refresher:
        with psycopg.connect(db.dsn) as conn:
            rows = conn.execute(
                "SELECT id FROM orders ORDER BY amount DESC NULLS LAST, id LIMIT 3 OFFSET 20"
            ).fetchall()
            # rows far after the window change among themselves: the window stays
            conn.execute(
                "UPDATE orders SET amount = amount - 1 WHERE id = ANY(%s)", ([r[0] for r in rows],)
            )
        st = get_stream_table(refresher.staging, "next_biggest")
        assert refresher.refresh(st).action is RefreshAction.DIFFERENTIAL
        with psycopg.connect(db.dsn) as conn:
            # a new first row: every stored row moves one place down, out of or into the window
            conn.execute("UPDATE orders SET amount = 99999999 WHERE id = %s", (rows[0][0],))
        result = refresher.refresh(st)
        assert result.action is RefreshAction.FULL
        reason = last_reason(db.dsn)
        assert reason is not None and reason.startswith("TopK:")
        assert mismatched(db.dsn) == {}


TOP_CUSTOMERS_YAML = """
stream_tables:
  - name: top_customers
    query: >
      SELECT customer_id, sum(amount) AS spent, count(*) AS orders FROM orders
      GROUP BY customer_id ORDER BY spent DESC NULLS LAST, customer_id LIMIT 3
    refresh_mode: differential
"""


def kept_table(dsn: str, name: str) -> str | None:
    with psycopg.connect(dsn) as conn:
        st = get_stream_table(conn, name)
        if st.plan.kept is None:
            return None
        row = conn.execute(
            "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))::text", st.plan.kept.table
        ).fetchone()
        return None if row is None else row[0]


def test_over_an_aggregate_a_first_group_leaving_is_applied_from_the_kept_groups(
    db: Database,
) -> None:
    with declared_refresher(db.dsn, TOP_CUSTOMERS_YAML) as refresher:
        assert kept_table(db.dsn, "top_customers") is not None
        with psycopg.connect(db.dsn) as conn:
            first = conn.execute(
                "SELECT customer_id FROM top_customers ORDER BY spent DESC NULLS LAST,"
                " customer_id LIMIT 1"
            ).fetchone()
            assert first is not None
            # the 4th group, which the stream table does not hold, comes in
            conn.execute("DELETE FROM orders WHERE customer_id = %s", (first[0],))
        st = get_stream_table(refresher.staging, "top_customers")
        result = refresher.refresh(st)
        assert result.action is RefreshAction.DIFFERENTIAL
        assert result.reason is None
        assert mismatched(db.dsn) == {}
        with psycopg.connect(db.dsn) as conn:
            rows = conn.execute("SELECT customer_id FROM top_customers").fetchall()
        assert first[0] not in {r[0] for r in rows} and len(rows) == 3


def test_the_kept_groups_go_with_their_stream_table(db: Database) -> None:
    declared_workload(db.dsn, TOP_CUSTOMERS_YAML)
    kept = kept_table(db.dsn, "top_customers")
    assert kept is not None
    # a new query: re-created, with groups of its own
    apply(db.dsn, parse_declarations(TOP_CUSTOMERS_YAML.replace("LIMIT 3", "LIMIT 4")))
    assert kept_table(db.dsn, "top_customers") == kept
    with psycopg.connect(db.dsn) as conn:
        assert len(conn.execute("SELECT * FROM top_customers").fetchall()) == 4
    assert mismatched(db.dsn) == {}
    apply(db.dsn, parse_declarations("stream_tables: []"), prune=True)
    with psycopg.connect(db.dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (kept,)).fetchone()
    assert row == (None,)
