"""A view in the defining query is expanded to its definition and differentiated through."""

from __future__ import annotations

import psycopg

from pgtrickle.declarations import parse_declarations
from pgtrickle.dev.workload import create_schema
from pgtrickle.reconcile import apply
from scheduler.refresh import RefreshAction, Refresher
from tests.fixtures.cluster import Database
from tests.fixtures.streams import mismatched, running_reader
from walstream.catalog import get_stream_table

YAML = """
stream_tables:
  - name: paid_by_region
    query: >
      SELECT c.region, count(*) AS n, sum(p.amount) AS total
      FROM paid_orders p JOIN customers c ON c.id = p.customer_id GROUP BY c.region
    refresh_mode: differential
  - name: big_paid
    query: SELECT id FROM big_paid_orders
    refresh_mode: differential
"""


def test_a_stream_table_over_views_is_differential_and_correct(db: Database) -> None:
    create_schema(db.dsn, customers=10, orders=200, events=10)
    with psycopg.connect(db.dsn) as conn:
        conn.execute("CREATE VIEW paid_orders AS SELECT * FROM orders WHERE status = 'paid'")
        conn.execute(
            "CREATE VIEW big_paid_orders AS SELECT id, amount FROM paid_orders WHERE amount > 50"
        )
    apply(db.dsn, parse_declarations(YAML))
    with running_reader(db.dsn) as reader, Refresher(db.dsn, reader, check=True) as refresher:
        for name in ("paid_by_region", "big_paid"):
            st = get_stream_table(refresher.staging, name)
            assert st.effective_refresh_mode.value == "differential"
            assert len(st.source_oids) >= 1  # the tables under the views are captured
        with psycopg.connect(db.dsn) as conn:
            conn.execute("UPDATE orders SET status = 'paid', amount = amount + 60 WHERE id <= 40")
            conn.execute("DELETE FROM orders WHERE id BETWEEN 41 AND 60")
        for name in ("paid_by_region", "big_paid"):
            result = refresher.refresh(get_stream_table(refresher.staging, name))
            assert result.action is RefreshAction.DIFFERENTIAL
    assert mismatched(db.dsn) == {}
