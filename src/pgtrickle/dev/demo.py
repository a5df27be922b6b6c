"""``./run demo``: a private PostgreSQL, a sample shop under load, three stream tables, live.

Everything it starts it stops again on Ctrl-C (or SIGTERM, or a closed terminal) or after
``--duration`` seconds, and everything it creates it removes: the writers, the daemon, the
cluster and its data directory, and the declarations file it wrote.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from dvm.errors import PgTrickleError
from pgtrickle import logs
from pgtrickle.declarations import load_declarations
from pgtrickle.dev.cluster import ClusterError, stop_on_termination, temporary_cluster
from pgtrickle.dev.workload import Writer, create_schema
from pgtrickle.reconcile import apply
from pgtrickle.status import stream_table_states
from scheduler.daemon import Daemon

DEMO_YAML = """\
# The demo's stream tables: a filter, a join, and an aggregate over a join.
stream_tables:
  - name: big_orders
    query: SELECT id, customer_id, amount FROM orders WHERE amount > 90
    schedule: 1s
    refresh_mode: differential
  - name: order_regions
    query: >
      SELECT o.id, c.region, o.status, o.amount
      FROM orders o JOIN customers c ON c.id = o.customer_id
    schedule: 1s
    refresh_mode: differential
  - name: revenue_by_region
    query: >
      SELECT c.region, count(*) AS orders, sum(o.amount) AS revenue
      FROM orders o JOIN customers c ON c.id = o.customer_id
      GROUP BY c.region
    schedule: 1s
    refresh_mode: auto
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./run demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    parser.add_argument("--rate", type=float, default=40.0, help="writer transactions/s")
    args = parser.parse_args(argv)
    logs.configure("warning")
    stop_on_termination()
    try:
        return _run(args)
    except (ClusterError, PgTrickleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader of a pipe went away: stop quietly (and say nothing at exit either)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(args: argparse.Namespace) -> int:

    cluster = temporary_cluster(prefix="pgtrickle-demo-")
    workdir = Path(tempfile.mkdtemp(prefix="pgtrickle-demo-"))
    stop = threading.Event()
    daemon: Daemon | None = None
    threads: list[threading.Thread] = []
    try:
        print(f"starting a private PostgreSQL in {cluster.base_dir} ...", flush=True)
        cluster.start()
        dsn = cluster.create_database("shop")
        create_schema(dsn, customers=50, orders=20_000, events=1_000)
        config = workdir / "pgtrickle.yaml"
        config.write_text(DEMO_YAML)
        print(f"declared stream tables in {config}; running pgtrickle apply ...", flush=True)
        apply(dsn, load_declarations(config))

        daemon = Daemon(dsn)
        threads.append(threading.Thread(target=daemon.run, name="daemon", daemon=True))
        for seed in (1, 2):
            writer = Writer(dsn, seed=seed, rate=args.rate / 2, rollback_share=0.05)
            threads.append(threading.Thread(target=writer.run, args=(stop,), daemon=True))
        for thread in threads:
            thread.start()
        _show(dsn, stop, args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        if daemon is not None:
            daemon.stop()
        for thread in threads:
            thread.join(timeout=30)
        cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
        print("stopped and removed: writers, daemon, the private PostgreSQL", flush=True)
    return 0


def _show(dsn: str, stop: threading.Event, duration: float | None) -> None:
    started = time.monotonic()
    live = sys.stdout.isatty()
    if not live:
        print(
            "every second, per stream table: name, effective refresh mode, status, rows,"
            " staleness (time since its data was last current), time of its last refresh",
            flush=True,
        )
    while not stop.is_set():
        elapsed = time.monotonic() - started
        if duration is not None and elapsed >= duration:
            return
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                states = stream_table_states(conn)
                counts = conn.execute("SELECT count(*) FROM orders").fetchone()
        except psycopg.Error as exc:
            print(f"(status unavailable: {str(exc).strip()})", flush=True)
            stop.wait(1.0)
            continue
        orders = counts[0] if counts else "?"
        rows = [
            (
                s.name,
                s.effective_refresh_mode.value,
                s.status.value,
                str(s.rows),
                f"{s.staleness_seconds * 1000:.0f} ms" if s.staleness_seconds is not None else "-",
                s.last_refresh_at.strftime("%H:%M:%S.%f")[:12] if s.last_refresh_at else "-",
            )
            for s in states
        ]
        if live:
            lines = [
                f"pgtrickle demo - {elapsed:5.1f}s - orders: {orders} - Ctrl-C to stop",
                "",
                f"{'stream table':<20} {'mode':<13} {'status':<8} {'rows':>8} {'staleness':>10}"
                "  last refresh",
                *(f"{n:<20} {m:<13} {st:<8} {r:>8} {sl:>10}  {lr}" for n, m, st, r, sl, lr in rows),
            ]
            print("\x1b[H\x1b[2J" + "\n".join(lines), flush=True)
        else:
            shown = " | ".join(
                f"{n}: {m}, {st}, {r} rows, staleness {sl}, refreshed {lr}"
                for n, m, st, r, sl, lr in rows
            )
            print(f"{elapsed:5.1f}s orders={orders} | {shown}", flush=True)
        stop.wait(0.5 if live else 1.0)


if __name__ == "__main__":
    sys.exit(main())
