"""Nothing lost, nothing applied twice: kill -9 of the daemon and a PostgreSQL crash mid-run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgtrickle.declarations import parse_declarations
from pgtrickle.dev.cluster import LocalCluster, temporary_cluster
from pgtrickle.dev.workload import STREAM_TABLES_YAML, Writer, create_schema
from pgtrickle.reconcile import apply
from scheduler.progress import wait_caught_up
from tests.fixtures.streams import mismatched, refresh_errors


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    """A cluster of this test's own: it is crashed on purpose."""
    cluster = temporary_cluster(prefix="pgtrickle-crash-")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


def start_daemon(dsn: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PGTRICKLE_CHECK_REFRESH": "1", "PGTRICKLE_LOG_LEVEL": "warning"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pgtrickle.cli", "run", "--dsn", dsn],
            env=env,
            stdout=out,
            stderr=out,
        )


class Writers:
    """Two writers that keep writing across server crashes (reconnecting as needed)."""

    def __init__(self, dsn: str) -> None:
        self.stop = threading.Event()
        self.writers = [Writer(dsn, seed=seed) for seed in (11, 12)]
        self.threads = [threading.Thread(target=self._run, args=(w,)) for w in self.writers]

    def _run(self, writer: Writer) -> None:
        while not self.stop.is_set():
            try:
                writer.run(self.stop)
            except Exception:
                self.stop.wait(0.2)  # the server is restarting: the transaction was lost whole

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def test_kill_9_and_a_server_crash_lose_nothing_and_apply_nothing_twice(
    own_cluster: LocalCluster, tmp_path: Path
) -> None:
    seed = int(os.environ.get("PGTRICKLE_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"seed {seed}")
    dsn = own_cluster.create_database("crash")
    create_schema(dsn)
    apply(dsn, parse_declarations(STREAM_TABLES_YAML, "test.yaml"))

    log = tmp_path / "daemon.log"
    daemon = start_daemon(dsn, log)
    try:
        with Writers(dsn) as writers:
            for round_no in range(4):
                time.sleep(rng.uniform(0.5, 2.5))
                if round_no == 2:
                    own_cluster.stop("immediate")  # a crash: recovery runs at the start
                    own_cluster.start()
                    continue
                daemon.send_signal(signal.SIGKILL)
                daemon.wait()
                daemon = start_daemon(dsn, log)
            time.sleep(1.0)
        committed = sum(w.stats.committed for w in writers.writers)
        wait_caught_up(dsn, timeout=120)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()

    assert committed > 20
    assert refresh_errors(dsn) == []
    assert mismatched(dsn) == {}, f"seed {seed}"
