"""The operator tree a defining query is compiled into, and its explain rendering.

Two kinds of node. *Row* nodes (scans, joins, filters, semi-joins) produce the rows of a FROM
clause, addressed by the query's own table aliases (``"o"."amount"``), so user expressions
apply to them verbatim. *Relation* nodes (projections, aggregates, set operations, TopK)
produce rows with named columns, as a SELECT does; a relation becomes a row node again under
an alias (``SubqueryScan``: a derived table, a CTE, a view, a subquery of a predicate).

>>> from dvm import sql
>>> from dvm.catalog import Column, SourceTable
>>> t = SourceTable(1, "public", "t", (Column("id", "integer"), Column("v", "integer")), ("id",))
>>> tree = Project(Scan(t, "t", ("id", "v")), (Output("v", sql.col("t", "v")),))
>>> print("\\n".join(explain_tree(tree)))
Project "t"."v"
└─ Scan public.t AS t [keyed by id] reads id, v
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from sqlglot import exp

from dvm.catalog import SourceTable
from dvm.dialect import render


@dataclass(frozen=True, eq=False)
class Scan:
    """Rows of one base table under one alias."""

    table: SourceTable
    alias: str
    columns: tuple[str, ...]
    """The columns the query reads (primary key included)."""


@dataclass(frozen=True, eq=False)
class SubqueryScan:
    """A relation's rows under an alias, its columns named ``columns``."""

    query: Relation
    alias: str
    columns: tuple[str, ...]
    origin: str = "subquery"
    """What the user wrote: ``subquery``, ``CTE name``, ``view name``, ``scalar subquery``."""


class JoinKind(StrEnum):
    LEFT = "left"
    RIGHT = "right"
    FULL = "full"


@dataclass(frozen=True, eq=False)
class InnerJoin:
    """An inner join of n inputs (cross products included): one node, n delta terms."""

    inputs: tuple[Rows, ...]
    condition: exp.Expr | None


@dataclass(frozen=True, eq=False)
class OuterJoin:
    kind: JoinKind
    left: Rows
    right: Rows
    condition: exp.Expr


@dataclass(frozen=True, eq=False)
class Filter:
    input: Rows
    predicate: exp.Expr


@dataclass(frozen=True, eq=False)
class SemiJoin:
    """Rows of ``input`` for which a row of ``subquery`` satisfies ``condition`` (anti: none)."""

    input: Rows
    subquery: SubqueryScan
    condition: exp.Expr
    anti: bool
    written: str
    """The predicate as the user wrote it: ``EXISTS``, ``NOT IN``, ..."""


Rows = Scan | SubqueryScan | InnerJoin | OuterJoin | Filter | SemiJoin


@dataclass(frozen=True)
class Output:
    name: str
    expression: exp.Expr
    type: str | None = None
    """What the compiler knows of the value's type (``format_type`` text), for a relation
    read by an enclosing query: exactness and scale decide how its sums are kept."""


@dataclass(frozen=True, eq=False)
class Project:
    input: Rows
    outputs: tuple[Output, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(output.name for output in self.outputs)

    @property
    def types(self) -> tuple[str | None, ...]:
        return tuple(output.type for output in self.outputs)


class AggregateClass(StrEnum):
    """How an aggregate is maintained (the classification ``explain`` shows)."""

    ALGEBRAIC_INVERTIBLE = "ALGEBRAIC_INVERTIBLE"
    """New value = old value + the delta's contribution (count, sum of exact numbers)."""
    ALGEBRAIC_VIA_AUX = "ALGEBRAIC_VIA_AUX"
    """Computed from invertible auxiliary values kept beside it (avg: sum and count)."""
    SEMI_ALGEBRAIC = "SEMI_ALGEBRAIC"
    """Inserts combine; a group is rescanned only when its extreme value leaves (min, max)."""
    GROUP_RESCAN = "GROUP_RESCAN"
    """Affected groups are recomputed from the inputs."""


@dataclass(frozen=True)
class AggregateCall:
    name: str
    """The function as written, lower case: ``count``, ``sum``, ``string_agg`` ..."""
    expression: exp.Expr
    """The call as it appears in the query (what outputs and HAVING refer to)."""
    argument: exp.Expr | None
    """The one argument of a plain call (None for ``count(*)`` and complex calls)."""
    kind: AggregateClass
    why: str
    """Why this class: shown by ``explain`` beside the class."""
    scales: tuple[int, ...] = ()
    """For a numeric sum whose values have one of several scales: those scales, ascending."""
    open_scale: bool = False
    """A numeric sum whose values can have any scale (a ``numeric`` without one): a count of
    values per scale is kept in a map beside it."""


@dataclass(frozen=True, eq=False)
class Aggregate:
    """``SELECT outputs FROM input GROUP BY group_by HAVING having`` (also DISTINCT)."""

    input: Rows
    group_by: tuple[exp.Expr, ...]
    calls: tuple[AggregateCall, ...]
    having: exp.Expr | None
    outputs: tuple[Output, ...]
    scalar: bool = False
    """Without GROUP BY: exactly one row, whatever the input."""
    not_null: tuple[bool, ...] = ()
    """Per group key: known never to be NULL (affected groups can be found by IN on it)."""
    key_types: tuple[str | None, ...] = ()
    """The group keys' types where known (a type without a hash opclass hashes its text)."""
    distinct: bool = field(default=False)
    """Written as SELECT DISTINCT (the keys are the outputs)."""
    input_types: tuple[tuple[str, str, str | None], ...] = ()
    """(alias, column, type) of the input's columns that keys, outputs and HAVING read, where
    known (netting the input's rows by value hashes those of types that allow it)."""

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(output.name for output in self.outputs)

    @property
    def types(self) -> tuple[str | None, ...]:
        return tuple(output.type for output in self.outputs)

    @property
    def not_null_keys(self) -> bool:
        return (
            bool(self.group_by) and len(self.not_null) == len(self.group_by) and all(self.not_null)
        )

    @property
    def algebraic(self) -> bool:
        """Maintainable from auxiliary values in storage when it is the stored relation."""
        return self.having is None and all(
            call.kind is not AggregateClass.GROUP_RESCAN for call in self.calls
        )


@dataclass(frozen=True, eq=False)
class UnionAll:
    inputs: tuple[Relation, ...]
    columns: tuple[str, ...]


class SetKind(StrEnum):
    INTERSECT = "INTERSECT"
    EXCEPT = "EXCEPT"


@dataclass(frozen=True, eq=False)
class SetOperation:
    kind: SetKind
    all: bool
    left: Relation
    right: Relation
    columns: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class TopK:
    """The first ``limit`` rows of ``input`` in ``order`` (expressions over its columns),
    after the first ``offset``."""

    input: Relation
    order: tuple[exp.Ordered, ...]
    limit: int
    offset: int = 0

    @property
    def columns(self) -> tuple[str, ...]:
        return self.input.columns


Relation = Project | Aggregate | UnionAll | SetOperation | TopK
Operator = Rows | Relation


def children(node: Operator) -> tuple[Operator, ...]:
    if isinstance(node, Scan):
        return ()
    if isinstance(node, SubqueryScan):
        return (node.query,)
    if isinstance(node, InnerJoin):
        return node.inputs
    if isinstance(node, OuterJoin | SetOperation):
        return (node.left, node.right)
    if isinstance(node, SemiJoin):
        return (node.input, node.subquery)
    if isinstance(node, UnionAll):
        return node.inputs
    return (node.input,)


def scans(node: Operator) -> list[Scan]:
    """The scans under ``node``, left to right."""
    if isinstance(node, Scan):
        return [node]
    return [scan for child in children(node) for scan in scans(child)]


def walk(node: Operator) -> list[Operator]:
    """``node`` and every node under it, root first."""
    return [node, *(n for child in children(node) for n in walk(child))]


def explain_tree(node: Operator) -> list[str]:
    """The tree as indented lines, root first."""
    below = children(node)
    head, *details = _describe(node)
    lines = [head, *(("│  " if below else "   ") + line for line in details)]
    for index, child in enumerate(below):
        last = index == len(below) - 1
        sub = explain_tree(child)
        lines.append(("└─ " if last else "├─ ") + sub[0])
        lines.extend(("   " if last else "│  ") + line for line in sub[1:])
    return lines


def _describe(node: Operator) -> list[str]:
    """A header line, and detail lines for aggregate calls."""
    if isinstance(node, Aggregate):
        keys = ", ".join(render(key) for key in node.group_by) or "(none: one row)"
        word = "Distinct" if node.distinct else "Aggregate"
        having = f" having {render(node.having)}" if node.having is not None else ""
        calls = [f"{render(c.expression)}: {c.kind.value} ({c.why})" for c in node.calls]
        return [f"{word} group by {keys}{having}", *calls]
    return [_header(node)]


def _header(node: Operator) -> str:
    if isinstance(node, Scan):
        identity = (
            f"keyed by {', '.join(node.table.primary_key)}" if node.table.keyed else "keyless"
        )
        return (
            f"Scan {node.table.qualified_name} AS {node.alias} [{identity}]"
            f" reads {', '.join(node.columns)}"
        )
    if isinstance(node, SubqueryScan):
        return f"SubqueryScan {node.origin} AS {node.alias} ({', '.join(node.columns)})"
    if isinstance(node, InnerJoin):
        on = f" on {render(node.condition)}" if node.condition is not None else " (cross)"
        return f"Join inner of {len(node.inputs)}{on}"
    if isinstance(node, OuterJoin):
        return f"Join {node.kind.value} on {render(node.condition)}"
    if isinstance(node, Filter):
        return f"Filter {render(node.predicate)}"
    if isinstance(node, SemiJoin):
        kind = "Anti" if node.anti else "Semi"
        return f"{kind}Join [{node.written}] on {render(node.condition)}"
    if isinstance(node, Project):
        return f"Project {', '.join(_output(output) for output in node.outputs)}"
    if isinstance(node, UnionAll):
        return f"UnionAll ({', '.join(node.columns)})"
    if isinstance(node, SetOperation):
        return f"{node.kind.value}{' ALL' if node.all else ''} ({', '.join(node.columns)})"
    assert isinstance(node, TopK), "aggregates are described with their calls"
    order = ", ".join(render(item) for item in node.order)
    skipped = f" offset {node.offset}" if node.offset else ""
    return f"TopK {node.limit}{skipped} order by {order}"


def _output(output: Output) -> str:
    text = render(output.expression)
    if isinstance(output.expression, exp.Column) and output.expression.name == output.name:
        return text
    return f"{text} AS {output.name}"


def relation_types(relation: Relation) -> tuple[str | None, ...]:
    """What the compiler knows of the types of a relation's columns (None: unknown)."""
    if isinstance(relation, Project | Aggregate):
        return relation.types
    if isinstance(relation, TopK):
        return relation_types(relation.input)
    if isinstance(relation, UnionAll | SetOperation):
        inputs = (
            relation.inputs if isinstance(relation, UnionAll) else (relation.left, relation.right)
        )
        return tuple(
            _common_type(types) for types in zip(*map(relation_types, inputs), strict=True)
        )
    return (None,) * len(relation.columns)


def _common_type(types: tuple[str | None, ...]) -> str | None:
    """The type of a set operation's column from its inputs' (as far as hashing goes: a
    numeric anywhere makes the column numeric, or floating point, which hashes by sign)."""
    if types and all(t == types[0] for t in types):
        return types[0]
    if any(t is not None and t.split("(")[0].strip() in ("numeric", "decimal") for t in types):
        return "numeric"
    return None
