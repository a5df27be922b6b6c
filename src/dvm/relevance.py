"""Which changes of a source can matter to a query: the condition a change must meet to be
staged at all.

Every occurrence of a source in the operator tree reads only rows that pass the predicates
applied to that occurrence alone (single-table conjuncts of a WHERE, of an inner join's
condition, of an outer join's ON for its nullable side, of the subquery of EXISTS or IN). A
row version that fails them at every occurrence changes nothing the query shows: the source
is read as if those rows were not there. So a refresh stages only the changed rows that pass
the predicates of some occurrence (the OR over occurrences; no condition as soon as one
occurrence has none), and a TPC-H Q14 refresh stages the lineitems shipped in its month
instead of every changed one.

Why the delta stays exact: with Δ restricted to its rows that meet the condition P, the
compiled delta computes Q(new) - Q(new - Δ where P), and that second state differs from the
old one only in rows failing P, which every occurrence drops before anything reads them.

The staging evaluates the condition on buffered row versions *before* they are netted, so
also on versions no snapshot of the query sees (an UPDATE followed by another in one refresh
window). A version the query never sees must not raise an error there, so a conjunct is used
only when it cannot fail: columns compared with constants or with each other (=, <>, <, >,
IS [NOT] DISTINCT FROM, BETWEEN, IN (list), LIKE, IS NULL), combined with AND, OR and NOT. No
arithmetic on, cast of, or function of a column. (An implicit widening of a column for a
comparison, such as a date compared with a timestamp, could still fail for values far out of
the other type's range; the query itself evaluates it on every row it reads.)

>>> from dvm.catalog import Column, SourceTable
>>> from dvm.dialect import parse_one
>>> from dvm.operators import Filter, InnerJoin, Scan
>>> t = SourceTable(7, "public", "t", (Column("id", "integer"), Column("d", "date")), ("id",))
>>> u = SourceTable(8, "public", "u", (Column("id", "integer"), Column("v", "integer")), ("id",))
>>> on = parse_one("select * from x where t.d > '2020-01-01' and t.id = u.id and 1 / u.v > 0")
>>> join = InnerJoin((Scan(t, "t", ("id", "d")), Scan(u, "u", ("id", "v"))), on.args["where"].this)
>>> relevant_rows(join)
{7: '"d" > \\'2020-01-01\\''}
"""

from __future__ import annotations

import functools

from sqlglot import exp

from dvm import sql
from dvm.dialect import parse_one, render
from dvm.naming import identifier_name
from dvm.operators import (
    Filter,
    InnerJoin,
    JoinKind,
    Operator,
    OuterJoin,
    Scan,
    SemiJoin,
    children,
)

_COMPARISONS = (
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.NullSafeEQ,
    exp.NullSafeNEQ,
    exp.Like,
    exp.ILike,
)


def relevant_rows(tree: Operator) -> dict[int, str]:
    """Source oid -> the condition (SQL over the source's bare column names) a changed row
    must meet to matter, for the sources whose every occurrence has one."""
    found: dict[int, list[exp.Expr | None]] = {}
    _visit(tree, [], found)
    conditions: dict[int, str] = {}
    for oid, occurrences in found.items():
        if any(condition is None for condition in occurrences):
            continue
        distinct = {render(c): c for c in occurrences if c is not None}
        if len(distinct) == 1:
            conditions[oid] = next(iter(distinct))
        else:
            either = exp.or_(*[c.copy() for c in distinct.values()], copy=False)
            conditions[oid] = render(either)
    return conditions


def _visit(node: Operator, pushed: list[exp.Expr], found: dict[int, list[exp.Expr | None]]) -> None:
    """Record for each scan under ``node`` what filters its rows, ``pushed`` being the
    conjuncts that filter ``node``'s own rows (over the aliases it exposes)."""
    if isinstance(node, Scan):
        found.setdefault(node.table.oid, []).append(_own(node, pushed))
    elif isinstance(node, Filter):
        _visit(node.input, [*pushed, *sql.conjuncts(node.predicate)], found)
    elif isinstance(node, InnerJoin):
        for input in node.inputs:
            _visit(input, [*pushed, *sql.conjuncts(node.condition)], found)
    elif isinstance(node, OuterJoin):
        # the preserved side keeps a row that fails its ON conjuncts (padded), so only what
        # filters the join's rows applies to it; the nullable side's rows that fail the ON
        # conjuncts on them alone match nothing, and a condition above the join would see
        # its padding as NULLs
        on = sql.conjuncts(node.condition)
        left = pushed if node.kind is JoinKind.LEFT else on if node.kind is JoinKind.RIGHT else []
        right = on if node.kind is JoinKind.LEFT else pushed if node.kind is JoinKind.RIGHT else []
        _visit(node.left, left, found)
        _visit(node.right, right, found)
    elif isinstance(node, SemiJoin):
        _visit(node.input, pushed, found)
        _visit(node.subquery, [], found)
    else:
        # a relation's own filters are inside it; conjuncts over its output columns are not
        # followed through its expressions
        for child in children(node):
            _visit(child, [], found)


def _own(scan: Scan, pushed: list[exp.Expr]) -> exp.Expr | None:
    """What ``pushed`` (conjuncts) implies of ``scan``'s rows alone, from conditions that
    cannot fail, over bare column names; None when it implies nothing."""
    implied = [found for c in pushed if (found := _implied(c, scan.alias)) is not None]
    if not implied:
        return None
    bare = [c.transform(_bare, copy=False) for c in implied]
    return exp.and_(*bare, copy=False) if len(bare) > 1 else bare[0]


def _implied(condition: exp.Expr, alias: str) -> exp.Expr | None:
    """A condition on ``alias``'s columns alone that every row meeting ``condition`` meets
    (None: none found). A disjunction implies the disjunction of what each part implies, when
    each part implies something: in TPC-H Q19, ``(p = l AND l_quantity <= 11 AND ...) OR
    (...)`` implies ``(l_quantity <= 11 AND ...) OR (...)`` of lineitem."""
    node = _unparen(condition)
    if isinstance(node, exp.And):
        parts = [p for c in sql.conjuncts(node) if (p := _implied(c, alias)) is not None]
        return exp.and_(*parts, copy=False) if parts else None
    if isinstance(node, exp.Or):
        either = [_implied(node.this, alias), _implied(node.expression, alias)]
        if any(part is None for part in either):
            return None
        return exp.or_(*either, copy=False)
    if _reads_only(node, alias) and _safe(node, alias):
        return node.copy()
    return None


def _bare(node: exp.Expr) -> exp.Expr:
    if isinstance(node, exp.Column):
        return sql.col(None, identifier_name(node.args["this"]))
    return node


def _reads_only(conjunct: exp.Expr, alias: str) -> bool:
    columns = list(conjunct.find_all(exp.Column))
    return bool(columns) and all(column.table == alias for column in columns)


def _unparen(node: exp.Expr) -> exp.Expr:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _safe(condition: exp.Expr, alias: str) -> bool:
    """Whether ``condition`` cannot raise an error, whatever the values of the columns."""
    node = _unparen(condition)
    if isinstance(node, exp.And | exp.Or):
        return _safe(node.this, alias) and _safe(node.expression, alias)
    if isinstance(node, exp.Not):
        return _safe(node.this, alias)
    if isinstance(node, exp.Column):
        return node.table == alias  # a boolean column
    if isinstance(node, _COMPARISONS):
        return _operand(node.this, alias) and _operand(node.expression, alias)
    if isinstance(node, exp.Is):
        return _operand(node.this, alias) and isinstance(node.expression, exp.Null | exp.Boolean)
    if isinstance(node, exp.Between):
        return all(_operand(node.args[k], alias) for k in ("this", "low", "high"))
    if isinstance(node, exp.In):
        if node.args.get("query") is not None or node.args.get("unnest") is not None:
            return False
        return _operand(node.this, alias) and all(_constant(e) for e in node.expressions)
    return False


def _operand(node: exp.Expr, alias: str) -> bool:
    """A column of ``alias`` as it is, or a constant."""
    inner = _unparen(node)
    if isinstance(inner, exp.Column):
        return inner.table == alias and not isinstance(inner.args.get("this"), exp.Star)
    return _constant(inner)


def _constant(node: exp.Expr) -> bool:
    """No column, no subquery, no function but casts: a value the planner folds (an error
    in it is the query's own, at planning)."""
    for found in node.walk():
        if isinstance(found, exp.Column | exp.Query | exp.Subquery | exp.Exists | exp.Star):
            return False
        if isinstance(found, exp.Func) and not isinstance(found, exp.Cast):
            return False
    return True


@functools.lru_cache(maxsize=1024)
def bound(condition: str, alias: str, columns: tuple[tuple[str, str], ...]) -> str | None:
    """``condition`` (from ``relevant_rows``) with each bare column read as
    ``alias.<its name in columns>`` (pairs of a source column and what holds it); None when
    it reads a column that ``columns`` does not hold.

    >>> bound('"d" > 1 AND "v" IS NULL', "b", (("d", "n2"), ("v", "n3")))
    '"b"."n2" > 1 AND "b"."n3" IS NULL'
    """
    holding = dict(columns)
    parsed = parse_condition(condition)
    for column in parsed.find_all(exp.Column):
        if column.name not in holding or column.table:
            return None

    def rebind(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column):
            return sql.col(alias, holding[node.name])
        return node

    return render(parsed.transform(rebind, copy=False))


def parse_condition(condition: str) -> exp.Expr:
    """A condition as ``relevant_rows`` renders it, parsed back."""
    where = parse_one(f"SELECT 1 WHERE {condition}").args.get("where")
    assert isinstance(where, exp.Where) and isinstance(where.this, exp.Expr)
    return where.this
