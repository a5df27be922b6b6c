"""The change reader: buffers committed changes once, with xid8 and commit LSN, and resumes."""

from __future__ import annotations

import threading
import time

import psycopg
from psycopg import sql

from tests.fixtures.cluster import Database
from tests.fixtures.proxy import ConnectionKind, FaultProxy
from tests.fixtures.streams import capture_table, insert_lsn
from walstream.buffers import load_sources
from walstream.capture import (
    SLOT_NAME,
    release_source,
)
from walstream.reader import ChangeReader, widen_xid


def setup_source(dsn: str) -> int:
    return capture_table(dsn, "t", [("id", "integer"), ("v", "text"), ("big", "text")])


def buffered(dsn: str, oid: int) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        source = load_sources(conn)[oid]
        return conn.execute(
            sql.SQL(
                "SELECT seq, action, o1, o2, n1, n2, length(n3) FROM {} ORDER BY lsn, seq"
            ).format(source.buffer)
        ).fetchall()


def read_until_now(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        target = insert_lsn(conn)
        conn.execute("SELECT pg_logical_emit_message(true, 'test', '')")
    assert ChangeReader(dsn).run_until(target, timeout=30)


def test_committed_changes_are_buffered_and_rolled_back_ones_are_not(db: Database) -> None:
    oid = setup_source(db.dsn)
    with psycopg.connect(db.dsn) as conn:
        conn.execute(
            "INSERT INTO t SELECT 1, 'a', string_agg(md5(g::text), '')"
            " FROM generate_series(1, 200) g"
        )
        conn.execute("INSERT INTO t VALUES (2, 'b', NULL)")
        conn.commit()
        conn.execute("INSERT INTO t VALUES (3, 'rolled back', NULL)")
        conn.rollback()
        conn.execute("UPDATE t SET v = 'a2' WHERE id = 1")  # big is TOASTed and unchanged
        conn.execute("SAVEPOINT s")
        conn.execute("DELETE FROM t WHERE id = 1")
        conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.execute("DELETE FROM t WHERE id = 2")
        conn.commit()
    read_until_now(db.dsn)
    assert buffered(db.dsn, oid) == [
        (1, "I", None, None, 1, "a", 6400),
        (2, "I", None, None, 2, "b", None),
        (1, "U", 1, "a", 1, "a2", 6400),
        (2, "D", 2, "b", None, None, None),
    ]


def test_a_restart_buffers_nothing_twice(db: Database) -> None:
    oid = setup_source(db.dsn)
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (1, 'a', NULL)")
    read_until_now(db.dsn)
    # the slot forgets the confirmation (as if the daemon died before sending it)
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        # the stopped reader's walsender lets go of the slot a moment after it disconnects
        for _ in range(200):
            row = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (SLOT_NAME,)
            ).fetchone()
            if row is None or not row[0]:
                break
            time.sleep(0.05)
        conn.execute("SELECT pg_drop_replication_slot(%s)", (SLOT_NAME,))
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (SLOT_NAME,))
        conn.execute("INSERT INTO t VALUES (2, 'b', NULL)")
    read_until_now(db.dsn)
    assert [r[4] for r in buffered(db.dsn, oid)] == [1, 2]


def test_buffered_xids_are_the_source_transactions_full_xids(db: Database) -> None:
    oid = setup_source(db.dsn)
    with psycopg.connect(db.dsn) as conn:
        conn.execute("INSERT INTO t VALUES (1, 'a', NULL)")
        row = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
        conn.commit()
    assert row is not None
    read_until_now(db.dsn)
    with psycopg.connect(db.dsn) as conn:
        source = load_sources(conn)[oid]
        xids = conn.execute(sql.SQL("SELECT xid::text FROM {}").format(source.buffer)).fetchall()
    assert xids == [(row[0],)]


def test_xids_widen_across_an_epoch_boundary() -> None:
    epoch = 1 << 32
    assert widen_xid(10, 3 * epoch + 20) == 3 * epoch + 10
    assert widen_xid(epoch - 5, 3 * epoch + 20) == 2 * epoch + epoch - 5
    assert widen_xid(20, 3 * epoch + 20) == 2 * epoch + 20


def test_a_buffer_dropped_under_the_reader_does_not_stop_it(
    db: Database, fault_proxy: FaultProxy
) -> None:
    """Its source was released while its changes were on their way: they are nobody's, and
    the reader goes on with the other sources."""
    oid = setup_source(db.dsn)
    u_oid = capture_table(db.dsn, "u", [("id", "integer")])
    reader = ChangeReader(fault_proxy.dsn(db.dsn))
    thread = threading.Thread(target=reader.run, daemon=True)
    thread.start()
    try:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            assert reader.wait_for(insert_lsn(conn), 30)
            with fault_proxy.stalled(ConnectionKind.REPLICATION):
                conn.execute("INSERT INTO t VALUES (1, 'gone', NULL)")
                with conn.transaction():
                    release_source(conn, load_sources(conn)[oid])
            conn.execute("INSERT INTO u VALUES (7)")
            conn.execute("SELECT pg_logical_emit_message(true, 'test', '')")
            assert reader.wait_for(insert_lsn(conn), 30)
        assert thread.is_alive()
        with psycopg.connect(db.dsn) as conn:
            u = load_sources(conn)[u_oid]
            rows = conn.execute(sql.SQL("SELECT n1 FROM {}").format(u.buffer)).fetchall()
        assert rows == [(7,)]
    finally:
        reader.stop()
        thread.join()
