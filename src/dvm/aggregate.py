"""Aggregate: count, sum and avg per group, kept with auxiliary columns, or groups recomputed.

Algebraic (the default): the input's delta is aggregated per group (Δcount = SUM(w), Δsum =
SUM(x) FILTER (w > 0) - SUM(x) FILTER (w < 0), which has sum(x)'s own type because weights are
±1, Δnon-null = SUM(w) over non-null x), added to the group's old auxiliary values read from
the storage table, and the outputs are evaluated over the new values. A group whose count
drops to 0 is deleted, except the one row of an aggregate without GROUP BY.

Rescan (with HAVING, whose failing groups are absent from storage, or inexact sums such as
floating point ones): the groups the delta touches are recomputed from the base tables.

>>> from dvm.catalog import Column, SourceTable
>>> from dvm.scan import scan
>>> from dvm.dialect import render_pretty
>>> from dvm.operators import AggregateCall as Call, AggregateFunction as F, Output, Scan
>>> t = SourceTable(5, "public", "t", (Column("g", "integer"), Column("x", "integer")))
>>> x = sql.col("t", "x")
>>> node = Aggregate(Scan(t, "t", ("g", "x")), (sql.col("t", "g"),),
...                  (Call(F.SUM, x, exp.Sum(this=x)),), None, AggregateStrategy.ALGEBRAIC)
>>> aux_columns(node)
('__pgt_count', '__pgt_sum_1', '__pgt_nn_1')
>>> outputs = (Output("g", sql.col("t", "g")), Output("sum", exp.Sum(this=x)))
>>> print(render_pretty(storage_query(node, outputs, scan(node.input).new)))
SELECT
  HASHTEXTEXTENDED(CAST(ROW("t"."g") AS TEXT), 0) AS "__pgt_row_id",
  "t"."g" AS "g",
  SUM("t"."x") AS "sum",
  COUNT(*) AS "__pgt_count",
  SUM("t"."x") AS "__pgt_sum_1",
  COUNT("t"."x") AS "__pgt_nn_1"
FROM "public"."t" AS "t"
GROUP BY
  "t"."g"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlglot import exp

from dvm import sql
from dvm.consolidate import ACTION
from dvm.dialect import render
from dvm.operators import (
    Aggregate,
    AggregateCall,
    AggregateFunction,
    AggregateStrategy,
    Output,
)
from dvm.zset import ROW_ID, WEIGHT, Derived, ZSet

COUNT = "__pgt_count"
_IN, _DELTA, _NEW, _AFFECTED, _RECOMPUTED = "__pgt_in", "__pgt_d", "__pgt_n", "__pgt_a", "__pgt_r"


@dataclass(frozen=True)
class _Argument:
    """One distinct argument of sum/avg/count(x), numbered from 1."""

    number: int
    expression: exp.Expr
    summed: bool

    @property
    def sum(self) -> str:
        return f"__pgt_sum_{self.number}"

    @property
    def nonnull(self) -> str:
        return f"__pgt_nn_{self.number}"

    @property
    def delta_nonnull(self) -> str:
        return f"__pgt_dnn{self.number}"

    @property
    def delta_pos(self) -> str:
        return f"__pgt_dpos{self.number}"

    @property
    def delta_neg(self) -> str:
        return f"__pgt_dneg{self.number}"


def _arguments(node: Aggregate) -> list[_Argument]:
    found: dict[str, _Argument] = {}
    for call in node.calls:
        if call.argument is None:
            continue
        key = render(call.argument)
        summed = call.function in (AggregateFunction.SUM, AggregateFunction.AVG)
        previous = found.get(key)
        number = previous.number if previous else len(found) + 1
        found[key] = _Argument(number, call.argument, summed or bool(previous and previous.summed))
    return list(found.values())


def aux_columns(node: Aggregate) -> tuple[str, ...]:
    """The hidden columns after ``__pgt_row_id`` that the algebraic rule keeps in storage."""
    if node.strategy is AggregateStrategy.RESCAN:
        return ()
    columns = [COUNT]
    for argument in _arguments(node):
        columns.extend([argument.sum, argument.nonnull] if argument.summed else [argument.nonnull])
    return tuple(columns)


def _group_id(keys: Sequence[exp.Expr]) -> exp.Expr:
    """A group's row id: the hash of its key values; a constant without GROUP BY."""
    return sql.row_hash(keys) if keys else sql.cast(sql.lit(0), "bigint")


def storage_query(node: Aggregate, outputs: Sequence[Output], new: ZSet) -> exp.Select:
    """The stored rows: row id, outputs and auxiliary values of every group, from ``new``."""
    (term,) = new.terms
    columns: list[exp.Expr] = [sql.alias(_group_id(node.group_by), ROW_ID)]
    columns.extend(sql.alias(output.expression.copy(), output.name) for output in outputs)
    if node.strategy is AggregateStrategy.ALGEBRAIC:
        columns.append(sql.alias(exp.Count(this=exp.Star()), COUNT))
        for argument in _arguments(node):
            if argument.summed:
                columns.append(sql.alias(exp.Sum(this=argument.expression.copy()), argument.sum))
            columns.append(sql.alias(exp.Count(this=argument.expression.copy()), argument.nonnull))
    select = term.from_where(exp.select(*columns))
    if node.group_by:
        select = select.group_by(*[key.copy() for key in node.group_by], copy=False)
    if node.having is not None:
        select = select.having(node.having.copy(), copy=False)
    return select


def aggregate(
    node: Aggregate, outputs: Sequence[Output], input: Derived, storage: tuple[str, str]
) -> exp.Query:
    """The keyed changes (``__pgt_row_id, __pgt_action, outputs, aux``) of the affected groups."""
    if node.strategy is AggregateStrategy.RESCAN:
        return _rescan(node, outputs, input, storage)
    return _algebraic(node, outputs, input.delta, storage)


def _key_columns(node: Aggregate) -> list[str]:
    return [f"__pgt_g{index}" for index in range(1, len(node.group_by) + 1)]


def _algebraic(
    node: Aggregate, outputs: Sequence[Output], delta: ZSet, storage: tuple[str, str]
) -> exp.Query:
    """``__pgt_in`` (the input delta) -> ``__pgt_d`` (its sums per group) -> ``__pgt_n`` (old
    auxiliary values + those sums) -> the changed groups' outputs."""
    keys = _key_columns(node)
    arguments = _arguments(node)
    values = [(f"__pgt_x{a.number}", a.expression) for a in arguments]
    rows = delta.select(
        list(zip(keys, node.group_by, strict=True)) + values, weighted=True, identified=False
    )
    return (
        _changes(node, outputs, arguments, keys)
        .with_(_IN, as_=rows, copy=False)
        .with_(_DELTA, as_=_delta_per_group(keys, arguments), copy=False)
        .with_(_NEW, as_=_new_state(keys, arguments, storage), copy=False)
    )


def _delta_per_group(keys: list[str], arguments: list[_Argument]) -> exp.Select:
    """Δcount = SUM(w); Δnon-null = SUM(w) over non-null x; Δsum = the sums of x with
    positive and with negative weight, each of sum(x)'s own type."""
    weight = sql.col(None, WEIGHT)
    columns: list[exp.Expr] = [sql.alias(_group_id([sql.col(None, k) for k in keys]), ROW_ID)]
    columns.extend(sql.col(None, key) for key in keys)
    columns.append(sql.alias(sql.coalesce_zero(exp.Sum(this=weight.copy())), "__pgt_dc"))
    for argument in arguments:
        x = sql.col(None, f"__pgt_x{argument.number}")
        counted = exp.Case(
            ifs=[exp.If(this=exp.Is(this=x.copy(), expression=exp.Null()), true=sql.lit(0))],
            default=weight.copy(),
        )
        columns.append(sql.alias(sql.coalesce_zero(exp.Sum(this=counted)), argument.delta_nonnull))
        if argument.summed:
            for name, sign in ((argument.delta_pos, exp.GT), (argument.delta_neg, exp.LT)):
                filtered = exp.Filter(
                    this=exp.Sum(this=x.copy()),
                    expression=exp.Where(this=sign(this=weight.copy(), expression=sql.lit(0))),
                )
                columns.append(sql.alias(filtered, name))
    grouped = exp.select(*columns).from_(_IN)
    if keys:
        grouped = grouped.group_by(*[sql.col(None, key) for key in keys], copy=False)
    return grouped


def _new_state(keys: list[str], arguments: list[_Argument], storage: tuple[str, str]) -> exp.Select:
    """New auxiliary values of the groups the delta changes: old (from storage, zero when the
    group is new) + delta. A sum whose non-null count drops to 0 is NULL."""

    def old(column: str) -> exp.Expr:
        return sql.coalesce_zero(sql.col("s", column))

    def delta(column: str) -> exp.Expr:
        return sql.col("d", column)

    columns: list[exp.Expr] = [delta(ROW_ID), *[delta(key) for key in keys]]
    columns.append(sql.alias(exp.Add(this=old(COUNT), expression=delta("__pgt_dc")), COUNT))
    changed: list[exp.Expr] = [_nonzero(delta("__pgt_dc"))]
    for argument in arguments:
        nonnull = exp.Add(this=old(argument.nonnull), expression=delta(argument.delta_nonnull))
        columns.append(sql.alias(nonnull, argument.nonnull))
        changed.append(_nonzero(delta(argument.delta_nonnull)))
        if not argument.summed:
            continue
        positive = sql.coalesce_zero(delta(argument.delta_pos))
        negative = sql.coalesce_zero(delta(argument.delta_neg))
        total = exp.Sub(
            this=exp.Add(this=old(argument.sum), expression=positive), expression=negative
        )
        none_left = exp.EQ(this=nonnull.copy(), expression=sql.lit(0))
        new_sum = exp.Case(ifs=[exp.If(this=none_left, true=exp.Null())], default=total)
        columns.append(sql.alias(new_sum, argument.sum))
        changed.append(exp.NEQ(this=positive.copy(), expression=negative.copy()))
    return (
        exp.select(*columns)
        .from_(_cte(_DELTA, "d"))
        .join(
            sql.table(*storage, alias="s"),
            on=exp.EQ(this=sql.col("s", ROW_ID), expression=delta(ROW_ID)),
            join_type="left",
            copy=False,
        )
        .where(exp.or_(*changed, copy=False), copy=False)
    )


def _changes(
    node: Aggregate, outputs: Sequence[Output], arguments: list[_Argument], keys: list[str]
) -> exp.Select:
    """'U' with the outputs evaluated over the new values, or 'D' for a group now empty
    (never for the one row of an aggregate without GROUP BY)."""
    replacements = _new_value_replacements(node, arguments, keys)
    empty = exp.EQ(this=sql.col("n", COUNT), expression=sql.lit(0))
    action: exp.Expr = (
        sql.lit("U")
        if node.scalar
        else exp.Case(ifs=[exp.If(this=empty.copy(), true=sql.lit("D"))], default=sql.lit("U"))
    )
    columns: list[exp.Expr] = [sql.col("n", ROW_ID), sql.alias(action, ACTION)]
    for output in outputs:
        value = _rewrite(output.expression, replacements)
        if not node.scalar:
            # a deleted group's values are not needed, and could divide by its zero count
            value = exp.Case(ifs=[exp.If(this=empty.copy(), true=exp.Null())], default=value)
        columns.append(sql.alias(value, output.name))
    columns.extend(sql.col("n", column) for column in aux_columns(node))
    return exp.select(*columns).from_(_cte(_NEW, "n"))


def _cte(name: str, alias: str) -> exp.Table:
    return exp.Table(this=sql.ident(name), alias=exp.TableAlias(this=sql.ident(alias)))


def _nonzero(value: exp.Expr) -> exp.Expr:
    return exp.NEQ(this=value, expression=sql.lit(0))


def _new_value_replacements(
    node: Aggregate, arguments: list[_Argument], keys: list[str]
) -> dict[str, exp.Expr]:
    """Rendered group key or aggregate call -> its value in the new state ``n``."""
    numbers = {render(a.expression): a.number for a in arguments}
    replacements: dict[str, exp.Expr] = {}
    for key, column in zip(node.group_by, keys, strict=True):
        replacements.setdefault(render(key), sql.col("n", column))
    for call in node.calls:
        replacements[render(call.expression)] = _call_value(call, numbers)
    return replacements


def _call_value(call: AggregateCall, numbers: dict[str, int]) -> exp.Expr:
    if call.function is AggregateFunction.COUNT_STAR:
        return sql.col("n", COUNT)
    assert call.argument is not None
    number = numbers[render(call.argument)]
    if call.function is AggregateFunction.COUNT:
        return sql.col("n", f"__pgt_nn_{number}")
    total = sql.col("n", f"__pgt_sum_{number}")
    if call.function is AggregateFunction.SUM:
        return total
    # PostgreSQL's avg of integers and numerics is numeric_div(sum, count), exactly this.
    return exp.paren(
        exp.Div(this=sql.cast(total, "numeric"), expression=sql.col("n", f"__pgt_nn_{number}"))
    )


def _rewrite(expression: exp.Expr, replacements: dict[str, exp.Expr]) -> exp.Expr:
    def replace(node: exp.Expr) -> exp.Expr:
        found = replacements.get(render(node))
        return found.copy() if found is not None else node

    return expression.copy().transform(replace, copy=False)


def _rescan(
    node: Aggregate, outputs: Sequence[Output], input: Derived, storage: tuple[str, str]
) -> exp.Query:
    """``__pgt_a``: the groups the input delta touches; ``__pgt_r``: those groups recomputed
    from the base tables (HAVING applied); 'U' for a group recomputed differently from what is
    stored, 'D' for a stored group that is no longer there."""
    keys = _key_columns(node)
    rows = input.delta.select(
        list(zip(keys, node.group_by, strict=True)), weighted=False, identified=False
    )
    affected = exp.select(sql.alias(_group_id([sql.col(None, k) for k in keys]), ROW_ID)).from_(_IN)
    affected.set("distinct", exp.Distinct())
    recomputed = storage_query(node, outputs, input.new)
    if node.group_by:
        ids = exp.select(sql.col(None, ROW_ID)).from_(_AFFECTED)
        recomputed = recomputed.where(
            exp.In(this=_group_id(node.group_by), query=ids.subquery()), copy=False
        )
    names = [output.name for output in outputs]
    missing = exp.Is(this=sql.col("r", ROW_ID), expression=exp.Null())
    was_missing = exp.Is(this=sql.col("s", ROW_ID), expression=exp.Null())
    changed = exp.or_(
        exp.NullSafeNEQ(this=exp.paren(missing.copy()), expression=exp.paren(was_missing)),
        exp.NullSafeNEQ(
            this=sql.row_text([sql.col("r", name) for name in names]),
            expression=sql.row_text([sql.col("s", name) for name in names]),
        ),
    )
    action = exp.Case(ifs=[exp.If(this=missing.copy(), true=sql.lit("D"))], default=sql.lit("U"))
    final = (
        exp.select(
            sql.col("a", ROW_ID),
            sql.alias(action, ACTION),
            *[sql.col("r", name) for name in names],
        )
        .from_(_cte(_AFFECTED, "a"))
        .join(
            _cte(_RECOMPUTED, "r"),
            on=exp.EQ(this=sql.col("r", ROW_ID), expression=sql.col("a", ROW_ID)),
            join_type="left",
            copy=False,
        )
        .join(
            sql.table(*storage, alias="s"),
            on=exp.EQ(this=sql.col("s", ROW_ID), expression=sql.col("a", ROW_ID)),
            join_type="left",
            copy=False,
        )
        .where(changed, copy=False)
    )
    return (
        final.with_(_IN, as_=rows, copy=False)
        .with_(_AFFECTED, as_=affected, copy=False)
        .with_(_RECOMPUTED, as_=recomputed, copy=False)
    )
