"""The change buffers: the one module that knows their tables, columns and rows.

One table per captured source, ``pgtrickle_changes.changes_<oid>``:

    xid     xid8      the source transaction's full xid (see ``reader.widen_xid``)
    lsn     pg_lsn    the end of its commit record
    seq     integer   the change's order within its transaction
    action  "char"    ``BufferAction``: I, U, D, or T for TRUNCATE
    o1..oN            the old values (UPDATE, DELETE), typed as the source's columns
    n1..nN            the new values (INSERT, UPDATE)

Positional value columns keep a buffer independent of the length and spelling of the
source's column names; ``pgtrickle.sources.columns`` maps positions back to names.

Everything else that reads or writes buffers asks this module for its SQL: the reader's COPY,
the refresh's staging query and temp tables, ``wait``'s "behind" test, and pruning.

Rows are inserted by the reader, in batches committed with ``reader_state.buffered_lsn``, and
deleted by ``prune`` once every stream table reading the source has applied them. So a
snapshot that sees ``buffered_lsn`` at or past the newest ``lsn`` of a refresh's window sees
all of the window's rows (``Refresher._sees_all``).

>>> source = CapturedSource(16385, "public", "orders", "changes_16385", ("id", "amount"),
...                         ("integer", "numeric(10,2)"))
>>> value_columns(source)
['o1', 'o2', 'n1', 'n2']
>>> update_values(("1", "9.50"), ("1", "12.00")), delete_values(("1", "9.50"), 2)
(('1', '9.50', '1', '12.00'), ('1', '9.50', None, None))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql

from dvm.catalog import SourceTable
from dvm.relevance import bound
from dvm.rules.scan import delta_relation
from dvm.sql import BYTEWISE_TYPES, FAITHFUL_TYPES, groupable, is_numeric
from dvm.zset import WEIGHT
from walstream.locks import APPLY_LOCK

BUFFER_SCHEMA = "pgtrickle_changes"

Value = str | None
"""A value as pgoutput sends it: its text form, or None for NULL."""
Row = tuple[Value, ...]


class BufferAction(StrEnum):
    INSERT = "I"
    UPDATE = "U"
    DELETE = "D"
    TRUNCATE = "T"


@dataclass(frozen=True)
class CapturedSource:
    """A row of ``pgtrickle.sources``: a captured table and the layout of its buffer."""

    # ``schema`` and ``name`` are the table's current ones (see ``load_sources``)

    oid: int
    schema: str
    name: str
    buffer_table: str
    columns: tuple[str, ...]
    column_types: tuple[str, ...]

    @property
    def buffer(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(
            sql.Identifier(BUFFER_SCHEMA), sql.Identifier(self.buffer_table)
        )

    @property
    def qualified_name(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.name))

    @property
    def display_name(self) -> str:
        return f"{self.schema}.{self.name}"

    def staging_table(self, *, indexed: bool) -> str:
        """The session temp table a refresh stages this source's delta into: the one indexed
        by the source's key, or the plain one (``dvm.rules.scan.delta_relation``)."""
        return delta_relation(SourceTable(self.oid, self.schema, self.name, ()), indexed=indexed)


@dataclass(frozen=True)
class Staging:
    """Where one refresh stages a source's delta: which of its temp tables, and the columns
    read (None: all)."""

    source: CapturedSource
    indexed: bool
    read: tuple[str, ...] | None

    @property
    def name(self) -> sql.Composed:
        return sql.SQL("pg_temp.{}").format(
            sql.Identifier(self.source.staging_table(indexed=self.indexed))
        )

    @property
    def columns(self) -> sql.Composable:
        """The temp table's columns a staging query fills, in its order."""
        return sql.SQL(", ").join(map(sql.Identifier, staged_columns(self.source, self.read)))


def buffer_table_name(oid: int) -> str:
    return f"changes_{oid}"


def value_columns(source: CapturedSource) -> list[str]:
    """The buffer's value columns: old values ``o1..oN``, then new values ``n1..nN``."""
    n = len(source.columns)
    return [f"o{i}" for i in range(1, n + 1)] + [f"n{i}" for i in range(1, n + 1)]


def load_sources(conn: psycopg.Connection[Any]) -> dict[int, CapturedSource]:
    """Every captured source, under the name it has now (a table may be renamed)."""
    rows = conn.execute(
        "SELECT s.source_oid, coalesce(n.nspname, s.schema_name), coalesce(c.relname, s.name),"
        " s.buffer_table, s.columns, s.column_types FROM pgtrickle.sources s"
        " LEFT JOIN pg_class c ON c.oid = s.source_oid"
        " LEFT JOIN pg_namespace n ON n.oid = c.relnamespace"
    ).fetchall()
    return {
        int(r[0]): CapturedSource(int(r[0]), r[1], r[2], r[3], tuple(r[4]), tuple(r[5]))
        for r in rows
    }


# -- creating and dropping --------------------------------------------------------------


def create_buffer(conn: psycopg.Connection[Any], source: CapturedSource) -> None:
    """The buffer table of a newly captured source (inside the caller's transaction)."""
    typed = [
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(column_type))
        for name, column_type in zip(value_columns(source), source.column_types * 2, strict=True)
    ]
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (xid xid8 NOT NULL, lsn pg_lsn NOT NULL, seq integer NOT NULL,"
            ' action "char" NOT NULL, {})'
        ).format(source.buffer, sql.SQL(", ").join(typed))
    )
    conn.execute(sql.SQL("CREATE INDEX ON {} (xid)").format(source.buffer))


def drop_buffer(conn: psycopg.Connection[Any], source: CapturedSource) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(source.buffer))


# -- writing (the reader) ---------------------------------------------------------------


def copy_statement(source: CapturedSource) -> sql.Composed:
    """``COPY`` into the buffer; rows are ``(xid, lsn, seq, action, *buffer_values(...))``."""
    columns = [sql.Identifier(c) for c in value_columns(source)]
    return sql.SQL("COPY {} (xid, lsn, seq, action, {}) FROM STDIN").format(
        source.buffer, sql.SQL(", ").join(columns)
    )


# The value columns of one buffered change: old values, then new ones, NULL where an action
# has none. Plain tuple arithmetic: these run once per change the reader buffers.


def insert_values(new: Row, width: int) -> Row:
    return (None,) * width + new


def update_values(old: Row, new: Row) -> Row:
    return old + new


def delete_values(old: Row, width: int) -> Row:
    return old + (None,) * width


def truncate_values(width: int) -> Row:
    return (None,) * (2 * width)


# -- reading (the refresh) --------------------------------------------------------------


def visible_window(snapshot: str, frontier: str) -> sql.Composable:
    """Buffer rows (alias ``b``) of transactions visible in ``snapshot`` and not in
    ``frontier``: exactly the changes a refresh at ``snapshot`` must apply.

    The bounds on ``xid`` only let the index narrow the scan; visibility decides.
    """
    s, f = sql.Literal(snapshot), sql.Literal(frontier)
    return sql.SQL(
        "b.xid >= pg_snapshot_xmin({f}::pg_snapshot)"
        " AND b.xid < pg_snapshot_xmax({s}::pg_snapshot)"
        " AND pg_visible_in_snapshot(b.xid, {s}::pg_snapshot)"
        " AND NOT pg_visible_in_snapshot(b.xid, {f}::pg_snapshot)"
    ).format(s=s, f=f)


def window_query(
    source: CapturedSource, window: sql.Composable, limit: int | None = None
) -> sql.Composed:
    """One row: whether a TRUNCATE of the source is among the rows in ``window``, about as
    many rows as staging them gives (an update is two, its old and its new values; netting
    and updates of columns nobody reads make them fewer), the buffer rows counted, and the
    newest commit end (``lsn``) among them (text; NULL for none).

    With ``limit`` it stops after that many buffer rows: once a refresh is known to have
    more changes than are worth applying, counting the rest of a large window is a scan for
    nothing (and the TRUNCATE flag is then only about the rows counted)."""
    rows = sql.SQL("SELECT b.action, b.lsn FROM {} b WHERE {}").format(source.buffer, window)
    if limit is not None:
        rows = sql.SQL("{} LIMIT {}").format(rows, sql.Literal(limit))
    return sql.SQL(
        "SELECT coalesce(bool_or(r.action = {}), false),"
        " count(*) + count(*) FILTER (WHERE r.action = {}), count(*), max(r.lsn)::text"
        " FROM ({}) r"
    ).format(
        sql.Literal(BufferAction.TRUNCATE.value),
        sql.Literal(BufferAction.UPDATE.value),
        rows,
    )


def staging_query(
    source: CapturedSource,
    window: sql.Composable,
    columns_read: Sequence[str] | None,
    relevant: str | None = None,
    reduced: str | None = None,
) -> sql.Composed:
    """``_netted``, and with ``reduced`` (a condition with subqueries over other tables,
    ``dvm.relevance.reduced_rows``: which rows can matter at the snapshot of the statement)
    only its netted rows that meet it. The condition is tested once, on the netted rows (a
    fence keeps the planner from pushing it into both scans), and its subqueries each run
    once, their values hashed (see ``dvm.relevance.bound``)."""
    netted = _netted(source, window, columns_read, relevant)
    if reduced is None:
        return netted
    read = _read_positions(source, columns_read)
    text = bound(reduced, "s", tuple((source.columns[i], f"c{i}") for i in read))
    if text is None:
        return netted
    names = sql.SQL(", ").join([sql.Identifier(WEIGHT), *(sql.Identifier(f"c{i}") for i in read)])
    # rendered by the compiler from a parsed condition, never text the user wrote
    return sql.SQL("SELECT s.* FROM ({} OFFSET 0) AS s({}) WHERE {}").format(
        netted, names, sql.SQL(text)
    )


def _netted(
    source: CapturedSource,
    window: sql.Composable,
    columns_read: Sequence[str] | None,
    relevant: str | None,
) -> sql.Composed:
    """Buffer rows in ``window`` as weighted rows ``(w, c..)`` of the columns read (None:
    all), netted: one row per value of those columns with the sum of its weights, none where
    that sum is 0. Their order is that of ``staged_columns``.

    ``relevant``: the condition (``dvm.relevance``, over the source's column names) a row
    version must meet to be staged at all; the others cannot change what the query shows.
    It is tested before netting (it cannot fail on any value, and both versions of a pair
    that cancels have the same values), so the netting has fewer rows to hash.

    Netting is what keeps a refresh from evaluating a row version that no snapshot of the
    query sees: ``UPDATE t SET d = 0`` then ``SET d = 1`` stages no row with ``d = 0``. An
    UPDATE that changed the text of no column read is left out before that.

    The old values (weight -1) and the new ones (+1) are two scans of the buffer under UNION
    ALL: a LATERAL VALUES pairing them costs twenty times as much per row.
    """
    names = value_columns(source)
    n = len(source.columns)
    old, new = names[:n], names[n:]
    read = _read_positions(source, columns_read)
    # compared as text: an update from 1.5 to 1.50 (equal numerics) changes what the stream
    # table shows, and json, xml and point have no equality operator at all
    changed = (
        sql.SQL(" OR ").join(
            sql.SQL("b.{}::text IS DISTINCT FROM b.{}::text").format(
                sql.Identifier(old[i]), sql.Identifier(new[i])
            )
            for i in read
        )
        if read
        else sql.SQL("false")
    )
    # a column the query does not read is not staged: copying it costs for nothing
    value_names = sql.SQL(", ").join(
        [sql.Identifier(WEIGHT)] + [sql.Identifier(f"c{i}") for i in read]
    )

    def side(weight: int, values: list[str], action: BufferAction) -> sql.Composed:
        condition = _relevant(source, values, relevant)
        return sql.SQL(
            "SELECT {weight}{values} FROM {buffer} b WHERE {window}"
            " AND (b.action = {action} OR b.action = {update} AND ({changed})){condition}"
        ).format(
            condition=sql.SQL(" AND ({})").format(condition) if condition else sql.SQL(""),
            weight=sql.Literal(weight),
            values=sql.SQL("").join(
                sql.SQL(", b.{}").format(sql.Identifier(values[i])) for i in read
            ),
            buffer=source.buffer,
            window=window,
            action=sql.Literal(action.value),
            update=sql.Literal(BufferAction.UPDATE.value),
            changed=changed,
        )

    identity = sql.SQL(", ").join(
        _identity(sql.SQL("v.{}").format(sql.Identifier(f"c{i}")), source.column_types[i])
        for i in read
    )
    union = sql.SQL("({old} UNION ALL {new}) AS v({names})").format(
        old=side(-1, old, BufferAction.DELETE),
        new=side(1, new, BufferAction.INSERT),
        names=value_names,
    )
    if all(groupable(source.column_types[i]) for i in read):
        # one row per identity by hashing: a third cheaper than sorting for the window
        # (6,000 lineitems: 32 -> 25 ms)
        return sql.SQL(
            "SELECT sum(v.{w})::integer{values} FROM {union}{group} HAVING sum(v.{w}) <> 0"
        ).format(
            w=sql.Identifier(WEIGHT),
            values=sql.SQL("").join(
                sql.SQL(", {}").format(
                    _identity(
                        sql.SQL("v.{}").format(sql.Identifier(f"c{i}")),
                        source.column_types[i],
                        scale=False,
                    )
                )
                for i in read
            ),
            union=union,
            group=sql.SQL(" GROUP BY {}").format(identity) if read else sql.SQL(""),
        )
    return sql.SQL(
        "SELECT n.__pgt_net::integer{values} FROM (SELECT v.*, sum(v.{w}) OVER w AS __pgt_net,"
        " row_number() OVER w AS __pgt_n FROM {union}"
        " WINDOW w AS (PARTITION BY {identity})) AS n"
        " WHERE n.__pgt_n = 1 AND n.__pgt_net <> 0"
    ).format(
        w=sql.Identifier(WEIGHT),
        values=sql.SQL("").join(sql.SQL(", n.{}").format(sql.Identifier(f"c{i}")) for i in read),
        union=union,
        identity=identity if read else sql.SQL("0"),
    )


def _relevant(
    source: CapturedSource, values: list[str], condition: str | None
) -> sql.Composable | None:
    """``condition`` over the buffer columns ``values`` (old or new) of alias ``b``; None
    without one, or when it reads a column the buffer no longer holds (then every change is
    staged, which is always right)."""
    if condition is None:
        return None
    text = bound(condition, "b", tuple(zip(source.columns, values, strict=True)))
    # rendered by the compiler from a parsed condition, never text the user wrote
    return sql.SQL(text) if text is not None else None


def _read_positions(source: CapturedSource, columns_read: Sequence[str] | None) -> list[int]:
    return [i for i, c in enumerate(source.columns) if columns_read is None or c in columns_read]


def staged_columns(source: CapturedSource, columns_read: Sequence[str] | None) -> list[str]:
    """The temp table's columns a staging query fills, in its order: the weight and the
    columns read (None: all); the others stay NULL."""
    return [WEIGHT] + [source.columns[i] for i in _read_positions(source, columns_read)]


def _identity(value: sql.Composable, column_type: str, *, scale: bool = True) -> sql.Composable:
    """What a staged value is netted by: itself where equality is sameness of text (or
    bytes), a numeric with its scale (``1.5`` and ``1.50`` are equal numerics that a stream
    table shows differently; value and scale tell its text, and sort faster than it), else
    its text (json has no equality). ``scale=False``: without the numeric's scale (the
    value of a group by both)."""
    base = column_type.split("(")[0].strip()
    if base in FAITHFUL_TYPES:
        return value
    if base in BYTEWISE_TYPES:
        return sql.SQL('{} COLLATE "C"').format(value)
    if is_numeric(column_type):
        return sql.SQL("{}, scale({})").format(value, value) if scale else value
    return sql.SQL("{}::text").format(value)  # arrays ("integer[]") too


def create_staging_table(
    conn: psycopg.Connection[Any],
    source: CapturedSource,
    *,
    replace: bool = False,
    key: Sequence[str] = (),
    indexed: bool = True,
) -> None:
    """The session's temp table for the source's staged delta, emptied at every commit.

    Created once per session and reused: creating it per refresh doubles the refresh's cost
    and bloats the catalog. ``replace`` drops one the session may have of another layout first
    (the source was captured again with other columns). ``indexed``: the table a delta that
    looks the source's state before the refresh up by key in it reads (once per row of a
    join), indexed by ``key``, the source's primary key, when the table holds those columns.
    """
    name = sql.Identifier(source.staging_table(indexed=indexed))
    if replace:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(name))
    columns = [sql.SQL("{} integer").format(sql.Identifier(WEIGHT))] + [
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t))
        for c, t in zip(source.columns, source.column_types, strict=True)
    ]
    conn.execute(
        sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
            name, sql.SQL(", ").join(columns)
        )
    )
    if indexed and key and set(key) <= set(source.columns):
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON pg_temp.{} ({})").format(
                sql.Identifier(f"{source.staging_table(indexed=True)}_key"),
                name,
                sql.SQL(", ").join(sql.Identifier(k) for k in key),
            )
        )


def copy_into_staging(table: Staging) -> sql.Composed:
    """``COPY`` of a ``staging_query``'s rows into the temp table."""
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(table.name, table.columns)


def insert_into_staging(table: Staging, query: sql.Composable) -> sql.Composed:
    """``INSERT`` of a ``staging_query``'s rows into the temp table, by the session that
    owns it."""
    return sql.SQL("INSERT INTO {} ({}) {}").format(table.name, table.columns, query)


def reduce_staging(table: Staging, condition: str) -> sql.Composed | None:
    """``DELETE`` of the staged rows that fail ``condition`` (``staging_query``'s
    ``reduced``) from the temp table (none when it reads a column the table does not
    stage)."""
    columns = staged_columns(table.source, table.read)[1:]
    text = bound(condition, "d", tuple((c, c) for c in columns))
    if text is None:
        return None
    # rendered by the compiler from a parsed condition, never text the user wrote
    return sql.SQL("DELETE FROM {} AS d WHERE NOT coalesce(({}), false)").format(
        table.name, sql.SQL(text)
    )


def analyze_staging(table: Staging) -> sql.Composed:
    """``ANALYZE`` of the temp table: its row count, and the statistics of the columns read."""
    return sql.SQL("ANALYZE {} ({})").format(table.name, table.columns)


def behind_query(source: CapturedSource, lsn: str, frontier: str) -> sql.Composed:
    """Whether a change committed at or before ``lsn`` is not yet visible in ``frontier``.

    A frontier LSN at or past ``lsn`` proves nothing: a transaction can end its commit record
    before a refresh read its insert position and still be invisible in its snapshot. Only
    the buffers can tell.
    """
    return sql.SQL(
        "SELECT EXISTS (SELECT 1 FROM {} b WHERE b.lsn <= {}::pg_lsn"
        " AND b.xid >= pg_snapshot_xmin({f}::pg_snapshot)"
        " AND NOT pg_visible_in_snapshot(b.xid, {f}::pg_snapshot))"
    ).format(source.buffer, sql.Literal(lsn), f=sql.Literal(frontier))


# -- pruning ----------------------------------------------------------------------------


def prune(conn: psycopg.Connection[Any]) -> int:
    """Delete buffered changes that every stream table reading them has applied; the number.

    A transaction with an xid below the xmin of a frontier had finished when that frontier
    was taken, and buffered transactions are committed ones, so it is visible in it.

    Not while an ``apply`` runs: it populates stream tables at a snapshot that may be older
    than frontiers refreshes commit meanwhile, and only its commit makes that frontier count
    here; changes committed between the two would be pruned before the new stream table
    applied them.
    """
    removed = 0
    with conn.transaction():
        if not APPLY_LOCK.try_lock_for_transaction(conn):
            return 0
        sources = load_sources(conn)
        rows = conn.execute(
            "SELECT d.source_oid, min(pg_snapshot_xmin(st.frontier))::text,"
            " bool_or(st.frontier IS NULL)"
            " FROM pgtrickle.dependencies d JOIN pgtrickle.stream_tables st"
            " ON st.id = d.stream_table_id GROUP BY d.source_oid"
        ).fetchall()
        for oid, horizon, any_missing in rows:
            source = sources.get(int(oid))
            if source is None or any_missing or horizon is None:
                continue
            cur = conn.execute(
                sql.SQL("DELETE FROM {} WHERE xid < %s::xid8").format(source.buffer), (horizon,)
            )
            removed += max(cur.rowcount, 0)
    return removed
