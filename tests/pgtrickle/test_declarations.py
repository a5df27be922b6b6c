"""``pgtrickle.yaml``: what it accepts, and how it says what is wrong with what it refuses."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pgtrickle.declarations import (
    Declarations,
    RefreshMode,
    StreamTableDecl,
    load_declarations,
    parse_declarations,
)
from pgtrickle.errors import InvalidDeclaration

FILE = "pgtrickle.yaml"


def parse(text: str) -> Declarations:
    return parse_declarations(textwrap.dedent(text), FILE)


def refusal(text: str) -> InvalidDeclaration:
    with pytest.raises(InvalidDeclaration) as caught:
        parse(text)
    error = caught.value
    assert error.detail, "every refusal carries a DETAIL"
    assert error.hint, "every refusal carries a HINT"
    return error


# What it accepts


def test_a_full_file_parses_to_its_declarations() -> None:
    decls = parse(
        """\
        dsn: postgresql://localhost/shop
        stream_tables:
          - name: sales.orders_by_region
            query: SELECT region, count(*) FROM orders GROUP BY region
            schedule: 30s
            refresh_mode: differential
          - name: daily_totals
            query: |
              SELECT day, sum(amount)
              FROM orders GROUP BY day
            schedule: "0 3 * * *"
            refresh_mode: full
        """
    )
    assert decls == Declarations(
        path=FILE,
        dsn="postgresql://localhost/shop",
        stream_tables=(
            StreamTableDecl(
                schema="sales",
                name="orders_by_region",
                query="SELECT region, count(*) FROM orders GROUP BY region",
                schedule="30s",
                refresh_mode=RefreshMode.DIFFERENTIAL,
                line=3,
            ),
            StreamTableDecl(
                schema="public",
                name="daily_totals",
                query="SELECT day, sum(amount)\nFROM orders GROUP BY day",
                schedule="0 3 * * *",
                refresh_mode=RefreshMode.FULL,
                line=7,
            ),
        ),
    )


def test_schedule_defaults_to_one_minute_and_refresh_mode_to_auto() -> None:
    (decl,) = parse(
        """\
        stream_tables:
          - name: t
            query: SELECT 1
        """
    ).stream_tables
    assert (decl.schedule, decl.refresh_mode) == ("1m", RefreshMode.AUTO)
    assert decl.refresh_mode == "auto"
    assert decl.qualified_name == "public.t"


def test_dsn_is_optional() -> None:
    assert parse("stream_tables: []\n").dsn is None


def test_an_empty_list_declares_no_stream_tables() -> None:
    assert parse("stream_tables: []\n").stream_tables == ()


def test_every_refresh_mode_is_accepted() -> None:
    entries = "".join(
        f"  - {{name: t_{mode}, query: SELECT 1, refresh_mode: {mode}}}\n"
        for mode in ("full", "differential", "immediate", "auto")
    )
    modes = [decl.refresh_mode for decl in parse("stream_tables:\n" + entries).stream_tables]
    assert modes == list(RefreshMode)


def test_anchors_and_merge_keys_work_as_in_safe_load() -> None:
    first, second = parse(
        """\
        stream_tables:
          - &base
            name: a
            query: SELECT 1
            schedule: 5m
          - <<: *base
            name: b
            schedule: 10m
        """
    ).stream_tables
    assert (second.name, second.query, second.schedule) == ("b", "SELECT 1", "10m")
    assert (first.line, second.line) == (2, 6)


def test_declarations_are_frozen() -> None:
    (decl,) = parse("stream_tables: [{name: t, query: SELECT 1}]\n").stream_tables
    with pytest.raises(AttributeError):
        decl.name = "u"  # type: ignore[misc]


def test_load_declarations_reads_the_file_and_keeps_its_path(tmp_path: Path) -> None:
    path = tmp_path / "pgtrickle.yaml"
    path.write_text("stream_tables:\n  - name: t\n    query: SELECT 1\n", encoding="utf-8")
    decls = load_declarations(path)
    assert decls.path == str(path)
    assert [decl.name for decl in decls.stream_tables] == ["t"]


# What it refuses: the file


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pgtrickle.yaml"
    with pytest.raises(InvalidDeclaration) as caught:
        load_declarations(path)
    assert caught.value.message == f"{path}: no such file"
    assert caught.value.detail and caught.value.hint


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidDeclaration) as caught:
        load_declarations(tmp_path)  # a directory: cannot be read as a file, even by root
    assert caught.value.message.startswith(f"{tmp_path}: cannot read the file: ")
    assert caught.value.detail and caught.value.hint


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pgtrickle.yaml"
    path.write_bytes(b"stream_tables: []\n# caf\xe9\n")
    with pytest.raises(InvalidDeclaration) as caught:
        load_declarations(path)
    assert caught.value.message == f"{path}: the file is not UTF-8 (byte 23)"
    assert caught.value.detail and caught.value.hint


def test_invalid_yaml_is_refused_with_its_line_and_column() -> None:
    error = refusal(
        """\
        stream_tables:
          - name: t
            query: SELECT 1
            schedule: */5 * * * *
        """
    )
    assert error.message.startswith(f"{FILE}:4:16: invalid YAML: ")
    assert error.hint is not None and 'schedule: "*/5 * * * *"' in error.hint


def test_python_tags_are_refused_as_safe_load_does() -> None:
    error = refusal("stream_tables: !!python/object/apply:os.system ['true']\n")
    assert error.message.startswith(f"{FILE}:1:16: invalid YAML: could not determine a constructor")


def test_more_than_one_document_is_refused() -> None:
    error = refusal("stream_tables: []\n---\nstream_tables: []\n")
    assert error.message.startswith(f"{FILE}:2:1: invalid YAML: expected a single document")


def test_a_top_level_that_is_not_a_mapping_is_refused() -> None:
    error = refusal("- name: t\n  query: SELECT 1\n")
    assert error.message == (
        f"{FILE}:1: expected a mapping with the key stream_tables at the top level, found a list"
    )


def test_an_empty_file_is_refused() -> None:
    error = refusal("")
    assert error.message == (
        f"{FILE}: expected a mapping with the key stream_tables at the top level, "
        "found an empty file"
    )


def test_an_unknown_top_level_key_is_refused_with_a_suggestion() -> None:
    error = refusal("dsn: x\nstream_table: []\n")
    assert error.message == f'{FILE}:2: unknown key "stream_table"'
    assert error.detail == "The keys of the top level are dsn, stream_tables."
    assert error.hint == 'did you mean "stream_tables"?'


def test_a_dsn_that_is_not_a_string_is_refused() -> None:
    error = refusal("dsn: [a]\nstream_tables: []\n")
    assert error.message == f'{FILE}:1: "dsn" must be a string, not a list'


def test_missing_stream_tables_is_refused() -> None:
    error = refusal("dsn: postgresql://localhost/shop\n")
    assert error.message == f'{FILE}:1: missing key "stream_tables"'
    assert error.hint is not None and "stream_tables: []" in error.hint


def test_stream_tables_that_is_not_a_list_is_refused() -> None:
    error = refusal("stream_tables:\n  name: t\n  query: SELECT 1\n")
    assert error.message == f'{FILE}:1: "stream_tables" must be a list, not a mapping'


def test_stream_tables_left_empty_is_refused() -> None:
    error = refusal("stream_tables:\n")
    assert error.message == f'{FILE}:1: "stream_tables" is empty'


def test_a_repeated_top_level_key_is_refused() -> None:
    error = refusal("stream_tables: []\nstream_tables: []\n")
    assert error.message == f'{FILE}:2: duplicate key "stream_tables"'


# What it refuses: a stream table


def test_an_entry_that_is_not_a_mapping_is_refused_by_its_index() -> None:
    error = refusal(
        """\
        stream_tables:
          - name: t
            query: SELECT 1
          - just_a_name
        """
    )
    assert error.message == f"{FILE}:4: stream_tables[1]: expected a mapping, found a string"


def test_an_unknown_key_is_refused_with_a_suggestion() -> None:
    error = refusal(
        """\
        stream_tables:
          - name: orders_by_region
            query: SELECT region, count(*) FROM orders GROUP BY region
            shedule: 5m
        """
    )
    assert error.message == f'{FILE}:4: stream table "orders_by_region": unknown key "shedule"'
    assert error.detail == "The keys of a stream table are name, query, schedule, refresh_mode."
    assert error.hint == 'did you mean "schedule"?'


@pytest.mark.parametrize("key", ["partition_by", "fuse", "diamond"])
def test_keys_for_later_are_not_accepted_yet(key: str) -> None:
    error = refusal(f"stream_tables:\n  - {{name: t, query: SELECT 1, {key}: x}}\n")
    assert error.message == f'{FILE}:2: stream table "t": unknown key "{key}"'


def test_a_repeated_key_is_refused() -> None:
    error = refusal(
        """\
        stream_tables:
          - name: t
            query: SELECT 1
            query: SELECT 2
        """
    )
    assert error.message == f'{FILE}:4: stream table "t": duplicate key "query"'


def test_a_missing_name_is_refused_by_index() -> None:
    error = refusal("stream_tables:\n  - query: SELECT 1\n")
    assert error.message == f'{FILE}:2: stream_tables[0]: missing key "name"'


def test_a_missing_query_is_refused() -> None:
    error = refusal("stream_tables:\n  - name: t\n")
    assert error.message == f'{FILE}:2: stream table "t": missing key "query"'


def test_an_empty_query_is_refused() -> None:
    error = refusal("stream_tables:\n  - name: t\n    query: '  '\n")
    assert error.message == f'{FILE}:3: stream table "t": "query" is empty'


def test_a_query_that_is_not_a_string_is_refused() -> None:
    error = refusal("stream_tables:\n  - name: t\n    query: 42\n")
    assert error.message == f'{FILE}:3: stream table "t": "query" must be a string, not a number'


def test_a_duplicate_name_is_refused_pointing_at_the_first() -> None:
    error = refusal(
        """\
        stream_tables:
          - name: orders
            query: SELECT 1
          - name: public.orders
            query: SELECT 2
        """
    )
    assert error.message == f'{FILE}:4: stream table "public.orders": declared twice'
    assert error.detail == f"It is first declared at {FILE}:2."


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("Orders", 'invalid name "Orders"'),
        ("orders by region", 'invalid name "orders by region"'),
        ("1orders", 'invalid name "1orders"'),
        ("a.b.c", 'invalid name "a.b.c"'),
        ("sales.", 'invalid name "sales."'),
        ("a" * 64, f'invalid name "{"a" * 64}": it is 64 bytes long'),
        (f"{'s' * 64}.t", f'invalid name "{"s" * 64}.t": "{"s" * 64}" is 64 bytes long'),
        ("pg_orders", 'invalid name "pg_orders": names starting with "pg_" are reserved'),
        ("pg_x.orders", 'invalid name "pg_x.orders": names starting with "pg_" are reserved'),
        ("pgtrickle.orders", 'invalid name "pgtrickle.orders": schema "pgtrickle" is reserved'),
    ],
)
def test_bad_names_are_refused(name: str, problem: str) -> None:
    error = refusal(f"stream_tables:\n  - name: {name}\n    query: SELECT 1\n")
    assert error.message == f'{FILE}:2: stream table "{name}": {problem}'


def test_a_63_byte_name_is_accepted() -> None:
    (decl,) = parse(f"stream_tables: [{{name: {'a' * 63}, query: SELECT 1}}]\n").stream_tables
    assert decl.name == "a" * 63


def test_an_uppercase_name_suggests_its_lowercase() -> None:
    error = refusal("stream_tables:\n  - name: Sales.Orders\n    query: SELECT 1\n")
    assert error.hint == 'did you mean "sales.orders"?'


def test_a_name_that_is_not_a_string_is_refused_by_index() -> None:
    error = refusal("stream_tables:\n  - name: 42\n    query: SELECT 1\n")
    assert error.message == f'{FILE}:2: stream_tables[0]: "name" must be a string, not a number'


def test_a_bad_refresh_mode_is_refused_listing_the_allowed_ones() -> None:
    error = refusal(
        """\
        stream_tables:
          - name: t
            query: SELECT 1
            refresh_mode: incremental
        """
    )
    assert error.message == f'{FILE}:4: stream table "t": invalid refresh_mode "incremental"'
    assert error.detail == (
        "refresh_mode is one of full, differential, immediate, auto (default auto)."
    )


def test_a_misspelt_refresh_mode_suggests_the_right_one() -> None:
    error = refusal("stream_tables:\n  - {name: t, query: SELECT 1, refresh_mode: diferential}\n")
    assert error.hint == 'did you mean "differential"?'


def test_a_bad_schedule_is_refused_with_the_file_and_stream_table() -> None:
    error = refusal(
        """\
        stream_tables:
          - name: t
            query: SELECT 1
            schedule: 5 minutes
        """
    )
    assert error.message == (
        f'{FILE}:4: stream table "t": invalid schedule "5 minutes": '
        "a cron expression has 5 fields (or 6 with the seconds first), not 2"
    )
    assert error.hint is not None and "30s" in error.hint


def test_a_schedule_without_a_unit_is_refused_suggesting_one() -> None:
    error = refusal("stream_tables:\n  - name: t\n    query: SELECT 1\n    schedule: 30\n")
    assert error.message == f'{FILE}:4: stream table "t": "schedule" must be a string, not a number'
    assert error.hint is not None and '"30s"' in error.hint


def test_an_empty_schedule_is_refused_rather_than_defaulted() -> None:
    error = refusal("stream_tables:\n  - name: t\n    query: SELECT 1\n    schedule:\n")
    assert error.message == f'{FILE}:4: stream table "t": "schedule" is empty'
