"""Stream tables stay equal to their queries while two writers run random transactions."""

from __future__ import annotations

import threading
import time

import pytest

from pgtrickle.declarations import parse_declarations
from pgtrickle.dev.workload import STREAM_TABLES_YAML, Writer, create_schema
from pgtrickle.reconcile import apply
from scheduler.progress import wait_caught_up
from tests.fixtures.plugin import Database
from tests.fixtures.streams import mismatched, refresh_errors, running_daemon

WRITE_SECONDS = 8.0


@pytest.mark.pg15
def test_every_shape_equals_its_query_after_concurrent_writes(
    any_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_concurrent_writers(any_db, monkeypatch, WRITE_SECONDS)


@pytest.mark.slow
@pytest.mark.pg15
def test_soak_every_shape_equals_its_query_after_a_minute_of_writes(
    any_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_concurrent_writers(any_db, monkeypatch, 60.0)


def run_concurrent_writers(
    any_db: Database, monkeypatch: pytest.MonkeyPatch, seconds: float
) -> None:
    # each refresh also compares the stream table with its query at its own snapshot
    monkeypatch.setenv("PGTRICKLE_CHECK_REFRESH", "1")
    create_schema(any_db.dsn)
    apply(any_db.dsn, parse_declarations(STREAM_TABLES_YAML, "test.yaml"))
    assert mismatched(any_db.dsn) == {}

    stop = threading.Event()
    writers = [Writer(any_db.dsn, seed=seed) for seed in (1, 2)]
    threads = [threading.Thread(target=w.run, args=(stop,)) for w in writers]
    with running_daemon(any_db.dsn):
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        wait_caught_up(any_db.dsn, timeout=120)

    assert sum(w.stats.committed for w in writers) > 50
    assert sum(w.stats.rolled_back for w in writers) > 0
    assert refresh_errors(any_db.dsn) == []
    assert mismatched(any_db.dsn) == {}
