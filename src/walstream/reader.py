"""The change reader: decodes the slot's stream and writes change buffers.

Committed source transactions arrive whole (pgoutput protocol 1 sends a transaction at its
commit, and never an aborted one). Their rows are written to the buffers with COPY in batches,
together with ``reader_state.buffered_lsn`` (the commit end of the last transaction in the
batch) in one synchronous commit; only then is the slot confirmed to that position. After a
crash the slot sends again what was not confirmed, and transactions ending at or before
``buffered_lsn`` are skipped: nothing lost, nothing buffered twice.

``position`` is how far the reader has decoded and buffered: every transaction whose commit
ends at or before it is in the buffers. It advances with each written batch and, when nothing
is pending, with the WAL end of keepalives, which is what a refresh waits on.

The reader writes nothing but buffers and its own position. What it notices about a source
(a column the buffer captures is gone) it reports through ``on_schema_change``; the
scheduler decides what that means for the stream tables reading it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psycopg
import structlog

from walstream.buffers import (
    BufferAction,
    CapturedSource,
    Row,
    copy_statement,
    delete_values,
    insert_values,
    load_sources,
    truncate_values,
    update_values,
)
from walstream.capture import PUBLICATION_NAME, SLOT_NAME
from walstream.dsn import connect
from walstream.errors import ConnectionFailed
from walstream.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    Relation,
    Truncate,
    Update,
    decode,
)
from walstream.replication import (
    Keepalive,
    ReplicationError,
    ReplicationStream,
    XLogData,
    format_lsn,
    parse_lsn,
)

log = structlog.get_logger("pgtrickle.reader")

BATCH_ROWS = 50_000
BATCH_SECONDS = 0.02
STATUS_INTERVAL = 10.0
XID_EPOCH = 1 << 32


@dataclass(frozen=True)
class SchemaChange:
    """A captured source changed so that its buffer can no longer hold its changes."""

    source: CapturedSource
    missing_columns: tuple[str, ...]


@dataclass
class _Transaction:
    xid: int
    # per source: (order within the transaction, action, old + new values)
    rows: dict[int, list[tuple[int, BufferAction, Row]]] = field(default_factory=dict)
    changes: int = 0

    def add(self, oid: int, action: BufferAction, values: Row) -> None:
        self.changes += 1
        self.rows.setdefault(oid, []).append((self.changes, action, values))


@dataclass
class _Batch:
    transactions: list[tuple[_Transaction, int]] = field(default_factory=list)
    end_lsn: int = 0
    n_rows: int = 0
    started: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.transactions)


def widen_xid(xid32: int, next_full_xid: int) -> int:
    """The xid8 of a committed transaction, from its 32-bit xid and a newer full xid.

    The transaction got its xid before ``next_full_xid`` was assigned, so it is the newest
    full xid below it whose low 32 bits are ``xid32``: this is what survives an epoch wrap.

    >>> widen_xid(5, (2 << 32) + 10), widen_xid(4_000_000_000, (2 << 32) + 10) - (1 << 32)
    (8589934597, 4000000000)
    """
    candidate = (next_full_xid & ~(XID_EPOCH - 1)) | xid32
    if candidate >= next_full_xid:
        candidate -= XID_EPOCH
    return candidate


class ChangeReader:
    """Runs the replication stream into the change buffers until stopped."""

    def __init__(
        self,
        dsn: str,
        *,
        slot: str = SLOT_NAME,
        publication: str = PUBLICATION_NAME,
        on_buffered: Callable[[set[int], int], None] | None = None,
        on_schema_change: Callable[[SchemaChange], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self.slot = slot
        self.publication = publication
        self.on_buffered = on_buffered
        self.on_schema_change = on_schema_change
        self._position = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        # per captured relation: for each buffer column, its position in pgoutput's tuples
        self._layouts: dict[int, Layout] = {}
        self._sources: dict[int, CapturedSource] = {}
        self._streaming_since: float | None = None

    # -- position, for refreshes waiting on it ------------------------------------------

    @property
    def position(self) -> int:
        return self._position

    def wait_for(self, lsn: int, timeout: float) -> bool:
        """Block until ``position >= lsn``; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._position < lsn:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return False
                self._changed.wait(remaining)
        return True

    def _advance(self, lsn: int) -> None:
        if lsn > self._position:
            with self._changed:
                self._position = lsn
                self._changed.notify_all()

    # -- the loop -----------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    def run(self) -> None:
        """Read until ``stop()``; reconnects with backoff when the server goes away."""
        backoff = 0.1
        while not self._stop.is_set():
            self._streaming_since = None
            try:
                self._run_once()
            except (psycopg.OperationalError, ConnectionFailed, ReplicationError, OSError) as exc:
                # the batch in progress was not committed, so the slot was not confirmed
                # past it: the server sends it again after the reconnect
                log.warning("reader connection lost; reconnecting", error=str(exc).strip())
            except Exception as exc:
                # A statement failed (a buffer dropped under it when its source was released,
                # say): the same holds, and the new session reloads the sources. A reader that
                # stopped instead would leave every refresh waiting for it.
                log.error("reader failed; restarting", error=str(exc).strip(), exc_info=True)
            else:
                continue
            if self._streaming_since is not None:
                # it streamed, so the server was fine: a blip, not an outage to back off from
                backoff = 0.1
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def run_until(self, lsn: int, timeout: float) -> bool:
        """Buffer everything up to ``lsn`` and return (a refresh with no daemon running)."""
        thread = threading.Thread(target=self.run, name="pgtrickle-reader", daemon=True)
        thread.start()
        try:
            return self.wait_for(lsn, timeout)
        finally:
            self.stop()
            thread.join()

    def _run_once(self) -> None:
        # a new session sends every relation's description again before its first change
        self._layouts.clear()
        with connect(self.dsn, fallback_application_name="pgtrickle-buffers") as writer:
            writer.execute("SET synchronous_commit = on")
            writer.commit()
            buffered = self._load_state(writer)
            self._advance(buffered)
            with ReplicationStream(self.dsn, self.slot, self.publication) as stream:
                self._streaming_since = time.monotonic()
                self._stream(stream, writer, buffered)

    def _load_state(self, writer: psycopg.Connection[Any]) -> int:
        self._sources = load_sources(writer)
        row = writer.execute(
            "SELECT buffered_lsn::text FROM pgtrickle.reader_state WHERE slot_name = %s",
            (self.slot,),
        ).fetchone()
        writer.commit()
        return parse_lsn(row[0]) if row else 0

    def _stream(
        self, stream: ReplicationStream, writer: psycopg.Connection[Any], buffered: int
    ) -> None:
        txn: _Transaction | None = None
        batch = _Batch()
        last_status = time.monotonic()
        confirmed = 0
        while not self._stop.is_set():
            message = stream.read(0.0 if batch else 0.1)
            if message is None:
                if batch:
                    self._write(writer, batch)
                    batch = _Batch()
                    stream.send_status(self._position)
                    confirmed = self._position
                if time.monotonic() - last_status > STATUS_INTERVAL:
                    stream.send_status(confirmed)
                    last_status = time.monotonic()
                continue
            if isinstance(message, Keepalive):
                if txn is None and not batch:
                    self._advance(message.wal_end)
                if self._position > confirmed or message.reply_requested:
                    # position never includes an unwritten batch: always safe to confirm
                    stream.send_status(self._position)
                    confirmed = self._position
                    last_status = time.monotonic()
                continue
            assert isinstance(message, XLogData)
            decoded = decode(message.payload)
            if isinstance(decoded, Begin):
                txn = _Transaction(decoded.xid)
            elif isinstance(decoded, Commit):
                assert txn is not None
                if decoded.end_lsn <= buffered:
                    pass  # sent again after a restart; already in the buffers
                elif txn.rows:
                    if not batch:
                        batch.started = time.monotonic()
                    batch.transactions.append((txn, decoded.end_lsn))
                    batch.n_rows += sum(len(r) for r in txn.rows.values())
                    batch.end_lsn = decoded.end_lsn
                elif not batch:
                    # nothing for us in it (our own writes, a flush nudge): no need to write
                    self._advance(decoded.end_lsn)
                else:
                    batch.end_lsn = decoded.end_lsn
                txn = None
                if batch and (
                    batch.n_rows >= BATCH_ROWS or time.monotonic() - batch.started >= BATCH_SECONDS
                ):
                    self._write(writer, batch)
                    batch = _Batch()
                    stream.send_status(self._position)
                    confirmed = self._position
            elif txn is not None:
                self._collect(txn, decoded)
            elif isinstance(decoded, Relation):
                self._on_relation(decoded)

    def _collect(self, txn: _Transaction, message: object) -> None:
        if isinstance(message, Relation):
            self._on_relation(message)
        elif isinstance(message, Insert):
            layout = self._layouts.get(message.relation_oid)
            if layout is not None:
                values = insert_values(_pick(message.new, layout), layout.width)
                txn.add(message.relation_oid, BufferAction.INSERT, values)
        elif isinstance(message, Update):
            layout = self._layouts.get(message.relation_oid)
            if layout is not None:
                old = _pick(message.old or message.key or (), layout)
                new = _pick(message.new, layout, old)
                values = update_values(old, new)
                txn.add(message.relation_oid, BufferAction.UPDATE, values)
        elif isinstance(message, Delete):
            layout = self._layouts.get(message.relation_oid)
            if layout is not None:
                old = _pick(message.old or message.key or (), layout)
                values = delete_values(old, layout.width)
                txn.add(message.relation_oid, BufferAction.DELETE, values)
        elif isinstance(message, Truncate):
            for oid in message.relation_oids:
                layout = self._layouts.get(oid)
                if layout is not None:
                    values = truncate_values(layout.width)
                    txn.add(oid, BufferAction.TRUNCATE, values)

    def _on_relation(self, relation: Relation) -> None:
        """Map the relation's columns onto its buffer's, by name.

        A Relation message precedes a relation's first change in a session and follows any
        change of its schema. Added columns are left out; a captured column that is gone
        makes the source's changes unusable: they are not buffered, and ``on_schema_change``
        hears of it.
        """
        names = [c.name for c in relation.columns]
        source = self._sources.get(relation.oid)
        if source is None or not set(source.columns) <= set(names):
            # unknown, or its buffer no longer fits: it may have been captured (again, with
            # the columns it has now) since the sources were loaded
            with connect(self.dsn, autocommit=True) as conn:
                self._sources = load_sources(conn)
            source = self._sources.get(relation.oid)
        self._layouts.pop(relation.oid, None)
        if source is None:
            return  # published once, no longer captured: its changes are nobody's
        missing = [c for c in source.columns if c not in names]
        if missing:
            log.error("source schema changed", source=source.display_name, missing=missing)
            if self.on_schema_change is not None:
                self.on_schema_change(SchemaChange(source, tuple(missing)))
            return
        positions = tuple(names.index(c) for c in source.columns)
        identity = positions == tuple(range(len(names)))
        self._layouts[relation.oid] = Layout(None if identity else positions, len(positions))

    def _write(self, writer: psycopg.Connection[Any], batch: _Batch) -> None:
        # Our own xid, assigned now, is newer than every decoded one. (A snapshot's xmax is
        # not: a commit can be decoded before its backend leaves the proc array.)
        row = writer.execute("SELECT pg_current_xact_id()::text").fetchone()
        assert row is not None
        next_xid = int(row[0])
        per_source: dict[int, list[tuple[int, int, _Transaction]]] = {}
        for txn, end_lsn in batch.transactions:
            xid8 = widen_xid(txn.xid, next_xid)
            for oid in txn.rows:
                per_source.setdefault(oid, []).append((xid8, end_lsn, txn))
        for oid, entries in per_source.items():
            source = self._sources.get(oid)
            if source is None:
                continue  # released since this session began: its changes are nobody's
            with writer.cursor().copy(copy_statement(source)) as copy:
                for xid8, end_lsn, txn in entries:
                    lsn_text = format_lsn(end_lsn)
                    for seq, action, values in txn.rows[oid]:
                        copy.write_row((xid8, lsn_text, seq, action.value, *values))
        writer.execute(
            "INSERT INTO pgtrickle.reader_state (slot_name, buffered_lsn) VALUES (%s, %s)"
            " ON CONFLICT (slot_name) DO UPDATE SET buffered_lsn = excluded.buffered_lsn,"
            " updated_at = now()",
            (self.slot, format_lsn(batch.end_lsn)),
        )
        writer.commit()
        self._advance(batch.end_lsn)
        if self.on_buffered is not None:
            self.on_buffered(set(per_source), batch.end_lsn)


class Layout(NamedTuple):
    """Where a buffer's columns are in pgoutput's tuples (None: the same places)."""

    positions: tuple[int, ...] | None
    width: int


def _pick(values: tuple[object, ...], layout: Layout, old: Row | None = None) -> Row:
    """The buffer's values from a pgoutput tuple; an unchanged TOAST value is the old one's."""
    if layout.positions is None:
        picked = values
    else:
        picked = tuple(values[i] if i < len(values) else None for i in layout.positions)
    if UNCHANGED_TOAST not in picked:
        return picked  # type: ignore[return-value]
    return tuple(
        (old[i] if old else None) if v is UNCHANGED_TOAST else v  # type: ignore[misc]
        for i, v in enumerate(picked)
    )
