"""What is captured: the slot, the publication, and each source's change buffer.

A source is a table some stream table reads. Capturing it means, in this order: its replica
identity becomes FULL (UPDATE and DELETE then carry the whole old row, which deltas need, and a
published table without an identity would make the user's own UPDATE and DELETE fail), its
change buffer is created, and it joins the publication. A stream table that reads it may be
populated only at a snapshot taken after every transaction that was running when it joined
had finished: older transactions were not published, and must be visible in that snapshot.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import psycopg
from psycopg import sql

from dvm.catalog import SourceTable
from walstream.buffers import (
    CapturedSource,
    buffer_table_name,
    create_buffer,
    drop_buffer,
    load_sources,
)
from walstream.errors import OlderTransactionsRunning
from walstream.replication import ensure_slot

SLOT_NAME = "pgtrickle"
PUBLICATION_NAME = "pgtrickle"

# What pgtrickle.sources.original_replica_identity holds, as ALTER TABLE spells it.
_IDENTITIES = {"d": "DEFAULT", "n": "NOTHING", "f": "FULL"}


def publication_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (PUBLICATION_NAME,))
    return row.fetchone() is not None


def ensure_publication(conn: psycopg.Connection[Any]) -> None:
    if publication_exists(conn):
        return
    # the daemon and an apply may both create it at once: the second one finds it there
    with contextlib.suppress(psycopg.errors.DuplicateObject), conn.transaction():
        conn.execute(
            sql.SQL(
                "CREATE PUBLICATION {} WITH (publish = 'insert, update, delete, truncate')"
            ).format(sql.Identifier(PUBLICATION_NAME))
        )


def ensure_slot_and_publication(conn: psycopg.Connection[Any]) -> None:
    """The publication, then the slot (in autocommit).

    In this order: PostgreSQL 15 decodes with the catalog as it was at each change, and a
    change decoded from before the publication existed stops the stream with an error.
    """
    ensure_publication(conn)
    ensure_slot(conn, SLOT_NAME)


def capture_source(conn: psycopg.Connection[Any], table: SourceTable) -> CapturedSource:
    """Start capturing ``table`` (inside the caller's transaction); idempotent."""
    existing = load_sources(conn).get(table.oid)
    if existing is not None:
        return existing
    target = sql.SQL("{}.{}").format(sql.Identifier(table.schema), sql.Identifier(table.name))
    row = conn.execute("SELECT relreplident FROM pg_class WHERE oid = %s", (table.oid,)).fetchone()
    assert row is not None
    original_identity = row[0]
    if original_identity != "f":
        conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(target))
    source = CapturedSource(
        oid=table.oid,
        schema=table.schema,
        name=table.name,
        buffer_table=buffer_table_name(table.oid),
        columns=tuple(c.name for c in table.columns),
        column_types=tuple(c.type for c in table.columns),
    )
    create_buffer(conn, source)
    conn.execute(
        "INSERT INTO pgtrickle.sources (source_oid, schema_name, name, buffer_table, columns,"
        " column_types, original_replica_identity) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            source.oid,
            source.schema,
            source.name,
            source.buffer_table,
            list(source.columns),
            list(source.column_types),
            original_identity,
        ),
    )
    conn.execute(
        sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
            sql.Identifier(PUBLICATION_NAME), target
        )
    )
    return source


def release_source(conn: psycopg.Connection[Any], source: CapturedSource) -> None:
    """Stop capturing a source no stream table reads any more (inside the caller's transaction)."""
    row = conn.execute(
        "SELECT original_replica_identity FROM pgtrickle.sources WHERE source_oid = %s",
        (source.oid,),
    ).fetchone()
    # by oid: the table may have been renamed since it was captured
    current = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE c.oid = %s",
        (source.oid,),
    ).fetchone()
    if current:
        target = sql.SQL("{}.{}").format(sql.Identifier(current[0]), sql.Identifier(current[1]))
        published = conn.execute(
            "SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid"
            " WHERE p.pubname = %s AND pr.prrelid = %s",
            (PUBLICATION_NAME, source.oid),
        ).fetchone()
        if published:
            conn.execute(
                sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
                    sql.Identifier(PUBLICATION_NAME), target
                )
            )
        identity = _IDENTITIES.get(row[0] if row else "f")
        if identity and identity != "FULL":
            conn.execute(
                sql.SQL("ALTER TABLE {} REPLICA IDENTITY {}").format(target, sql.SQL(identity))
            )
    drop_buffer(conn, source)
    conn.execute("DELETE FROM pgtrickle.sources WHERE source_oid = %s", (source.oid,))


def wait_for_older_transactions(conn: psycopg.Connection[Any], timeout: float = 600) -> None:
    """Block until every transaction running now has ended.

    Called after a source joined the publication (and that commit is done): a snapshot taken
    afterwards sees every change that was not published.
    """
    row = conn.execute(
        "SELECT array_agg(x::text) FROM pg_snapshot_xip(pg_current_snapshot()) x"
    ).fetchone()
    running: list[str] = list(row[0]) if row and row[0] else []
    deadline = time.monotonic() + timeout
    while running:
        states = conn.execute(
            "SELECT x, pg_xact_status(x::xid8) FROM unnest(%s::text[]) x", (running,)
        ).fetchall()
        running = [x for x, state in states if state == "in progress"]
        if not running:
            return
        if time.monotonic() > deadline:
            raise OlderTransactionsRunning(
                "transactions older than the new stream table are still running",
                detail=f"waited {timeout:g} s for transaction(s) {', '.join(running)}",
                hint="commit or end them (pg_stat_activity shows them), then apply again",
            )
        time.sleep(0.02)
