"""The operator tree a defining query is compiled into, and its explain rendering.

Expressions inside nodes are sqlglot trees whose columns are qualified with the query's own
table aliases (``"o"."amount"``), so every rule can reuse them verbatim.

>>> from dvm import sql
>>> from dvm.catalog import Column, SourceTable
>>> t = SourceTable(1, "public", "t", (Column("id", "integer"), Column("v", "integer")), ("id",))
>>> tree = Project(Scan(t, "t", ("id", "v")), (Output("v", sql.col("t", "v")),))
>>> print("\\n".join(explain_tree(tree)))
Project "t"."v"
└─ Scan public.t AS t [keyed by id] reads id, v
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlglot import exp

from dvm.catalog import SourceTable
from dvm.dialect import render


@dataclass(frozen=True)
class Scan:
    """Rows of one base table under one alias."""

    table: SourceTable
    alias: str
    columns: tuple[str, ...]
    """The columns the query reads (primary key included: it is the row id)."""


@dataclass(frozen=True)
class Filter:
    input: Operator
    predicate: exp.Expr


class JoinKind(StrEnum):
    INNER = "inner"


@dataclass(frozen=True)
class Join:
    left: Operator
    right: Operator
    condition: exp.Expr | None
    """None for a cross product (a comma join keeps its condition in a Filter above)."""
    kind: JoinKind = JoinKind.INNER


@dataclass(frozen=True)
class Output:
    name: str
    expression: exp.Expr


@dataclass(frozen=True)
class Project:
    input: Operator
    outputs: tuple[Output, ...]


class AggregateFunction(StrEnum):
    COUNT_STAR = "count(*)"
    COUNT = "count"
    SUM = "sum"
    AVG = "avg"


class AggregateStrategy(StrEnum):
    ALGEBRAIC = "algebraic"
    """New values = old auxiliary values (from storage) + the delta's contribution."""
    RESCAN = "rescan"
    """Affected groups are recomputed from the base tables."""


@dataclass(frozen=True)
class AggregateCall:
    function: AggregateFunction
    argument: exp.Expr | None
    expression: exp.Expr
    """The call as it appears in the query (what outputs and HAVING refer to)."""


@dataclass(frozen=True)
class Aggregate:
    input: Operator
    group_by: tuple[exp.Expr, ...]
    calls: tuple[AggregateCall, ...]
    having: exp.Expr | None
    strategy: AggregateStrategy
    strategy_reason: str | None = None

    @property
    def scalar(self) -> bool:
        """Without GROUP BY: exactly one row, whatever the input."""
        return not self.group_by


Operator = Scan | Filter | Join | Project | Aggregate


def scans(node: Operator) -> list[Scan]:
    """The scans under ``node``, left to right."""
    if isinstance(node, Scan):
        return [node]
    if isinstance(node, Join):
        return scans(node.left) + scans(node.right)
    return scans(node.input)


def explain_tree(node: Operator) -> list[str]:
    """The tree as indented lines, root first."""
    lines = [_describe(node)]
    children = _children(node)
    for index, child in enumerate(children):
        last = index == len(children) - 1
        sub = explain_tree(child)
        lines.append(("└─ " if last else "├─ ") + sub[0])
        lines.extend(("   " if last else "│  ") + line for line in sub[1:])
    return lines


def _children(node: Operator) -> list[Operator]:
    if isinstance(node, Scan):
        return []
    if isinstance(node, Join):
        return [node.left, node.right]
    return [node.input]


def _describe(node: Operator) -> str:
    if isinstance(node, Scan):
        identity = (
            f"keyed by {', '.join(node.table.primary_key)}" if node.table.keyed else "keyless"
        )
        return (
            f"Scan {node.table.qualified_name} AS {node.alias} [{identity}]"
            f" reads {', '.join(node.columns)}"
        )
    if isinstance(node, Filter):
        return f"Filter {render(node.predicate)}"
    if isinstance(node, Join):
        on = f" on {render(node.condition)}" if node.condition is not None else " (cross)"
        return f"Join {node.kind.value}{on}"
    if isinstance(node, Project):
        outputs = ", ".join(_output(output) for output in node.outputs)
        return f"Project {outputs}"
    keys = ", ".join(render(key) for key in node.group_by) or "(none: one row)"
    calls = ": " + ", ".join(render(call.expression) for call in node.calls) if node.calls else ""
    having = f" having {render(node.having)}" if node.having is not None else ""
    reason = f" ({node.strategy_reason})" if node.strategy_reason else ""
    return f"Aggregate [{node.strategy.value}{reason}] group by {keys}{calls}{having}"


def _output(output: Output) -> str:
    text = render(output.expression)
    if isinstance(output.expression, exp.Column) and output.expression.name == output.name:
        return text
    return f"{text} AS {output.name}"
