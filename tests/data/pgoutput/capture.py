"""Regenerate the captured pgoutput messages that tests/walstream/test_pgoutput.py decodes.

Run from the repository root:

    .venv/bin/python tests/data/pgoutput/capture.py            # a private PostgreSQL 18
    .venv/bin/python tests/data/pgoutput/capture.py --dsn DSN  # an existing wal_level=logical
                                                               # server (superuser; creates and
                                                               # drops database pgoutput_capture)

Each scenario below runs some SQL, then reads what a ``pgoutput`` slot (protocol 1, messages
on) emits for it with ``pg_logical_slot_get_binary_changes``: the same bytes a walsender puts
in XLogData payloads. ``<scenario>.bin`` holds the messages, each as a 4-byte big-endian length
followed by the payload. ``manifest.json`` holds what the server says independently of the
messages (table and type OIDs, each message's LSN and xid, a window around the commit time),
so that tests can check decoded values against the server rather than against themselves.
OIDs, LSNs and times change with every capture; the column values do not.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

HERE = Path(__file__).resolve().parent
DATABASE = "pgoutput_capture"
SLOT = "capture"
PUBLICATION = "capture"
ORIGIN = "capture_origin"
ORIGIN_LSN = "1/ABCDEF0"

# Stored out of line and uncompressed (STORAGE EXTERNAL), so that an UPDATE that leaves it
# alone sends it as 'u'. Random hex would barely compress either; the seed keeps it stable.
TOAST_BODY = random.Random(20240601).randbytes(1500).hex()  # 3000 characters > 2 kB

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE kinds (
    id integer PRIMARY KEY,
    big bigint,
    name text,
    price numeric(10, 2),
    code varchar(20),
    at timestamptz,
    flag boolean,
    raw bytea,
    doc jsonb,
    tags integer[],
    feeling mood
);
CREATE TABLE keyed (id integer PRIMARY KEY, note text);
CREATE TABLE full_rows (id integer, note text);
ALTER TABLE full_rows REPLICA IDENTITY FULL;
CREATE TABLE docs (id integer PRIMARY KEY, body text, n integer);
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE docs_full (id integer PRIMARY KEY, body text, n integer);
ALTER TABLE docs_full ALTER COLUMN body SET STORAGE EXTERNAL;
ALTER TABLE docs_full REPLICA IDENTITY FULL;
CREATE TABLE parent (id serial PRIMARY KEY);
CREATE TABLE child (id serial PRIMARY KEY, parent_id integer REFERENCES parent);
CREATE TABLE "Ünïcode ""quoted"" table" (id integer PRIMARY KEY);
CREATE PUBLICATION capture FOR ALL TABLES;
"""

# (scenario, statements run in one transaction unless the list is empty, setup run before
# and consumed without saving)
SCENARIOS: list[tuple[str, list[str], list[str]]] = [
    (
        "insert_kinds",
        [
            """INSERT INTO kinds VALUES (1, 9007199254740993, 'plain', 12.50, 'AB-1',
                '2024-06-01 12:34:56.789+00', true, '\\x00ff', '{"a": [1, null]}',
                '{1,2,NULL}', 'happy')""",
            "INSERT INTO kinds (id) VALUES (2)",
            "INSERT INTO kinds (id, name, code) VALUES (3, 'héllo wörld ✓ 日本語 🐘', '')",
        ],
        [],
    ),
    ("insert_quoted_name", ['INSERT INTO "Ünïcode ""quoted"" table" VALUES (7)'], []),
    (
        "full_identity",
        [
            "UPDATE full_rows SET note = 'after' WHERE id = 1",
            "DELETE FROM full_rows WHERE id = 2",
        ],
        ["INSERT INTO full_rows VALUES (1, 'before'), (2, NULL)"],
    ),
    (
        "default_identity",
        [
            "UPDATE keyed SET note = 'changed' WHERE id = 1",
            "UPDATE keyed SET id = 10 WHERE id = 2",
            "DELETE FROM keyed WHERE id = 3",
        ],
        ["INSERT INTO keyed VALUES (1, 'one'), (2, 'two'), (3, 'three')"],
    ),
    (
        "unchanged_toast",
        [
            "UPDATE docs SET n = n + 1 WHERE id = 1",
            "UPDATE docs_full SET n = n + 1 WHERE id = 1",
        ],
        [
            "INSERT INTO docs VALUES (1, %(body)s, 1)",
            "INSERT INTO docs_full VALUES (1, %(body)s, 1)",
        ],
    ),
    (
        "truncate",
        ["TRUNCATE parent RESTART IDENTITY CASCADE", "TRUNCATE keyed"],
        [
            "INSERT INTO parent DEFAULT VALUES",
            "INSERT INTO child (parent_id) SELECT id FROM parent",
        ],
    ),
    (
        "message_transactional",
        ["SELECT pg_logical_emit_message(true, 'pgtrickle', 'x')"],
        [],
    ),
    (
        "message_nontransactional",
        ["SELECT pg_logical_emit_message(false, 'pgtrickle', '\\x00ff0a'::bytea)"],
        [],
    ),
    (
        "origin",
        [
            f"SELECT pg_replication_origin_xact_setup('{ORIGIN_LSN}', now())",
            "INSERT INTO keyed VALUES (42, 'replayed')",
        ],
        [],
    ),
]

_MICROS_SINCE_2000 = "(extract(epoch FROM clock_timestamp() - '2000-01-01 UTC') * 1e6)::bigint"


@contextmanager
def _target(dsn: str | None) -> Iterator[str]:
    if dsn is not None:
        yield dsn
        return
    from pgtrickle.dev.cluster import temporary_cluster

    cluster = temporary_cluster()
    cluster.start()
    try:
        yield cluster.dsn()
    finally:
        cluster.destroy()


def _changes(conn: psycopg.Connection[Any]) -> list[tuple[str, int | None, bytes]]:
    rows = conn.execute(
        "SELECT lsn::text, xid::text::bigint, data"
        " FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, 'proto_version', '1',"
        " 'publication_names', %s, 'messages', 'true')",
        (SLOT, PUBLICATION),
    ).fetchall()
    return [(lsn, xid, bytes(data)) for lsn, xid, data in rows]


def _oid(conn: psycopg.Connection[Any], regclass: str) -> int:
    row = conn.execute("SELECT %s::regclass::oid::bigint", (regclass,)).fetchone()
    assert row is not None
    return int(row[0])


def capture(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(DATABASE)))  # fmt: skip
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        target = psycopg.conninfo.make_conninfo(dsn, dbname=DATABASE)
    try:
        with psycopg.connect(target, autocommit=True) as conn:
            _capture_into(conn)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(DATABASE)))  # fmt: skip


def _capture_into(conn: psycopg.Connection[Any]) -> None:
    # timestamptz values are printed by the decoding session, in its time zone
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute(SCHEMA)
    conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (SLOT,))
    conn.execute("SELECT pg_replication_origin_create(%s)", (ORIGIN,))
    version = conn.execute("SHOW server_version").fetchone()
    mood = conn.execute("SELECT 'mood'::regtype::oid::bigint").fetchone()
    assert version is not None and mood is not None
    manifest: dict[str, Any] = {
        "server_version": version[0],
        "oids": {
            name: _oid(conn, name)
            for name in ("kinds", "keyed", "full_rows", "docs", "docs_full", "parent", "child")
        },
        "quoted_table_oid": _oid(conn, '"Ünïcode ""quoted"" table"'),
        "mood_oid": int(mood[0]),
        "origin": ORIGIN,
        "origin_lsn": ORIGIN_LSN,
        "toast_body_length": len(TOAST_BODY),
        "scenarios": {},
    }
    for name, statements, setup in SCENARIOS:
        for statement in setup:
            conn.execute(statement, {"body": TOAST_BODY})
        _changes(conn)  # discard the setup's messages
        if name == "origin":
            conn.execute("SELECT pg_replication_origin_session_setup(%s)", (ORIGIN,))
        before = conn.execute(f"SELECT {_MICROS_SINCE_2000}").fetchone()
        with conn.transaction():
            for statement in statements:
                conn.execute(statement)
        after = conn.execute(f"SELECT {_MICROS_SINCE_2000}").fetchone()
        assert before is not None and after is not None
        if name == "origin":
            conn.execute("SELECT pg_replication_origin_session_reset()")
        changes = _changes(conn)
        for _ in range(50):
            # A non-transactional message is decodable only once the WAL writer has flushed
            # it (nothing commits), up to wal_writer_delay later.
            if changes:
                break
            time.sleep(0.05)
            changes = _changes(conn)
        with open(HERE / f"{name}.bin", "wb") as out:
            for _, _, data in changes:
                out.write(struct.pack(">I", len(data)) + data)
        manifest["scenarios"][name] = {
            "kinds": "".join(chr(data[0]) for _, _, data in changes),
            "lsns": [lsn for lsn, _, _ in changes],
            "xids": [xid for _, xid, _ in changes],
            "clock_window": [int(before[0]), int(after[0])],
        }
        print(f"{name:26} {manifest['scenarios'][name]['kinds']}")
    conn.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="a superuser DSN of a wal_level=logical server")
    args = parser.parse_args()
    with _target(args.dsn) as dsn:
        capture(dsn)


if __name__ == "__main__":
    main()
