"""The ``pgtrickle`` command.

Every command takes ``--dsn`` (or ``PGTRICKLE_DSN``; ``apply`` also reads ``dsn:`` from the
file) and prints JSON with ``--json``. Errors go to stderr with their DETAIL and HINT, and the
exit status is 1 (2 for a usage error, 3 for a ``wait`` that timed out).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import psycopg

from walstream import logs
from walstream.errors import PgTrickleError, WaitTimeout

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", help="connection string (default: $PGTRICKLE_DSN)")
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument(
        "--log-level", default=os.environ.get("PGTRICKLE_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )  # fmt: skip

    parser = argparse.ArgumentParser(
        prog="pgtrickle",
        description="Stream tables for PostgreSQL, maintained from logical replication.",
        epilog="exit status: 0 done, 1 error, 2 usage error, 3 `wait` timed out",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="run the daemon")
    run.add_argument("--workers", type=int, default=2, help="refresh workers (default 2)")

    apply = sub.add_parser(
        "apply", parents=[common], help="reconcile pgtrickle.yaml with the catalog"
    )
    apply.add_argument("--config", "-c", default="pgtrickle.yaml", help="the YAML file")
    apply.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")

    sub.add_parser("status", parents=[common], help="every stream table's state")

    refresh = sub.add_parser("refresh", parents=[common], help="refresh one stream table now")
    refresh.add_argument("name")
    refresh.add_argument("--full", action="store_true", help="recompute instead of a delta")

    explain = sub.add_parser("explain", parents=[common], help="the compiled plan")
    explain.add_argument("name")

    wait = sub.add_parser(
        "wait", parents=[common],
        help="block until every stream table has caught up with the WAL position now",
    )  # fmt: skip
    wait.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")

    sub.add_parser("migrate", parents=[common], help="create or upgrade the catalog")
    return parser


def _dsn(args: argparse.Namespace, fallback: str | None = None) -> str:
    dsn = args.dsn or os.environ.get("PGTRICKLE_DSN") or fallback
    if not dsn:
        raise PgTrickleError(
            "no database to connect to",
            hint="pass --dsn, set PGTRICKLE_DSN, or put dsn: in pgtrickle.yaml",
        )
    return str(dsn)


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(args.log_level, json=True if args.json else None)
    try:
        return int(_COMMANDS[args.command](args))
    except WaitTimeout as exc:
        _report(args, exc)
        return EXIT_TIMEOUT
    except PgTrickleError as exc:
        _report(args, exc)
        return EXIT_ERROR
    except psycopg.OperationalError as exc:
        _report(
            args,
            PgTrickleError(
                "cannot connect to the database",
                detail=logs.redact(str(exc).strip()),
                hint="check --dsn / PGTRICKLE_DSN and that the server is running",
            ),
        )
        return EXIT_ERROR


def _report(args: argparse.Namespace, exc: PgTrickleError) -> None:
    if args.json:
        print(json.dumps({k: logs.redact(v) if v else v for k, v in exc.as_dict().items()}))
    else:
        print(f"error: {logs.redact(str(exc))}", file=sys.stderr)


# -- commands ---------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from scheduler.daemon import Daemon, DaemonOptions

    daemon = Daemon(_dsn(args), DaemonOptions(workers=args.workers))
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: daemon.stop())
    daemon.run()
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from walstream.apply import apply
    from walstream.declarations import load_declarations

    decls = load_declarations(args.config)
    changes = apply(_dsn(args, decls.dsn), decls, dry_run=args.dry_run)
    lines = [
        f"{c.kind.value:>9}  {c.name}"
        + (f"  ({', '.join(c.reasons)})" if c.reasons else "")
        + (f"  [effective: {c.effective_mode.value}]" if c.effective_mode else "")
        for c in changes
    ]
    header = "plan (dry run):" if args.dry_run else "applied:"
    _print(
        args,
        {"dry_run": args.dry_run, "changes": [c.as_dict() for c in changes]},
        "\n".join([header, *lines]) if lines else f"{header} nothing declared",
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from walstream.status import reader_status, status_rows

    dsn = _dsn(args)
    rows = status_rows(dsn)
    reader = reader_status(dsn)
    if args.json:
        _print(args, {"reader": reader, "stream_tables": rows}, "")
        return 0
    if reader.get("confirmed_lsn"):
        print(
            f"reader: {'streaming' if reader['reader_active'] else 'not running'},"
            f" confirmed {reader['confirmed_lsn']},"
            f" WAL held by the slot: {reader['retained_wal_bytes'] / 1048576:.1f} MiB\n"
        )
    if not rows:
        print("no stream tables")
        return 0
    head = ("stream table", "mode", "status", "rows", "staleness", "last refresh")
    table = [
        (
            r["name"],
            r["effective_refresh_mode"],
            r["status"],
            str(r["rows"]),
            f"{r['staleness_seconds']:.3f}s" if r["staleness_seconds"] is not None else "-",
            str(r["last_refresh_at"] or "-")[:23],
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *table]) for i in range(len(head))]
    for line in [head, *table]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    for r in rows:
        if r["last_error"]:
            print(f"\n{r['name']}: {r['last_error']}")
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    from scheduler.refresh import Refresher
    from walstream.catalog import get_stream_table
    from walstream.position import SlotPosition

    dsn = _dsn(args)
    with psycopg.connect(dsn, autocommit=True) as conn:
        st = get_stream_table(conn, args.name)
    position = SlotPosition(dsn)
    try:
        with Refresher(dsn, position) as refresher:
            result = refresher.refresh(st, full=args.full)
    finally:
        position.close()
    data = {
        "stream_table": st.display_name,
        "action": result.action.value,
        "delta_rows": result.delta_rows,
        "rows_changed": result.rows_changed,
        "timings_ms": {k.removesuffix("_ms"): round(v, 3) for k, v in result.timings.items()},
    }
    _print(
        args,
        data,
        f"{st.display_name}: {result.action.value}, {result.delta_rows} delta rows, "
        f"{result.rows_changed} rows changed in {result.timings.get('total_ms', 0):.1f} ms",
    )
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from walstream.catalog import get_stream_table

    with psycopg.connect(_dsn(args), autocommit=True) as conn:
        st = get_stream_table(conn, args.name)
    plan = st.plan
    data = {
        "stream_table": st.display_name,
        "query": st.query,
        "refresh_mode": st.refresh_mode,
        "effective_refresh_mode": st.effective_refresh_mode,
        "fallback_reason": st.fallback_reason,
        "differentiable": plan.get("differentiable"),
        "apply_strategy": plan.get("apply_strategy"),
        "reasons": plan.get("reasons", []),
        "plan": plan.get("explain"),
        "delta_query": plan.get("delta_query"),
    }
    text = [
        f"stream table: {st.display_name}",
        f"refresh mode: {st.refresh_mode} (effective: {st.effective_refresh_mode})",
    ]
    if st.fallback_reason:
        text.append(f"fallback reason: {st.fallback_reason}")
    text += [f"note: {r}" for r in plan.get("reasons", [])]
    text += ["", str(plan.get("explain", ""))]
    _print(args, data, "\n".join(text))
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    from scheduler.progress import wait_caught_up

    tables = wait_caught_up(_dsn(args), args.timeout)
    _print(
        args,
        {"caught_up": [st.display_name for st in tables]},
        f"caught up: {len(tables)} stream table(s)",
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from walstream.migrate import migrate

    applied = migrate(_dsn(args))
    names = [f"{m.version:04d}_{m.name}" for m in applied]
    _print(args, {"applied": names}, "applied: " + (", ".join(names) or "nothing (up to date)"))
    return 0


_COMMANDS = {
    "run": cmd_run,
    "apply": cmd_apply,
    "status": cmd_status,
    "refresh": cmd_refresh,
    "explain": cmd_explain,
    "wait": cmd_wait,
    "migrate": cmd_migrate,
}


if __name__ == "__main__":
    sys.exit(main())
