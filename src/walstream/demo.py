"""``./run demo``: a private PostgreSQL, a sample shop under load, three stream tables, live.

Everything it starts it stops again on Ctrl-C or after ``--duration`` seconds: the writers,
the daemon and the cluster (whose data directory is removed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from scheduler.daemon import Daemon
from walstream import logs
from walstream.apply import apply
from walstream.declarations import load_declarations
from walstream.devcluster import temporary_cluster
from walstream.status import status_rows
from walstream.workload import Writer, create_schema

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
    parser = argparse.ArgumentParser(prog="./run demo", description=__doc__)
    parser.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    parser.add_argument("--rate", type=float, default=40.0, help="writer transactions/s")
    args = parser.parse_args(argv)
    logs.configure("warning")

    cluster = temporary_cluster(prefix="pgtrickle-demo-")
    print(f"starting a private PostgreSQL in {cluster.base_dir} ...", flush=True)
    cluster.start()
    stop = threading.Event()
    daemon: Daemon | None = None
    threads: list[threading.Thread] = []
    try:
        dsn = cluster.create_database("shop")
        create_schema(dsn, customers=50, orders=20_000, events=1_000)
        workdir = Path(tempfile.mkdtemp(prefix="pgtrickle-demo-"))
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
        print("stopped: writers, daemon and the private PostgreSQL", flush=True)
    return 0


def _show(dsn: str, stop: threading.Event, duration: float | None) -> None:
    started = time.monotonic()
    live = sys.stdout.isatty()
    while not stop.is_set():
        if duration is not None and time.monotonic() - started >= duration:
            return
        try:
            rows = status_rows(dsn)
            with psycopg.connect(dsn, autocommit=True) as conn:
                counts = conn.execute(
                    "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM customers)"
                ).fetchone()
        except psycopg.Error as exc:
            print(f"(status unavailable: {exc})")
            stop.wait(1.0)
            continue
        orders = counts[0] if counts else "?"
        lines = [
            f"pgtrickle demo - {time.monotonic() - started:5.1f}s - orders: {orders}"
            " - Ctrl-C to stop",
            "",
            f"{'stream table':<20} {'mode':<13} {'status':<8} {'rows':>8} {'staleness':>10}"
            f"  last refresh",
        ]
        for r in rows:
            staleness = r["staleness_seconds"]
            shown = f"{staleness * 1000:.0f} ms" if staleness is not None else "-"
            lines.append(
                f"{r['name']:<20} {r['effective_refresh_mode']:<13} {r['status']:<8}"
                f" {r['rows']:>8} {shown:>10}"
                f"  {str(r['last_refresh_at'])[11:23] if r['last_refresh_at'] else '-'}"
            )
        if live:
            print("\x1b[H\x1b[2J" + "\n".join(lines), flush=True)
        else:
            print(" | ".join(lines[3:]), flush=True)
        stop.wait(0.5 if live else 1.0)


if __name__ == "__main__":
    sys.exit(main())
