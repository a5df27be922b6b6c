"""The `pgtrickle` command: every command, where it finds its database, --json, exit statuses,
and what it says to everything a user can get wrong (never a traceback)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgtrickle.cli import EXIT_STATUSES, main
from pgtrickle.dev.cluster import LocalCluster, temporary_cluster
from pgtrickle.dev.workload import create_schema
from pgtrickle.errors import error_codes
from tests.fixtures.cluster import Database
from tests.fixtures.streams import mismatched, running_daemon

YAML = """\
stream_tables:
  - name: paid
    query: SELECT id, amount FROM orders WHERE status = 'paid'
    schedule: 1m
    refresh_mode: differential
  - name: statuses
    query: SELECT DISTINCT ON (status) status FROM orders
"""

COMMANDS = {
    "run": ["run"],
    "apply": ["apply"],
    "status": ["status"],
    "refresh": ["refresh", "paid"],
    "explain": ["explain", "paid"],
    "wait": ["wait", "--timeout", "5"],
    "migrate": ["migrate"],
}


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def error(self) -> dict[str, str | None]:
        """The error of a --json run."""
        data = json.loads(self.stdout)["error"]
        assert isinstance(data, dict)
        return data


def pgtrickle(*args: str, dsn: str | None = None, cwd: Path | None = None) -> Outcome:
    """The command in a process of its own, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if k != "PGTRICKLE_DSN"}
    if dsn:
        env["PGTRICKLE_DSN"] = dsn
    result = subprocess.run(
        [sys.executable, "-m", "pgtrickle.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )
    return Outcome(result.returncode, result.stdout, result.stderr)


def in_process(capsys: pytest.CaptureFixture[str], *args: str, cwd: Path | None = None) -> Outcome:
    """The command run by ``main`` in this process: quicker, same code, same output."""
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        code = main(list(args))
    finally:
        os.chdir(old)
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


@pytest.fixture(autouse=True)
def no_dsn_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGTRICKLE_DSN", raising=False)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "pgtrickle.yaml"
    path.write_text(YAML)
    return path


@pytest.fixture
def applied(db: Database, config: Path) -> Database:
    create_schema(db.dsn, customers=10, orders=200, events=10)
    result = pgtrickle("apply", "--config", str(config), "--json", "--dsn", db.dsn)
    assert result.code == 0, result.stderr
    assert [c["action"] for c in json.loads(result.stdout)["changes"]] == ["create", "create"]
    return db


def assert_explained(outcome: Outcome, code: str, exit_status: int) -> None:
    """An error as every command reports one: code, message, DETAIL, HINT, no traceback."""
    assert "Traceback" not in outcome.stderr + outcome.stdout
    assert outcome.code == exit_status, outcome.stderr
    assert outcome.stderr.startswith(f"error {code}: "), outcome.stderr
    assert "\nDETAIL: " in outcome.stderr and "\nHINT: " in outcome.stderr, outcome.stderr


# -- the commands at work


def test_status_reports_every_stream_table_as_json(applied: Database) -> None:
    result = pgtrickle("status", "--json", dsn=applied.dsn)
    assert result.code == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["reader"]["reader_active"] is False
    assert status["reader"]["retained_wal_bytes"] >= 0
    rows = {r["name"]: r for r in status["stream_tables"]}
    assert rows["paid"]["effective_refresh_mode"] == "differential"
    assert rows["statuses"]["effective_refresh_mode"] == "full"
    assert rows["statuses"]["rows"] == 4


def test_explain_shows_the_plan_and_the_fallback_reason(applied: Database) -> None:
    result = pgtrickle("explain", "statuses", "--json", "--dsn", applied.dsn)
    assert result.code == 0, result.stderr
    explained = json.loads(result.stdout)
    assert explained["effective_refresh_mode"] == "full"
    assert "DISTINCT" in explained["fallback_reason"]
    assert [r["construct"] for r in explained["reasons"]] == ["DISTINCT ON"]
    text = pgtrickle("explain", "paid", "--dsn", applied.dsn).stdout
    assert "differential" in text


def test_refresh_without_a_daemon_applies_pending_changes(applied: Database) -> None:
    with psycopg.connect(applied.dsn) as conn:
        conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 20")
    result = pgtrickle("refresh", "paid", "--json", "--dsn", applied.dsn)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["action"] == "differential"
    assert mismatched(applied.dsn) == {}


def test_wait_returns_once_the_daemon_caught_up(applied: Database) -> None:
    with running_daemon(applied.dsn):
        with psycopg.connect(applied.dsn) as conn:
            conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 50")
        result = pgtrickle("wait", "--timeout", "60", "--dsn", applied.dsn)
        assert result.code == 0, result.stderr
        assert mismatched(applied.dsn) == {}


def test_wait_times_out_with_exit_3_when_nothing_refreshes(applied: Database) -> None:
    with psycopg.connect(applied.dsn) as conn:
        conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 50")
    result = pgtrickle("wait", "--timeout", "1", "--dsn", applied.dsn)
    assert_explained(result, "PGT301", 3)
    assert "did not catch up" in result.stderr


def test_every_command_finds_the_database_in_the_dsn_of_the_file(
    applied: Database, tmp_path: Path
) -> None:
    (tmp_path / "pgtrickle.yaml").write_text(f"dsn: {applied.dsn}\n{YAML}")
    for name, args in COMMANDS.items():
        if name == "run":
            continue
        result = pgtrickle(*args, cwd=tmp_path)
        # without a daemon nothing catches up: a timeout shows that wait found the database
        expected = 3 if name == "wait" else 0
        assert result.code == expected, f"{name}: {result.stderr}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = pgtrickle("status", "--config", str(tmp_path / "pgtrickle.yaml"), cwd=elsewhere)
    assert result.code == 0, result.stderr


def test_apply_drops_an_undeclared_stream_table_only_with_prune(
    applied: Database, tmp_path: Path
) -> None:
    only_paid = tmp_path / "only_paid.yaml"
    only_paid.write_text(YAML.split("  - name: statuses")[0])
    refused = pgtrickle("apply", "--config", str(only_paid), "--dsn", applied.dsn)
    assert_explained(refused, "PGT109", 1)
    assert "statuses" in refused.stderr and "--prune" in refused.stderr
    dry = pgtrickle("apply", "--dry-run", "--config", str(only_paid), "--dsn", applied.dsn)
    assert dry.code == 0 and "needs --prune" in dry.stdout
    pruned = pgtrickle("apply", "--prune", "--config", str(only_paid), "--dsn", applied.dsn)
    assert pruned.code == 0, pruned.stderr
    assert "drop  statuses" in pruned.stdout


def test_apply_on_a_terminal_asks_before_dropping(applied: Database, tmp_path: Path) -> None:
    only_paid = tmp_path / "only_paid.yaml"
    only_paid.write_text(YAML.split("  - name: statuses")[0])
    primary, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "PGTRICKLE_DSN"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgtrickle.cli",
            "apply",
            "-c",
            str(only_paid),
            "--dsn",
            applied.dsn,
        ],
        stdin=secondary,
        stderr=secondary,
        stdout=subprocess.PIPE,
        env=env,
    )
    os.close(secondary)
    asked = b""
    deadline = time.monotonic() + 60
    while b"[y/N]" not in asked and time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 1.0)
        if ready:
            asked += os.read(primary, 1024)
    os.write(primary, b"y\n")
    stdout, _ = process.communicate(timeout=60)
    os.close(primary)
    assert process.returncode == 0
    assert b"statuses" in asked and b"drop  statuses" in stdout


def test_dry_run_lists_the_side_effects_and_changes_nothing(db: Database, config: Path) -> None:
    create_schema(db.dsn, customers=10, orders=20, events=10)
    result = pgtrickle("apply", "--dry-run", "-c", str(config), "--dsn", db.dsn)
    assert result.code == 0, result.stderr
    assert "nothing was changed" in result.stdout
    for effect in ("REPLICA IDENTITY FULL", "publication", "replication slot", "change buffer"):
        assert effect in result.stdout
    with psycopg.connect(db.dsn) as conn:
        assert conn.execute("SELECT to_regnamespace('pgtrickle')").fetchone() == (None,)


# -- the face of the command


def test_version_and_help_list_every_command_and_exit_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert in_process(capsys, "--version").stdout.startswith("pgtrickle ")
    help_text = in_process(capsys, "--help").stdout
    for name in COMMANDS:
        assert f"    {name} " in help_text, f"{name} has a one-line description"
    for status, meaning in EXIT_STATUSES.items():
        assert f"{status:>3}  {meaning}" in help_text


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_describes_itself(capsys: pytest.CaptureFixture[str], name: str) -> None:
    result = in_process(capsys, name, "--help")
    assert result.code == 0
    description = result.stdout.split("\n\n")[1]
    assert len(description) > 20 and "exit statuses:" in result.stdout


def test_a_usage_error_exits_2_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    result = in_process(capsys, "run", "--workers", "zero")
    assert result.code == 2
    assert "not a whole number" in result.stderr and "Traceback" not in result.stderr


def test_output_into_a_closed_pipe_ends_quietly(applied: Database) -> None:
    env = {**os.environ, "PGTRICKLE_DSN": applied.dsn}
    shell = f"{sys.executable} -m pgtrickle.cli --help | head -c 1; exit ${{PIPESTATUS[0]}}"
    result = subprocess.run(
        ["bash", "-c", shell], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.stderr == ""
    assert result.returncode == 0


def test_every_error_class_has_a_code_of_its_own_and_the_readme_lists_it() -> None:
    codes = error_codes()
    assert len({cls for cls in codes.values()}) == len(codes)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for code, cls in codes.items():
        assert f"| {code} | `{cls.__name__}` |" in readme, f"README lists {code}"
    for status in EXIT_STATUSES:
        assert f"| {status} |" in readme, f"README lists exit status {status}"


# -- everything a user can get wrong, for every command


@pytest.fixture(scope="module")
def replica_only() -> Iterator[LocalCluster]:
    """A server with wal_level = replica: logical decoding is impossible there."""
    cluster = temporary_cluster(prefix="pgtrickle-replica-", settings={"wal_level": "replica"})
    cluster.start()
    try:
        cluster.create_database("shop")
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def plain_role(applied: Database) -> Iterator[str]:
    """The DSN of a role that may log in and read, but not replicate nor own anything."""
    role = f"plain_{applied.name}"
    with psycopg.connect(applied.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public, pgtrickle TO {}").format(
                sql.Identifier(role)
            )
        )
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA pgtrickle TO {}").format(sql.Identifier(role)))
    yield applied.dsn.replace("user=postgres", f"user={role}")
    with psycopg.connect(applied.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _args(name: str, config: Path) -> list[str]:
    return [*COMMANDS[name], "--config", str(config)]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_malformed_dsn_is_refused_without_showing_any_of_it(
    capsys: pytest.CaptureFixture[str], config: Path, name: str
) -> None:
    result = in_process(capsys, *_args(name, config), "--dsn", "host=db password=hunter2 sw0rdfish")
    assert_explained(result, "PGT202", 1)
    assert "hunter2" not in result.stderr and "sw0rdfish" not in result.stderr


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_server_that_is_not_running_is_named_with_exit_4(
    capsys: pytest.CaptureFixture[str], config: Path, name: str
) -> None:
    dsn = "host=127.0.0.1 port=1 dbname=shop user=app password=hunter2"
    result = in_process(capsys, *_args(name, config), "--dsn", dsn)
    assert_explained(result, "PGT201", 4)
    assert 'database "shop" on 127.0.0.1:1' in result.stderr and "hunter2" not in result.stderr


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_missing_database_is_named(
    capsys: pytest.CaptureFixture[str], pg_cluster: LocalCluster, config: Path, name: str
) -> None:
    result = in_process(capsys, *_args(name, config), "--dsn", pg_cluster.dsn("nosuchdb"))
    assert_explained(result, "PGT201", 4)
    assert '"nosuchdb" does not exist' in result.stderr


@pytest.mark.parametrize("name", ["status", "refresh", "explain", "wait"])
def test_a_database_without_a_catalog_is_explained(
    capsys: pytest.CaptureFixture[str], db: Database, config: Path, name: str
) -> None:
    result = in_process(capsys, *_args(name, config), "--dsn", db.dsn)
    assert_explained(result, "PGT205", 1)
    assert "no pgtrickle catalog" in result.stderr


@pytest.mark.parametrize("name", ["run", "apply"])
def test_a_server_without_logical_decoding_is_explained(
    capsys: pytest.CaptureFixture[str], replica_only: LocalCluster, config: Path, name: str
) -> None:
    result = in_process(capsys, *_args(name, config), "--dsn", replica_only.dsn("shop"))
    assert_explained(result, "PGT203", 1)
    assert "wal_level = replica" in result.stderr and "wal_level = logical" in result.stderr


@pytest.mark.parametrize("name", ["run", "apply"])
def test_a_role_that_may_not_replicate_is_explained(
    capsys: pytest.CaptureFixture[str], plain_role: str, config: Path, name: str
) -> None:
    result = in_process(capsys, *_args(name, config), "--dsn", plain_role)
    assert_explained(result, "PGT204", 1)
    assert "REPLICATION" in result.stderr


def test_a_role_that_may_not_read_the_catalog_is_told_what_to_grant(
    capsys: pytest.CaptureFixture[str], applied: Database, config: Path
) -> None:
    role = f"stranger_{applied.name}"
    with psycopg.connect(applied.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        dsn = applied.dsn.replace("user=postgres", f"user={role}")
        result = in_process(capsys, *_args("status", config), "--dsn", dsn)
        assert_explained(result, "PGT204", 1)
        assert "permission denied for schema pgtrickle" in result.stderr
        assert "GRANT USAGE ON SCHEMA pgtrickle" in result.stderr
    finally:
        with psycopg.connect(applied.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_role_that_may_not_read_changes_cannot_refresh_without_a_daemon(
    capsys: pytest.CaptureFixture[str], plain_role: str, config: Path
) -> None:
    result = in_process(capsys, *_args("refresh", config), "--dsn", plain_role)
    assert_explained(result, "PGT204", 1)
    assert "pgtrickle run" in result.stderr


def test_an_unknown_stream_table_is_named(
    capsys: pytest.CaptureFixture[str], applied: Database
) -> None:
    for command in ("refresh", "explain"):
        result = in_process(capsys, command, "nope", "--dsn", applied.dsn)
        assert_explained(result, "PGT106", 1)
        assert '"nope" does not exist' in result.stderr and "paid, statuses" in result.stderr


def test_a_query_failing_at_refresh_is_reported_with_the_stream_table(
    capsys: pytest.CaptureFixture[str], db: Database, tmp_path: Path
) -> None:
    create_schema(db.dsn, customers=10, orders=20, events=10)
    config = tmp_path / "ratio.yaml"
    config.write_text(
        "stream_tables:\n  - name: ratio\n    query: SELECT id, 100 / amount AS r FROM orders"
        " WHERE amount IS NOT NULL\n    refresh_mode: full\n"
    )
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET amount = 1 WHERE amount = 0")
    assert in_process(capsys, "apply", "-c", str(config), "--dsn", db.dsn).code == 0
    with psycopg.connect(db.dsn) as conn:
        conn.execute("UPDATE orders SET amount = 0 WHERE id = 1")
    result = in_process(capsys, "refresh", "ratio", "--dsn", db.dsn)
    assert_explained(result, "PGT110", 1)
    assert 'stream table "ratio"' in result.stderr and "division by zero" in result.stderr


def test_no_dsn_anywhere_is_refused_with_a_hint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name in COMMANDS:
        if name == "apply":
            continue
        result = in_process(capsys, *COMMANDS[name], cwd=tmp_path)
        assert_explained(result, "PGT101", 1)
        assert "PGTRICKLE_DSN" in result.stderr and "--dsn" in result.stderr


def test_an_invalid_file_is_refused_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("stream_tables:\n  - name: x\n    query: SELECT 1\n    shedule: 1s\n")
    result = in_process(capsys, "apply", "--config", str(config), "--dsn", "host=127.0.0.1 port=1")
    assert_explained(result, "PGT101", 1)
    assert "bad.yaml" in result.stderr and '"shedule"' in result.stderr


def test_errors_as_json_carry_code_message_detail_and_hint(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    result = in_process(capsys, "status", "--json", "--dsn", "host=127.0.0.1 port=1")
    assert result.code == 4
    error = result.error
    assert error["code"] == "PGT201"
    assert error["message"] and error["detail"] and error["hint"]
