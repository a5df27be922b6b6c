"""``pgtrickle run``: the reader, the workers that refresh, and the loop that decides when.

A stream table is refreshed soon after changes for it are buffered (once a short debounce has
passed, so that a burst becomes one refresh), and at the latest when its schedule says. A
refresh that fails is retried with exponential backoff; the error is in the catalog meanwhile.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog

from scheduler.dag import refresh_order
from scheduler.errors import UpstreamSchemaChanged
from scheduler.history import prune_history, record_failure
from scheduler.refresh import TRANSIENT_ERRORS, Refresher
from scheduler.schedule import Schedule, parse_schedule
from scheduler.suspend import SchemaChangeHandler
from walstream.buffers import prune
from walstream.capture import ensure_slot_and_publication
from walstream.catalog import StreamTable, StreamTableStatus, list_stream_tables
from walstream.dsn import connect
from walstream.errors import ConnectionFailed, NotFound, PgTrickleError
from walstream.migrate import migrate
from walstream.reader import ChangeReader

log = structlog.get_logger("pgtrickle.daemon")

TRANSIENT: tuple[type[Exception], ...] = (*TRANSIENT_ERRORS, ConnectionFailed)


@dataclass
class _State:
    """What the loop knows of one stream table between catalog reloads."""

    st: StreamTable
    dirty_since: float | None = None
    in_flight: bool = False
    next_attempt: float = 0.0
    failures: int = 0


@dataclass
class DaemonOptions:
    workers: int = 2
    debounce: float = 0.005
    reload_interval: float = 1.0
    prune_interval: float = 5.0
    tick: float = 0.005


@dataclass
class Daemon:
    dsn: str
    options: DaemonOptions = field(default_factory=DaemonOptions)

    def __post_init__(self) -> None:
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._states: dict[int, _State] = {}
        self._readers_of: dict[int, set[int]] = {}
        self._jobs: queue.Queue[_State | None] = queue.Queue()
        self.reader = ChangeReader(
            self.dsn,
            on_buffered=self._on_buffered,
            on_schema_change=SchemaChangeHandler(self.dsn),
        )

    # -- wiring ----------------------------------------------------------------------------

    def _on_buffered(self, source_oids: set[int], lsn: int) -> None:
        now = time.monotonic()
        with self._lock:
            for oid in source_oids:
                for st_id in self._readers_of.get(oid, ()):
                    state = self._states.get(st_id)
                    if state is not None and state.dirty_since is None:
                        state.dirty_since = now
        self._wake.set()

    def stop(self) -> None:
        self.stop_event.set()
        self._wake.set()

    def run(self) -> None:
        migrate(self.dsn)
        with connect(self.dsn, autocommit=True) as conn:
            ensure_slot_and_publication(conn)
        reader = threading.Thread(target=self.reader.run, name="pgtrickle-reader", daemon=True)
        reader.start()
        workers = [
            threading.Thread(target=self._worker, name=f"pgtrickle-worker-{i}", daemon=True)
            for i in range(self.options.workers)
        ]
        for worker in workers:
            worker.start()
        log.info("daemon started", workers=self.options.workers)
        try:
            self._loop()
        finally:
            # workers first: a refresh in flight finishes, and it needs the reader to
            for _ in workers:
                self._jobs.put(None)
            for worker in workers:
                worker.join(timeout=30)
            self.reader.stop()
            reader.join(timeout=30)
            log.info("daemon stopped")

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        next_reload = 0.0
        next_prune = time.monotonic() + self.options.prune_interval
        conn: psycopg.Connection[Any] | None = None
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                try:
                    if conn is None or conn.closed:
                        conn = connect(
                            self.dsn, autocommit=True, fallback_application_name="pgtrickle-daemon"
                        )
                    if now >= next_reload:
                        self._reload(conn)
                        next_reload = now + self.options.reload_interval
                    if now >= next_prune:
                        prune(conn)
                        prune_history(conn)
                        next_prune = now + self.options.prune_interval
                except (psycopg.OperationalError, ConnectionFailed) as exc:
                    log.warning("catalog connection lost", error=str(exc).strip())
                    if conn is not None:
                        conn.close()
                    conn = None
                    self.stop_event.wait(0.5)
                    continue
                self._dispatch(now)
                self._wake.wait(self.options.tick)
                self._wake.clear()
        finally:
            if conn is not None:
                conn.close()

    def _reload(self, conn: psycopg.Connection[Any]) -> None:
        tables = list_stream_tables(conn)
        with self._lock:
            fresh: dict[int, _State] = {}
            for st in refresh_order(tables):
                state = self._states.get(st.id)
                if state is None:
                    # first sight (or a restart): changes may be waiting in the buffers
                    state = _State(st, dirty_since=time.monotonic())
                state.st = st
                fresh[st.id] = state
            self._states = fresh
            readers: dict[int, set[int]] = {}
            for st in tables:
                for oid in st.source_oids:
                    readers.setdefault(oid, set()).add(st.id)
            self._readers_of = readers

    def _dispatch(self, now: float) -> None:
        wall = datetime.now(UTC)
        with self._lock:
            for state in self._states.values():
                if state.in_flight or now < state.next_attempt:
                    continue
                if state.st.status is StreamTableStatus.SUSPENDED:
                    continue
                due = state.dirty_since is not None and (
                    now - state.dirty_since >= self.options.debounce
                )
                if not due:
                    next_due = _schedule(state.st.schedule).next_due(state.st.last_refresh_at, wall)
                    due = next_due is not None and next_due <= wall
                if due:
                    state.in_flight = True
                    state.dirty_since = None
                    self._jobs.put(state)

    # -- the workers -----------------------------------------------------------------------

    def _worker(self) -> None:
        refresher: Refresher | None = None
        while True:
            state = self._jobs.get()
            if state is None:
                break
            try:
                if refresher is None:
                    refresher = Refresher(self.dsn, self.reader)
                result = refresher.refresh(state.st)
                with self._lock:
                    state.failures = 0
                    state.next_attempt = 0.0
                    # the refresh may have reloaded a changed declaration: keep what it used
                    state.st = replace(
                        result.stream_table,
                        last_refresh_at=datetime.now(UTC),
                        status=StreamTableStatus.ACTIVE,
                    )
                log.debug(
                    "refreshed",
                    stream_table=state.st.display_name,
                    action=result.action.value,
                    delta_rows=result.delta_rows,
                    ms=round(result.timings.get("total_ms", 0.0), 2),
                )
            except NotFound:
                pass  # dropped since the last reload: the next one forgets it
            except UpstreamSchemaChanged:
                # suspended since the last reload: not a failure, nothing to retry
                with self._lock:
                    state.st = replace(state.st, status=StreamTableStatus.SUSPENDED)
            except Exception as exc:
                transient = isinstance(exc, TRANSIENT)
                if isinstance(exc, psycopg.OperationalError | ConnectionFailed) and refresher:
                    refresher.close()
                    refresher = None
                with self._lock:
                    state.failures += 1
                    delay = min(0.05 * 2 ** (state.failures - 1), 60.0)
                    state.next_attempt = time.monotonic() + delay
                    if state.dirty_since is None:
                        state.dirty_since = time.monotonic()
                log.warning(
                    "refresh failed",
                    stream_table=state.st.display_name,
                    code=exc.code if isinstance(exc, PgTrickleError) else None,
                    error=str(exc).strip(),
                    transient=transient,
                    retry_in=round(delay, 3),
                )
                if not transient:
                    with contextlib.suppress(psycopg.Error, ConnectionFailed):
                        record_failure(self.dsn, state.st, exc)
            finally:
                with self._lock:
                    state.in_flight = False
                self._wake.set()
        if refresher is not None:
            refresher.close()


@functools.lru_cache(maxsize=1024)
def _schedule(text: str) -> Schedule:
    return parse_schedule(text)
