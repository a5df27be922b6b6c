"""TPC-H data, reproducible: generated once per scale factor by ``tpchgen-cli``, loaded by COPY.

``tpchgen-cli`` (a PyPI wheel holding a Rust port of the reference ``dbgen``) is
deterministic: one scale factor and one version of it give the same rows on every machine, so
a failure can be replayed anywhere. Its files are cached, keyed by scale factor and generator
version, in ``$PGTRICKLE_CACHE/tpch`` (by default
``/var/tmp/pgtrickle/tpch``, beside the cached server binaries): outside the repository, so
nothing needs ignoring, and shared by every pytest-xdist worker. A worker generates into a
directory of its own and renames it into place, so the others see all the files or none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

CI_SCALE = 0.01
"""The scale factor of the default suite, the smallest that works: below 0.01 the generator's
partsupp rows repeat (part, supplier) pairs (too few suppliers for its formula), which the
primary key refuses; at 0.01 every query has an answer (two with adjusted parameters, see
``queries.py``) and the data loads in about a second."""

TABLES = ("region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem")
SCHEMA = Path(__file__).with_name("schema.sql")
DEFAULT_CACHE = Path(os.environ.get("PGTRICKLE_CACHE", "/var/tmp/pgtrickle")) / "tpch"
_COPY_CHUNK = 1 << 20


def generator() -> Path:
    """The ``tpchgen-cli`` binary: beside the running interpreter (a virtual environment's
    ``bin/`` need not be on PATH), else on PATH."""
    beside = Path(sys.executable).with_name("tpchgen-cli")
    if beside.exists():
        return beside
    found = shutil.which("tpchgen-cli")
    if found is None:
        raise RuntimeError("tpchgen-cli is not installed: pip install -e '.[dev]'")
    return Path(found)


def generate(scale: float, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The directory holding ``<table>.csv`` for ``scale``, generated on first use."""
    target = cache_dir / f"sf{scale:g}-tpchgen-{version('tpchgen-cli')}"
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    try:
        command = [str(generator()), "csv", "-s", f"{scale:g}", "-o", str(staging), "--quiet"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        missing = [t for t in TABLES if not (staging / f"{t}.csv").is_file()]
        if done.returncode != 0 or missing:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the files from other users
        # a rename onto a directory another worker renamed first fails: theirs is as good
        with contextlib.suppress(OSError):
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def create_schema(conn: psycopg.Connection[Any]) -> None:
    conn.execute(SCHEMA.read_bytes())


def copy_table(conn: psycopg.Connection[Any], table: str, path: Path) -> None:
    """COPY one generated file; its header names the columns, and the server checks them."""
    statement = sql.SQL("COPY {} FROM STDIN (FORMAT csv, HEADER match)").format(
        sql.Identifier(table)
    )
    with conn.cursor().copy(statement) as copy, path.open("rb") as source:
        while chunk := source.read(_COPY_CHUNK):
            copy.write(chunk)


def load(dsn: str, scale: float = CI_SCALE, cache_dir: Path = DEFAULT_CACHE) -> None:
    """Create the TPC-H tables in ``dsn``'s database and fill them at ``scale``, then ANALYZE:
    without statistics the planner guesses the tables' sizes, and plans the joins of up to
    eight tables (and the stream tables' refreshes) for data that is not there."""
    files = generate(scale, cache_dir)
    with psycopg.connect(dsn) as conn:
        create_schema(conn)
        for table in TABLES:
            copy_table(conn, table, files / f"{table}.csv")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(map(sql.Identifier, TABLES))))
