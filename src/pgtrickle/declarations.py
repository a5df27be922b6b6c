"""``pgtrickle.yaml``: the stream tables a user declares, read and checked before anything runs.

The file is a mapping with an optional ``dsn`` and a list of ``stream_tables``::

    dsn: postgresql://localhost/shop          # optional; --dsn and PGTRICKLE_DSN also work
    stream_tables:
      - name: sales.orders_by_region          # or just orders_by_region (schema public)
        query: SELECT region, count(*) FROM orders GROUP BY region
        schedule: 30s                         # default 1m; see scheduler.schedule
        refresh_mode: differential            # full, differential, immediate or auto (default)

Every refusal is an ``InvalidDeclaration`` whose message names the file and line, the stream
table (by name, or as ``stream_tables[2]`` when it has none) and the problem, e.g.
``pgtrickle.yaml:12: stream table "orders_by_region": unknown key "shedule"``, with a DETAIL
and a HINT. Keys nobody knows are refused rather than ignored, so that a typo cannot silently
fall back to a default. The defining query is kept as written (less surrounding whitespace);
the compiler, not this module, decides whether it can be maintained.

>>> decls = parse_declarations('''
... stream_tables:
...   - name: orders_by_region
...     query: SELECT region, count(*) FROM orders GROUP BY region
... ''', "pgtrickle.yaml")
>>> decl = decls.stream_tables[0]
>>> decl.qualified_name, decl.schedule, decl.refresh_mode.value, decl.line
('public.orders_by_region', '1m', 'auto', 3)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import yaml
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

from dvm.plan import RefreshMode
from pgtrickle.errors import InvalidDeclaration
from scheduler.errors import InvalidSchedule
from scheduler.schedule import parse_schedule

__all__ = [
    "DEFAULT_REFRESH_MODE",
    "DEFAULT_SCHEDULE",
    "Declarations",
    "RefreshMode",
    "StreamTableDecl",
    "load_declarations",
    "parse_declarations",
]


DEFAULT_SCHEDULE = "1m"
DEFAULT_REFRESH_MODE = RefreshMode.AUTO
DEFAULT_SCHEMA = "public"

TOP_LEVEL_KEYS = ("dsn", "stream_tables")
STREAM_TABLE_KEYS = ("name", "query", "schedule", "refresh_mode")

# Lowercase ASCII only: the catalog and the compiler quote names, and a name that reads the
# same quoted or not is one users can also type unquoted in their own SQL.
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_MAX_IDENTIFIER_BYTES = 63
# Schemas a stream table may not live in: PostgreSQL's own, and pgtrickle's catalog.
_RESERVED_SCHEMAS = ("information_schema", "pgtrickle")

_QUOTING_HINT = (
    'quote values that start with *, @, &, ! or %, or that contain ": " or " #"; '
    'for example: schedule: "*/5 * * * *"'
)

_MODEL_CONFIG = ConfigDict(extra="forbid", strict=True)

_EXAMPLE_FILE = (
    "a minimal file is:\n"
    "stream_tables:\n"
    "  - name: orders_by_region\n"
    "    query: SELECT region, count(*) FROM orders GROUP BY region"
)


@dataclass(frozen=True, config=_MODEL_CONFIG)
class StreamTableDecl:
    """One entry of ``stream_tables``; ``line`` is where it starts in the file (1-based)."""

    schema: str
    name: str
    query: str
    schedule: str = DEFAULT_SCHEDULE
    refresh_mode: RefreshMode = DEFAULT_REFRESH_MODE
    line: int | None = None

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, config=_MODEL_CONFIG)
class Declarations:
    """The whole file: where it came from, its ``dsn`` if any, and its stream tables in order."""

    path: str
    dsn: str | None
    stream_tables: tuple[StreamTableDecl, ...]


def load_declarations(path: str | Path) -> Declarations:
    """Read and check a ``pgtrickle.yaml``; messages name the file as ``path`` is written."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidDeclaration(
            f"{where}: no such file",
            detail="pgtrickle reads the stream tables it maintains from this file.",
            hint=f"check the path, or create the file; {_EXAMPLE_FILE}",
        ) from None
    except UnicodeDecodeError as exc:
        raise InvalidDeclaration(
            f"{where}: the file is not UTF-8 (byte {exc.start})",
            detail=str(exc),
            hint="save the file as UTF-8",
        ) from None
    except OSError as exc:
        raise InvalidDeclaration(
            f"{where}: cannot read the file: {exc.strerror or exc}",
            detail=str(exc),
            hint="check that the path names a file this user may read",
        ) from None
    return parse_declarations(text, where)


def parse_declarations(text: str, path: str = "<string>") -> Declarations:
    """Check the text of a ``pgtrickle.yaml``; ``path`` is only used in messages."""
    root, data, duplicates = _load_yaml(text, path)
    top = _Where(path, None, _line(root))
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        found = "an empty file" if data is None else f"a {_kind(data)}"
        raise top.refuse(
            f"expected a mapping with the key stream_tables at the top level, found {found}",
            detail="The top level has the keys dsn (optional) and stream_tables.",
            hint=_EXAMPLE_FILE,
        )
    lines = _key_lines(root)
    _check_keys(top, data, lines, duplicates.get(id(root)), TOP_LEVEL_KEYS, "the top level")

    dsn = data.get("dsn")
    if dsn is not None and not isinstance(dsn, str):
        raise top.at(lines.get("dsn")).refuse(
            f'"dsn" must be a string, not a {_kind(dsn)}',
            detail="dsn is a libpq connection string or URI.",
            hint="for example: dsn: postgresql://user@localhost:5432/shop",
        )

    if "stream_tables" not in data:
        raise top.refuse(
            'missing key "stream_tables"',
            detail="stream_tables lists the stream tables to maintain.",
            hint=f"write stream_tables: [] to declare none; {_EXAMPLE_FILE}",
        )
    entries = data["stream_tables"]
    entries_node = _value_node(root, "stream_tables")
    if not isinstance(entries, list) or not isinstance(entries_node, yaml.SequenceNode):
        problem = (
            '"stream_tables" is empty'
            if entries is None
            else f'"stream_tables" must be a list, not a {_kind(entries)}'
        )
        raise top.at(lines.get("stream_tables")).refuse(
            problem,
            detail="Each item of stream_tables is a mapping with a name and a query.",
            hint=f"write stream_tables: [] to declare none; {_EXAMPLE_FILE}",
        )

    declared: dict[str, StreamTableDecl] = {}
    for index, (entry, node) in enumerate(zip(entries, entries_node.value, strict=True)):
        decl = _stream_table(path, index, entry, node, duplicates)
        first = declared.get(decl.qualified_name)
        if first is not None:
            raise _Where(path, f'stream table "{decl.qualified_name}"', decl.line).refuse(
                "declared twice",
                detail=f"It is first declared at {_position(path, first.line)}.",
                hint="remove one of the two, or give them different names",
            )
        declared[decl.qualified_name] = decl
    return Declarations(path=path, dsn=dsn, stream_tables=tuple(declared.values()))


def _stream_table(
    path: str,
    index: int,
    entry: object,
    node: yaml.Node,
    duplicates: Mapping[int, tuple[str, int]],
) -> StreamTableDecl:
    raw_name = entry.get("name") if isinstance(entry, dict) else None
    subject = (
        f'stream table "{raw_name}"'
        if isinstance(raw_name, str) and raw_name.strip()
        else f"stream_tables[{index}]"
    )
    where = _Where(path, subject, _line(node))
    if not isinstance(entry, dict) or not isinstance(node, yaml.MappingNode):
        raise where.refuse(
            f"expected a mapping, found {'nothing' if entry is None else f'a {_kind(entry)}'}",
            detail=f"A stream table is a mapping with the keys {_listing(STREAM_TABLE_KEYS)}.",
            hint=_EXAMPLE_FILE,
        )
    lines = _key_lines(node)
    _check_keys(where, entry, lines, duplicates.get(id(node)), STREAM_TABLE_KEYS, "a stream table")

    for key in ("name", "query"):
        if key not in entry:
            raise where.refuse(
                f'missing key "{key}"',
                detail="Every stream table needs a name and a query.",
                hint=_EXAMPLE_FILE,
            )

    schema, name = _check_name(where.at(lines.get("name")), entry["name"])
    query = _check_query(where.at(lines.get("query")), entry["query"])
    schedule = DEFAULT_SCHEDULE
    if "schedule" in entry:
        schedule = _check_schedule(where.at(lines.get("schedule")), entry["schedule"])
    refresh_mode = DEFAULT_REFRESH_MODE
    if "refresh_mode" in entry:
        refresh_mode = _check_refresh_mode(
            where.at(lines.get("refresh_mode")), entry["refresh_mode"]
        )
    return StreamTableDecl(
        schema=schema,
        name=name,
        query=query,
        schedule=schedule,
        refresh_mode=refresh_mode,
        line=_line(node),
    )


def _check_name(where: _Where, value: object) -> tuple[str, str]:
    detail = (
        "A name is an identifier, optionally after its schema and a dot (schema.name); an "
        "identifier has lowercase letters a-z, digits and underscores, does not start with a "
        f"digit and is at most {_MAX_IDENTIFIER_BYTES} bytes long."
    )
    hint = "for example: orders_by_region or sales.orders_by_region"
    if value is None:
        raise where.refuse('"name" is empty', detail, hint)
    if not isinstance(value, str):
        raise where.refuse(f'"name" must be a string, not a {_kind(value)}', detail, hint)
    parts = value.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        lowered = value.lower()
        if lowered != value and all(_IDENTIFIER.fullmatch(p) for p in lowered.split(".")):
            hint = f'did you mean "{lowered}"?'
        raise where.refuse(f'invalid name "{value}"', detail, hint)
    for part in parts:
        if len(part.encode()) > _MAX_IDENTIFIER_BYTES:
            which = "it" if part == value else f'"{part}"'
            raise where.refuse(
                f'invalid name "{value}": {which} is {len(part.encode())} bytes long',
                detail,
                "PostgreSQL would truncate it to 63 bytes; choose a shorter name",
            )
        if part.startswith("pg_"):
            raise where.refuse(
                f'invalid name "{value}": names starting with "pg_" are reserved',
                "PostgreSQL keeps the pg_ prefix for its system catalogs and schemas.",
                "choose a name that does not start with pg_",
            )
    schema, name = parts if len(parts) == 2 else (DEFAULT_SCHEMA, parts[0])
    if schema in _RESERVED_SCHEMAS:
        raise where.refuse(
            f'invalid name "{value}": schema "{schema}" is reserved',
            f"Stream tables cannot live in {_listing(_RESERVED_SCHEMAS)}: "
            "PostgreSQL and pgtrickle keep their catalogs there.",
            f"for example: public.{name} or a schema of your own",
        )
    return schema, name


def _check_query(where: _Where, value: object) -> str:
    detail = "query is the SELECT statement whose result the stream table holds."
    hint = "for example: query: SELECT region, count(*) FROM orders GROUP BY region"
    if value is None or (isinstance(value, str) and not value.strip()):
        raise where.refuse('"query" is empty', detail, hint)
    if not isinstance(value, str):
        raise where.refuse(f'"query" must be a string, not a {_kind(value)}', detail, hint)
    return value.strip()


def _check_schedule(where: _Where, value: object) -> str:
    if value is None:
        raise where.refuse(
            '"schedule" is empty',
            "A schedule is a duration with its unit, a cron expression or calculated.",
            f"remove the key to get the default {DEFAULT_SCHEDULE}, or write one such as 30s",
        )
    if not isinstance(value, str):
        hint = 'for example: 30s, 5m, "*/5 * * * *" or calculated'
        if isinstance(value, int) and not isinstance(value, bool):
            hint = f'give the unit: "{value}s" for {value} seconds, "{value}m" for {value} minutes'
        raise where.refuse(
            f'"schedule" must be a string, not a {_kind(value)}',
            "A schedule is a duration with its unit, a cron expression or calculated.",
            hint,
        )
    try:
        parse_schedule(value)
    except InvalidSchedule as exc:
        raise where.refuse(exc.message, exc.detail, exc.hint) from None
    return value


def _check_refresh_mode(where: _Where, value: object) -> RefreshMode:
    allowed = [mode.value for mode in RefreshMode]
    detail = f"refresh_mode is one of {_listing(allowed)} (default {DEFAULT_REFRESH_MODE})."
    if value is None:
        raise where.refuse('"refresh_mode" is empty', detail, _suggest("", allowed))
    if not isinstance(value, str):
        raise where.refuse(
            f'"refresh_mode" must be a string, not a {_kind(value)}', detail, _suggest("", allowed)
        )
    if value not in allowed:
        raise where.refuse(
            f'invalid refresh_mode "{value}"', detail, _suggest(value.lower(), allowed)
        )
    return RefreshMode(value)


def _check_keys(
    where: _Where,
    data: Mapping[object, object],
    lines: Mapping[str, int],
    duplicate: tuple[str, int] | None,
    allowed: Sequence[str],
    what: str,
) -> None:
    if duplicate is not None:
        repeated, line = duplicate
        raise where.at(line).refuse(
            f'duplicate key "{repeated}"',
            "YAML keeps only the last of repeated keys, so the others would be lost silently.",
            f'keep one "{repeated}"',
        )
    for key in data:
        if str(key) not in allowed:
            raise where.at(lines.get(str(key))).refuse(
                f'unknown key "{key}"',
                f"The keys of {what} are {_listing(allowed)}.",
                _suggest(str(key), allowed),
            )


class _Where:
    """Where a problem is: the file, the stream table if any, and the line if known."""

    def __init__(self, path: str, subject: str | None, line: int | None) -> None:
        self.path = path
        self.subject = subject
        self.line = line

    def at(self, line: int | None) -> _Where:
        return _Where(self.path, self.subject, line or self.line)

    def refuse(self, problem: str, detail: str | None, hint: str | None) -> InvalidDeclaration:
        subject = f"{self.subject}: " if self.subject else ""
        return InvalidDeclaration(
            f"{_position(self.path, self.line)}: {subject}{problem}", detail=detail, hint=hint
        )


def _load_yaml(text: str, path: str) -> tuple[yaml.Node | None, object, dict[int, tuple[str, int]]]:
    """Parse with ``yaml.safe_load``'s rules, keeping the node tree for line numbers.

    Also returns, per mapping node, its first repeated key: YAML would keep only the last.
    """
    loader = yaml.SafeLoader(text)
    loader.name = path  # what the marks in YAML's own messages call the file
    try:
        root = loader.get_single_node()
        duplicates = _repeated_keys(root)
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        raise InvalidDeclaration(
            f"{position}: invalid YAML: {problem or 'cannot parse'}",
            detail=str(exc),
            hint=_QUOTING_HINT
            if isinstance(exc, yaml.scanner.ScannerError | yaml.parser.ParserError)
            else "write one plain YAML document, without tags such as !!python/object",
        ) from None
    except yaml.YAMLError as exc:
        raise InvalidDeclaration(
            f"{path}: invalid YAML: {exc}",
            detail=str(exc),
            hint="save the file as plain UTF-8 text",
        ) from None
    finally:
        loader.dispose()
    return root, data, duplicates


def _repeated_keys(root: yaml.Node | None) -> dict[int, tuple[str, int]]:
    found: dict[int, tuple[str, int]] = {}
    seen: set[int] = set()
    pending = [root] if root is not None else []
    while pending:
        node = pending.pop()
        if id(node) in seen:  # aliases share nodes
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                pending.extend((key, value))
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                if key.value in keys and id(node) not in found:
                    found[id(node)] = (key.value, _line(key) or 0)
                keys.add(key.value)
        elif isinstance(node, yaml.SequenceNode):
            pending.extend(node.value)
    return found


def _key_lines(node: yaml.MappingNode) -> dict[str, int]:
    """The line of each key of a mapping, the last one winning as it does in the data."""
    return {
        str(key.value): _line(key) or 0 for key, _ in node.value if isinstance(key, yaml.ScalarNode)
    }


def _value_node(node: yaml.MappingNode, wanted: str) -> yaml.Node | None:
    found = None
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value == wanted:
            found = value
    return found


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def _position(path: str, line: int | None) -> str:
    return f"{path}:{line}" if line else path


def _suggest(word: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, allowed, n=1)
    if close:
        return f'did you mean "{close[0]}"?'
    return f"use one of {_listing(allowed)}"


def _listing(words: Iterable[str]) -> str:
    return ", ".join(words)


def _kind(value: object) -> str:
    kinds = {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "number"}
    return kinds.get(type(value), "number" if isinstance(value, float) else type(value).__name__)
