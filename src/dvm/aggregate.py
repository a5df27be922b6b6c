"""The stored aggregate: a stream table whose query is a GROUP BY (or DISTINCT, or UNION).

Algebraic (every call ALGEBRAIC_*, no HAVING): the input's delta is aggregated per group
(Δcount = SUM(w), Δsum = SUM(x · w), Δnon-null = SUM(w) over non-null x), added to the
group's auxiliary values read from the storage table, and the outputs are evaluated over the
new values. A group whose count drops to 0 is deleted, except the one row of an aggregate
without GROUP BY.

Rescan (HAVING, whose failing groups are absent from storage; or a call of another class):
the groups the delta touches are recomputed from the input's new state and compared with
what is stored.

A group's row id is the hash of its key *values* (``dvm.sql.value_hash``): keys SQL groups
together (``1.0`` and ``1.00``, NULL and NULL) have one id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlglot import exp

from dvm import sql
from dvm.consolidate import ACTION
from dvm.dialect import render
from dvm.operators import Aggregate, AggregateCall, AggregateClass
from dvm.rules.aggregate import affected_groups, grouped
from dvm.rules.project import outputs_of
from dvm.zset import ROW_ID, WEIGHT, Context, DerivedRows, cte_item, live, union_all

COUNT = "__pgt_count"


@dataclass(frozen=True)
class _Argument:
    """One distinct argument of sum/avg/count(x), numbered from 1."""

    number: int
    expression: exp.Expr
    summed: bool
    scales: tuple[int, ...] = ()
    """Several possible scales of a numeric argument: a count of values per scale is kept for
    each but the smallest, so that the sum shows the scale PostgreSQL's would."""
    open_scale: bool = False
    """A numeric argument of any scale: the counts per scale are kept in a map (jsonb)."""

    @property
    def scale_counts(self) -> list[tuple[int, str]]:
        return [(scale, f"__pgt_sc{self.number}_{scale}") for scale in self.scales[1:]]

    @property
    def scale_map(self) -> str:
        return f"__pgt_scm_{self.number}"

    @property
    def sum(self) -> str:
        return f"__pgt_sum_{self.number}"

    @property
    def nonnull(self) -> str:
        return f"__pgt_nn_{self.number}"


@dataclass(frozen=True)
class _Extreme:
    """One distinct min(x) or max(x), numbered from 1: its value is kept beside the group."""

    number: int
    expression: exp.Expr
    smallest: bool

    @property
    def value(self) -> str:
        return f"__pgt_ext{self.number}"

    def of(self, expression: exp.Expr) -> exp.Expr:
        return exp.Min(this=expression) if self.smallest else exp.Max(this=expression)

    def combined(self, a: exp.Expr, b: exp.Expr) -> exp.Expr:
        kind = exp.Least if self.smallest else exp.Greatest
        return kind(this=a, expressions=[b])

    def lost(self, deleted: exp.Expr, stored: exp.Expr) -> exp.Expr:
        """A deleted value at or beyond the stored extreme: the extreme may have left."""
        compare = exp.LTE if self.smallest else exp.GTE
        return exp.Coalesce(
            this=compare(this=deleted, expression=stored), expressions=[exp.false()]
        )


def _extremes(node: Aggregate) -> list[_Extreme]:
    found: dict[tuple[str, bool], _Extreme] = {}
    for call in node.calls:
        if call.kind is AggregateClass.SEMI_ALGEBRAIC and call.argument is not None:
            key = (render(call.argument), call.name == "min")
            found.setdefault(key, _Extreme(len(found) + 1, call.argument, call.name == "min"))
    return list(found.values())


def _extreme_of(call: AggregateCall, extremes: list[_Extreme]) -> _Extreme:
    assert call.argument is not None
    key = (render(call.argument), call.name == "min")
    return next(e for e in extremes if (render(e.expression), e.smallest) == key)


def _arguments(node: Aggregate) -> list[_Argument]:
    found: dict[str, _Argument] = {}
    for call in node.calls:
        if call.argument is None or call.kind is AggregateClass.SEMI_ALGEBRAIC:
            continue
        if call.name in ("bool_and", "bool_or"):
            for expression in (call.argument, _indicator(call)):
                key = render(expression)
                if key not in found:
                    found[key] = _Argument(len(found) + 1, expression, summed=False)
            continue
        key = render(call.argument)
        summed = call.name in ("sum", "avg")
        previous = found.get(key)
        number = previous.number if previous else len(found) + 1
        found[key] = _Argument(
            number,
            call.argument,
            summed or bool(previous and previous.summed),
            call.scales or (previous.scales if previous else ()),
            call.open_scale or bool(previous and previous.open_scale),
        )
    return list(found.values())


def aux_columns(node: Aggregate) -> tuple[str, ...]:
    """The hidden columns after ``__pgt_row_id`` that the algebraic rule keeps in storage."""
    if not node.algebraic:
        return ()
    columns = [COUNT]
    for argument in _arguments(node):
        columns.extend([argument.sum, argument.nonnull] if argument.summed else [argument.nonnull])
        columns.extend(name for _, name in argument.scale_counts)
        if argument.summed and argument.open_scale:
            columns.append(argument.scale_map)
    columns.extend(extreme.value for extreme in _extremes(node))
    return tuple(columns)


def _of_scale(x: exp.Expr, scale: int, then: exp.Expr) -> exp.Expr:
    """``CASE WHEN scale(x) = scale THEN then END``."""
    return exp.Case(
        ifs=[
            exp.If(
                this=exp.EQ(this=sql.func("SCALE", x.copy()), expression=sql.lit(scale)),
                true=then,
            )
        ]
    )


def group_id(node: Aggregate, keys: Sequence[exp.Expr]) -> exp.Expr:
    """A group's row id: the hash of its key values; a constant without GROUP BY."""
    if not keys:
        return sql.cast(sql.lit(0), "bigint")
    return sql.value_hash(keys, node.key_types)


def storage_query(node: Aggregate, input: DerivedRows) -> exp.Select:
    """The stored rows: row id, outputs and auxiliary values of every group."""
    columns: list[exp.Expr] = [sql.alias(group_id(node, node.group_by), ROW_ID)]
    columns.extend(outputs_of(node.outputs))
    if node.algebraic:
        columns.append(sql.alias(exp.Count(this=exp.Star()), COUNT))
        for argument in _arguments(node):
            if argument.summed:
                columns.append(sql.alias(exp.Sum(this=argument.expression.copy()), argument.sum))
            columns.append(sql.alias(exp.Count(this=argument.expression.copy()), argument.nonnull))
            for scale, name in argument.scale_counts:
                counted = _of_scale(argument.expression, scale, sql.lit(1))
                columns.append(sql.alias(exp.Count(this=counted), name))
            if argument.summed and argument.open_scale:
                columns.append(sql.alias(_scales_of(argument.expression), argument.scale_map))
        for extreme in _extremes(node):
            columns.append(sql.alias(extreme.of(extreme.expression.copy()), extreme.value))
    return grouped(node, input.new, columns)


def delta_query(
    node: Aggregate, input: DerivedRows, context: Context, storage: tuple[str, str]
) -> exp.Select:
    """The keyed changes (``__pgt_row_id, __pgt_action, outputs, aux``) of affected groups."""
    if node.algebraic:
        return _algebraic(node, input, context, storage)
    return _rescan(node, input, context, storage)


def _key_columns(node: Aggregate) -> list[str]:
    return [f"__pgt_g{index}" for index in range(1, len(node.group_by) + 1)]


def _algebraic(
    node: Aggregate, input: DerivedRows, context: Context, storage: tuple[str, str]
) -> exp.Select:
    """The input delta -> its sums per group -> old auxiliary values + those sums -> the
    changed groups' outputs."""
    keys = _key_columns(node)
    arguments = _arguments(node)
    listed = [sql.alias(k.copy(), n) for k, n in zip(node.group_by, keys, strict=True)]
    listed += [sql.alias(a.expression.copy(), f"__pgt_x{a.number}") for a in arguments]
    extremes = _extremes(node)
    listed += [sql.alias(e.expression.copy(), f"__pgt_e{e.number}") for e in extremes]
    rows = union_all([term.select(listed, weighted=True) for term in live(input.delta)])
    changes = context.cte(rows, "in")
    per_group = context.cte(_delta_per_group(node, keys, arguments, extremes, changes), "pg")
    new = context.cte(_new_state(keys, arguments, extremes, storage, per_group), "n")
    if extremes:
        new = _rescan_extremes(node, input, context, keys, extremes, new)
    return context.statement(_changes(node, arguments, extremes, keys, new))


def _rescan_extremes(
    node: Aggregate,
    input: DerivedRows,
    context: Context,
    keys: list[str],
    extremes: list[_Extreme],
    new: str,
) -> str:
    """The groups whose extreme left, their extremes recomputed from the input; the others
    keep the combined ones."""
    flagged = exp.select(sql.col("f", ROW_ID)).from_(cte_item(new, "f"))
    flagged = flagged.where(sql.col("f", "__pgt_rescan"), copy=False)
    if node.group_by:
        restriction: exp.Expr = exp.In(this=group_id(node, node.group_by), query=flagged.subquery())
    else:
        restriction = exp.Exists(this=flagged)
    columns: list[exp.Expr] = [sql.alias(group_id(node, node.group_by), ROW_ID)]
    columns += [sql.alias(e.of(e.expression.copy()), e.value) for e in extremes]
    rescanned = context.cte(
        grouped(_without_having(node), input.new, columns, restriction=restriction), "x"
    )
    replaced = {e.value for e in extremes}
    listed: list[exp.Expr] = [sql.col("n", ROW_ID), *[sql.col("n", k) for k in keys]]
    for column in aux_columns(node):
        if column in replaced:
            value = exp.Case(
                ifs=[exp.If(this=sql.col("n", "__pgt_rescan"), true=sql.col("r", column))],
                default=sql.col("n", column),
            )
            listed.append(sql.alias(value, column))
        else:
            listed.append(sql.col("n", column))
    final = (
        exp.select(*listed)
        .from_(cte_item(new, "n"))
        .join(
            cte_item(rescanned, "r"),
            on=exp.EQ(this=sql.col("r", ROW_ID), expression=sql.col("n", ROW_ID)),
            join_type="left",
            copy=False,
        )
    )
    return context.cte(final, "f")


def _without_having(node: Aggregate) -> Aggregate:
    return node  # the algebraic path has no HAVING


def _delta_per_group(
    node: Aggregate,
    keys: list[str],
    arguments: list[_Argument],
    extremes: list[_Extreme],
    changes: str,
) -> exp.Select:
    weight = sql.col(None, WEIGHT)
    columns: list[exp.Expr] = [
        sql.alias(group_id(node, [sql.col(None, k) for k in keys]), ROW_ID),
        *[sql.col(None, key) for key in keys],
        sql.alias(sql.coalesce_zero(exp.Sum(this=weight.copy())), "__pgt_dc"),
    ]
    for argument in arguments:
        x = sql.col(None, f"__pgt_x{argument.number}")
        counted = exp.Case(
            ifs=[exp.If(this=exp.Is(this=x.copy(), expression=exp.Null()), true=sql.lit(0))],
            default=weight.copy(),
        )
        columns.append(
            sql.alias(sql.coalesce_zero(exp.Sum(this=counted)), f"__pgt_dnn{argument.number}")
        )
        if argument.summed:
            # x * w keeps sum(x)'s type (w is an integer): bigint for integers, numeric for
            # bigint and numeric
            weighted = exp.Mul(this=x.copy(), expression=weight.copy())
            columns.append(sql.alias(exp.Sum(this=weighted), f"__pgt_ds{argument.number}"))
        for scale, name in argument.scale_counts:
            per_scale = sql.coalesce_zero(exp.Sum(this=_of_scale(x, scale, weight.copy())))
            columns.append(sql.alias(per_scale, _delta_name(name)))
        if argument.summed and argument.open_scale:
            columns.append(sql.alias(_scales_of(x, weight), _delta_name(argument.scale_map)))
    for extreme in extremes:
        value = sql.col(None, f"__pgt_e{extreme.number}")
        for name, sign in (
            (f"__pgt_dins{extreme.number}", exp.GT),
            (f"__pgt_ddel{extreme.number}", exp.LT),
        ):
            only = exp.Where(this=sign(this=weight.copy(), expression=sql.lit(0)))
            columns.append(
                sql.alias(exp.Filter(this=extreme.of(value.copy()), expression=only), name)
            )
    select = exp.select(*columns).from_(cte_item(changes, "i"))
    if keys:
        select = select.group_by(*[sql.col(None, key) for key in keys], copy=False)
    return select


def _new_state(
    keys: list[str],
    arguments: list[_Argument],
    extremes: list[_Extreme],
    storage: tuple[str, str],
    per_group: str,
) -> exp.Select:
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
        nonnull = exp.Add(
            this=old(argument.nonnull), expression=delta(f"__pgt_dnn{argument.number}")
        )
        columns.append(sql.alias(nonnull, argument.nonnull))
        changed.append(_nonzero(delta(f"__pgt_dnn{argument.number}")))
        if not argument.summed:
            continue
        summed = sql.coalesce_zero(delta(f"__pgt_ds{argument.number}"))
        total: exp.Expr = exp.Add(this=old(argument.sum), expression=summed)
        counts: dict[str, exp.Expr] = {}
        for _, name in argument.scale_counts:
            added_count = delta(_delta_name(name))
            counts[name] = exp.Add(this=old(name), expression=added_count)
            columns.append(sql.alias(counts[name].copy(), name))
            changed.append(_nonzero(added_count.copy()))
        total = _scaled(argument, exp.paren(total), counts)
        if argument.open_scale:
            merged = _merged_scales(
                sql.col("s", argument.scale_map), delta(_delta_name(argument.scale_map))
            )
            columns.append(sql.alias(merged, argument.scale_map))
            changed.append(
                exp.Not(
                    this=exp.Is(this=delta(_delta_name(argument.scale_map)), expression=exp.Null())
                )
            )
            total = sql.func("ROUND", total, _largest_scale(merged.copy()))
        none_left = exp.EQ(this=nonnull.copy(), expression=sql.lit(0))
        new_sum = exp.Case(ifs=[exp.If(this=none_left, true=exp.Null())], default=total)
        columns.append(sql.alias(new_sum, argument.sum))
        changed.append(_nonzero(summed.copy()))
    lost: list[exp.Expr] = []
    for extreme in extremes:
        inserted, deleted = (
            delta(f"__pgt_dins{extreme.number}"),
            delta(f"__pgt_ddel{extreme.number}"),
        )
        gone = extreme.lost(deleted.copy(), sql.col("s", extreme.value))
        lost.append(gone)
        value = exp.Case(
            ifs=[exp.If(this=gone.copy(), true=exp.Null())],
            default=extreme.combined(sql.col("s", extreme.value), inserted.copy()),
        )
        columns.append(sql.alias(value, extreme.value))
        changed.append(exp.Not(this=exp.Is(this=inserted.copy(), expression=exp.Null())))
        changed.append(exp.Not(this=exp.Is(this=deleted.copy(), expression=exp.Null())))
    if extremes:
        columns.append(sql.alias(exp.or_(*lost), "__pgt_rescan"))
    return (
        exp.select(*columns)
        .from_(cte_item(per_group, "d"))
        .join(
            sql.table(*storage, alias="s"),
            on=exp.EQ(this=sql.col("s", ROW_ID), expression=delta(ROW_ID)),
            join_type="left",
            copy=False,
        )
        .where(exp.or_(*changed, copy=False), copy=False)
    )


def _changes(
    node: Aggregate,
    arguments: list[_Argument],
    extremes: list[_Extreme],
    keys: list[str],
    new: str,
) -> exp.Select:
    """'U' with the outputs evaluated over the new values, or 'D' for a group now empty
    (never for the one row of an aggregate without GROUP BY)."""
    replacements = _new_value_replacements(node, arguments, extremes, keys)
    empty = exp.EQ(this=sql.col("n", COUNT), expression=sql.lit(0))
    action: exp.Expr = (
        sql.lit("U")
        if node.scalar
        else exp.Case(ifs=[exp.If(this=empty.copy(), true=sql.lit("D"))], default=sql.lit("U"))
    )
    columns: list[exp.Expr] = [sql.col("n", ROW_ID), sql.alias(action, ACTION)]
    for output in node.outputs:
        value = _rewrite(output.expression, replacements)
        if not node.scalar:
            # a deleted group's values are not needed, and could divide by its zero count
            value = exp.Case(ifs=[exp.If(this=empty.copy(), true=exp.Null())], default=value)
        columns.append(sql.alias(value, output.name))
    columns.extend(sql.col("n", column) for column in aux_columns(node))
    return exp.select(*columns).from_(cte_item(new, "n"))


def _nonzero(value: exp.Expr) -> exp.Expr:
    return exp.NEQ(this=value, expression=sql.lit(0))


def _new_value_replacements(
    node: Aggregate, arguments: list[_Argument], extremes: list[_Extreme], keys: list[str]
) -> dict[str, exp.Expr]:
    """Rendered group key or aggregate call -> its value in the new state ``n``."""
    numbers = {render(a.expression): a for a in arguments}
    replacements: dict[str, exp.Expr] = {}
    for key, column in zip(node.group_by, keys, strict=True):
        replacements.setdefault(render(key), sql.col("n", column))
    for call in node.calls:
        if call.kind is AggregateClass.SEMI_ALGEBRAIC:
            replacements[render(call.expression)] = sql.col("n", _extreme_of(call, extremes).value)
        else:
            replacements[render(call.expression)] = _call_value(call, numbers)
    return replacements


def _call_value(call: AggregateCall, numbers: dict[str, _Argument]) -> exp.Expr:
    if call.argument is None:
        return sql.col("n", COUNT)
    argument = numbers[render(call.argument)]
    number = argument.number
    if call.name == "count":
        return sql.col("n", f"__pgt_nn_{number}")
    if call.name in ("bool_and", "bool_or"):
        # no non-null value: NULL; else bool_and: no false one, bool_or: a true one
        counted = sql.col("n", f"__pgt_nn_{numbers[render(_indicator(call))].number}")
        none = exp.EQ(this=sql.col("n", f"__pgt_nn_{number}"), expression=sql.lit(0))
        test: exp.Expr = (
            exp.EQ(this=counted, expression=sql.lit(0))
            if call.name == "bool_and"
            else exp.GT(this=counted, expression=sql.lit(0))
        )
        return exp.Case(ifs=[exp.If(this=none, true=exp.Null())], default=test)
    total = sql.col("n", argument.sum)
    if call.name == "sum":
        return total
    # PostgreSQL's avg of integers and numerics is numeric_div(sum, count), exactly this.
    return exp.paren(
        exp.Div(this=sql.cast(total, "numeric"), expression=sql.col("n", f"__pgt_nn_{number}"))
    )


def _indicator(call: AggregateCall) -> exp.Expr:
    """What bool_and counts (the false values) or bool_or (the true ones): 1 or NULL."""
    assert call.argument is not None
    value = call.argument.copy()
    test = exp.Not(this=exp.paren(value)) if call.name == "bool_and" else value
    return exp.Case(ifs=[exp.If(this=test, true=sql.lit(1))])


def _scales_of(value: exp.Expr, weight: exp.Expr | None = None) -> exp.Expr:
    """An aggregate: the map (jsonb) of the scales of the non-null ``value``s to how many
    there are (weighted by ``weight``: a delta's net count per scale), none where the count
    is 0; NULL for no values.

    The scales are collected by ``array_agg`` and counted in a subquery of the group, since
    an aggregate cannot hold another."""
    scales = sql.func("ARRAY_AGG", sql.func("SCALE", value.copy()))
    arrays = [scales] if weight is None else [scales, sql.func("ARRAY_AGG", weight.copy())]
    names = ["s"] if weight is None else ["s", "n"]
    pairs = exp.Table(
        this=sql.func("UNNEST", *arrays),
        alias=exp.TableAlias(this=sql.ident("__pgt_u"), columns=[sql.ident(n) for n in names]),
    )
    net = exp.Count(this=exp.Star()) if weight is None else exp.Sum(this=sql.col("__pgt_u", "n"))
    counted = (
        exp.select(sql.col("__pgt_u", "s"), sql.alias(net, "n"))
        .from_(pairs)
        .where(exp.Not(this=exp.Is(this=sql.col("__pgt_u", "s"), expression=exp.Null())))
        .group_by(sql.col("__pgt_u", "s"))
        .having(exp.NEQ(this=net.copy(), expression=sql.lit(0)))
    )
    as_map = exp.select(
        sql.func("JSONB_OBJECT_AGG", sql.col("__pgt_c", "s"), sql.col("__pgt_c", "n"))
    ).from_(counted.subquery(sql.ident("__pgt_c")))
    return as_map.subquery()


def _merged_scales(old: exp.Expr, added: exp.Expr) -> exp.Expr:
    """The counts per scale of ``old`` plus ``added`` (maps of ``_scales_of``), none where
    the sum is 0; NULL when none is left."""

    def entries(value: exp.Expr) -> exp.Select:
        each = exp.Table(
            this=sql.func(
                "JSONB_EACH_TEXT",
                exp.Coalesce(this=value, expressions=[sql.cast(sql.lit("{}"), "jsonb")]),
            ),
            alias=exp.TableAlias(
                this=sql.ident("__pgt_e"), columns=[sql.ident("k"), sql.ident("v")]
            ),
        )
        return exp.select(
            sql.col("__pgt_e", "k"), sql.alias(sql.cast(sql.col("__pgt_e", "v"), "bigint"), "v")
        ).from_(each)

    both = exp.union(entries(old), entries(added), distinct=False)
    net = exp.Sum(this=sql.col("__pgt_b", "v"))
    counted = (
        exp.select(sql.col("__pgt_b", "k"), sql.alias(net, "v"))
        .from_(both.subquery(sql.ident("__pgt_b")))
        .group_by(sql.col("__pgt_b", "k"))
        .having(exp.NEQ(this=net.copy(), expression=sql.lit(0)))
    )
    return (
        exp.select(sql.func("JSONB_OBJECT_AGG", sql.col("__pgt_m", "k"), sql.col("__pgt_m", "v")))
        .from_(counted.subquery(sql.ident("__pgt_m")))
        .subquery()
    )


def _largest_scale(scales: exp.Expr) -> exp.Expr:
    """The largest scale with a count in a map of ``_scales_of`` (NULL for none)."""
    keys = exp.Table(
        this=sql.func("JSONB_OBJECT_KEYS", scales),
        alias=exp.TableAlias(this=sql.ident("__pgt_k"), columns=[sql.ident("k")]),
    )
    largest = exp.Max(this=sql.cast(sql.col("__pgt_k", "k"), "integer"))
    return exp.select(largest).from_(keys).subquery()


def _delta_name(name: str) -> str:
    return "__pgt_d" + name.removeprefix("__pgt_")


def _scaled(argument: _Argument, total: exp.Expr, counts: dict[str, exp.Expr]) -> exp.Expr:
    """``total`` shown with the largest scale among the values counted in ``counts`` (the new
    count of values per scale), as PostgreSQL's sum shows it."""
    if not argument.scale_counts:
        return total
    largest = argument.scales[-1]
    ifs = [
        exp.If(
            this=exp.GT(this=counts[name].copy(), expression=sql.lit(0)),
            true=(
                total.copy()
                if scale == largest
                else sql.func("ROUND", total.copy(), sql.lit(scale))
            ),
        )
        for scale, name in reversed(argument.scale_counts)
    ]
    smallest = sql.func("ROUND", total.copy(), sql.lit(argument.scales[0]))
    return exp.Case(ifs=ifs, default=smallest)


def _rewrite(expression: exp.Expr, replacements: dict[str, exp.Expr]) -> exp.Expr:
    def replace(node: exp.Expr) -> exp.Expr:
        found = replacements.get(render(node))
        return found.copy() if found is not None else node

    return expression.copy().transform(replace, copy=False)


def _rescan(
    node: Aggregate, input: DerivedRows, context: Context, storage: tuple[str, str]
) -> exp.Select:
    """The groups the delta touches, recomputed from the new state (HAVING applied); 'U' for
    a group recomputed differently from what is stored, 'D' for a stored group now gone."""
    touched = affected_groups(node, input, context)
    keys = _key_columns(node)
    if node.group_by:
        listed = [sql.alias(k.copy(), n) for k, n in zip(node.group_by, keys, strict=True)]
        changed = union_all([term.select(listed, weighted=False) for term in live(input.delta)])
        ids = exp.select(sql.alias(group_id(node, [sql.col("c", k) for k in keys]), ROW_ID)).from_(
            changed.subquery(sql.ident("c")), copy=False
        )
        ids.set("distinct", exp.Distinct())
    else:
        ids = exp.select(sql.alias(group_id(node, []), ROW_ID)).where(touched.copy())
    affected = context.cte(ids, "a")
    recomputed = context.cte(
        grouped(
            node,
            input.new,
            [sql.alias(group_id(node, node.group_by), ROW_ID), *outputs_of(node.outputs)],
            restriction=touched,
        ),
        "r",
    )
    names = [output.name for output in node.outputs]
    missing = exp.Is(this=sql.col("r", ROW_ID), expression=exp.Null())
    was_missing = exp.Is(this=sql.col("s", ROW_ID), expression=exp.Null())
    changed_value = exp.or_(
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
        .from_(cte_item(affected, "a"))
        .join(
            cte_item(recomputed, "r"),
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
        .where(changed_value, copy=False)
    )
    return context.statement(final)
