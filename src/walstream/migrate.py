"""Applies the numbered SQL files of ``migrations/`` to a database's ``pgtrickle`` catalog.

Each pending migration runs once, in order, in its own transaction together with the row that
records it; concurrent runners serialize on an advisory lock. A catalog that records a
migration this code does not know is newer than the code, and is refused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from walstream.dsn import connect
from walstream.errors import CatalogOutdated, CatalogTooNew, InvalidMigration
from walstream.locks import MIGRATION_LOCK

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def sql(self) -> str:
        return self.path.read_text()


def migrations_dir() -> Path:
    # src/walstream/migrations links to the repository's migrations/ (and is copied into
    # wheels), so this works from a checkout and from an installed package alike
    explicit = os.environ.get("PGTRICKLE_MIGRATIONS")
    return Path(explicit) if explicit else Path(__file__).resolve().parent / "migrations"


def known_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise InvalidMigration(
                f"migration file {path.name} is not named NNNN_name.sql",
                detail=f"in {directory}",
                hint="rename it, e.g. 0002_add_fuse.sql",
            )
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise InvalidMigration(
            f"two migrations share a version number in {directory}",
            detail=", ".join(sorted(p.name for p in directory.glob("*.sql"))),
            hint="give each migration a version of its own",
        )
    return found


def applied_versions(conn: psycopg.Connection[Any]) -> list[int]:
    # pg_class read with the statement's snapshot, not to_regclass(): a name looked up
    # earlier in the same transaction stays cached as missing until a lock is taken on it,
    # so a catalog another session created meanwhile would look absent
    exists = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'pgtrickle' AND c.relname = 'schema_migrations')"
    )
    row = exists.fetchone()
    if not row or not row[0]:
        return []
    rows = conn.execute("SELECT version FROM pgtrickle.schema_migrations ORDER BY version")
    return [int(r[0]) for r in rows.fetchall()]


def migrate(dsn: str, directory: Path | None = None) -> list[Migration]:
    """Bring the catalog up to date, one transaction per migration; returns those applied."""
    known = known_migrations(directory)
    applied_now: list[Migration] = []
    with connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            MIGRATION_LOCK.lock_for_transaction(conn)
            _check_not_newer(applied_versions(conn), known)
        for migration in known:
            with conn.transaction():
                MIGRATION_LOCK.lock_for_transaction(conn)
                if migration.version not in applied_versions(conn):
                    _run(conn, migration)
                    applied_now.append(migration)
    return applied_now


def apply_pending(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Apply every pending migration inside the caller's transaction (a dry run rolls it back:
    DDL is transactional)."""
    MIGRATION_LOCK.lock_for_transaction(conn)
    pending = pending_migrations(conn)
    for migration in pending:
        _run(conn, migration)
    return pending


def _run(conn: psycopg.Connection[Any], migration: Migration) -> None:
    conn.execute(
        "CREATE SCHEMA IF NOT EXISTS pgtrickle;"
        " CREATE TABLE IF NOT EXISTS pgtrickle.schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    conn.execute(migration.sql().encode())
    conn.execute(
        "INSERT INTO pgtrickle.schema_migrations (version, name) VALUES (%s, %s)",
        (migration.version, migration.name),
    )


def check_current(conn: psycopg.Connection[Any]) -> None:
    """Refuse to work on a catalog that is missing, behind, or ahead of this code."""
    known = known_migrations()
    applied = applied_versions(conn)
    _check_not_newer(applied, known)
    if not applied:
        raise CatalogOutdated(
            "this database has no pgtrickle catalog",
            detail="the pgtrickle schema is created by the first `pgtrickle apply`",
            hint="declare stream tables in pgtrickle.yaml and run `pgtrickle apply`, or check"
            " that --dsn names the database you meant",
        )
    missing = [m.version for m in known if m.version not in applied]
    if missing:
        raise CatalogOutdated(
            "the pgtrickle catalog is not up to date",
            detail=f"migrations not applied: {', '.join(map(str, missing))}",
            hint="run `pgtrickle migrate` (or `pgtrickle apply`) against this database first",
        )


def pending_migrations(conn: psycopg.Connection[Any]) -> list[Migration]:
    """What ``migrate`` would apply now (reads only)."""
    known = known_migrations()
    applied = applied_versions(conn)
    _check_not_newer(applied, known)
    return [m for m in known if m.version not in applied]


def _check_not_newer(applied: list[int], known: list[Migration]) -> None:
    newest_known = max((m.version for m in known), default=0)
    unknown = [v for v in applied if v > newest_known]
    if unknown:
        raise CatalogTooNew(
            "the pgtrickle catalog is newer than this version of pgtrickle",
            detail=(
                f"the database records migration {max(unknown)}; "
                f"this code knows migrations up to {newest_known}"
            ),
            hint="upgrade pgtrickle to the version that created this catalog",
        )
