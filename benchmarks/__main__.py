"""`./run bench [latency|refresh|decode|tpch|all]`: the measured targets of docs/benchmarks.md.

- latency: commit-to-visible of a filter/project stream table at 20 commits/s, daemon running.
- refresh: differential against full refresh for 0.1% and 1% changes of a 1,000,000-row source.
- decode: the pure-Python pgoutput decoder on captured-shape Insert messages.
- tpch: TPC-H queries refreshed differentially, fully, by auto and by REFRESH MATERIALIZED
  VIEW after 0.1%, 1% and 10% changed orders, and differentially at two scales. It takes
  more than an hour at scale 1, so `all` leaves it out: run it on its own.
- floor: the least work any differential refresh of Q1, Q3, Q5, Q10 and Q18 must do (the
  changed rows read once and joined by index, nothing else), beside REFRESH MATERIALIZED
  VIEW, at 1% changed orders (``--shares``); not in `all` either.

Each runs on a private cluster it starts and removes.
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg

from benchmarks import decode_bench, floor_bench, tpch_bench
from pgtrickle import logs
from pgtrickle.declarations import parse_declarations
from pgtrickle.dev.cluster import LocalCluster, stop_on_termination, temporary_cluster
from pgtrickle.reconcile import apply
from scheduler.daemon import Daemon
from scheduler.refresh import Refresher
from walstream.catalog import get_stream_table
from walstream.reader import ChangeReader
from walstream.replication import parse_lsn


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def bench_latency(cluster: LocalCluster, seconds: float, rate: float) -> dict[str, float]:
    dsn = cluster.create_database("latency")
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE readings (id bigint PRIMARY KEY, sensor int, value numeric)")
    apply(
        dsn,
        parse_declarations(
            "stream_tables:\n  - name: hot\n    query: SELECT id, sensor, value * 2 AS v"
            " FROM readings WHERE value > 0\n    schedule: 1m\n    refresh_mode: differential\n"
        ),
    )
    daemon = Daemon(dsn)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    time.sleep(1.0)
    committed: dict[int, float] = {}
    seen: dict[int, float] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def poll() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set() or len(seen) < len(committed):
                with lock:
                    pending = [i for i in committed if i not in seen]
                if pending:
                    rows = conn.execute(
                        "SELECT id FROM hot WHERE id = ANY(%s)", (pending,)
                    ).fetchall()
                    now = time.perf_counter()
                    with lock:
                        for (i,) in rows:
                            seen[i] = now
                time.sleep(0.0005)
                if stop.is_set() and time.perf_counter() - stopped_at[0] > 10:
                    return

    stopped_at = [0.0]
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        n = int(seconds * rate)
        start = time.perf_counter()
        for i in range(1, n + 1):
            conn.execute("INSERT INTO readings VALUES (%s, %s, %s)", (i, i % 10, i))
            with lock:
                committed[i] = time.perf_counter()
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    stop.set()
    stopped_at[0] = time.perf_counter()
    poller.join()
    daemon.stop()
    thread.join()
    latencies = [(seen[i] - committed[i]) * 1000 for i in committed if i in seen]
    return {
        "commits": len(committed),
        "visible": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
    }


def bench_refresh(cluster: LocalCluster, rows: int, repeats: int) -> list[dict[str, object]]:
    dsn = cluster.create_database("refresh")
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, price numeric NOT NULL,"
            " qty int NOT NULL)"
        )
        conn.execute(
            "INSERT INTO items SELECT g, g %% 1000, (g %% 997) / 10.0, g %% 7"
            " FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE items")
    apply(
        dsn,
        parse_declarations(
            "stream_tables:\n"
            "  - name: priced\n    query: SELECT id, grp, price * qty AS total FROM items"
            " WHERE qty > 0\n    refresh_mode: differential\n"
            "  - name: by_group\n    query: SELECT grp, count(*) AS n, sum(price) AS s"
            " FROM items GROUP BY grp\n    refresh_mode: differential\n"
        ),
    )
    results: list[dict[str, object]] = []
    # a reader running beside the refreshes, as in the daemon
    reader = ChangeReader(dsn)
    reader_thread = threading.Thread(target=reader.run, daemon=True)
    reader_thread.start()
    with Refresher(dsn, reader) as refresher, psycopg.connect(dsn, autocommit=True) as conn:
        for name in ("priced", "by_group"):
            # catch up with what earlier rounds changed: each round then times its own changes
            refresher.refresh(get_stream_table(conn, name))
            for share in (0.001, 0.01):
                changed = int(rows * share)
                diff_ms, full_ms, wait_ms = [], [], []
                phases: list[dict[str, float]] = []
                for _ in range(repeats):
                    conn.execute(
                        "UPDATE items SET qty = qty + 1, grp = (grp + 1) %% 1000 WHERE id IN"
                        " (SELECT (random() * %s)::bigint + 1 FROM generate_series(1, %s))",
                        (rows - 1, changed),
                    )
                    # catch the reader up first: the benchmark times the refresh, not decoding
                    st = get_stream_table(conn, name)
                    conn.execute("SELECT pg_logical_emit_message(true, 'bench', '')")
                    lsn_row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
                    assert lsn_row is not None
                    reader.wait_for(parse_lsn(lsn_row[0]), 120)
                    result = refresher.refresh(st)
                    diff_ms.append(result.timings["total_ms"])
                    phases.append(result.timings)
                    wait_ms.append(result.timings.get("wait_ms", 0.0))
                    full = refresher.refresh(get_stream_table(conn, name), full=True)
                    full_ms.append(full.timings["total_ms"])
                results.append(
                    {
                        "stream_table": name,
                        "changed_rows": changed,
                        "differential_ms": statistics.median(diff_ms),
                        "full_ms": statistics.median(full_ms),
                        "speedup": statistics.median(full_ms) / statistics.median(diff_ms),
                        "wait_ms": statistics.median(wait_ms),
                        "differential_phases_ms": {
                            k.removesuffix("_ms"): round(statistics.median(p[k] for p in phases), 2)
                            for k in phases[0]
                            if k != "total_ms"
                        },
                    }
                )
    reader.stop()
    reader_thread.join()
    return results


def _memory(text: str) -> str:
    """A PostgreSQL memory setting such as ``2GB`` (refused otherwise, before a server is
    started with it)."""
    if re.fullmatch(r"[1-9][0-9]*(kB|MB|GB)", text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 512MB or 2GB")
    return text


def main(argv: list[str] | None = None) -> int:
    stop_on_termination()
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # the private clusters are removed on the way out
        print("interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="./run bench", description=__doc__)
    parser.add_argument(
        "which",
        nargs="?",
        default="all",
        choices=["latency", "refresh", "decode", "tpch", "floor", "all"],
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="latency run length")
    parser.add_argument("--rate", type=float, default=20.0, help="commits per second")
    parser.add_argument("--rows", type=int, default=1_000_000, help="refresh source rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="tpch scale factor (the scale check: and /10)"
    )
    parser.add_argument(
        "--queries",
        default=",".join(tpch_bench.DEFAULT_QUERIES),
        help="tpch queries, comma-separated",
    )
    parser.add_argument(
        "--shares",
        default=None,
        help="tpch and floor: shares of orders changed, comma-separated (tpch: "
        + ",".join(f"{s:g}" for s in tpch_bench.SHARES)
        + "; floor: 0.01)",
    )
    parser.add_argument(
        "--no-scale-check", action="store_true", help="tpch: skip the scale/10 comparison"
    )
    parser.add_argument(
        "--shared-buffers",
        type=_memory,
        help="tpch: the private server's shared_buffers (default 128MB, PostgreSQL's own)",
    )
    parser.add_argument(
        "--limit", type=float, default=60.0, help="tpch: seconds a stream table refresh may take"
    )
    args = parser.parse_args(argv)
    logs.configure("warning")
    if args.which == "tpch":
        report = tpch_bench.run(
            args.scale,
            args.repeats,
            [q.strip() for q in args.queries.split(",") if q.strip()],
            [float(s) for s in (args.shares or ",".join(map(str, tpch_bench.SHARES))).split(",")],
            scale_check=not args.no_scale_check,
            limit_s=args.limit,
            shared_buffers=args.shared_buffers,
        )
        print(tpch_bench.markdown(report))
        return 0
    if args.which == "floor":
        shares = [float(s) for s in args.shares.split(",")] if args.shares else [0.01]
        rows = floor_bench.run(args.scale, shares, args.repeats)
        print(floor_bench.markdown(rows))
        return 0
    print(
        f"# {datetime.now(UTC):%Y-%m-%d} on {platform.node()}: "
        f"{platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}"
    )
    runs: dict[str, Callable[[LocalCluster], object]] = {
        "latency": lambda c: bench_latency(c, args.seconds, args.rate),
        "refresh": lambda c: bench_refresh(c, args.rows, args.repeats),
    }
    for which, run in runs.items():
        if args.which not in (which, "all"):
            continue
        cluster = temporary_cluster(prefix="pgtrickle-bench-")
        cluster.start()
        try:
            print(f"PostgreSQL {cluster.server_version_num()}")
            result = run(cluster)
            print(f"{which}: {result}", flush=True)
        finally:
            cluster.destroy()
    if args.which in ("decode", "all"):
        print(f"decode: {decode_bench.run()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
