"""Row identity is by value, as SQL groups and compares, and a refresh never evaluates a row
version that no snapshot of the query sees."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from pgtrickle.declarations import parse_declarations
from pgtrickle.reconcile import apply
from scheduler.refresh import RefreshAction, Refresher
from tests.fixtures.cluster import Database
from tests.fixtures.streams import running_reader
from walstream.catalog import get_stream_table

KEYS = """
CREATE TABLE k (id integer PRIMARY KEY, n numeric, f double precision, a text, b text);
INSERT INTO k VALUES (1, 1.0, 0.0, 'a,b', 'c'), (2, 1.00, -0.0, 'a', 'b,c'),
                     (3, NULL, NULL, NULL, NULL), (4, 2, 1, 'a', 'b,c');
"""

STREAMS = """
stream_tables:
  - name: by_n
    query: SELECT n, count(*) AS c FROM k GROUP BY n
    refresh_mode: differential
  - name: by_f
    query: SELECT f, count(*) AS c FROM k GROUP BY f
    refresh_mode: differential
  - name: by_ab
    query: SELECT a, b, count(*) AS c FROM k GROUP BY a, b
    refresh_mode: differential
  - name: distinct_n
    query: SELECT DISTINCT n FROM k
    refresh_mode: differential
"""


@pytest.fixture
def refresher(db: Database) -> Iterator[Refresher]:
    with psycopg.connect(db.dsn) as conn:
        conn.execute(KEYS)
    apply(db.dsn, parse_declarations(STREAMS))
    with running_reader(db.dsn) as reader, Refresher(db.dsn, reader) as refresher:
        yield refresher


def refresh_all(refresher: Refresher) -> None:
    for name in ("by_n", "by_f", "by_ab", "distinct_n"):
        result = refresher.refresh(get_stream_table(refresher.staging, name))
        assert result.action in (RefreshAction.DIFFERENTIAL, RefreshAction.NO_DATA)


def same_by_equality(dsn: str, table: str, columns: str, query: str) -> list[tuple[object, ...]]:
    """Rows that differ between the stream table and its query, compared with SQL's equality
    (EXCEPT ALL: 1.0 equals 1.00, -0.0 equals 0.0, NULL equals NULL)."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            f"(SELECT {columns} FROM {table} EXCEPT ALL {query})"
            f" UNION ALL ({query} EXCEPT ALL SELECT {columns} FROM {table})"
        ).fetchall()


def test_keys_equal_by_value_land_in_one_group(refresher: Refresher, db: Database) -> None:
    with psycopg.connect(db.dsn) as conn:
        conn.execute("INSERT INTO k VALUES (5, 1.000, 0, 'a,b', 'c'), (6, NULL, NULL, NULL, NULL)")
        conn.execute("DELETE FROM k WHERE id = 1")
        conn.execute("UPDATE k SET n = 2.0, f = -0.0 WHERE id = 4")
    refresh_all(refresher)
    queries = {
        "by_n": ("n, c", "SELECT n, count(*) AS c FROM k GROUP BY n"),
        "by_f": ("f, c", "SELECT f, count(*) AS c FROM k GROUP BY f"),
        "by_ab": ("a, b, c", "SELECT a, b, count(*) AS c FROM k GROUP BY a, b"),
        "distinct_n": ("n", "SELECT DISTINCT n FROM k"),
    }
    for table, (columns, query) in queries.items():
        assert same_by_equality(db.dsn, table, columns, query) == [], table
    with psycopg.connect(db.dsn) as conn:
        rows = conn.execute("SELECT n::text IS NULL, count(*) FROM by_n GROUP BY 1").fetchall()
        groups: dict[bool, int] = {bool(k): int(v) for k, v in rows}
        assert groups == {False: 2, True: 1}, "1.0, 1.00 and 1.000 are one group; NULL is one"
        assert conn.execute("SELECT count(*) FROM by_f").fetchone() == (2,)  # 0 and -0, NULL
        assert conn.execute("SELECT count(*) FROM by_ab").fetchone() == (3,)


def test_a_version_no_snapshot_sees_is_never_evaluated(db: Database) -> None:
    with psycopg.connect(db.dsn) as conn:
        conn.execute("CREATE TABLE t (id integer PRIMARY KEY, d integer NOT NULL)")
        conn.execute("INSERT INTO t SELECT g, 1 + g % 3 FROM generate_series(1, 20) g")
    text = (
        "stream_tables:\n  - name: inverse\n    query: SELECT id, 10 / d AS q FROM t\n"
        "    refresh_mode: differential\n"
    )
    apply(db.dsn, parse_declarations(text))
    with running_reader(db.dsn) as reader, Refresher(db.dsn, reader, check=True) as refresher:
        with psycopg.connect(db.dsn) as conn:
            conn.execute("UPDATE t SET d = 0")  # the query would fail here ...
            conn.execute("UPDATE t SET d = 5")  # ... but no snapshot of a refresh sees it
        result = refresher.refresh(get_stream_table(refresher.staging, "inverse"))
        assert result.action is RefreshAction.DIFFERENTIAL
        with psycopg.connect(db.dsn) as conn:
            assert conn.execute("SELECT DISTINCT q FROM inverse").fetchall() == [(2,)]
