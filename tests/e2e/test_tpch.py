"""The TPC-H correctness gate: the 22 queries as stream tables, equal to their queries after
every round of refresh functions and random updates by two concurrent writers.

``PGTRICKLE_TPCH_MODE`` is the refresh_mode declared for all of them (default
``differential``: then each must also be maintained differentially, not fall back).
``PGTRICKLE_TPCH_SEED`` replays a run: the seed is printed first. ``PGTRICKLE_TPCH_QUERIES``
(``q01,q06``) declares only those. With ``PGTRICKLE_CHECK_REFRESH=1`` as well, every refresh
compares itself with its query, and the first that goes wrong fails (its error is the stream
table's last error).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
import pytest
import yaml

from dvm.errors import PgTrickleError
from pgtrickle.declarations import parse_declarations
from pgtrickle.reconcile import apply
from scheduler.errors import WaitTimeout
from scheduler.progress import wait_caught_up
from tests.fixtures.cluster import Database
from tests.fixtures.streams import mismatched, refresh_errors, running_daemon
from tests.tpch import workload
from tests.tpch.data import CI_SCALE, load
from tests.tpch.queries import QUERIES

MODE_VARIABLE = "PGTRICKLE_TPCH_MODE"
SEED_VARIABLE = "PGTRICKLE_TPCH_SEED"
QUERIES_VARIABLE = "PGTRICKLE_TPCH_QUERIES"
CATCH_UP_TIMEOUT = 180.0
"""Seconds a round's changes may take to reach every stream table."""


def declarations(mode: str, names: Sequence[str] = tuple(QUERIES)) -> str:
    """The YAML declaring each query as a stream table of its id, refreshed every second."""
    tables = [
        {"name": name, "query": QUERIES[name], "schedule": "1s", "refresh_mode": mode}
        for name in names
    ]
    return yaml.safe_dump({"stream_tables": tables}, sort_keys=False)


@dataclass
class Gate:
    """One run: TPC-H in ``dsn``'s database, the stream tables, the rounds so far."""

    dsn: str
    mode: str
    seed: int
    names: tuple[str, ...]
    log: list[str] = field(default_factory=list)

    @property
    def rerun(self) -> str:
        only = f" {QUERIES_VARIABLE}={','.join(self.names)}" if self.names != tuple(QUERIES) else ""
        return f"rerun with {SEED_VARIABLE}={self.seed} {MODE_VARIABLE}={self.mode}{only}"

    def declare(self) -> None:
        """Apply them all at once; if apply refuses, find every query it refuses, not only
        the first (apply is all or nothing, and stops at the first)."""
        try:
            apply(self.dsn, parse_declarations(declarations(self.mode, self.names)))
            return
        except PgTrickleError as error:
            refused = error.message
        refusals = self.refusals() or {"(all of them)": refused}
        pytest.fail(
            f"apply refused {len(refusals)} of {len(self.names)} queries in mode {self.mode}:\n"
            + "\n".join(f"  {name}: {why}" for name, why in refusals.items())
            + f"\n{self.rerun}",
            pytrace=False,
        )

    def refusals(self) -> dict[str, str]:
        """Each query that a dry run of its declaration alone refuses, with the reason."""
        out = {}
        for name in self.names:
            try:
                apply(self.dsn, parse_declarations(declarations(self.mode, [name])), dry_run=True)
            except PgTrickleError as error:
                why = error.message.split(f'"{name}": ', 1)[-1]
                out[name] = f"{why} ({error.detail})" if error.detail else why
        return out

    def check_modes(self) -> None:
        if self.mode != "differential":
            return
        fallen = {n: m for n, _, _, m in self.statuses() if m != "differential"}
        assert not fallen, f"declared differential, maintained otherwise: {fallen}"

    def statuses(self) -> list[tuple[str, str, str | None, str]]:
        """(name, status, last error, effective refresh mode) of each stream table."""
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(
                "SELECT name, status, last_error, effective_refresh_mode"
                " FROM pgtrickle.stream_tables ORDER BY name"
            ).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def wait(self) -> str | None:
        """Wait until every stream table has caught up: None, or why it did not. A stream
        table whose refresh failed three times in a row (a mismatch in check mode) will not
        catch up, so the wait ends then rather than at the timeout."""
        deadline = time.monotonic() + CATCH_UP_TIMEOUT
        while True:
            try:
                wait_caught_up(self.dsn, timeout=min(5.0, max(deadline - time.monotonic(), 0)))
                return None
            except WaitTimeout as error:
                if time.monotonic() >= deadline or self.failing():
                    return str(error)
            except PgTrickleError as error:
                return str(error)

    def failing(self) -> bool:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pgtrickle.stream_tables"
                " WHERE status = 'error' AND consecutive_errors >= 3"
            ).fetchone()
        return row is not None and row[0] > 0

    def check(self, round_number: int, rounds: int) -> None:
        """After a round: every stream table caught up, active, and equal to its query."""
        started = time.monotonic()
        waited = self.wait()
        outcome = "caught up" if waited is None else "did not catch up"
        self.log.append(f"round {round_number}: {outcome} in {time.monotonic() - started:.1f} s")
        wrong = mismatched(self.dsn)
        inactive = [s for s in self.statuses() if s[1] != "active"]
        if waited is None and not wrong and not inactive:
            return
        lines = [f"TPC-H gate, mode {self.mode}, seed {self.seed}: round {round_number}/{rounds}"]
        if waited is not None:
            lines.append(f"not caught up: {waited}")
        if wrong:
            lines.append(f"{len(wrong)} stream tables differ from their queries:")
            for name, (extra, missing) in sorted(wrong.items()):
                lines.append(f"  {name}: {extra} rows extra, {missing} rows missing")
        if inactive:
            lines.append(f"{len(inactive)} stream tables are not active:")
            for name, status, last_error, mode in inactive:
                lines.append(f"  {name}: {status} ({mode}): {_first_line(last_error)}")
        errors = refresh_errors(self.dsn)
        if errors:
            first, why = errors[0]
            lines.append(f"{len(errors)} refreshes failed, the first {first}: {_first_line(why)}")
        lines += [*self.log, self.rerun]
        pytest.fail("\n".join(lines), pytrace=False)


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0]


def tpch_seed() -> int:
    seed = int(os.environ.get(SEED_VARIABLE) or random.randrange(1 << 30))
    print(f"TPC-H seed {seed} (rerun with {SEED_VARIABLE}={seed})", flush=True)
    return seed


def chosen_queries() -> tuple[str, ...]:
    """All 22, or those ``PGTRICKLE_TPCH_QUERIES`` names (``q03,q10``): one at a time is
    easier to follow while a compiler rule is being written."""
    names = tuple(n.strip() for n in os.environ.get(QUERIES_VARIABLE, "").split(",") if n.strip())
    unknown = sorted(set(names) - set(QUERIES))
    assert not unknown, f"{QUERIES_VARIABLE} names no such query: {', '.join(unknown)}"
    return names or tuple(QUERIES)


def run_gate(db: Database, *, rounds: int, orders: int, updates: int) -> None:
    mode = os.environ.get(MODE_VARIABLE, "differential")
    gate = Gate(db.dsn, mode, tpch_seed(), chosen_queries())
    rng = random.Random(gate.seed)
    started = time.monotonic()
    load(db.dsn, CI_SCALE)
    loaded = time.monotonic()
    gate.declare()
    gate.log.append(
        f"loaded scale {CI_SCALE} in {loaded - started:.1f} s,"
        f" applied {len(gate.names)} stream tables in {time.monotonic() - loaded:.1f} s"
    )
    gate.check_modes()
    with running_daemon(db.dsn, workers=4):
        for number in range(1, rounds + 1):
            started = time.monotonic()
            stats = workload.round(db.dsn, rng, orders=orders, updates=updates)
            gate.log.append(
                f"round {number}: {stats.committed} transactions committed,"
                f" {stats.rolled_back} rolled back, {stats.deadlocked} deadlocked,"
                f" in {time.monotonic() - started:.1f} s"
            )
            gate.check(number, rounds)
    print("\n".join(gate.log))


def test_every_tpch_stream_table_equals_its_query_after_each_round(db: Database) -> None:
    run_gate(db, rounds=3, orders=15, updates=150)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_tpch_stream_table_equals_its_query_after_many_larger_rounds(
    db: Database,
) -> None:
    run_gate(db, rounds=10, orders=150, updates=1_500)
