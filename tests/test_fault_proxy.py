"""The fault proxy: what each fault does to a connection, and the change reader under cuts."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgtrickle.dev.cluster import LocalCluster
from tests.fixtures.cluster import Database
from tests.fixtures.proxy import ConnectionKind, FaultProxy
from tests.fixtures.streams import capture_table, running_reader
from walstream.buffers import load_sources
from walstream.capture import SLOT_NAME
from walstream.replication import parse_lsn, slot_confirmed_flush

SQL, REPLICATION = ConnectionKind.SQL, ConnectionKind.REPLICATION


def sql_connection(proxy: FaultProxy, db: Database, name: str = "probe") -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(db.dsn), autocommit=True, application_name=name)


def replication_connection(
    proxy: FaultProxy, db: Database, name: str = "walprobe"
) -> psycopg.Connection[Any]:
    return psycopg.connect(
        proxy.dsn(db.dsn), replication="database", autocommit=True, application_name=name
    )


def identify_system(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("IDENTIFY_SYSTEM").fetchone()
    assert row is not None
    return str(row[0])  # the system identifier


def in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``work`` in a thread; the list gets its result or its exception."""
    outcome: list[object] = []

    def target() -> None:
        try:
            outcome.append(work())
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


# -- classification ----------------------------------------------------------------------


def test_sql_goes_through_and_is_classified_sql_with_its_application_name(
    fault_proxy: FaultProxy, db: Database
) -> None:
    with sql_connection(fault_proxy, db, "probe") as conn:
        assert conn.execute("SELECT 6 * 7").fetchone() == (42,)
        [info] = fault_proxy.connections()
        assert (info.kind, info.application_name, info.database) == (SQL, "probe", db.name)
        assert info.bytes_to_server > 0 and info.bytes_to_client > 0
        assert fault_proxy.connections(REPLICATION) == []
        assert fault_proxy.connections(application_name="other") == []
    fault_proxy.wait_connections(count=0)
    assert fault_proxy.opened(SQL) == 1


def test_a_replication_connection_is_classified_replication(
    fault_proxy: FaultProxy, db: Database
) -> None:
    with replication_connection(fault_proxy, db, "walprobe") as conn:
        assert identify_system(conn).isdigit()
        [info] = fault_proxy.connections(REPLICATION)
        assert (info.application_name, info.database) == ("walprobe", db.name)
        assert fault_proxy.connections(SQL) == []


# -- cut ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [SQL, REPLICATION], ids=lambda k: k.value)
def test_a_cut_breaks_the_connections_of_its_kind_and_no_other(
    fault_proxy: FaultProxy, db: Database, kind: ConnectionKind
) -> None:
    with sql_connection(fault_proxy, db) as plain, replication_connection(fault_proxy, db) as wal:
        probes: dict[ConnectionKind, Callable[[], object]] = {
            SQL: lambda: plain.execute("SELECT 1").fetchone(),
            REPLICATION: lambda: identify_system(wal),
        }
        assert fault_proxy.cut(kind) == 1
        with pytest.raises(psycopg.OperationalError):
            probes[kind]()
        other = REPLICATION if kind is SQL else SQL
        probes[other]()
        assert [c.kind for c in fault_proxy.connections()] == [other]


def test_a_cut_can_aim_at_one_application_name(fault_proxy: FaultProxy, db: Database) -> None:
    with sql_connection(fault_proxy, db, "a") as a, sql_connection(fault_proxy, db, "b") as b:
        assert fault_proxy.cut(application_name="a") == 1
        with pytest.raises(psycopg.OperationalError):
            a.execute("SELECT 1")
        assert b.execute("SELECT 1").fetchone() == (1,)
        assert fault_proxy.cut(REPLICATION) == 0


# -- stall and delay ---------------------------------------------------------------------


def test_a_stalled_query_waits_until_resumed_then_completes(
    fault_proxy: FaultProxy, db: Database
) -> None:
    with sql_connection(fault_proxy, db) as conn, replication_connection(fault_proxy, db) as wal:
        with fault_proxy.stalled(SQL):
            thread, outcome = in_thread(lambda: conn.execute("SELECT 6 * 7").fetchone())
            thread.join(0.5)
            assert thread.is_alive(), "the query went through a stalled connection"
            identify_system(wal)  # a stall of SQL connections leaves replication alone
        thread.join(10)
        assert outcome == [(42,)]


def test_a_connect_during_a_stall_waits_until_resumed(
    fault_proxy: FaultProxy, db: Database
) -> None:
    fault_proxy.stall()
    thread, outcome = in_thread(lambda: sql_connection(fault_proxy, db))
    thread.join(0.5)
    assert thread.is_alive()
    fault_proxy.resume()
    thread.join(10)
    [conn] = outcome
    assert isinstance(conn, psycopg.Connection)
    with conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.timing
def test_a_delay_slows_every_round_trip_until_removed(
    fault_proxy: FaultProxy, db: Database
) -> None:
    with sql_connection(fault_proxy, db) as conn:
        fault_proxy.delay(0.2, SQL)
        started = time.monotonic()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert time.monotonic() - started >= 0.4  # the query and its answer wait 0.2 s each
        fault_proxy.delay(0)
        started = time.monotonic()
        conn.execute("SELECT 1")
        assert time.monotonic() - started < 0.2


# -- refusal, reset, close ---------------------------------------------------------------


def test_refuse_new_fails_connects_fast_and_leaves_existing_connections(
    fault_proxy: FaultProxy, db: Database
) -> None:
    with sql_connection(fault_proxy, db) as existing:
        fault_proxy.refuse_new(True)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(fault_proxy.dsn(db.dsn), connect_timeout=2)
        assert fault_proxy.refused >= 1
        assert existing.execute("SELECT 1").fetchone() == (1,)
        fault_proxy.refuse_new(False)
        with sql_connection(fault_proxy, db) as again:
            assert again.execute("SELECT 1").fetchone() == (1,)


def test_refuse_new_can_aim_at_replication_connections(
    fault_proxy: FaultProxy, db: Database
) -> None:
    fault_proxy.refuse_new(True, REPLICATION)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(fault_proxy.dsn(db.dsn), replication="database", connect_timeout=2)
    with sql_connection(fault_proxy, db) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_reset_clears_every_fault(fault_proxy: FaultProxy, db: Database) -> None:
    with sql_connection(fault_proxy, db) as conn:
        fault_proxy.stall(SQL)
        fault_proxy.delay(30)
        fault_proxy.refuse_new(True)
        thread, outcome = in_thread(lambda: conn.execute("SELECT 2").fetchone())
        fault_proxy.reset()
        thread.join(10)
        assert outcome == [(2,)]
        with sql_connection(fault_proxy, db) as again:
            assert again.execute("SELECT 3").fetchone() == (3,)


def test_closing_the_proxy_breaks_its_connections_even_stalled_ones(
    pg_cluster: LocalCluster, db: Database
) -> None:
    proxy = FaultProxy("127.0.0.1", pg_cluster.port).start()
    conn = sql_connection(proxy, db)
    proxy.stall()
    thread, outcome = in_thread(lambda: conn.execute("SELECT 1"))
    proxy.close()
    thread.join(10)
    assert not thread.is_alive()
    [error] = outcome
    assert isinstance(error, psycopg.OperationalError)
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(db.dsn), connect_timeout=2)


# -- the change reader behind the proxy --------------------------------------------------


def setup_source(dsn: str) -> int:
    """Capture a table ``t (id, v)``, as the reader's own tests do; its oid."""
    return capture_table(dsn, "t", [("id", "integer"), ("v", "text")])


def buffered(dsn: str, oid: int) -> list[tuple[str, int]]:
    """The buffer's rows, in commit order: (action, id)."""
    with psycopg.connect(dsn) as conn:
        buffer = load_sources(conn)[oid].buffer
        query = sql.SQL("SELECT action, coalesce(n1, o1) FROM {} ORDER BY lsn, seq")
        return [(str(a), int(i)) for a, i in conn.execute(query.format(buffer))]


def flush_target(conn: psycopg.Connection[Any]) -> int:
    """The insert LSN now, and a flushed commit past it for the walsender to send."""
    row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    conn.execute("SELECT pg_logical_emit_message(true, 'test', '')")
    return parse_lsn(str(row[0]))


@pytest.mark.parametrize(
    "kind",
    [REPLICATION, SQL],
    ids=["replication connection cut", "buffer writer cut"],
)
def test_the_change_reader_survives_cut_connections_with_nothing_lost(
    fault_proxy: FaultProxy, db: Database, kind: ConnectionKind
) -> None:
    oid = setup_source(db.dsn)
    ids = itertools.count(1)
    committed: list[int] = []
    # the rows are written past the proxy: only the reader's connections see faults
    with (
        running_reader(fault_proxy.dsn(db.dsn)) as reader,
        psycopg.connect(db.dsn, autocommit=True) as source,
    ):

        def write(n: int) -> None:
            batch = [next(ids) for _ in range(n)]
            with source.transaction():
                for i in batch:
                    source.execute("INSERT INTO t VALUES (%s, 'x')", (i,))
            committed.extend(batch)

        for cuts in range(1, 4):
            # wait for the reader's (re)connection, else a cut would find nothing to cut
            fault_proxy.wait_connections(REPLICATION, opened=cuts)
            for size in (1, 5, 20):
                write(size)
            # at once: the last transactions may be on the wire, in a batch, or buffered and
            # not yet confirmed
            assert fault_proxy.cut(kind) >= 1
            write(3)
        with source.transaction():
            source.execute("UPDATE t SET v = 'y' WHERE id = 1")
            source.execute("DELETE FROM t WHERE id = 1")
        assert reader.wait_for(flush_target(source), timeout=20)
    rows = buffered(db.dsn, oid)
    assert sorted(i for action, i in rows if action == "I") == committed  # each exactly once
    assert [row for row in rows if row[0] != "I"] == [("U", 1), ("D", 1)]
    assert fault_proxy.opened(REPLICATION) >= 4


def test_a_batch_buffered_but_not_confirmed_when_the_stream_breaks_is_not_buffered_twice(
    fault_proxy: FaultProxy, db: Database
) -> None:
    oid = setup_source(db.dsn)
    with (
        running_reader(fault_proxy.dsn(db.dsn)) as reader,
        psycopg.connect(db.dsn, autocommit=True) as source,
    ):
        assert reader.wait_for(flush_target(source), timeout=10)  # streaming
        # everything on the stream, the reader's status updates too, waits 0.5 s in the proxy
        fault_proxy.delay(0.5, REPLICATION)
        source.execute("INSERT INTO t VALUES (1, 'x')")
        target = flush_target(source)
        assert reader.wait_for(target, timeout=10)  # buffered: the writer is not delayed
        # ... and the confirmation is still on its way when the stream breaks
        assert fault_proxy.cut(REPLICATION) == 1
        fault_proxy.delay(0)
        confirmed = slot_confirmed_flush(source, SLOT_NAME)
        assert confirmed is not None and confirmed < target
        fault_proxy.wait_connections(REPLICATION, opened=2)
        source.execute("INSERT INTO t VALUES (2, 'x')")  # after the resent transaction
        assert reader.wait_for(flush_target(source), timeout=10)
    assert buffered(db.dsn, oid) == [("I", 1), ("I", 2)]


def test_a_stalled_stream_holds_the_reader_back_and_loses_nothing(
    fault_proxy: FaultProxy, db: Database
) -> None:
    oid = setup_source(db.dsn)
    with (
        running_reader(fault_proxy.dsn(db.dsn)) as reader,
        psycopg.connect(db.dsn, autocommit=True) as source,
    ):
        fault_proxy.wait_connections(REPLICATION)
        with fault_proxy.stalled(REPLICATION):
            for i in range(1, 11):
                source.execute("INSERT INTO t VALUES (%s, 'x')", (i,))
            target = flush_target(source)
            assert not reader.wait_for(target, timeout=0.5)
        assert reader.wait_for(target, timeout=10)
    assert buffered(db.dsn, oid) == [("I", i) for i in range(1, 11)]
