"""Execute mode: maintain a compiled plan in a real database and compare with the query.

A :class:`Maintained` stream table is created from ``storage_query`` like the executor does;
each round snapshots the sources, applies random changes, stages the Z-set difference
(-1 per removed row version, +1 per added one, plus cancelling noise pairs) into the
``pg_temp`` delta tables, runs ``apply_sql()`` and checks the storage against the query.
Refreshes alternate between the plan's statement (valid whatever changed) and the one
compiled for the sources that staged rows, which is what the service runs.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from dvm.catalog import CatalogFacts, Column, SourceTable
from dvm.compile import compile_query, delta_relation
from dvm.plan import ApplyStrategy, DeltaPlan

Value = Any
Generator = Callable[[random.Random], Value]


def catalog_of(conn: psycopg.Connection[Any]) -> CatalogFacts:
    """The user tables of the database, as the service would describe them."""
    tables: dict[tuple[str, str], SourceTable] = {}
    rows = conn.execute(
        "SELECT c.oid, n.nspname, c.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%'"
        " AND c.relkind = 'r'"
    ).fetchall()
    for oid, schema, name in rows:
        columns = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute"
            " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (oid,),
        ).fetchall()
        key = conn.execute(
            "SELECT a.attname FROM pg_index i"
            " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord",
            (oid,),
        ).fetchall()
        tables[(schema, name)] = SourceTable(
            int(oid),
            schema,
            name,
            tuple(Column(n, t, bool(nn)) for n, t, nn in columns),
            tuple(k for (k,) in key),
        )
    return CatalogFacts(tables)


@dataclass(frozen=True)
class TableSpec:
    """A source table for random changes: column generators; ``id`` is the key if keyed."""

    name: str
    ddl: str
    generators: dict[str, Generator]
    keyed: bool
    initial_rows: int
    ids: int = 60
    """Keys are drawn from 1..ids (while free), so that joins find partners."""
    key: str = "id"


def _maybe_null(rng: random.Random, value: Value, chance: float = 0.15) -> Value:
    return None if rng.random() < chance else value


SPECS = {
    "orders": TableSpec(
        "orders",
        "CREATE TABLE orders (id integer PRIMARY KEY, cid integer, amount numeric(12,2),"
        " qty integer NOT NULL, heavy bigint, note text)",
        {
            "cid": lambda r: _maybe_null(r, r.randint(1, 6)),
            "amount": lambda r: _maybe_null(r, Decimal(r.randint(0, 2000)) / 100),
            "qty": lambda r: r.randint(0, 7),
            "heavy": lambda r: _maybe_null(r, r.randint(-(2**40), 2**40)),
            "note": lambda r: _maybe_null(r, r.choice(["a", "b", "c", "", "Zz"])),
        },
        keyed=True,
        initial_rows=30,
    ),
    "customers": TableSpec(
        "customers",
        "CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL, region text,"
        " info json)",
        {
            "name": lambda r: r.choice(["ann", "bob", "cy", "dee"]),
            "region": lambda r: _maybe_null(r, r.choice(["north", "south", "east"])),
            "info": lambda r: _maybe_null(r, r.choice(['{"a": 1}', '{"a":1}', "[]"])),
        },
        keyed=True,
        initial_rows=5,
        ids=8,
    ),
    "events": TableSpec(
        "events",
        "CREATE TABLE events (kind text, v integer, w double precision)",
        {
            "kind": lambda r: _maybe_null(r, r.choice(["x", "y", "z"])),
            "v": lambda r: _maybe_null(r, r.randint(0, 4)),
            "w": lambda r: _maybe_null(r, r.randint(-8, 8) / 2),
        },
        keyed=False,
        initial_rows=25,
    ),
    "tags": TableSpec(
        "tags",
        "CREATE TABLE tags (cid integer, tag text, kind text)",
        {
            "cid": lambda r: _maybe_null(r, r.randint(0, 6)),
            "kind": lambda r: _maybe_null(r, r.choice(["x", "y", "w"])),
            "tag": lambda r: r.choice(["red", "green", "blue"]),
        },
        keyed=False,
        initial_rows=15,
    ),
    "ledger": TableSpec(
        "ledger",
        "CREATE TABLE ledger (id integer PRIMARY KEY, g integer, v numeric)",
        {
            "g": lambda r: _maybe_null(r, r.randint(1, 3)),
            # numerics of any scale: a sum shows the largest scale among its values
            "v": lambda r: _maybe_null(
                r, Decimal(r.randint(-300, 300)).scaleb(-r.randint(0, 3)), chance=0.1
            ),
        },
        keyed=True,
        initial_rows=12,
        ids=30,
    ),
    "Odd Table": TableSpec(
        "Odd Table",
        'CREATE TABLE "Odd Table" ("Id" integer PRIMARY KEY, "Grp" text, "select" integer)',
        {
            "Grp": lambda r: _maybe_null(r, r.choice(["A", "a", "B"])),
            "select": lambda r: _maybe_null(r, r.randint(-3, 3)),
        },
        keyed=True,
        initial_rows=10,
        ids=20,
        key="Id",
    ),
}


def create_tables(conn: psycopg.Connection[Any], names: Sequence[str], rng: random.Random) -> None:
    for name in names:
        spec = SPECS[name]
        conn.execute(sql.SQL(spec.ddl))
        for _ in range(spec.initial_rows):
            _insert(conn, spec, rng)
    conn.commit()


def _row(spec: TableSpec, rng: random.Random) -> dict[str, Value]:
    return {column: generate(rng) for column, generate in spec.generators.items()}


def _insert(conn: psycopg.Connection[Any], spec: TableSpec, rng: random.Random) -> None:
    row = _row(spec, rng)
    if spec.keyed:
        row = {spec.key: _fresh_id(conn, spec, rng), **row}
    _insert_row(conn, spec.name, row)


def _insert_row(conn: psycopg.Connection[Any], table: str, row: dict[str, Value]) -> None:
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            sql.Identifier(table),
            sql.SQL(", ").join(map(sql.Identifier, row)),
            sql.SQL(", ").join(sql.Placeholder() * len(row)),
        ),
        list(row.values()),
    )


def _fresh_id(conn: psycopg.Connection[Any], spec: TableSpec, rng: random.Random) -> int:
    used = {
        i
        for (i,) in conn.execute(
            sql.SQL("SELECT {} FROM {}").format(sql.Identifier(spec.key), sql.Identifier(spec.name))
        )
    }
    free = [i for i in range(1, spec.ids + 1) if i not in used]
    return rng.choice(free) if free else max(used) + 1


def _ctids(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        sql.SQL("SELECT ctid::text FROM {} ORDER BY ctid").format(sql.Identifier(table))
    )
    return [ctid for (ctid,) in rows]


def mutate(conn: psycopg.Connection[Any], spec: TableSpec, rng: random.Random) -> None:
    """One random change: insert, delete, update of values or keys, or a duplicate."""
    ctids = _ctids(conn, spec.name)
    action = rng.choice(["insert", "delete", "update", "update", "duplicate"])
    if not ctids or action == "insert":
        _insert(conn, spec, rng)
        return
    ctid = rng.choice(ctids)
    table = sql.Identifier(spec.name)
    if action == "delete":
        conn.execute(sql.SQL("DELETE FROM {} WHERE ctid = %s::tid").format(table), (ctid,))
    elif action == "duplicate":
        if spec.keyed:
            conn.execute(
                sql.SQL("UPDATE {} SET {} = %s WHERE ctid = %s::tid").format(
                    table, sql.Identifier(spec.key)
                ),
                (_fresh_id(conn, spec, rng), ctid),
            )
        else:
            conn.execute(
                sql.SQL("INSERT INTO {0} SELECT * FROM {0} WHERE ctid = %s::tid").format(table),
                (ctid,),
            )
    else:
        columns = rng.sample(sorted(spec.generators), rng.randint(1, 2))
        values = [spec.generators[c](rng) for c in columns]
        conn.execute(
            sql.SQL("UPDATE {} SET {} WHERE ctid = %s::tid").format(
                table,
                sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in columns),
            ),
            [*values, ctid],
        )


class Maintained:
    """A stream table maintained by a compiled plan, checked after every refresh."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        query: str,
        name: str = "st",
        plan: DeltaPlan | None = None,
    ) -> None:
        """``plan``: the plan of ``query`` to maintain it by; by default it is compiled
        against the tables of the database."""
        self.conn = conn
        self.query = query
        self.storage = sql.Identifier("public", name)
        self.plan: DeltaPlan = (
            compile_query(query, catalog_of(conn), ("public", name)) if plan is None else plan
        )
        assert self.plan.differentiable, self.plan.reasons
        self.name = name
        self.refreshes = 0
        self.changed: frozenset[int] = frozenset()
        """The sources whose staged delta has rows (set by ``stage``)."""
        self.applied = ""
        """The last apply statement run."""
        self.reduced = 0
        """Staged rows dropped by the conditions over unchanged sources (``_reduce``)."""
        kept = self.plan.kept
        if kept is not None:
            # the stream table's storage query reads the kept aggregate: made first, in
            # place of one a stream table of the same name left (as apply does)
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(kept.table[0]))
            )
            conn.execute(
                sql.SQL(
                    "DROP TABLE IF EXISTS {0}; CREATE TABLE {0} AS {1} WITH NO DATA;"
                    " INSERT INTO {0} {1}"
                ).format(sql.Identifier(*kept.table), sql.SQL(kept.storage_query))
            )
        conn.execute(
            sql.SQL("CREATE TABLE {} AS {} WITH NO DATA").format(
                self.storage,
                sql.SQL(self.plan.storage_query),
            )
        )
        conn.execute(
            sql.SQL("INSERT INTO {} {}").format(self.storage, sql.SQL(self.plan.storage_query))
        )
        conn.commit()
        self.check("initial population")

    @functools.cached_property
    def apply_sql(self) -> str:
        """``plan.apply_sql()``, made once: it parses the delta query again at every call."""
        return self.plan.apply_sql()

    def snapshot(self) -> None:
        for source in self.plan.sources:
            self.conn.execute(
                sql.SQL(
                    "DROP TABLE IF EXISTS {0}; CREATE TEMP TABLE {0} AS SELECT * FROM {1}"
                ).format(
                    sql.Identifier(f"before_{source.name}"),
                    sql.Identifier(source.schema, source.name),
                )
            )
        self.conn.commit()

    def stage(self, rng: random.Random, noise: int | None = None) -> int:
        """Stage each source's delta, with ``noise`` (default: 0 to 2) cancelling pairs per
        source; returns the number of staged rows."""
        staged = 0
        changed: set[int] = set()
        for source in self.plan.sources:
            name = delta_relation(source)
            delta = sql.Identifier("pg_temp", name)
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type))
                for c in source.columns
            )
            base = sql.Identifier(source.schema, source.name)
            before = sql.Identifier(f"before_{source.name}")
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(delta))
            self.conn.execute(
                sql.SQL("CREATE TEMP TABLE {} (__pgt_w integer, {})").format(
                    sql.Identifier(name), columns
                )
            )
            # Differences compared as text, so that types without equality (json) work too.
            for weight, old, new in ((-1, before, base), (1, base, before)):
                self.conn.execute(
                    sql.SQL(
                        "INSERT INTO {delta} SELECT %s, (d.r::{base}).* FROM"
                        " (SELECT ROW(x.*)::text AS r FROM {old} AS x EXCEPT ALL"
                        " SELECT ROW(y.*)::text FROM {new} AS y) AS d"
                    ).format(delta=delta, base=base, old=old, new=new),
                    (weight,),
                )
            # Noise: an unchanged row deleted and re-inserted (an UPDATE that changes nothing).
            ctids = _ctids(self.conn, source.name)
            pairs = rng.randint(0, 2) if noise is None else noise
            for ctid in rng.sample(ctids, min(len(ctids), pairs)):
                for weight in (-1, 1):
                    self.conn.execute(
                        sql.SQL("INSERT INTO {} SELECT %s, * FROM {} WHERE ctid = %s::tid").format(
                            delta, base
                        ),
                        (weight, ctid),
                    )
            self._net(delta, self.plan.columns_read.get(source.oid, ()))
            relevant = self.plan.staging_filters.get(source.oid)
            if relevant is not None:
                # as the service stages: only the changes that can matter
                self.conn.execute(
                    sql.SQL("DELETE FROM {} WHERE NOT coalesce(({}), false)").format(
                        delta, sql.SQL(relevant)
                    )
                )
            row = self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(delta)).fetchone()
            count = int(row[0]) if row else 0
            staged += count
            if count:
                changed.add(source.oid)
            self.conn.execute(sql.SQL("ANALYZE {}").format(delta))
            # the same rows in the plain table: a statement reads each source's delta from
            # one of the two (``DeltaPlan.indexed_deltas``), which the one compiled for the
            # changed sources may choose otherwise
            plain = sql.Identifier("pg_temp", delta_relation(source, indexed=False))
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(plain))
            self.conn.execute(
                sql.SQL("CREATE TEMP TABLE {} AS TABLE {}").format(
                    sql.Identifier(delta_relation(source, indexed=False)), delta
                )
            )
            self.conn.execute(sql.SQL("ANALYZE {}").format(plain))
        self.changed = frozenset(changed)
        return staged

    def statement(self) -> str:
        """This refresh's apply statement: every other one compiled for ``changed``."""
        self.refreshes += 1
        if self.refreshes % 2 == 1 or self.plan.catalog is None:
            self.applied = self.apply_sql
        else:
            plan = compile_query(
                self.query, self.plan.catalog, ("public", self.name), changed=self.changed
            )
            self._reduce(plan)
            self.applied = f"-- compiled for the sources {sorted(self.changed)}\n{plan.apply_sql()}"
        return self.applied

    def _reduce(self, plan: DeltaPlan) -> None:
        """As the service stages for a statement compiled for the sources that changed:
        only the rows that meet its conditions over the unchanged ones, at this state."""
        for source in self.plan.sources:
            condition = plan.reduced_filters.get(source.oid)
            if condition is None:
                continue
            for indexed in (True, False):
                cursor = self.conn.execute(
                    sql.SQL("DELETE FROM {} WHERE NOT coalesce(({}), false)").format(
                        sql.Identifier("pg_temp", delta_relation(source, indexed=indexed)),
                        sql.SQL(condition),
                    )
                )
                self.reduced += max(cursor.rowcount, 0) if indexed else 0

    def _net(self, delta: sql.Identifier, columns: Sequence[str]) -> None:
        """Net the staged rows per value of the columns read, as the staging does."""
        identity = sql.SQL("ROW({})::text").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)) if columns else sql.SQL("0")
        )
        self.conn.execute(
            sql.SQL(
                "WITH n AS (SELECT ctid, sum(__pgt_w) OVER w AS net,"
                " row_number() OVER w AS k FROM {d} WINDOW w AS (PARTITION BY {i})),"
                " gone AS (DELETE FROM {d} USING n"
                " WHERE {d}.ctid = n.ctid AND (n.k > 1 OR n.net = 0))"
                " UPDATE {d} SET __pgt_w = n.net FROM n"
                " WHERE {d}.ctid = n.ctid AND n.k = 1 AND n.net <> 0"
            ).format(d=delta, i=identity)
        )

    def delta_rows(self) -> list[tuple[Any, ...]]:
        assert self.plan.delta_query is not None
        return self.conn.execute(sql.SQL(self.plan.delta_query)).fetchall()

    def refresh(self) -> bool:
        """Apply the delta (or recompute when the plan's guard says it does not hold);
        whether the delta was applied."""
        with self.conn.transaction():
            guard: bool | None = None
            if self.plan.guard_query is not None:
                row = self.conn.execute(sql.SQL(self.plan.guard_query)).fetchone()
                guard = bool(row and row[0])
            cursor = self.conn.execute(sql.SQL(self.statement()))
            if self.plan.kept is not None:
                # the delta went into the kept aggregate: the stream table is its first rows
                cursor = self.conn.execute(sql.SQL(self.plan.kept.top_sql))
            counts = cursor.fetchone() if cursor.description is not None else None
            # a TopK's apply statement evaluates the guard itself: (deleted, inserted, valid)
            applied = counts is None or len(counts) < 3 or bool(counts[2])
            assert guard is None or guard == applied, "the apply and the guard disagree"
            if not applied:
                self.conn.execute(sql.SQL("DELETE FROM {}").format(self.storage))
                self.conn.execute(
                    sql.SQL("INSERT INTO {} {}").format(
                        self.storage, sql.SQL(self.plan.storage_query)
                    )
                )
            self.check("after refresh")
        self.conn.commit()
        return applied

    def check(self, when: str) -> None:
        """Storage equals the query (as text rows, a multiset) and its own recomputation."""
        user = sql.SQL(", ").join(map(sql.Identifier, self.plan.user_columns))
        everything = sql.SQL(", ").join(
            map(
                sql.Identifier,
                self.plan.hidden_columns[:1]
                + self.plan.user_columns
                + self.plan.hidden_columns[1:],
            )
        )
        query = sql.SQL(self.query)
        stored = sql.SQL("SELECT (ROW({})::text) AS r FROM {}").format(user, self.storage)
        expected = sql.SQL("SELECT (ROW(q.*)::text) AS r FROM ({}\n) AS q").format(query)
        self._same(stored, expected, f"{when}: storage vs the defining query")
        full = sql.SQL("SELECT (ROW({})::text) AS r FROM {}").format(everything, self.storage)
        recomputed = sql.SQL("SELECT (ROW(q.*)::text) AS r FROM ({}\n) AS q").format(
            sql.SQL(self.plan.storage_query)
        )
        self._same(full, recomputed, f"{when}: storage vs storage_query (row ids, aux)")
        keyed = self.storage
        kept = self.plan.kept
        if kept is not None:
            keyed = sql.Identifier(*kept.table)
            columns = sql.SQL(", ").join(
                map(sql.Identifier, kept.hidden_columns[:1] + kept.columns + kept.aux_columns)
            )
            self._same(
                sql.SQL("SELECT (ROW({})::text) AS r FROM {}").format(columns, keyed),
                sql.SQL("SELECT (ROW(q.*)::text) AS r FROM ({}\n) AS q").format(
                    sql.SQL(kept.storage_query)
                ),
                f"{when}: the kept aggregate vs its storage_query (row ids, aux)",
            )
        if self.plan.apply_strategy is ApplyStrategy.KEYED:
            duplicates = self.conn.execute(
                sql.SQL(
                    "SELECT count(*) FROM (SELECT __pgt_row_id FROM {} GROUP BY 1"
                    " HAVING count(*) > 1) AS d"
                ).format(keyed)
            ).fetchone()
            assert duplicates == (0,), f"{when}: duplicate row ids in keyed storage"

    def _same(self, left: sql.Composable, right: sql.Composable, what: str) -> None:
        diff = self.conn.execute(
            sql.SQL(
                "(SELECT 'missing' AS side, r FROM ({1}) AS b EXCEPT ALL"
                " SELECT 'missing', r FROM ({0}) AS a)"
                " UNION ALL (SELECT 'extra', r FROM ({0}) AS a EXCEPT ALL"
                " SELECT 'extra', r FROM ({1}) AS b) LIMIT 20"
            ).format(left, right)
        ).fetchall()
        assert not diff, f"{what}: {diff}\nquery: {self.query}\napplied: {self.applied}"


def run_rounds(
    conn: psycopg.Connection[Any],
    query: str,
    tables: Sequence[str],
    seed: int,
    rounds: int = 6,
) -> Maintained:
    """Create ``tables``, maintain ``query`` over ``rounds`` of random changes, check each."""
    rng = random.Random(seed)
    create_tables(conn, tables, rng)
    maintained = Maintained(conn, query)
    for number in range(rounds):
        maintained.snapshot()
        for _ in range(rng.randint(1, 12)):
            mutate(conn, SPECS[rng.choice(list(tables))], rng)
        conn.commit()
        maintained.stage(rng)
        try:
            maintained.refresh()
        except Exception as error:
            raise AssertionError(f"seed {seed}, round {number}: {error}") from error
    return maintained


# Random tables driven by a catalog: values drawn from each column's type.

WORDS = ("a", "b", "c", "", "Zz", "north", "south", "east")
"""Text values: few, so that joins and groups find partners; a few the fixtures name."""

_BASE = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RandomTable:
    """A source table filled and changed at random; values are drawn from the column types.

    Integer columns take values 0..8 (key columns 1..``ids``), so that they join the keys of
    other tables; nullable columns outside the key are NULL now and then.
    """

    table: SourceTable
    rows: int = 12
    """Rows inserted when the table is created."""
    ids: int = 24
    """Values of an integer key column are drawn from 1..ids (while free)."""

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.table.schema, self.table.name)

    @property
    def values(self) -> tuple[Column, ...]:
        """The columns outside the primary key."""
        return tuple(c for c in self.table.columns if c.name not in self.table.primary_key)


def random_value(type_name: str, rng: random.Random) -> Value:
    """A value of the type ``type_name`` (``format_type()`` text) from a small domain."""
    match = re.fullmatch(r"([a-z ]+?)\s*(?:\((\d+)(?:,\s*(\d+))?\))?(\[\])?", type_name.lower())
    if match is None or match[4]:
        raise ValueError(f"no random values of type {type_name}: add them to random_value")
    base, length, scale = match[1], match[2], match[3]
    if base in ("smallint", "integer", "bigint"):
        if base == "bigint" and rng.random() < 0.1:
            return rng.choice([-(2**40), 2**40])
        return rng.randint(0, 8)
    if base in ("numeric", "decimal"):
        quarter = Decimal(rng.randint(-4, 40)) / 4
        if length is None:  # any scale: values of several scales
            return rng.choice(
                [quarter, quarter.quantize(Decimal("0.001")), Decimal(rng.randint(0, 9))]
            )
        return quarter.quantize(Decimal(1).scaleb(-int(scale or 0)))
    if base in ("double precision", "real"):
        return rng.randint(-8, 8) / 2
    if base in ("text", "character varying", "varchar", "character", "char"):
        word = rng.choice(WORDS)
        return word[: int(length)] if length else word
    if base == "boolean":
        return rng.random() < 0.5
    if base == "date":
        return _BASE.date() + timedelta(days=rng.randint(0, 4))
    if base == "timestamp with time zone":
        return _BASE + timedelta(hours=6 * rng.randint(0, 12))
    if base in ("timestamp", "timestamp without time zone"):
        return _BASE.replace(tzinfo=None) + timedelta(hours=6 * rng.randint(0, 12))
    if base in ("json", "jsonb"):
        return rng.choice(['{"a": 1}', '{"a":1}', "[]"])
    raise ValueError(f"no random values of type {type_name}: add them to random_value")


def _random_column(column: Column, rng: random.Random) -> Value:
    if not column.not_null and rng.random() < 0.15:
        return None
    return random_value(column.type, rng)


def _key_value(column: Column, spec: RandomTable, rng: random.Random) -> Value:
    if column.type in ("smallint", "integer", "bigint"):
        return rng.randint(1, spec.ids)
    return random_value(column.type, rng)


def _fresh_key(
    conn: psycopg.Connection[Any],
    spec: RandomTable,
    rng: random.Random,
    used: set[tuple[Value, ...]] | None = None,
) -> dict[str, Value]:
    """Values of the primary key no row has (``used``, else read from the table): drawn at
    random, else past the largest one."""
    key = spec.table.primary_key
    columns = [c for name in key for c in spec.table.columns if c.name == name]
    if used is None:
        used = set(
            conn.execute(
                sql.SQL("SELECT {} FROM {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, key)), spec.identifier
                )
            ).fetchall()
        )
    for _ in range(20):
        candidate = tuple(_key_value(c, spec, rng) for c in columns)
        if candidate not in used:
            return dict(zip(key, candidate, strict=True))
    first = max(row[0] for row in used)
    return dict(zip(key, (first + 1, *next(iter(used))[1:]), strict=True))


def create_random_tables(
    conn: psycopg.Connection[Any], tables: Sequence[RandomTable], rng: random.Random
) -> None:
    """Create ``tables`` (and their schemas) and fill each with its rows."""
    for spec in tables:
        table = spec.table
        columns = [
            sql.SQL("{} {}{}").format(
                sql.Identifier(c.name),
                sql.SQL(c.type),
                sql.SQL(" NOT NULL" if c.not_null else ""),
            )
            for c in table.columns
        ]
        if table.primary_key:
            columns.append(
                sql.SQL("PRIMARY KEY ({})").format(
                    sql.SQL(", ").join(map(sql.Identifier, table.primary_key))
                )
            )
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema)))
        conn.execute(
            sql.SQL("CREATE TABLE {} ({})").format(spec.identifier, sql.SQL(", ").join(columns))
        )
        used: set[tuple[Value, ...]] = set()
        rows = []
        for _ in range(spec.rows):
            row = _random_row(conn, spec, rng, used)
            used.add(tuple(row[name] for name in table.primary_key))
            rows.append(row)
        if rows:
            with conn.cursor() as cursor:
                cursor.executemany(_insert_sql(spec, rows[0]), [list(r.values()) for r in rows])
    conn.commit()


def _random_row(
    conn: psycopg.Connection[Any],
    spec: RandomTable,
    rng: random.Random,
    used: set[tuple[Value, ...]] | None = None,
) -> dict[str, Value]:
    row = {c.name: _random_column(c, rng) for c in spec.values}
    if spec.table.primary_key:
        row = {**_fresh_key(conn, spec, rng, used), **row}
    return row


def _insert_sql(spec: RandomTable, row: dict[str, Value]) -> sql.Composed:
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        spec.identifier,
        sql.SQL(", ").join(map(sql.Identifier, row)),
        sql.SQL(", ").join(sql.Placeholder() * len(row)),
    )


def _insert_random(conn: psycopg.Connection[Any], spec: RandomTable, rng: random.Random) -> None:
    row = _random_row(conn, spec, rng)
    conn.execute(_insert_sql(spec, row), list(row.values()))


def mutate_random(conn: psycopg.Connection[Any], spec: RandomTable, rng: random.Random) -> None:
    """One random change: insert, delete, update of values or of the key, or a duplicate."""
    table = spec.identifier
    ctids = [
        ctid
        for (ctid,) in conn.execute(
            sql.SQL("SELECT ctid::text FROM {} ORDER BY ctid").format(table)
        )
    ]
    action = rng.choice(["insert", "delete", "update", "update", "duplicate"])
    if not ctids or action == "insert":
        _insert_random(conn, spec, rng)
        return
    ctid = rng.choice(ctids)
    if action == "delete":
        conn.execute(sql.SQL("DELETE FROM {} WHERE ctid = %s::tid").format(table), (ctid,))
        return
    if action == "duplicate" and not spec.table.primary_key:
        conn.execute(
            sql.SQL("INSERT INTO {0} SELECT * FROM {0} WHERE ctid = %s::tid").format(table),
            (ctid,),
        )
        return
    if action == "duplicate" or not spec.values:  # a keyed row moves to another key
        row = _fresh_key(conn, spec, rng)
    else:
        columns = rng.sample(spec.values, min(len(spec.values), rng.randint(1, 2)))
        row = {c.name: _random_column(c, rng) for c in columns}
    conn.execute(
        sql.SQL("UPDATE {} SET {} WHERE ctid = %s::tid").format(
            table,
            sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in row),
        ),
        [*row.values(), ctid],
    )


def maintain_at_random(
    conn: psycopg.Connection[Any],
    query: str,
    tables: Sequence[RandomTable],
    seed: int,
    rounds: int = 4,
    changes: int = 10,
    planner: Callable[[psycopg.Connection[Any]], DeltaPlan] | None = None,
) -> Maintained:
    """Create ``tables`` at random, maintain ``query`` over ``rounds`` of up to ``changes``
    random changes each, and check the storage after every refresh.

    ``planner`` makes the plan once the tables exist (default: compile the query). The
    connection's search path must reach every table (the staging names them unqualified).
    """
    rng = random.Random(seed)
    create_random_tables(conn, tables, rng)
    try:
        maintained = Maintained(conn, query, plan=None if planner is None else planner(conn))
    except Exception as error:
        raise AssertionError(f"seed {seed}, initial population: {error}") from error
    for number in range(rounds):
        maintained.snapshot()
        for _ in range(rng.randint(1, changes)):
            mutate_random(conn, rng.choice(tables), rng)
        conn.commit()
        maintained.stage(rng)
        try:
            maintained.refresh()
        except Exception as error:
            raise AssertionError(f"seed {seed}, round {number}: {error}") from error
    return maintained
