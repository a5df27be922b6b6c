"""ReplicationStream and the slot helpers against a real walsender (PostgreSQL 18 and 15)."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from pgtrickle.dev.cluster import temporary_cluster
from tests.fixtures.cluster import Database
from walstream.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Relation,
    Update,
    decode,
)
from walstream.replication import (
    POSTGRES_EPOCH_MICROS,
    Keepalive,
    ReplicationError,
    ReplicationStream,
    XLogData,
    drop_slot,
    encode_standby_status,
    ensure_slot,
    format_lsn,
    parse_copy_data,
    parse_lsn,
    slot_confirmed_flush,
)

SLOT = "pgtrickle_test"
PUBLICATION = "pgtrickle_pub"

# framing, without a server


def test_xlogdata_frame_splits_into_header_and_payload() -> None:
    frame = b"w" + struct.pack(">QQq", 0x16B374D848, 0x16B374D900, 12345) + b"B..."
    assert parse_copy_data(frame) == XLogData(0x16B374D848, 0x16B374D900, 12345, b"B...")
    assert parse_copy_data(memoryview(frame)) == parse_copy_data(frame)


def test_keepalive_frame_says_whether_a_reply_is_requested() -> None:
    frame = b"k" + struct.pack(">Qq?", 0x100, 42, True)
    assert parse_copy_data(frame) == Keepalive(wal_end=0x100, send_time=42, reply_requested=True)


@pytest.mark.parametrize("frame", [b"", b"x123", b"w\x00", b"k" + bytes(16), b"k" + bytes(18)])
def test_unknown_or_short_frames_are_rejected(frame: bytes) -> None:
    with pytest.raises(ReplicationError, match="unexpected message"):
        parse_copy_data(frame)


def test_standby_status_carries_positions_and_the_time_since_2000() -> None:
    before = time.time_ns() // 1000 - POSTGRES_EPOCH_MICROS
    message = encode_standby_status(1, 2, 3, reply=True)
    after = time.time_ns() // 1000 - POSTGRES_EPOCH_MICROS
    kind, written, flushed, applied, clock, reply = struct.unpack(">cQQQq?", message)
    assert (kind, written, flushed, applied, reply) == (b"r", 1, 2, 3, True)
    assert before <= clock <= after


def test_lsn_text_round_trips() -> None:
    assert format_lsn(0) == "0/0"
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    assert parse_lsn("FFFFFFFF/FFFFFFFF") == 2**64 - 1


@pytest.mark.parametrize("text", ["", "16", "/1", "1/", "g/1", "123456789/0", "1/2/3"])
def test_malformed_lsn_text_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="not an LSN"):
        parse_lsn(text)


# against a server


@dataclass(frozen=True)
class Source:
    """A database with a published table ``items``, an unpublished ``other``, and a slot."""

    dsn: str
    conn: psycopg.Connection[Any]

    def stream(self, **options: Any) -> ReplicationStream:
        return ReplicationStream(self.dsn, SLOT, PUBLICATION, **options)

    def write(self, *statements: str) -> int:
        """Run the statements in one transaction; return its xid."""
        with self.conn.transaction():
            for statement in statements:
                self.conn.execute(statement)
            row = self.conn.execute("SELECT pg_current_xact_id()::xid::text::bigint").fetchone()
        assert row is not None
        return int(row[0])

    def current_lsn(self) -> int:
        row = self.conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return parse_lsn(row[0])


@pytest.fixture
def source(any_db: Database) -> Iterator[Source]:
    with psycopg.connect(any_db.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items (id integer PRIMARY KEY, note text);"
            " CREATE TABLE other (id integer);"
            f" CREATE PUBLICATION {PUBLICATION} FOR TABLE items"
        )
        ensure_slot(conn, SLOT)
        yield Source(any_db.dsn, conn)


def read_until(
    stream: ReplicationStream,
    done: Callable[[list[XLogData | Keepalive]], bool],
    timeout: float = 10.0,
) -> list[XLogData | Keepalive]:
    frames: list[XLogData | Keepalive] = []
    deadline = time.monotonic() + timeout
    while not done(frames):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; read {frames}")
        frame = stream.read(0.2)
        if frame is not None:
            frames.append(frame)
    return frames


def transactions(stream: ReplicationStream, count: int) -> list[list[Message]]:
    """The next ``count`` transactions, each from Begin to Commit (keepalives skipped)."""
    frames = read_until(
        stream,
        lambda frames: sum(isinstance(m, Commit) for m in decoded(frames)) >= count,
    )
    result: list[list[Message]] = []
    for message in decoded(frames):
        if isinstance(message, Begin):
            result.append([])
        result[-1].append(message)
    return result


def decoded(frames: list[XLogData | Keepalive]) -> list[Message]:
    return [decode(frame.payload) for frame in frames if isinstance(frame, XLogData)]


def wait_for_confirmed(source: Source, lsn: int) -> int | None:
    # The walsender processes the status update asynchronously.
    deadline = time.monotonic() + 5
    while (confirmed := slot_confirmed_flush(source.conn, SLOT)) != lsn:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return confirmed


@pytest.mark.pg15
def test_stream_delivers_a_transaction_from_begin_to_commit(source: Source) -> None:
    with source.stream() as stream:
        xid = source.write(
            "INSERT INTO items VALUES (1, 'a'), (2, NULL)",
            "UPDATE items SET note = 'b' WHERE id = 1",
            "DELETE FROM items WHERE id = 2",
        )
        [transaction] = transactions(stream, 1)
    begin, relation, *changes, commit = transaction
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert isinstance(relation, Relation) and relation.name == "items"
    assert begin.xid == xid and begin.final_lsn == commit.commit_lsn
    oid = relation.oid
    assert changes == [
        Insert(oid, ("1", "a")),
        Insert(oid, ("2", None)),
        Update(oid, old=None, key=None, new=("1", "b")),
        Delete(oid, old=None, key=("2", None)),
    ]


@pytest.mark.pg15
def test_xlogdata_header_of_a_commit_is_the_end_of_its_commit_record(source: Source) -> None:
    with source.stream() as stream:
        source.write("INSERT INTO items VALUES (1, 'a')")
        frames = read_until(
            stream, lambda frames: any(isinstance(m, Commit) for m in decoded(frames))
        )
    [commit_frame] = [f for f in frames if isinstance(f, XLogData) and f.payload[:1] == b"C"]
    commit = decode(commit_frame.payload)
    assert isinstance(commit, Commit)
    assert commit_frame.data_start == commit_frame.wal_end == commit.end_lsn


@pytest.mark.pg15
def test_confirmed_position_becomes_the_slots_confirmed_flush_lsn(source: Source) -> None:
    with source.stream() as stream:
        source.write("INSERT INTO items VALUES (1, 'a')")
        [[*_, commit]] = transactions(stream, 1)
        assert isinstance(commit, Commit)
        stream.send_status(commit.end_lsn)
        assert wait_for_confirmed(source, commit.end_lsn) == commit.end_lsn


@pytest.mark.pg15
def test_reconnecting_redelivers_unconfirmed_transactions_only(source: Source) -> None:
    with source.stream() as stream:
        first = source.write("INSERT INTO items VALUES (1, 'first')")
        second = source.write("INSERT INTO items VALUES (2, 'second')")
        delivered = transactions(stream, 2)
        begins = [transaction[0] for transaction in delivered]
        assert [begin.xid for begin in begins if isinstance(begin, Begin)] == [first, second]
        commit = delivered[0][-1]
        assert isinstance(commit, Commit)
        stream.send_status(commit.end_lsn)  # only the first is applied
        assert wait_for_confirmed(source, commit.end_lsn) == commit.end_lsn
    with source.stream() as stream:
        [again] = transactions(stream, 1)
    begin = again[0]
    assert isinstance(begin, Begin) and begin.xid == second
    assert [m.new for m in again if isinstance(m, Insert)] == [("2", "second")]


@pytest.mark.pg15
def test_writes_outside_the_publication_only_advance_keepalives(source: Source) -> None:
    with source.stream() as stream:
        while stream.read(0.3) is not None:
            pass  # the keepalives sent at start
        before = source.current_lsn()
        source.write("INSERT INTO other VALUES (1)")
        after = source.current_lsn()
        assert after > before
        frames = read_until(
            stream,
            lambda frames: any(isinstance(f, Keepalive) and f.wal_end >= after for f in frames),
        )
    assert all(isinstance(frame, Keepalive) for frame in frames)


@pytest.mark.timing
@pytest.mark.pg15
def test_read_times_out_with_none_while_other_threads_run(source: Source) -> None:
    counted = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal counted
        while not stop.is_set():
            counted += 1

    with source.stream() as stream:
        while stream.read(0.3) is not None:
            pass  # the keepalives sent at start
        counter = threading.Thread(target=count)
        counter.start()
        try:
            # WAL written elsewhere in the cluster (other databases, checkpoints) can bring a
            # keepalive at any moment: a quiet half second is what is measured
            for _ in range(10):
                started = time.monotonic()
                frame = stream.read(0.5)
                waited = time.monotonic() - started
                if frame is None:
                    break
        finally:
            stop.set()
            counter.join()
    assert frame is None
    assert 0.45 <= waited < 2.0
    # A read blocking in libpq with the GIL held would leave the counter near zero.
    assert counted > 100_000


@pytest.mark.pg15
def test_server_asks_for_a_reply_and_drops_a_silent_client(source: Source) -> None:
    with ReplicationStream(
        source.dsn + " options='-c wal_sender_timeout=1s'", SLOT, PUBLICATION
    ) as stream:
        read_until(
            stream,
            lambda frames: any(isinstance(f, Keepalive) and f.reply_requested for f in frames),
            timeout=5,
        )
        with pytest.raises(ReplicationError, match=r"broke|ended"):
            read_until(stream, lambda frames: False, timeout=10)


@pytest.mark.pg15
def test_answering_keepalives_keeps_the_stream_open(source: Source) -> None:
    with ReplicationStream(
        source.dsn + " options='-c wal_sender_timeout=1s'", SLOT, PUBLICATION
    ) as stream:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            frame = stream.read(0.1)
            if isinstance(frame, Keepalive) and frame.reply_requested:
                stream.send_status(frame.wal_end)
        source.write("INSERT INTO items VALUES (1, 'still here')")
        [transaction] = transactions(stream, 1)
    assert isinstance(transaction[-1], Commit)


@pytest.mark.pg15
def test_terminated_walsender_raises_with_the_servers_message(source: Source) -> None:
    with source.stream() as stream:
        source.conn.execute("SELECT pg_terminate_backend(%s)", (stream.backend_pid,))
        with pytest.raises(ReplicationError, match="administrator command"):
            read_until(stream, lambda frames: False, timeout=10)


@pytest.mark.pg15
def test_logical_messages_arrive_only_when_asked_for(source: Source) -> None:
    emit = "SELECT pg_logical_emit_message(true, 'pgtrickle', 'x')"
    with source.stream() as stream:
        source.write(emit, "INSERT INTO items VALUES (1, 'a')")
        [with_messages] = transactions(stream, 1)
        assert isinstance(with_messages[-1], Commit)
        stream.send_status(with_messages[-1].end_lsn)
        wait_for_confirmed(source, with_messages[-1].end_lsn)
    [message] = [m for m in with_messages if isinstance(m, LogicalMessage)]
    assert (message.transactional, message.prefix, message.content) == (True, "pgtrickle", b"x")
    with source.stream(messages=False) as stream:
        source.write(emit, "INSERT INTO items VALUES (2, 'b')")
        [without] = transactions(stream, 1)
    assert [type(m) for m in without] == [Begin, Relation, Insert, Commit]


@pytest.mark.pg15
def test_slot_and_publication_names_are_quoted(source: Source) -> None:
    publication = 'my "pub", 2'
    source.conn.execute('CREATE PUBLICATION "my ""pub"", 2" FOR TABLE items')
    with ReplicationStream(source.dsn, SLOT, publication) as stream:
        source.write("INSERT INTO items VALUES (1, 'a')")
        [transaction] = transactions(stream, 1)
    assert any(isinstance(m, Insert) for m in transaction)


@pytest.mark.pg15
def test_open_fails_for_a_missing_slot(source: Source) -> None:
    with pytest.raises(ReplicationError, match="cannot start") as raised:
        ReplicationStream(source.dsn, "no_such_slot", PUBLICATION).open()
    assert raised.value.detail is not None and "does not exist" in raised.value.detail


@pytest.mark.pg15
def test_open_fails_for_a_missing_publication(source: Source) -> None:
    with pytest.raises(ReplicationError, match="publication 'nope' does not exist"):
        ReplicationStream(source.dsn, SLOT, "nope").open()


@pytest.mark.pg15
def test_open_fails_while_another_stream_reads_the_slot(source: Source) -> None:
    with source.stream(), pytest.raises(ReplicationError) as raised:
        source.stream().open()
    assert raised.value.detail is not None and "is active for PID" in raised.value.detail


@pytest.mark.pg15
def test_slot_helpers_are_idempotent(source: Source) -> None:
    ensure_slot(source.conn, SLOT)
    assert slot_confirmed_flush(source.conn, SLOT) is not None
    drop_slot(source.conn, SLOT)
    drop_slot(source.conn, SLOT)
    assert slot_confirmed_flush(source.conn, SLOT) is None


@pytest.mark.pg15
def test_ensure_slot_refuses_a_slot_of_another_kind(source: Source) -> None:
    source.conn.execute("SELECT pg_create_physical_replication_slot('physical')")
    with pytest.raises(ReplicationError, match="cannot be used"):
        ensure_slot(source.conn, "physical")
    drop_slot(source.conn, "physical")


def test_server_shutdown_waits_for_a_reply_then_ends_the_stream() -> None:
    # A private cluster, since this one gets stopped.
    cluster = temporary_cluster()
    cluster.start()
    try:
        dsn = cluster.create_database("shutdown")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE items (id integer); CREATE PUBLICATION {PUBLICATION}")
            ensure_slot(conn, SLOT)
        with ReplicationStream(dsn, SLOT, PUBLICATION) as stream:
            while stream.read(0.3) is not None:
                pass  # the keepalives sent at start
            stopping = threading.Thread(target=cluster.stop)
            stopping.start()
            # The walsender asks for a reply and waits for it (up to wal_sender_timeout)
            # before it ends the stream and lets the server finish shutting down.
            frames = read_until(
                stream,
                lambda frames: any(isinstance(f, Keepalive) and f.reply_requested for f in frames),
            )
            request = frames[-1]
            assert isinstance(request, Keepalive)
            stream.send_status(request.wal_end)
            with pytest.raises(ReplicationError, match="ended the replication stream"):
                read_until(stream, lambda frames: False)
            stopping.join(timeout=30)
    finally:
        cluster.destroy()


def test_read_on_a_closed_stream_is_an_error() -> None:
    with pytest.raises(ReplicationError, match="not open"):
        ReplicationStream("", SLOT, PUBLICATION).read(0)
