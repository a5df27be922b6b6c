"""The `pgtrickle` command: every command, --dsn / PGTRICKLE_DSN, --json, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pgtrickle.dev.workload import create_schema
from tests.fixtures.plugin import Database
from tests.fixtures.streams import mismatched, running_daemon

YAML = """\
stream_tables:
  - name: paid
    query: SELECT id, amount FROM orders WHERE status = 'paid'
    schedule: 1m
    refresh_mode: differential
  - name: statuses
    query: SELECT DISTINCT status FROM orders
"""


def pgtrickle(*args: str, dsn: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PGTRICKLE_DSN"}
    if dsn:
        env["PGTRICKLE_DSN"] = dsn
    return subprocess.run(
        [sys.executable, "-m", "pgtrickle.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture
def applied(db: Database, tmp_path: Path) -> Database:
    create_schema(db.dsn, customers=10, orders=200, events=10)
    config = tmp_path / "pgtrickle.yaml"
    config.write_text(YAML)
    result = pgtrickle("apply", "--config", str(config), "--json", "--dsn", db.dsn)
    assert result.returncode == 0, result.stderr
    assert [c["action"] for c in json.loads(result.stdout)["changes"]] == ["create", "create"]
    return db


def test_status_reports_every_stream_table_as_json(applied: Database) -> None:
    result = pgtrickle("status", "--json", dsn=applied.dsn)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["reader"]["reader_active"] is False
    assert status["reader"]["retained_wal_bytes"] >= 0
    rows = {r["name"]: r for r in status["stream_tables"]}
    assert rows["paid"]["effective_refresh_mode"] == "differential"
    assert rows["statuses"]["effective_refresh_mode"] == "full"
    assert rows["statuses"]["rows"] == 4


def test_explain_shows_the_plan_and_the_fallback_reason(applied: Database) -> None:
    result = pgtrickle("explain", "statuses", "--json", "--dsn", applied.dsn)
    assert result.returncode == 0, result.stderr
    explained = json.loads(result.stdout)
    assert explained["effective_refresh_mode"] == "full"
    assert "DISTINCT" in explained["fallback_reason"]
    text = pgtrickle("explain", "paid", "--dsn", applied.dsn).stdout
    assert "differential" in text


def test_refresh_without_a_daemon_applies_pending_changes(applied: Database) -> None:
    with psycopg.connect(applied.dsn) as conn:
        conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 20")
    result = pgtrickle("refresh", "paid", "--json", "--dsn", applied.dsn)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["action"] == "differential"
    assert mismatched(applied.dsn) == {}


def test_wait_returns_once_the_daemon_caught_up(applied: Database) -> None:
    with running_daemon(applied.dsn):
        with psycopg.connect(applied.dsn) as conn:
            conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 50")
        result = pgtrickle("wait", "--timeout", "60", "--dsn", applied.dsn)
        assert result.returncode == 0, result.stderr
        assert mismatched(applied.dsn) == {}


def test_wait_times_out_with_exit_3_when_nothing_refreshes(applied: Database) -> None:
    with psycopg.connect(applied.dsn) as conn:
        conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 50")
    result = pgtrickle("wait", "--timeout", "1", "--dsn", applied.dsn)
    assert result.returncode == 3
    assert "did not catch up" in result.stderr
    assert "HINT" in result.stderr


def test_an_unknown_stream_table_is_named(applied: Database) -> None:
    result = pgtrickle("refresh", "nope", "--dsn", applied.dsn)
    assert result.returncode == 1
    assert '"nope" does not exist' in result.stderr


def test_a_missing_dsn_is_refused_with_a_hint() -> None:
    result = pgtrickle("status")
    assert result.returncode == 1
    assert "PGTRICKLE_DSN" in result.stderr


def test_passwords_never_appear_in_errors() -> None:
    result = pgtrickle("status", "--dsn", "host=127.0.0.1 port=1 user=x password=hunter2")
    assert result.returncode == 1
    assert "hunter2" not in result.stderr + result.stdout
    assert "cannot connect" in result.stderr


def test_an_invalid_file_is_refused_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("stream_tables:\n  - name: x\n    query: SELECT 1\n    shedule: 1s\n")
    result = pgtrickle("apply", "--config", str(config), "--dsn", "host=127.0.0.1 port=1")
    assert result.returncode == 1
    assert "bad.yaml" in result.stderr and '"shedule"' in result.stderr
