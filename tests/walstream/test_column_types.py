"""Every value of every supported column type passes through capture and refresh unchanged.

A differential stream table ``SELECT * FROM t`` must hold, after each refresh, exactly the
rows of ``t``: compared column by column as text (``::text``, so that types without an
equality operator compare too) and as multisets. The changes are random INSERTs, UPDATEs of
the typed column (to and from NULL, to each edge case, to a value equal under ``=`` but
written differently), UPDATEs of another column only (an out-of-line value then arrives as
"unchanged" in pgoutput), UPDATEs of the key, and DELETEs.

The seed is printed at the start of each test; ``PGTRICKLE_TEST_SEED`` replays one.
"""

from __future__ import annotations

import doctest
import os
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import sql

import tests.fixtures.values
from pgtrickle.declarations import parse_declarations
from pgtrickle.reconcile import apply
from scheduler.refresh import Refresher
from tests.fixtures.cluster import Database
from tests.fixtures.streams import running_reader
from tests.fixtures.values import (
    ALL_TYPES,
    BUMP,
    KNOWN_UNSUPPORTED,
    SUPPORTED,
    TYPES,
    ColumnType,
    Value,
    create_table,
    insert_statement,
    random_row,
)
from walstream.catalog import get_stream_table

SOURCE = "t"
STREAM_TABLE = "st"
DECLARATIONS = f"""
stream_tables:
  - name: {STREAM_TABLE}
    query: SELECT * FROM {SOURCE}
    refresh_mode: differential
"""
RANDOM_ROWS = 10
ROUNDS = 3
REKEYED = 1_000_000


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("PGTRICKLE_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"seed {seed}")
    return random.Random(seed)


# -- a source, its stream table, and the reader and refresher keeping it fresh ---------------


@dataclass
class Maintained:
    """A source table ``t`` of ``types`` and its stream table; every write goes through here
    so that the ids in use are known."""

    conn: psycopg.Connection[Any]
    types: Sequence[ColumnType]
    server_version: int
    rng: random.Random
    refresher: Refresher | None = None
    ids: list[int] = field(default_factory=list)
    next_id: int = 1

    # writing the source

    def insert(self, row: Sequence[Value]) -> int:
        row_id = self.next_id
        self.next_id += 1
        self.conn.execute(insert_statement(SOURCE, self.types), (row_id, *row))
        self.ids.append(row_id)
        return row_id

    def set_value(self, row_id: int, column_type: ColumnType, value: Value) -> None:
        self.conn.execute(
            sql.SQL("UPDATE {} SET {} = %s::{} WHERE id = %s").format(
                sql.Identifier(SOURCE),
                sql.Identifier(column_type.column),
                sql.SQL(column_type.sql_type),
            ),
            (value, row_id),
        )

    def bump(self, row_id: int) -> None:
        self.conn.execute(
            sql.SQL("UPDATE {} SET {} = {} + 1 WHERE id = %s").format(
                sql.Identifier(SOURCE), sql.Identifier(BUMP), sql.Identifier(BUMP)
            ),
            (row_id,),
        )

    def rekey(self, row_id: int) -> None:
        new_id = self.next_id
        self.next_id += 1
        self.conn.execute(
            sql.SQL("UPDATE {} SET id = %s WHERE id = %s").format(sql.Identifier(SOURCE)),
            (new_id, row_id),
        )
        self.ids[self.ids.index(row_id)] = new_id

    def delete(self, row_id: int) -> None:
        self.conn.execute(
            sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(SOURCE)), (row_id,)
        )
        self.ids.remove(row_id)

    def bump_every_row(self) -> None:
        self.conn.execute(
            sql.SQL("UPDATE {} SET {} = {} + 1").format(
                sql.Identifier(SOURCE), sql.Identifier(BUMP), sql.Identifier(BUMP)
            )
        )

    def rekey_every_even_id(self) -> None:
        self.conn.execute(
            sql.SQL("UPDATE {} SET id = id + {} WHERE id % 2 = 0").format(
                sql.Identifier(SOURCE), sql.Literal(REKEYED)
            )
        )
        self.ids = [i + REKEYED if i % 2 == 0 else i for i in self.ids]

    # the values to write

    def edge_rows(self) -> list[tuple[Value, ...]]:
        """Rows that between them hold every edge case of every type."""
        cases = [t.cases(self.server_version) for t in self.types]
        return [tuple(c[i % len(c)] for c in cases) for i in range(max(len(c) for c in cases))]

    def any_value(self, column_type: ColumnType) -> Value:
        if self.rng.random() < 0.3:
            return self.rng.choice(column_type.cases(self.server_version))
        return column_type.values(self.rng)

    # the stream table

    def refresh_and_compare(self, what: str) -> None:
        assert self.refresher is not None
        self.refresher.refresh(get_stream_table(self.refresher.staging, STREAM_TABLE))
        assert_same_rows(self.conn, self.types, what)


@contextmanager
def maintained(
    db: Database, types: Sequence[ColumnType], rng: random.Random
) -> Iterator[Maintained]:
    """``t`` holding every edge case and some random rows, and its stream table, populated."""
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        source = Maintained(conn, types, db.cluster.server_version_num(), rng)
        with conn.transaction():
            create_table(conn, SOURCE, types)
            for row in source.edge_rows():
                source.insert(row)
            for _ in range(RANDOM_ROWS):
                source.insert(random_row(rng, types))
        apply(db.dsn, parse_declarations(DECLARATIONS))
        assert_same_rows(conn, types, "populated")
        with running_reader(db.dsn) as reader, Refresher(db.dsn, reader, check=False) as refresher:
            source.refresher = refresher
            yield source


def assert_same_rows(conn: psycopg.Connection[Any], types: Sequence[ColumnType], what: str) -> None:
    """The stream table holds the source's rows, as text, column by column, as multisets."""
    columns = ["id", BUMP, *(t.column for t in types)]

    def rows(table: str) -> Counter[tuple[str | None, ...]]:
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
            sql.Identifier(table),
        )
        return Counter(tuple(row) for row in conn.execute(query).fetchall())

    expected, actual = rows(SOURCE), rows(STREAM_TABLE)
    if expected != actual:
        missing, extra = expected - actual, actual - expected
        lines = [
            f"after {what}: {len(missing)} rows missing, {len(extra)} extra; columns {columns}"
        ]
        lines += [f"  missing {_shorten(row)}" for row in list(missing)[:5]]
        lines += [f"  extra   {_shorten(row)}" for row in list(extra)[:5]]
        raise AssertionError("\n".join(lines))


def _shorten(row: tuple[str | None, ...]) -> str:
    return repr(
        tuple(v if v is None or len(v) <= 80 else f"{v[:60]}…({len(v)} chars)" for v in row)
    )


# -- the changes -----------------------------------------------------------------------------


def random_changes(source: Maintained, count: int) -> None:
    """``count`` random changes, in the caller's transaction."""
    rng = source.rng
    for _ in range(count):
        op = rng.choices(
            ("insert", "set", "set twice", "bump", "rekey", "delete"), (2, 4, 1, 2, 1, 1)
        )[0]
        if op == "insert" or not source.ids:
            edge = rng.choice(source.edge_rows())
            source.insert(edge if rng.random() < 0.3 else random_row(rng, source.types))
            continue
        row_id = rng.choice(source.ids)
        column_type = rng.choice(source.types)
        if op == "set":
            source.set_value(row_id, column_type, source.any_value(column_type))
        elif op == "set twice":  # two versions of a row in one transaction, then a bump
            source.set_value(row_id, column_type, source.any_value(column_type))
            source.set_value(row_id, column_type, source.any_value(column_type))
            source.bump(row_id)
        elif op == "bump":
            source.bump(row_id)
        elif op == "rekey":
            source.rekey(row_id)
        else:
            source.delete(row_id)


def exercise(source: Maintained) -> None:
    """Every kind of change, refreshing and comparing after each batch of them."""
    conn = source.conn
    with conn.transaction():
        for row in source.edge_rows():
            source.insert(row)
        for _ in range(RANDOM_ROWS):
            source.insert(random_row(source.rng, source.types))
    source.refresh_and_compare("inserting every edge case")

    for round_number in range(ROUNDS):
        with conn.transaction():
            random_changes(source, source.rng.randint(5, 20))
        source.refresh_and_compare(f"random changes, round {round_number + 1}")

    # each edge case replaced by the next one: to and from NULL, big to small and back
    for column_type in source.types:
        cases = column_type.cases(source.server_version)
        with conn.transaction():
            targets = source.ids[: len(cases)]
            for i, row_id in enumerate(targets):
                source.set_value(row_id, column_type, cases[(i + 1) % len(cases)])
    source.refresh_and_compare("updating every edge case to the next one")

    with conn.transaction():
        source.bump_every_row()  # out-of-line values arrive as "unchanged"
    source.refresh_and_compare("updating only another column of every row")

    with conn.transaction():
        source.rekey_every_even_id()
    source.refresh_and_compare("updating the key of every other row")

    spellings = [
        (column_type, first, second)
        for column_type in source.types
        for first, second in column_type.equal_spellings
    ]
    if spellings:
        with conn.transaction():
            rows = [
                (source.insert(random_row(source.rng, source.types)), t, a, b)
                for t, a, b in spellings
            ]
            for row_id, t, a, _ in rows:
                source.set_value(row_id, t, a)
        source.refresh_and_compare("inserting values with two spellings")
        with conn.transaction():
            for row_id, t, _, b in rows:
                source.set_value(row_id, t, b)
        source.refresh_and_compare("updating values to an equal value spelled differently")
        with conn.transaction():
            for row_id, t, a, _ in rows:
                source.set_value(row_id, t, a)
        source.refresh_and_compare("updating values back to the first spelling")

    with conn.transaction():
        for row_id in source.ids[::2]:
            source.delete(row_id)
    source.refresh_and_compare("deleting half the rows")


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.pg15
@pytest.mark.parametrize("column_type", SUPPORTED, ids=[t.name for t in SUPPORTED])
def test_every_value_of_a_supported_type_survives_capture_and_refresh(
    any_db: Database, column_type: ColumnType, rng: random.Random
) -> None:
    with maintained(any_db, [column_type], rng) as source:
        exercise(source)


@pytest.mark.pg15
def test_a_table_with_every_supported_type_at_once_round_trips(
    any_db: Database, rng: random.Random
) -> None:
    with maintained(any_db, SUPPORTED, rng) as source:
        exercise(source)


def test_the_stream_table_has_the_source_s_column_types(db: Database) -> None:
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        create_table(conn, SOURCE, SUPPORTED)
        apply(db.dsn, parse_declarations(DECLARATIONS))
        query = (
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
            " AND attname LIKE 'c\\_%%' ORDER BY attnum"
        )
        expected = conn.execute(query, (SOURCE,)).fetchall()
        assert len(expected) == len(SUPPORTED)
        assert conn.execute(query, (STREAM_TABLE,)).fetchall() == expected


def test_the_text_cases_include_values_stored_out_of_line_and_compressed_inline(
    db: Database,
) -> None:
    """Else no UPDATE of another column would send a text value as "unchanged"."""
    text = TYPES["text"]
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        create_table(conn, SOURCE, [text])
        for i, value in enumerate(text.edge_cases):
            conn.execute(insert_statement(SOURCE, [text]), (i, value))
        row = conn.execute(
            sql.SQL(
                "SELECT count(*) FILTER (WHERE pg_column_toast_chunk_id({c}) IS NOT NULL),"
                " count(*) FILTER (WHERE pg_column_toast_chunk_id({c}) IS NULL"
                " AND pg_column_compression({c}) IS NOT NULL) FROM {t}"
            ).format(c=sql.Identifier(text.column), t=sql.Identifier(SOURCE))
        ).fetchone()
    assert row is not None
    out_of_line, compressed_inline = row
    assert out_of_line >= 1
    assert compressed_inline >= 1


def test_the_registry_names_every_unsupported_type_and_nothing_else() -> None:
    names = {t.name for t in ALL_TYPES}
    assert len(names) == len(ALL_TYPES), "type names are unique"
    assert set(KNOWN_UNSUPPORTED) <= names
    assert {t.name for t in SUPPORTED} == names - set(KNOWN_UNSUPPORTED)


def test_the_values_module_s_examples_hold() -> None:
    result = doctest.testmod(tests.fixtures.values, optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed
