"""Stream a logical replication slot's ``pgoutput`` messages with psycopg 3.

psycopg 3 has no replication API, but its libpq layer (``conn.pgconn``) speaks the COPY BOTH
sub-protocol that ``START_REPLICATION`` switches to. The server sends CopyData frames: XLogData
(``w``, one pgoutput message each, see ``walstream.pgoutput``) and primary keepalives (``k``);
the client sends standby status updates (``r``) that say up to where it has durably applied
the changes. That position becomes the slot's ``confirmed_flush_lsn``: after a reconnect the
server resends every transaction that commits after it, so delivery is at least once.

    with ReplicationStream(dsn, "pgtrickle", "pgtrickle_pub") as stream:
        while True:
            frame = stream.read(timeout=1.0)
            if isinstance(frame, XLogData):
                handle(pgoutput.decode(frame.payload))
            elif isinstance(frame, Keepalive) and frame.reply_requested:
                stream.send_status(last_applied_end_lsn)

Nothing here answers the server by itself: the caller decides what to confirm. It must answer
a keepalive that has ``reply_requested`` promptly (and send a status now and then anyway), or
the server drops the connection after ``wal_sender_timeout`` (60 s by default). And when
nothing is pending, it should confirm the keepalive's ``wal_end``: writes to tables outside
the publication advance only keepalives, and a slot that never confirms them holds WAL forever.

The stream is not thread-safe; one thread reads it and sends its status updates.
"""

from __future__ import annotations

import math
import select
import struct
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.pq.abc import PGconn, PGresult

from dvm.errors import PgTrickleError

# PostgreSQL's timestamps count microseconds from 2000-01-01 00:00 UTC, not from 1970.
POSTGRES_EPOCH_MICROS = 946_684_800_000_000

_XLOG_HEAD = struct.Struct(">xQQq")  # 'w', data start, WAL end, send time; then the payload
_KEEPALIVE = struct.Struct(">xQq?")  # 'k', WAL end, send time, reply requested
_STANDBY_STATUS = struct.Struct(">cQQQq?")  # 'r', written, flushed, applied, clock, reply
_SEND_TIMEOUT = 10.0  # seconds to get a status update out before calling the connection dead


class ReplicationError(PgTrickleError, code="PGT208"):
    """The replication connection failed, or the server ended the stream."""


@dataclass(frozen=True, slots=True)
class XLogData:
    """One pgoutput message and its place in WAL.

    For logical replication the walsender puts the same LSN in both header fields: the
    transaction's first record for Begin, the end of the commit record for Commit (equal to
    ``Commit.end_lsn``), the message's own record for changes and logical messages. It sends
    0 instead for a message that more messages of the same record follow, "so as not to
    confuse synchronous replication": Relation and Type messages, and a Begin followed by an
    Origin. Keepalives, not this, say how far the server has read WAL.
    """

    data_start: int
    wal_end: int
    send_time: int  # microseconds since 2000-01-01 UTC, on the server's clock
    payload: bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    """A heartbeat; ``wal_end`` is how far the walsender has read WAL: every transaction
    that commits before it has been sent, so with nothing pending it is safe to confirm."""

    wal_end: int
    send_time: int
    reply_requested: bool  # answer now with send_status, or be disconnected


def parse_copy_data(buf: bytes | memoryview) -> XLogData | Keepalive:
    """Split one CopyData frame of the replication stream into its header and payload.

    >>> parse_copy_data(bytes.fromhex("6b 00000016B374D848 0002C8F3A7E1B2C0 01"))
    Keepalive(wal_end=97500059720, send_time=783898772615872, reply_requested=True)
    """
    try:
        kind = buf[0]
        if kind == 0x77:  # 'w'
            data_start, wal_end, send_time = _XLOG_HEAD.unpack_from(buf)
            return XLogData(data_start, wal_end, send_time, bytes(buf[_XLOG_HEAD.size :]))
        if kind == 0x6B and len(buf) == _KEEPALIVE.size:  # 'k'
            return Keepalive(*_KEEPALIVE.unpack_from(buf))
    except (IndexError, struct.error):
        pass
    raise ReplicationError(
        "unexpected message in the replication stream",
        detail=f"a {len(buf)}-byte CopyData message starting {bytes(buf[:8]).hex()}",
    )


def encode_standby_status(written: int, flushed: int, applied: int, reply: bool = False) -> bytes:
    """A standby status update (``r``), stamped with the current time.

    For a logical slot only ``flushed`` matters: it becomes ``confirmed_flush_lsn``.
    ``reply`` asks the server to answer at once with a keepalive.
    """
    now = time.time_ns() // 1000 - POSTGRES_EPOCH_MICROS
    return _STANDBY_STATUS.pack(b"r", written, flushed, applied, now, reply)


def format_lsn(lsn: int) -> str:
    """PostgreSQL's text form of an LSN.

    >>> format_lsn(97500059720)
    '16/B374D848'
    """
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """The inverse of ``format_lsn``.

    >>> parse_lsn("16/B374D848")
    97500059720
    """
    high, slash, low = text.partition("/")
    if not slash or not 0 < len(high) <= 8 or not 0 < len(low) <= 8:
        raise ValueError(f"not an LSN: {text!r}")
    try:
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise ValueError(f"not an LSN: {text!r}") from None


class ReplicationStream:
    """A ``START_REPLICATION`` session on one slot, read without blocking other threads.

    ``start_lsn`` 0 starts where the slot's ``confirmed_flush_lsn`` is; so does any earlier
    position, since the server never goes back behind what was confirmed.
    """

    def __init__(
        self,
        dsn: str,
        slot: str,
        publication: str,
        start_lsn: int = 0,
        messages: bool = True,
    ) -> None:
        self.dsn = dsn
        self.slot = slot
        self.publication = publication
        self.start_lsn = start_lsn
        self.messages = messages
        self._conn: psycopg.Connection[Any] | None = None
        self._poll = select.poll()
        self._broken: ReplicationError | None = None  # raised once the buffered frames are read

    def __enter__(self) -> ReplicationStream:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def backend_pid(self) -> int:
        """The walsender's process id, e.g. for pg_stat_replication or pg_terminate_backend."""
        return self._pgconn().backend_pid

    def open(self) -> None:
        """Connect and start streaming; raises ``ReplicationError`` if the server refuses
        (no such slot or publication, or another session streams the slot)."""
        if self._conn is not None:
            raise ReplicationError("the replication stream is already open")
        try:
            # pgoutput sends text in the connection's client encoding; the decoder reads UTF-8.
            conn = psycopg.connect(
                self.dsn,
                replication="database",
                autocommit=True,
                client_encoding="UTF8",
                fallback_application_name="pgtrickle-reader",
            )
        except psycopg.OperationalError as error:
            raise ReplicationError(
                "cannot open a replication connection", detail=str(error)
            ) from error
        try:
            self._start(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._broken = None

    def _start(self, conn: psycopg.Connection[Any]) -> None:
        pgconn = conn.pgconn
        self._poll = select.poll()
        self._poll.register(pgconn.socket, select.POLLIN)
        # PostgreSQL 18 streams from a missing publication as from an empty one (15 fails
        # when decoding starts): changes would silently pass by and be confirmed away.
        exists = sql.SQL("SELECT 1 FROM pg_publication WHERE pubname = {}").format(
            sql.Literal(self.publication)
        )
        result = self._query(pgconn, exists.as_bytes(conn))
        if result.status != pq.ExecStatus.TUPLES_OK:
            raise ReplicationError(
                "cannot look up the publication", detail=result.get_error_message().strip()
            )
        if result.ntuples != 1:
            raise ReplicationError(
                f"publication {self.publication!r} does not exist",
                detail=f"database {pgconn.db.decode()!r} has no such publication",
            )
        self._drain(pgconn)
        # publication_names is one string literal holding a list of identifiers, which the
        # server splits like search_path: quote the name as an identifier, then as a literal.
        publications = sql.Identifier(self.publication).as_string(conn)
        start = sql.SQL(
            "START_REPLICATION SLOT {slot} LOGICAL {lsn}"
            " (proto_version '1', publication_names {publications}, messages {messages})"
        ).format(
            slot=sql.Identifier(self.slot),
            lsn=sql.SQL(format_lsn(self.start_lsn)),
            publications=sql.Literal(publications),
            messages=sql.Literal("true" if self.messages else "false"),
        )
        result = self._query(pgconn, start.as_bytes(conn))
        if result.status != pq.ExecStatus.COPY_BOTH:
            raise ReplicationError(
                f"cannot start replication from slot {self.slot!r}",
                detail=result.get_error_message().strip(),
            )
        # From here on, writes must not block either: flush() says when they are done.
        pgconn.nonblocking = 1

    def _query(self, pgconn: PGconn, query: bytes) -> PGresult:
        """Send a simple query (all a replication connection takes) and wait for its first
        result in poll, not in libpq, which would block holding the GIL."""
        try:
            pgconn.send_query(query)
            while pgconn.is_busy():
                self._poll.poll(1000)
                pgconn.consume_input()
            result = pgconn.get_result()
        except psycopg.OperationalError as error:
            raise ReplicationError("cannot start replication", detail=str(error)) from error
        if result is None:
            raise ReplicationError("cannot start replication", detail="the server sent nothing")
        return result

    def _drain(self, pgconn: PGconn) -> None:
        """Read the rest of a query's results, up to the None that ends them."""
        while True:
            while pgconn.is_busy():
                self._poll.poll(1000)
                pgconn.consume_input()
            if pgconn.get_result() is None:
                return

    def read(self, timeout: float) -> XLogData | Keepalive | None:
        """The next frame, or None if none arrives within ``timeout`` seconds.

        Waits in ``poll``, which releases the GIL; libpq's blocking read would not.
        """
        pgconn = self._pgconn()
        deadline = time.monotonic() + timeout
        while True:
            try:
                size, data = pgconn.get_copy_data(1)  # 1: return at once if nothing is buffered
            except psycopg.OperationalError as error:
                raise self._broken or self._connection_broke(error) from error
            if size > 0:
                return parse_copy_data(data)
            if size == -1:
                raise self._stream_ended(pgconn)
            if self._broken is not None:
                raise self._broken
            remaining = max(0.0, deadline - time.monotonic())
            if not self._poll.poll(math.ceil(remaining * 1000)):
                return None
            try:
                pgconn.consume_input()
            except psycopg.OperationalError as error:
                # What arrived before the connection closed is still buffered (a server that
                # shuts down sends CopyDone and hangs up): deliver it, then raise.
                self._broken = self._connection_broke(error)

    def send_status(self, flushed_lsn: int, reply: bool = False) -> None:
        """Report ``flushed_lsn`` as written, flushed and applied: the slot's confirmed_flush_lsn
        moves there, and the server may recycle the WAL before it."""
        pgconn = self._pgconn()
        message = encode_standby_status(flushed_lsn, flushed_lsn, flushed_lsn, reply)
        deadline = time.monotonic() + _SEND_TIMEOUT
        try:
            # In nonblocking mode put_copy_data returns 0 while libpq's buffer is full.
            while not pgconn.put_copy_data(message):
                self._wait_writable(pgconn, deadline)
            while pgconn.flush():
                self._wait_writable(pgconn, deadline)
        except psycopg.OperationalError as error:
            raise ReplicationError("the replication connection broke", detail=str(error)) from error

    def close(self) -> None:
        """Disconnect; the slot keeps the position last confirmed with ``send_status``."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _pgconn(self) -> PGconn:
        if self._conn is None:
            raise ReplicationError("the replication stream is not open")
        return self._conn.pgconn

    def _wait_writable(self, pgconn: PGconn, deadline: float) -> None:
        # libpq's rule for a nonblocking flush: wait until the socket is writable or readable,
        # and read what came in, since the server may wait for us to read before it reads.
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ReplicationError(
                "cannot send a status update",
                detail=f"the server did not read it within {_SEND_TIMEOUT:g} s",
            )
        poll = select.poll()
        poll.register(pgconn.socket, select.POLLIN | select.POLLOUT)
        if any(events & select.POLLIN for _, events in poll.poll(math.ceil(remaining * 1000))):
            pgconn.consume_input()

    @staticmethod
    def _connection_broke(error: psycopg.OperationalError) -> ReplicationError:
        return ReplicationError("the replication connection broke", detail=str(error))

    def _stream_ended(self, pgconn: PGconn) -> ReplicationError:
        # The server sent CopyDone: it is shutting down (after the client confirmed all it
        # sent), or an error follows. Collect the server's messages, briefly.
        messages = []
        deadline = time.monotonic() + 5.0
        try:
            while True:
                while pgconn.is_busy() and time.monotonic() < deadline:
                    self._poll.poll(100)
                    pgconn.consume_input()
                if pgconn.is_busy():
                    break
                result = pgconn.get_result()
                if result is None:
                    break
                if result.status == pq.ExecStatus.FATAL_ERROR:
                    messages.append(result.get_error_message().strip())
        except psycopg.OperationalError as error:
            messages.append(str(error).strip())
        return ReplicationError(
            "the server ended the replication stream",
            detail="; ".join(messages) or "the server sent CopyDone without an error",
        )


def ensure_slot(conn: psycopg.Connection[Any], slot: str) -> None:
    """Create the logical slot ``slot`` with the pgoutput plugin in ``conn``'s database, unless
    it exists; raise ``ReplicationError`` if a slot of that name exists but does not fit.

    Creating a slot waits until every transaction that is writing has finished, and fails in a
    transaction that has written: call it in autocommit mode. Its position is the current end
    of WAL, so changes committed before it are not streamed.
    """
    row = conn.execute(
        "SELECT slot_type, plugin, database = current_database()"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        try:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            return
        except psycopg.errors.DuplicateObject:
            # created meanwhile by another process (the daemon and an apply at once)
            row = conn.execute(
                "SELECT slot_type, plugin, database = current_database()"
                " FROM pg_replication_slots WHERE slot_name = %s",
                (slot,),
            ).fetchone()
            if row is None:
                raise
    slot_type, plugin, same_database = row
    if slot_type != "logical" or plugin != "pgoutput" or not same_database:
        raise ReplicationError(
            f"replication slot {slot!r} exists but cannot be used",
            detail=f"it is a {slot_type} slot with plugin {plugin!r}"
            + ("" if same_database else " in another database"),
            hint="drop it or choose another slot name",
        )


def drop_slot(conn: psycopg.Connection[Any], slot: str) -> None:
    """Drop the slot if it exists, releasing the WAL it holds.

    Raises psycopg.errors.ObjectInUse while a replication stream is reading it.
    """
    conn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    )


def slot_confirmed_flush(conn: psycopg.Connection[Any], slot: str) -> int | None:
    """The slot's confirmed_flush_lsn: where streaming resumes. None if there is no such slot."""
    row = conn.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None or row[0] is None:
        return None
    return parse_lsn(row[0])
