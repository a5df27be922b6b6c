"""``pgtrickle.refresh_history``: one row per refresh, populate or failure, and its pruning."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import psycopg

from walstream.catalog import StreamTable, StreamTableStatus
from walstream.dsn import connect
from walstream.replication import format_lsn

HISTORY_KEPT_PER_STREAM_TABLE = 1000


class Outcome(StrEnum):
    OK = "ok"
    ERROR = "error"


class RefreshAction(StrEnum):
    FULL = "full"
    DIFFERENTIAL = "differential"
    NO_DATA = "no_data"
    INITIALIZE = "initialize"


@dataclass
class RefreshResult:
    action: RefreshAction
    frontier_lsn: int
    stream_table: StreamTable
    """The catalog row the refresh ran against (reloaded if the declaration changed)."""
    delta_rows: int = 0
    """The changed rows staged and applied (only those that can matter)."""
    window_rows: int | None = None
    """The changed rows counted in the window before staging: what ``auto`` decides by."""
    rows_changed: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    """Why the refresh ran in another way than the stream table's mode."""
    compiled_for: frozenset[int] | None = None
    """The sources (oids) the applied delta was compiled for, those with changes in the
    window (compiled before staging, so an update of columns nobody reads counts); None:
    the stored statement."""


def record_refresh(conn: psycopg.Connection[Any], st_id: int, result: RefreshResult) -> None:
    """One row for a refresh, written in the refresh's own transaction (a second commit would
    cost a WAL flush); its total_ms ends before the commit."""
    t = result.timings
    conn.execute(
        "INSERT INTO pgtrickle.refresh_history (stream_table_id, action, status, started_at,"
        " finished_at, frontier_lsn, delta_rows, window_rows, rows_changed, snapshot_ms,"
        " wait_ms, stage_ms, apply_ms, commit_ms, total_ms, reason) VALUES (%s, %s, %s,"
        " clock_timestamp() - make_interval(secs => %s / 1000.0), clock_timestamp(),"
        " %s::pg_lsn, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            st_id,
            result.action.value,
            Outcome.OK.value,
            t.get("total_ms", 0.0),
            format_lsn(result.frontier_lsn),
            result.delta_rows,
            result.window_rows,
            result.rows_changed,
            t.get("snapshot_ms"),
            t.get("wait_ms"),
            t.get("stage_ms"),
            t.get("apply_ms"),
            t.get("commit_ms"),
            t.get("total_ms"),
            result.reason,
        ),
    )


def record_populated(
    conn: psycopg.Connection[Any], st_id: int, lsn: str, rows: int, populate_ms: float
) -> None:
    """The row of a stream table populated (created or re-created) at WAL position ``lsn``;
    its ``apply_ms`` is what computing the whole query took (``auto`` weighs it)."""
    conn.execute(
        "INSERT INTO pgtrickle.refresh_history (stream_table_id, action, status, started_at,"
        " finished_at, frontier_lsn, rows_changed, apply_ms)"
        " VALUES (%s, %s, %s, now(), clock_timestamp(), %s::pg_lsn, %s, %s)",
        (st_id, RefreshAction.INITIALIZE.value, Outcome.OK.value, lsn, rows, populate_ms),
    )


@dataclass(frozen=True)
class Measured:
    """What a stream table's own refresh history says about its costs."""

    full_ms: float | None
    """A recent full computation (refresh or population), the median of the last few."""
    fixed_ms: float
    per_row_ms: float
    """Differential refresh time (staging and applying) ≈ fixed_ms + per_row_ms * delta rows
    (see ``fit``)."""
    samples: int
    recomputed_since: int = 0
    """Refreshes since the last differential one that recomputed instead."""

    def differential_ms(self, rows: int) -> float:
        return self.fixed_ms + self.per_row_ms * rows

    def rows_beyond(self, ms: float) -> int | None:
        """The fewest changed rows whose differential estimate exceeds ``ms``; None when no
        number does (no cost per row measured).

        >>> Measured(1000.0, 10.0, 0.5, 3).rows_beyond(1000.0)
        1981
        >>> Measured(1000.0, 10.0, 0.0, 3).rows_beyond(1000.0) is None
        True
        """
        if self.fixed_ms > ms:
            return 1
        if self.per_row_ms <= 0:
            return None
        return math.floor((ms - self.fixed_ms) / self.per_row_ms) + 1


def measured(conn: psycopg.Connection[Any], st_id: int) -> Measured:
    rows = conn.execute(
        # a differential refresh costs its staging too (a recomputation by auto stages
        # nothing); its cost is per row of the window, which auto counts before it decides
        # (only some of them are staged, those that can matter)
        "SELECT action, coalesce(window_rows, delta_rows), apply_ms + CASE WHEN action = %s"
        " THEN coalesce(stage_ms, 0) ELSE 0 END FROM pgtrickle.refresh_history"
        " WHERE stream_table_id = %s AND status = %s AND apply_ms IS NOT NULL"
        " ORDER BY id DESC LIMIT 50",
        (RefreshAction.DIFFERENTIAL.value, st_id, Outcome.OK.value),
    ).fetchall()
    fulls = [
        float(ms)
        for action, _, ms in rows
        if action in (RefreshAction.FULL.value, RefreshAction.INITIALIZE.value)
    ][:5]
    points = [
        (float(n), float(ms))
        for action, n, ms in rows
        if action == RefreshAction.DIFFERENTIAL.value and n
    ]
    since = next(
        (i for i, (action, _, _) in enumerate(rows) if action == RefreshAction.DIFFERENTIAL.value),
        len(rows),
    )
    fixed, per_row = fit(points)
    full = statistics.median(fulls) if fulls else None
    return Measured(full, fixed, per_row, len(points), recomputed_since=since)


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(fixed, per_row) of ms = fixed + per_row * n, both at or above zero.

    Least squares once the sizes differ by a factor of 2 or more. Closer sizes cannot tell the fixed
    part from the rest (two refreshes of 719 and 736 rows fit 0.38 ms per row and a negative
    fixed part, which made auto predict 2.8 s for 7,384 rows that apply in 40 ms): half the
    cheapest is taken as fixed, neither ignoring it nor taking all of it.

    >>> fixed, per_row = fit([(719.0, 12.0), (736.0, 19.0)])
    >>> fixed, round(per_row, 4)
    (6.0, 0.013)
    >>> fixed, per_row = fit([(100.0, 15.0), (1000.0, 105.0), (10000.0, 1005.0)])
    >>> round(fixed, 6), round(per_row, 6)
    (5.0, 0.1)
    """
    if not points:
        return 0.0, 0.0
    sizes = [n for n, _ in points]
    if max(sizes) < 2 * min(sizes):
        fixed = min(ms for _, ms in points) / 2
        return fixed, statistics.median((ms - fixed) / max(n, 1.0) for n, ms in points)
    per_row, fixed = statistics.linear_regression([n for n, _ in points], [m for _, m in points])
    if per_row < 0:
        return statistics.median(m for _, m in points), 0.0
    return max(fixed, 0.0), per_row


def record_failure(dsn: str, st: StreamTable, error: BaseException) -> None:
    """Mark a stream table's failed refresh in the catalog (on a connection of its own: the
    refresh's transaction was rolled back)."""
    message = str(error).strip()
    with connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "UPDATE pgtrickle.stream_tables SET status = %s, last_error = %s,"
            " consecutive_errors = consecutive_errors + 1 WHERE id = %s AND status <> %s",
            (StreamTableStatus.ERROR.value, message, st.id, StreamTableStatus.SUSPENDED.value),
        )
        conn.execute(
            "INSERT INTO pgtrickle.refresh_history (stream_table_id, action, status, started_at,"
            " finished_at, error) SELECT id, %s, %s, now(), now(), %s"
            " FROM pgtrickle.stream_tables WHERE id = %s",
            (st.effective_refresh_mode.value, Outcome.ERROR.value, message, st.id),
        )


def prune_history(conn: psycopg.Connection[Any]) -> None:
    """Keep the newest refreshes of each stream table (and every error of the last day)."""
    conn.execute(
        "DELETE FROM pgtrickle.refresh_history h USING (SELECT id, row_number() OVER"
        " (PARTITION BY stream_table_id ORDER BY id DESC) AS n FROM pgtrickle.refresh_history) o"
        " WHERE h.id = o.id AND o.n > %s"
        " AND NOT (h.status = %s AND h.finished_at > now() - interval '1 day')",
        (HISTORY_KEPT_PER_STREAM_TABLE, Outcome.ERROR.value),
    )
