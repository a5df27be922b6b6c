"""`./run bench tpch`: TPC-H queries refreshed four ways on the same data, side by side.

For each query and each share of changed orders, every repeat applies one change (RF1-style
inserts of new orders with their lineitems and RF2-style deletes of existing orders with
theirs, half each; see ``change``), waits until the change reader has buffered it, then
refreshes, in an order that rotates from repeat to repeat:

- ``differential``: the stream table declared ``refresh_mode: differential``;
- ``auto``: the stream table declared ``refresh_mode: auto`` (it decides per refresh from its
  own refresh history);
- ``full``: the stream table declared ``refresh_mode: full`` (a recompute, as
  ``Refresher.refresh(st, full=True)`` is);
- ``matview``: PostgreSQL's ``REFRESH MATERIALIZED VIEW`` of a materialized view of the same
  query, timed on a plain connection.

So all four refresh the same change of the same data. The stream tables' time is
``RefreshResult.timings["total_ms"]`` (snapshot, wait, stage, apply, commit).

Then the scale check: Q1, Q3 and Q18 differential on a base of scale ``scale / 10`` (on a
second private cluster: a cluster has one replication slot) and on the base of ``scale``,
with the same absolute number of changed orders, rounds alternating between the two.

A stream-table refresh that runs longer than ``limit_s`` is cancelled and counted as
exceeding it; the stream table is caught up by an untimed full refresh and not timed again at
that share or a larger one.

Not part of the test suite, and not in ``./run bench all``: at scale 1 it runs for more than
an hour (68 minutes on 2 cores, see docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql
from psycopg.conninfo import make_conninfo

from dvm.errors import PgTrickleError
from pgtrickle.declarations import parse_declarations
from pgtrickle.dev.cluster import LocalCluster, temporary_cluster
from pgtrickle.reconcile import apply
from scheduler.refresh import Refresher
from tests.tpch import data
from tests.tpch.queries import QUERIES, TOPK
from walstream.buffers import load_sources, prune
from walstream.catalog import get_stream_table
from walstream.reader import ChangeReader
from walstream.replication import parse_lsn

DEFAULT_QUERIES = ("q01", "q03", "q05", "q10", "q14", "q17", "q18", "q21")
SCALE_QUERIES = ("q01", "q03", "q18")
SHARES = (0.001, 0.01, 0.1)
METHODS = ("differential", "auto", "full", "matview")
MODES = {"differential": "diff", "auto": "auto", "full": "full"}
"""The stream tables' refresh modes and the suffix of their names."""

INDEXES: dict[str, str] = {
    "lineitem_l_partkey": "CREATE INDEX lineitem_l_partkey ON lineitem (l_partkey)",
    "orders_o_custkey": "CREATE INDEX orders_o_custkey ON orders (o_custkey)",
    "lineitem_l_suppkey": "CREATE INDEX lineitem_l_suppkey ON lineitem (l_suppkey)",
}
"""Secondary indexes, beside the specification's primary keys, on foreign keys (which the
specification allows): only what a delta needs to be a delta. Every join these queries make
from a changed order or lineitem to the rest goes through a primary key (orders, customer,
supplier, part) or the leading column of lineitem's (l_orderkey), except three: Q17's
correlated average of l_quantity per l_partkey, and Q10's revenue per customer and Q21's
count of late lineitems per supplier, which a TopK (its stream table holds the first rows,
not all groups) recomputes for each group a change touches, from all of that customer's
orders or that supplier's lineitems. Without these indexes every
differential refresh of them scans lineitem or orders. The full refreshes and REFRESH
MATERIALIZED VIEW may use them too (PostgreSQL plans Q17's subquery as an index scan per
part). An index is created only when a query that needs it is measured."""
INDEX_FOR: dict[str, tuple[str, ...]] = {
    "q17": ("lineitem_l_partkey",),
    "q10": ("orders_o_custkey",),
    "q21": ("lineitem_l_suppkey",),
}

WAIT_TIMEOUT = 900.0
"""Seconds the reader may take to buffer one change (a 10 % change at scale 1 is about
600,000 lineitem rows)."""

_ORDER_COLUMNS = (
    "o_orderkey", "o_custkey", "o_orderstatus", "o_totalprice", "o_orderdate",
    "o_orderpriority", "o_clerk", "o_shippriority", "o_comment",
)  # fmt: skip
_LINE_COLUMNS = (
    "l_orderkey", "l_partkey", "l_suppkey", "l_linenumber", "l_quantity", "l_extendedprice",
    "l_discount", "l_tax", "l_returnflag", "l_linestatus", "l_shipdate", "l_commitdate",
    "l_receiptdate", "l_shipinstruct", "l_shipmode", "l_comment",
)  # fmt: skip


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """One refresh: its time, and for a stream table its phases and what it did."""

    ms: float
    stage_ms: float | None = None
    apply_ms: float | None = None
    action: str = "matview"
    reason: str | None = None


@dataclass(frozen=True)
class Changed:
    """One change: orders inserted and deleted, the lineitems that came and went with them."""

    inserted: int
    deleted: int
    lines: int
    ms: float


@dataclass
class Cell:
    """One query at one share: every method's refreshes, in the order they ran."""

    query: str
    share: float
    orders: int
    timings: dict[str, list[Timing]] = field(default_factory=lambda: {m: [] for m in METHODS})
    lines: list[int] = field(default_factory=list)

    def median(self, method: str) -> float | None:
        values = [t.ms for t in self.timings[method]]
        return statistics.median(values) if values else None

    def capped(self, method: str) -> bool:
        return _capped(self.timings[method])

    def phase(self, method: str, name: str) -> float | None:
        values = [v for t in self.timings[method] if (v := getattr(t, f"{name}_ms")) is not None]
        return statistics.median(values) if values else None

    def actions(self, method: str) -> str:
        """What the refreshes did: ``3 diff``, ``2 diff + 1 full``."""
        counts: dict[str, int] = {}
        for t in self.timings[method]:
            short = {"differential": "diff", "no_data": "none"}.get(t.action, t.action)
            counts[short] = counts.get(short, 0) + 1
        return " + ".join(f"{n} {a}" for a, n in counts.items())


@dataclass
class ScaleRow:
    query: str
    orders: int
    small: list[Timing] = field(default_factory=list)
    large: list[Timing] = field(default_factory=list)


@dataclass
class Report:
    scale: float
    small_scale: float
    repeats: int
    limit_s: float
    machine: dict[str, str] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    scale_rows: list[ScaleRow] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- one database --------------------------------------------------------------------------


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def st_name(query: str, method: str) -> str:
    return f"{query}_{MODES[method]}"


def mv_name(query: str) -> str:
    return f"{query}_mv"


class Base:
    """TPC-H at one scale factor in a database of a private cluster, with a change reader
    running beside the refreshes (as in the daemon) and one refresher."""

    def __init__(self, cluster: LocalCluster, scale: float, report: Report) -> None:
        self.cluster = cluster
        self.scale = scale
        self.report = report
        self.limit_ms = report.limit_s * 1000
        self.dsn = cluster.create_database("tpch")
        self.reader: ChangeReader | None = None
        self.thread: threading.Thread | None = None
        self.refresher: Refresher | None = None
        self.unlimited: Refresher | None = None
        self.conn: psycopg.Connection[Any] = psycopg.connect(self.dsn, autocommit=True)
        self.declared: set[str] = set()
        self.broken: set[str] = set()
        self.orders = 0

    def note(self, line: str) -> None:
        print(line, flush=True)
        self.report.setup.append(line)

    def load(self, queries: Sequence[str]) -> None:
        started = time.perf_counter()
        files = data.generate(self.scale)
        generated = time.perf_counter()
        data.load(self.dsn, self.scale)
        loaded = time.perf_counter()
        self.orders = self._count("SELECT count(*) FROM orders")
        lines = self._count("SELECT count(*) FROM lineitem")
        size = self._count("SELECT pg_database_size(current_database())")
        self.note(
            f"SF {self.scale:g}: {self.orders:,} orders, {lines:,} lineitems;"
            f" generated (or found in {files.parent}) in {generated - started:.1f} s,"
            f" loaded (COPY, ANALYZE) in {loaded - generated:.1f} s, database {size >> 20:,} MiB"
        )
        wanted = sorted({i for q in queries for i in INDEX_FOR.get(q, ())})
        for name in wanted:
            t0 = time.perf_counter()
            self.conn.execute(INDEXES[name])
            self.note(f"SF {self.scale:g}: {INDEXES[name]} in {time.perf_counter() - t0:.1f} s")
        if wanted:
            self.conn.execute("ANALYZE lineitem, orders")

    def _count(self, query: str) -> int:
        row = self.conn.execute(query).fetchone()
        assert row is not None
        return int(row[0])

    # -- declaring ----------------------------------------------------------------------

    def declare(self, queries: Sequence[str], methods: Sequence[str]) -> None:
        """The stream tables of ``methods`` (all at once), then the materialized views."""
        wanted = [(q, m) for q in queries for m in methods if m in MODES]
        t0 = time.perf_counter()
        try:
            apply(self.dsn, parse_declarations(_yaml(wanted)))
        except PgTrickleError as error:
            # apply is all or nothing: find each one it refuses, declare the rest
            refused = self._refusals(wanted)
            self.report.errors.append(f"apply refused the declarations: {error.message}")
            for (q, m), why in refused.items():
                self.report.errors.append(f"{q} ({m}): refused: {why}")
                self.broken.add(st_name(q, m))
            wanted = [w for w in wanted if w not in refused]
            t0 = time.perf_counter()
            apply(self.dsn, parse_declarations(_yaml(wanted)))
        self.declared = {st_name(q, m) for q, m in wanted}
        self.note(
            f"SF {self.scale:g}: apply populated {len(wanted)} stream tables"
            f" in {time.perf_counter() - t0:.1f} s"
        )
        if "matview" in methods:
            t0 = time.perf_counter()
            for q in queries:
                self.conn.execute(
                    sql.SQL("CREATE MATERIALIZED VIEW {} AS {}").format(
                        sql.Identifier(mv_name(q)), sql.SQL(QUERIES[q])
                    )
                )
            self.note(
                f"SF {self.scale:g}: created {len(queries)} materialized views"
                f" in {time.perf_counter() - t0:.1f} s"
            )
        for q, m in wanted:
            st = get_stream_table(self.conn, st_name(q, m))
            if m != "full" and st.effective_refresh_mode.value != "differential":
                self.report.errors.append(
                    f"{q} ({m}): maintained {st.effective_refresh_mode.value}: {st.fallback_reason}"
                )
            if m == "differential" and self.scale == self.report.scale:
                classes = ", ".join(
                    sorted({f"{call.split('(')[0]} {kind}" for call, kind, _ in st.plan.aggregates})
                )
                guard = "; TopK guard" if st.plan.guard_query else ""
                self.report.modes.append(
                    f"{q}: {st.plan.apply_strategy.value} apply; aggregates {classes}{guard}"
                )

    def _refusals(self, wanted: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        out = {}
        for w in wanted:
            try:
                apply(self.dsn, parse_declarations(_yaml([w])), dry_run=True)
            except PgTrickleError as error:
                out[w] = f"{error.message} ({error.detail})" if error.detail else error.message
        return out

    def undeclare_all_but(self, names: set[str]) -> None:
        """Drop the other stream tables and the materialized views (apply with prune)."""
        keep = [(q, m) for q in QUERIES for m in MODES if st_name(q, m) in names & self.declared]
        apply(self.dsn, parse_declarations(_yaml(keep)), prune=True)
        self.declared = {st_name(q, m) for q, m in keep}
        for q in QUERIES:
            self.conn.execute(
                sql.SQL("DROP MATERIALIZED VIEW IF EXISTS {}").format(sql.Identifier(mv_name(q)))
            )

    # -- the reader and refreshes -------------------------------------------------------

    def start(self) -> None:
        self.reader = ChangeReader(self.dsn)
        self.thread = threading.Thread(target=self.reader.run, daemon=True)
        self.thread.start()
        # the limit is the benchmark's, on the refresher's sessions only: a refresh that runs
        # longer is cancelled (rolled back) and reported as exceeding it
        limited = make_conninfo(self.dsn, options=f"-c statement_timeout={self.limit_ms:.0f}")
        self.refresher = Refresher(limited, self.reader)
        # catching up is not measured, and not limited
        self.unlimited = Refresher(self.dsn, self.reader)

    def stop(self) -> None:
        for refresher in (self.refresher, self.unlimited):
            if refresher is not None:
                refresher.close()
        if self.reader is not None and self.thread is not None:
            self.reader.stop()
            self.thread.join()
        self.conn.close()

    def caught_up(self) -> None:
        """Wait until the reader has buffered everything committed so far (not timed)."""
        assert self.reader is not None
        self.conn.execute("SELECT pg_logical_emit_message(true, 'bench', '')")
        row = self.conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        if not self.reader.wait_for(parse_lsn(row[0]), WAIT_TIMEOUT):
            raise RuntimeError(f"the reader did not catch up in {WAIT_TIMEOUT:.0f} s")

    def refresh(self, query: str, method: str) -> Timing | None:
        """One refresh, timed; None (and the error reported) when it fails."""
        name = mv_name(query) if method == "matview" else st_name(query, method)
        if name in self.broken or (method != "matview" and name not in self.declared):
            return None
        try:
            if method == "matview":
                t0 = time.perf_counter()
                self.conn.execute(
                    sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(name))
                )
                return Timing(_ms(t0))
            assert self.refresher is not None
            t0 = time.perf_counter()
            result = self.refresher.refresh(get_stream_table(self.conn, name))
        except (PgTrickleError, psycopg.Error) as error:
            if _cancelled(error):
                elapsed = _ms(t0)
                print(f"  {query} ({method}): exceeded {self.limit_ms / 1000:g} s", flush=True)
                self.catch_up(query, method)
                return Timing(elapsed, action="timeout")
            self.broken.add(name)
            message = getattr(error, "message", None) or str(error)
            detail = getattr(error, "detail", None)
            self.report.errors.append(
                f"SF {self.scale:g} {query} ({method}): {type(error).__name__}: {message}"
                + (f" ({detail})" if detail else "")
            )
            print(f"error: {self.report.errors[-1]}", flush=True)
            return None
        t = result.timings
        return Timing(
            t["total_ms"], t.get("stage_ms"), t.get("apply_ms"), result.action.value, result.reason
        )

    def catch_up(self, query: str, method: str) -> None:
        """Bring a stream table whose refresh is not measured (or was cancelled) up to date
        with a full refresh, not timed: the next measured refresh then has only its own
        round's changes, and the buffers can be pruned."""
        name = st_name(query, method)
        if name in self.broken or name not in self.declared:
            return
        assert self.unlimited is not None
        try:
            self.unlimited.refresh(get_stream_table(self.conn, name), full=True)
        except (PgTrickleError, psycopg.Error) as error:
            self.broken.add(name)
            self.report.errors.append(
                f"SF {self.scale:g} {query} ({method}): the catch-up full refresh failed: {error}"
            )

    def tidy(self) -> None:
        """After a round every stream table has applied: prune the buffers, as the daemon
        does every few seconds, and vacuum what the round changed (not timed)."""
        prune(self.conn)
        buffers = [source.buffer for source in load_sources(self.conn).values()]
        tables: list[sql.Composable] = [sql.Identifier("orders"), sql.Identifier("lineitem")]
        self.conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.SQL(", ").join(tables)))
        if buffers:
            self.conn.execute(sql.SQL("VACUUM {}").format(sql.SQL(", ").join(buffers)))

    # -- the change ---------------------------------------------------------------------

    def change(self, orders: int, seed: float) -> Changed:
        """``orders // 2`` new orders, each a copy of a random existing order and its
        lineitems under a new key above the largest (so the values are the generator's),
        committed; then the rest as deletes of random orders with their lineitems (which may
        hit an order just copied), committed. Both as set statements of one session."""
        inserted = orders // 2
        deleted = orders - inserted
        t0 = time.perf_counter()
        lines = 0
        with psycopg.connect(self.dsn) as conn:
            conn.execute("SELECT setseed(%s)", (seed,))
            conn.execute(
                "CREATE TEMP TABLE picked ON COMMIT DROP AS"
                " SELECT s.o_orderkey AS old, m.top + row_number() OVER () AS new"
                " FROM (SELECT o_orderkey FROM orders ORDER BY random() LIMIT %s) s,"
                " (SELECT max(o_orderkey) AS top FROM orders) m",
                (inserted,),
            )
            _copy_rows(conn, "orders", _ORDER_COLUMNS, "o_orderkey")
            lines += _copy_rows(conn, "lineitem", _LINE_COLUMNS, "l_orderkey")
            conn.commit()
            conn.execute(
                "CREATE TEMP TABLE doomed ON COMMIT DROP AS"
                " SELECT o_orderkey AS key FROM orders ORDER BY random() LIMIT %s",
                (deleted,),
            )
            cur = conn.execute("DELETE FROM lineitem USING doomed WHERE l_orderkey = key")
            lines += max(cur.rowcount, 0)
            conn.execute("DELETE FROM orders USING doomed WHERE o_orderkey = key")
            conn.commit()
        return Changed(inserted, deleted, lines, _ms(t0))


def _cancelled(error: BaseException) -> bool:
    """Whether the benchmark's statement_timeout ended the refresh (a server error the
    refresher passes on as it is, or wraps)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, psycopg.errors.QueryCanceled):
            return True
        seen = seen.__cause__
    return "statement timeout" in str(error) or "57014" in str(getattr(error, "detail", ""))


def _copy_rows(conn: psycopg.Connection[Any], table: str, columns: Sequence[str], key: str) -> int:
    """Insert a copy of the rows of ``picked`` orders under their new keys; rows inserted."""
    values = [sql.SQL("p.new") if c == key else sql.Identifier(c) for c in columns]
    statement = sql.SQL("INSERT INTO {t} ({c}) SELECT {v} FROM {t} JOIN picked p ON {k} = p.old")
    cur = conn.execute(
        statement.format(
            t=sql.Identifier(table),
            c=sql.SQL(", ").join(map(sql.Identifier, columns)),
            v=sql.SQL(", ").join(values),
            k=sql.Identifier(key),
        )
    )
    return max(cur.rowcount, 0)


def _yaml(wanted: Sequence[tuple[str, str]]) -> str:
    tables = [
        {"name": st_name(q, m), "query": QUERIES[q], "schedule": "1h", "refresh_mode": m}
        for q, m in wanted
    ]
    return yaml.safe_dump({"stream_tables": tables}, sort_keys=False)


@contextlib.contextmanager
def private_base(
    scale: float, report: Report, settings: dict[str, str] | None = None
) -> Iterator[Base]:
    cluster = temporary_cluster(prefix="pgtrickle-bench-", settings=settings)
    cluster.start()
    base: Base | None = None
    try:
        base = Base(cluster, scale, report)
        yield base
    finally:
        if base is not None:
            base.stop()
        cluster.destroy()


# -- the runs ------------------------------------------------------------------------------


def rotated(items: Sequence[str], by: int) -> list[str]:
    k = by % len(items)
    return [*items[k:], *items[:k]]


def compare_methods(
    base: Base, queries: Sequence[str], shares: Sequence[float], repeats: int
) -> None:
    report = base.report
    # a stream table whose refresh exceeded the limit is not timed again at that share or
    # larger ones (more changes take no less): it is caught up by a full refresh instead
    over: set[tuple[str, str]] = set()
    # warm-up, not reported: temp tables, plans and caches; the auto tables' first history
    base.change(max(2, round(base.orders * shares[0])), 0.5)
    base.caught_up()
    for q in queries:
        for method in METHODS:
            warm = base.refresh(q, method)
            if warm is not None and warm.action == "timeout":
                over.add((q, method))
    base.tidy()
    round_number = 0
    for share in shares:
        orders = max(2, round(base.orders * share))
        cells = {q: Cell(q, share, orders) for q in queries}
        report.cells += cells.values()
        for repeat in range(repeats):
            round_number += 1
            changed = base.change(orders, round_number / 100)
            t0 = time.perf_counter()
            base.caught_up()
            print(
                f"{share:.1%}, repeat {repeat + 1}: {changed.inserted:,} orders inserted,"
                f" {changed.deleted:,} deleted, {changed.lines:,} lineitems, in"
                f" {changed.ms / 1000:.1f} s; buffered in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            for i, q in enumerate(queries):
                cells[q].lines.append(changed.lines)
                for method in rotated(METHODS, repeat + i):
                    if (q, method) in over:
                        base.catch_up(q, method)
                        cells[q].timings[method].append(Timing(base.limit_ms, action="skipped"))
                        continue
                    timing = base.refresh(q, method)
                    if timing is not None:
                        cells[q].timings[method].append(timing)
                        if timing.action == "timeout":
                            over.add((q, method))
                print(f"  {q}: {_cell_line(cells[q])}", flush=True)
            base.tidy()


def _cell_line(cell: Cell) -> str:
    parts = []
    for method in METHODS:
        last = cell.timings[method][-1:] or None
        parts.append(f"{method} {last[0].ms:,.0f} ms" if last else f"{method} -")
    auto = cell.timings["auto"][-1:]
    if auto and auto[0].reason:
        parts.append(f"({auto[0].reason})")
    diff = cell.timings["differential"][-1:]
    if diff and diff[0].reason:
        parts.append(f"(differential: {diff[0].reason})")
    return ", ".join(parts)


def compare_scales(small: Base, large: Base, orders: Sequence[int], repeats: int) -> None:
    """Q1, Q3 and Q18 differential on both bases, the same number of changed orders,
    alternating which base goes first."""
    report = small.report
    bases = (small, large)
    for n in orders:
        rows = {q: ScaleRow(q, n) for q in SCALE_QUERIES}
        report.scale_rows += rows.values()
        for repeat in range(repeats):
            for k, which in enumerate(bases if repeat % 2 == 0 else bases[::-1]):
                changed = which.change(n, 0.9 - (2 * repeat + k) / 100)
                which.caught_up()
                for q in SCALE_QUERIES:
                    timing = which.refresh(q, "differential")
                    if timing is not None:
                        (rows[q].small if which is small else rows[q].large).append(timing)
                which.tidy()
                print(
                    f"scale {which.scale:g}, {n:,} orders ({changed.lines:,} lineitems): "
                    + ", ".join(
                        f"{q} {(r.small if which is small else r.large)[-1].ms:,.0f} ms"
                        for q, r in rows.items()
                        if (r.small if which is small else r.large)
                    ),
                    flush=True,
                )


def machine(cluster: LocalCluster) -> dict[str, str]:
    mem = 0
    with contextlib.suppress(OSError), Path("/proc/meminfo").open() as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) << 10
    with psycopg.connect(cluster.dsn()) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        settings = conn.execute(
            # current_setting shows a size as "128MB" (setting || unit read "163848kB")
            "SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name)"
            " FROM pg_settings WHERE name IN ('shared_buffers', 'work_mem',"
            " 'max_parallel_workers_per_gather', 'fsync', 'synchronous_commit')"
        ).fetchone()
    return {
        "date": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "host": platform.node(),
        "cores": str(os.cpu_count()),
        "ram": f"{mem / (1 << 30):.0f} GiB",
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "postgresql": str(row[0]) if row else "?",
        "psycopg": version("psycopg"),
        "tpchgen-cli": version("tpchgen-cli"),
        "settings": str(settings[0]) if settings else "?",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def run(
    scale: float,
    repeats: int,
    queries: Sequence[str] = DEFAULT_QUERIES,
    shares: Sequence[float] = SHARES,
    scale_check: bool = True,
    limit_s: float = 60.0,
    shared_buffers: str | None = None,
) -> Report:
    unknown = [q for q in queries if q not in QUERIES]
    if unknown:
        raise SystemExit(f"no such TPC-H query: {', '.join(unknown)} (q01 .. q22)")
    report = Report(scale, scale / 10, repeats, limit_s)
    started = time.perf_counter()
    settings = {"shared_buffers": shared_buffers} if shared_buffers else None
    with private_base(scale, report, settings) as large:
        report.machine = machine(large.cluster)
        print(" ".join(f"{k}={v}" for k, v in report.machine.items()), flush=True)
        large.load(queries)
        large.declare(queries, METHODS)
        large.start()
        compare_methods(large, queries, shares, repeats)
        if scale_check:
            scaled = [q for q in SCALE_QUERIES if st_name(q, "differential") in large.declared]
            large.undeclare_all_but({st_name(q, "differential") for q in scaled})
            with private_base(scale / 10, report, settings) as small:
                small.load(SCALE_QUERIES)
                small.declare(SCALE_QUERIES, ["differential"])
                small.start()
                # the same absolute numbers of orders: 0.1 % and 1 % of the large base
                counts = [max(2, round(large.orders * s)) for s in shares[:2]]
                compare_scales(small, large, counts, repeats)
    report.notes.append(f"whole run {(time.perf_counter() - started) / 60:.1f} min")
    return report


# -- the report ----------------------------------------------------------------------------


def _fmt(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms >= 100:
        return f"{ms:,.0f}"
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _capped(timings: Sequence[Timing]) -> bool:
    """Whether the median is a refresh cancelled at the limit (or not run after one was):
    the time is then a lower bound."""
    stopped = sum(t.action in ("timeout", "skipped") for t in timings)
    return bool(timings) and 2 * stopped >= len(timings)


def _ratio(a: float | None, b: float | None, a_capped: bool = False, b_capped: bool = False) -> str:
    """a / b; when a is a lower bound the ratio is too ("> "), when b is, an upper ("< ")."""
    if a is None or b is None or b == 0:
        return "-"
    if a_capped and b_capped:
        return "?"
    r = a / b
    prefix = "> " if a_capped else "< " if b_capped else ""
    return prefix + (f"{r:,.0f}x" if r >= 10 else f"{r:.2f}x")


def _bound(ms: float | None, capped: bool) -> str:
    return f"> {_fmt(ms)}" if capped else _fmt(ms)


def markdown(report: Report) -> str:
    m = report.machine
    out = [
        f"## {m.get('date', '?')} — TPC-H SF {report.scale:g}, {m.get('cores')} cores,"
        f" {m.get('ram')}, {m.get('cpu')}, Python {m.get('python')},"
        f" PostgreSQL {m.get('postgresql')}, psycopg {m.get('psycopg')}",
        "",
        f"Server settings: {m.get('settings')}; load average at start {m.get('load')}.",
        "",
        *[f"- {line}" for line in report.setup],
        "",
        *[f"- {line}" for line in report.modes],
        "",
        f"Medians of {report.repeats} repeats, ms. Differential phases are stage / apply.",
        "",
        "| query | changed orders | lineitems | differential (stage / apply) | full | REFRESH MV"
        " | auto (what it did) | MV / diff | full / diff | auto / min(diff, full) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in report.cells:
        diff, full = c.median("differential"), c.median("full")
        mv, auto = c.median("matview"), c.median("auto")
        best = min((x for x in (diff, full) if x is not None), default=None)
        cd, cf, cm, ca = (c.capped(x) for x in ("differential", "full", "matview", "auto"))
        cb = (cd if best == diff else cf) if best is not None else False
        topk = " (TopK)" if c.query in TOPK else ""
        diff_actions = c.actions("differential")
        plain = f"{len(c.timings['differential'])} diff"
        fell_back = f" [{diff_actions}]" if diff_actions not in ("", plain) else ""
        lines = statistics.median(c.lines) if c.lines else 0
        out.append(
            f"| {c.query}{topk} | {c.orders:,} ({c.share:.1%}) | {lines:,.0f}"
            f" | {_bound(diff, cd)} ({_fmt(c.phase('differential', 'stage'))}"
            f" / {_fmt(c.phase('differential', 'apply'))}){fell_back}"
            f" | {_bound(full, cf)} | {_fmt(mv)} | {_bound(auto, ca)} ({c.actions('auto')})"
            f" | {_ratio(mv, diff, cm, cd)} | {_ratio(full, diff, cf, cd)}"
            f" | {_ratio(auto, best, ca, cb)} |"
        )
    if report.scale_rows:
        out += [
            "",
            f"Differential refresh, SF {report.small_scale:g} against SF {report.scale:g},"
            " the same changed orders (medians, ms, stage / apply):",
            "",
            f"| query | changed orders | SF {report.small_scale:g} | SF {report.scale:g} | ratio |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in report.scale_rows:
            small = statistics.median(t.ms for t in r.small) if r.small else None
            large = statistics.median(t.ms for t in r.large) if r.large else None
            cs, cl = _capped(r.small), _capped(r.large)
            out.append(
                f"| {r.query} | {r.orders:,} | {_bound(small, cs)} ({_phases(r.small)})"
                f" | {_bound(large, cl)} ({_phases(r.large)}) | {_ratio(large, small, cl, cs)} |"
            )
    out += ["", *targets(report)]
    if report.errors:
        out += ["", "Errors:", "", *[f"- {e}" for e in report.errors]]
    out += ["", *report.notes, "", "Every refresh (ms, in the order run):", ""]
    for c in report.cells:
        samples = "; ".join(
            f"{x} " + ", ".join(_sample(t, x) for t in c.timings[x]) for x in METHODS
        )
        out.append(f"- {c.query} {c.share:.1%}: {samples}")
    for r in report.scale_rows:
        out.append(
            f"- scale {r.query} {r.orders:,}: small "
            + ", ".join(_sample(t, "differential") for t in r.small)
            + "; large "
            + ", ".join(_sample(t, "differential") for t in r.large)
        )
    return "\n".join(out)


def _sample(t: Timing, method: str) -> str:
    expected = "differential" if method == "auto" else method
    tag = "" if t.action == expected else f" {t.action}"
    return f"{t.ms:,.0f}{tag}"


def _phases(timings: Sequence[Timing]) -> str:
    stage = [t.stage_ms for t in timings if t.stage_ms is not None]
    apply_ = [t.apply_ms for t in timings if t.apply_ms is not None]
    if not stage or not apply_:
        return "-"
    return f"{_fmt(statistics.median(stage))} / {_fmt(statistics.median(apply_))}"


def targets(report: Report) -> list[str]:
    """Each target, and the cells that miss it."""
    lines = []

    def check(title: str, misses: list[str], checked: int) -> None:
        if not checked:
            lines.append(f"- {title}: not measured (no cell in this run)")
            return
        verdict = "met" if not misses else f"NOT met ({len(misses)} of {checked})"
        lines.append(f"- {title}: {verdict}" + (f": {', '.join(misses)}" if misses else ""))

    at = {s: [c for c in report.cells if c.share == s] for s in {c.share for c in report.cells}}
    misses: list[str] = []
    cells = at.get(0.001, [])
    for c in cells:
        diff, mv = c.median("differential"), c.median("matview")
        if diff is None or mv is None or mv / diff < 20:
            misses.append(f"{c.query} {_ratio(mv, diff, False, c.capped('differential'))}")
    check("at 0.1 %, differential ≥ 20x faster than REFRESH MATERIALIZED VIEW", misses, len(cells))
    misses = []
    cells = at.get(0.01, [])
    for c in cells:
        diff, mv = c.median("differential"), c.median("matview")
        if diff is None or mv is None or mv / diff < 10:
            misses.append(f"{c.query} {_ratio(mv, diff, False, c.capped('differential'))}")
    check("at 1 %, differential ≥ 10x faster than REFRESH MATERIALIZED VIEW", misses, len(cells))
    misses = []
    for c in report.cells:
        diff, full, auto = c.median("differential"), c.median("full"), c.median("auto")
        best = min((x for x in (diff, full) if x is not None), default=None)
        if auto is None or best is None or auto > 1.1 * best:
            capped = c.capped("differential" if best == diff else "full")
            misses.append(f"{c.query} {c.share:.1%} {_ratio(auto, best, c.capped('auto'), capped)}")
    check(
        "auto never more than 10 % slower than the faster of differential and full",
        misses,
        len(report.cells),
    )
    misses = []
    for r in report.scale_rows:
        small = statistics.median(t.ms for t in r.small) if r.small else None
        large = statistics.median(t.ms for t in r.large) if r.large else None
        if small is None or large is None or large > 1.5 * small:
            ratio = _ratio(large, small, _capped(r.large), _capped(r.small))
            misses.append(f"{r.query} {r.orders:,} orders {ratio}")
    check("10x the base, the same changes: ≤ 1.5x the time", misses, len(report.scale_rows))
    return lines
