"""The ``pgtrickle`` command.

Every command finds its database in ``--dsn``, else ``$PGTRICKLE_DSN``, else the ``dsn:`` of
the declarations file (``--config``, by default ``pgtrickle.yaml`` when it exists), and
prints JSON with ``--json``. An error is printed with its code, DETAIL and HINT (as JSON with
``--json``), never as a traceback, and sets the exit status listed in ``EXIT_STATUSES``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psycopg
import structlog

from pgtrickle import logs
from pgtrickle.errors import EXIT_INTERNAL, InternalError, InvalidDeclaration, PgTrickleError
from scheduler.errors import EXIT_TIMEOUT
from walstream.dsn import connect, connection_failed, redact
from walstream.errors import EXIT_UNAVAILABLE, DatabaseError, MissingPrivilege

log = structlog.get_logger("pgtrickle.cli")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EXIT_STATUSES: dict[int, str] = {
    EXIT_OK: "done",
    EXIT_ERROR: "refused or failed (the message says why)",
    EXIT_USAGE: "usage error (unknown command or option)",
    EXIT_TIMEOUT: "`wait` timed out",
    EXIT_UNAVAILABLE: "cannot connect to the database",
    EXIT_INTERNAL: "internal error (a bug: please report it)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

DEFAULT_CONFIG = "pgtrickle.yaml"

APPLY_GUARANTEE = (
    "apply is all or nothing: every stream table it touches is created, re-created, altered "
    "or dropped, or none is. A re-created stream table is built beside the old one and swapped "
    "in at the end; if anything fails, the old one is untouched and keeps refreshing. Stream "
    "tables no longer declared are dropped only with --prune (or after a yes on a terminal)."
)


def package_version() -> str:
    try:
        return version("pgtrickle")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dsn",
        help="libpq connection string or URI (default: $PGTRICKLE_DSN, then dsn: in --config)",
    )
    common.add_argument(
        "--config",
        "-c",
        help=f"the declarations file, for its dsn: (default: {DEFAULT_CONFIG} if it exists)",
    )
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument(
        "--log-level",
        default=os.environ.get("PGTRICKLE_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="how much to log on stderr (default: info, or $PGTRICKLE_LOG_LEVEL)",
    )

    statuses = "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_STATUSES.items())
    parser = argparse.ArgumentParser(
        prog="pgtrickle",
        description="Stream tables for PostgreSQL, maintained from logical replication.",
        epilog=f"exit statuses:\n{statuses}\n\n`pgtrickle COMMAND --help` describes a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pgtrickle {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str | None = None) -> Any:
        return sub.add_parser(
            name,
            parents=[common],
            help=summary,
            description=description or summary,
            epilog=f"exit statuses:\n{statuses}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    run = command(
        "run",
        "run the daemon: capture changes and keep every stream table fresh",
        "Run the daemon: read the replication slot into the change buffers and refresh each"
        " stream table soon after its sources change, and on its schedule. Ctrl-C or SIGTERM"
        " stops it.",
    )
    run.add_argument("--workers", type=_positive, default=2, help="refresh workers (default 2)")

    apply = command(
        "apply",
        "reconcile the declarations file with the catalog (create, re-create, alter, drop)",
        "Reconcile the stream tables declared in --config with the catalog. " + APPLY_GUARANTEE,
    )
    apply.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and every side effect on the database, change nothing",
    )
    apply.add_argument(
        "--prune",
        action="store_true",
        help="drop stream tables (and their data) that the file no longer declares",
    )

    command("status", "show each stream table's mode, status, rows, staleness and last error")

    refresh = command(
        "refresh",
        "refresh one stream table now (with or without the daemon running)",
    )
    refresh.add_argument("name", help="the stream table, as schema.name or name")
    refresh.add_argument("--full", action="store_true", help="recompute instead of a delta")

    explain = command(
        "explain", "show a stream table's compiled plan, effective refresh mode and why"
    )
    explain.add_argument("name", help="the stream table, as schema.name or name")

    wait = command(
        "wait",
        "block until every stream table has caught up with the WAL position at the call",
    )
    wait.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds (default 60)")

    command("migrate", "create or upgrade the pgtrickle catalog schema in the database")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


# -- running a command ------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    with _quiet_on_closed_pipe():
        try:
            args = _parser().parse_args(argv)
        except SystemExit as exit_:  # --help, --version, usage errors: argparse printed it
            return int(exit_.code or 0)
        logs.configure(args.log_level, json=True if args.json else None)
        try:
            return int(_COMMANDS[args.command](args))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except PgTrickleError as exc:
            return _report(args, exc)
        except psycopg.OperationalError as exc:
            return _report(args, connection_failed(_dsn_or_blank(args), exc))
        except psycopg.Error as exc:
            return _report(args, _database_error(exc))
        except Exception as exc:
            log.debug("internal error", exc_info=True)
            return _report(
                args,
                InternalError(
                    f"internal error: {type(exc).__name__}: {exc}",
                    detail="pgtrickle did not expect this; nothing it reports otherwise is lost",
                    hint="please report it, with the output of the same command run with"
                    " --log-level debug",
                ),
            )
    return EXIT_OK  # only reached when the pipe closed


@contextlib.contextmanager
def _quiet_on_closed_pipe() -> Iterator[None]:
    """``pgtrickle status | head -1``: a reader that goes away ends the command quietly."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at nothing so that it says nothing
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _report(args: argparse.Namespace, exc: PgTrickleError) -> int:
    if args.json:
        data = {k: redact(v) if v else v for k, v in exc.as_dict().items()}
        print(json.dumps({"error": data}, indent=2))
    else:
        print(f"error {exc.code}: {redact(str(exc))}", file=sys.stderr)
    return exc.exit_code


def _database_error(exc: psycopg.Error) -> PgTrickleError:
    diag = exc.diag
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return MissingPrivilege(
            f"this role may not do that: {diag.message_primary or str(exc).strip()}",
            detail=diag.message_detail or f"SQLSTATE {diag.sqlstate}",
            hint="connect as the role that ran `pgtrickle apply`, or grant this one what the"
            " message names (for the catalog: GRANT USAGE ON SCHEMA pgtrickle and SELECT ON ALL"
            " TABLES IN SCHEMA pgtrickle)",
        )
    return DatabaseError(
        f"the server refused a statement: {diag.message_primary or str(exc).strip()}",
        detail=diag.message_detail or (f"SQLSTATE {diag.sqlstate}" if diag.sqlstate else None),
        hint=diag.message_hint or "`pgtrickle status` shows the state of every stream table",
    )


# -- where the database is ----------------------------------------------------------------


def _config(args: argparse.Namespace) -> Path | None:
    """The declarations file: --config, else ./pgtrickle.yaml when it exists."""
    if args.config:
        return Path(args.config)
    default = Path(DEFAULT_CONFIG)
    return default if default.exists() else None


def _dsn(args: argparse.Namespace, file_dsn: str | None = None) -> str:
    """--dsn, else $PGTRICKLE_DSN, else ``file_dsn`` or the dsn: of the declarations file."""
    dsn = args.dsn or os.environ.get("PGTRICKLE_DSN") or file_dsn
    config = _config(args)
    if not dsn and config is not None and file_dsn is None:
        from pgtrickle.declarations import load_declarations

        dsn = load_declarations(config).dsn
    if not dsn:
        where = f" (its dsn: in {config} is not set)" if config else ""
        raise InvalidDeclaration(
            f"no database to connect to{where}",
            detail="every command needs the connection string of the database it works on",
            hint="pass --dsn, set PGTRICKLE_DSN, or put dsn: in the declarations file"
            f" (--config, by default {DEFAULT_CONFIG})",
        )
    return str(dsn)


def _dsn_or_blank(args: argparse.Namespace) -> str:
    try:
        return _dsn(args)
    except PgTrickleError:
        return ""


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)


# -- commands ---------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from scheduler.daemon import Daemon, DaemonOptions
    from walstream.server import check_capture, server_facts

    dsn = _dsn(args)
    with connect(dsn, autocommit=True) as conn:
        check_capture(server_facts(conn))
    daemon = Daemon(dsn, DaemonOptions(workers=args.workers))
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: daemon.stop())
    daemon.run()
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from pgtrickle.declarations import load_declarations
    from pgtrickle.reconcile import ChangeKind, apply

    decls = load_declarations(_config(args) or Path(DEFAULT_CONFIG))
    plan = apply(
        _dsn(args, decls.dsn),
        decls,
        dry_run=args.dry_run,
        prune=args.prune,
        confirm_drop=_confirm_drop,
    )
    changes = [c for c in plan.changes if c.kind is not ChangeKind.UNCHANGED or args.dry_run]
    lines = []
    for c in changes:
        line = f"{c.kind.value:>9}  {c.name}"
        if c.reasons:
            line += f"  ({', '.join(c.reasons)})"
        if c.effective_mode:
            line += f"  [effective: {c.effective_mode.value}]"
        if c.kind is ChangeKind.DROP and args.dry_run and not args.prune:
            line += "  (needs --prune: its data is dropped)"
        lines.append(line)
    effects = [f"  - {e.description}" for e in plan.side_effects]
    header = "plan (dry run, nothing was changed):" if args.dry_run else "applied:"
    text = "\n".join([header, *lines] if lines else [f"{header} nothing to do"])
    if effects:
        text += "\n\nside effects on the database:\n" + "\n".join(effects)
    _print(
        args,
        {
            "dry_run": args.dry_run,
            "changes": [c.as_dict() for c in plan.changes],
            "side_effects": [e.as_dict() for e in plan.side_effects],
        },
        text,
    )
    return EXIT_OK


def _confirm_drop(names: Sequence[str]) -> bool:
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    print(
        f"apply would drop {len(names)} stream table(s) no longer declared, with their data:"
        f" {', '.join(names)}",
        file=sys.stderr,
    )
    # the question goes where the user looks (stdout may be a file or a pipe)
    print("drop them? [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_status(args: argparse.Namespace) -> int:
    from pgtrickle.status import reader_state, stream_table_states

    with connect(_dsn(args), autocommit=True) as conn:
        rows = stream_table_states(conn)
        reader = reader_state(conn)
    if args.json:
        _print(
            args,
            {"reader": reader.as_json(), "stream_tables": [r.as_json() for r in rows]},
            "",
        )
        return EXIT_OK
    if reader.confirmed_lsn:
        retained = (reader.retained_wal_bytes or 0) / 1048576
        print(
            f"reader: {'streaming' if reader.reader_active else 'not running'},"
            f" confirmed {reader.confirmed_lsn}, WAL held by the slot: {retained:.1f} MiB\n"
        )
    if not rows:
        print("no stream tables")
        return EXIT_OK
    head = ("stream table", "mode", "status", "rows", "staleness", "last refresh")
    table = [
        (
            r.name,
            r.effective_refresh_mode.value,
            r.status.value,
            str(r.rows) if r.rows is not None else "?",
            f"{r.staleness_seconds:.3f}s" if r.staleness_seconds is not None else "-",
            str(r.last_refresh_at or "-")[:23],
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *table]) for i in range(len(head))]
    for line in [head, *table]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    for r in rows:
        if r.last_error:
            print(f"\n{r.name}: {r.last_error}")
    return EXIT_OK


def cmd_refresh(args: argparse.Namespace) -> int:
    from scheduler.refresh import Refresher
    from scheduler.suspend import SchemaChangeHandler
    from walstream.catalog import get_stream_table
    from walstream.migrate import check_current
    from walstream.position import SlotPosition

    dsn = _dsn(args)
    with connect(dsn, autocommit=True) as conn:
        check_current(conn)
        st = get_stream_table(conn, args.name)
    position = SlotPosition(dsn, on_schema_change=SchemaChangeHandler(dsn))
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
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from dvm.dialect import parse_one, render_pretty
    from walstream.catalog import get_stream_table
    from walstream.migrate import check_current

    with connect(_dsn(args), autocommit=True) as conn:
        check_current(conn)
        st = get_stream_table(conn, args.name)
    plan = st.plan
    data = {
        "stream_table": st.display_name,
        "query": st.query,
        "normalized_query": plan.query,
        "refresh_mode": st.refresh_mode.value,
        "effective_refresh_mode": st.effective_refresh_mode.value,
        "fallback_reason": st.fallback_reason,
        "differentiable": plan.differentiable,
        "apply_strategy": plan.apply_strategy.value,
        "reasons": [reason.to_json() for reason in plan.reasons],
        "plan": plan.explain,
        "aggregates": [
            {"call": call, "class": kind, "why": why} for call, kind, why in plan.aggregates
        ],
        "delta_query": plan.delta_query,
        "guard_query": plan.guard_query,
    }
    text = [
        f"stream table: {st.display_name}",
        f"refresh mode: {st.refresh_mode} (effective: {st.effective_refresh_mode})",
    ]
    if st.fallback_reason:
        text.append(f"fallback reason: {st.fallback_reason}")
    text += ["", plan.explain]
    if plan.delta_query is not None:
        per_refresh = (
            " (valid whatever changed; each refresh compiles it again for the sources that"
            " staged rows, which reads the others as their tables)"
            if plan.catalog is not None
            else ""
        )
        text += ["", f"delta SQL{per_refresh}:", render_pretty(parse_one(plan.delta_query))]
    _print(args, data, "\n".join(text))
    return EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    from scheduler.progress import wait_caught_up

    tables = wait_caught_up(_dsn(args), args.timeout)
    _print(
        args,
        {"caught_up": [st.display_name for st in tables]},
        f"caught up: {len(tables)} stream table(s)",
    )
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from walstream.migrate import migrate

    applied = migrate(_dsn(args))
    names = [f"{m.version:04d}_{m.name}" for m in applied]
    _print(args, {"applied": names}, "applied: " + (", ".join(names) or "nothing (up to date)"))
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
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
