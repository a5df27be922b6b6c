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
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

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
    Project,
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
    return _conditions(_Visit(frozenset()).of(tree), reduced_only=False)


def reduced_rows(tree: Operator, unchanged: frozenset[int]) -> dict[int, str]:
    """As ``relevant_rows``, for one refresh in which the sources ``unchanged`` (oids) have
    no changes: an occurrence joined by an equality to such a source, or semi-joined with
    a subquery of such sources, matters only where its column is among the partner's
    values, which a subquery over the partner tables tells (TPC-H Q17: the 6,000 changed
    lineitems of 0.1 % changed orders, of which 5 are of a part of Brand#23 in a SM PACK).

    The subqueries read the partner tables, so the condition holds at the refresh's
    snapshot only: the refresh transaction stages with it, after netting. Only sources with
    such a condition are listed.
    """
    return _conditions(_Visit(unchanged).of(tree), reduced_only=True)


@dataclass(frozen=True)
class _Occurrence:
    condition: exp.Expr | None
    reduced: bool
    """The condition includes a subquery over unchanged partners."""


def _conditions(found: dict[int, list[_Occurrence]], *, reduced_only: bool) -> dict[int, str]:
    conditions: dict[int, str] = {}
    for oid, occurrences in found.items():
        if any(o.condition is None for o in occurrences):
            continue
        if reduced_only and not any(o.reduced for o in occurrences):
            continue
        distinct = {render(o.condition): o.condition for o in occurrences if o.condition}
        if len(distinct) == 1:
            conditions[oid] = next(iter(distinct))
        else:
            either = exp.or_(*[c.copy() for c in distinct.values()], copy=False)
            conditions[oid] = render(either)
    return conditions


@dataclass
class _Visit:
    """One walk of the tree: what filters each occurrence of a source."""

    unchanged: frozenset[int]
    found: dict[int, list[_Occurrence]] = field(default_factory=dict)

    def of(self, tree: Operator) -> dict[int, list[_Occurrence]]:
        self.visit(tree, [], [])
        return self.found

    def visit(self, node: Operator, pushed: list[exp.Expr], reducing: list[exp.In]) -> None:
        """Record for each scan under ``node`` what filters its rows: ``pushed``, conjuncts
        that filter ``node``'s own rows (over the aliases it exposes), and ``reducing``,
        ``alias.column IN (subquery)`` conditions on them from unchanged partners."""
        if isinstance(node, Scan):
            self.found.setdefault(node.table.oid, []).append(_own(node, pushed, reducing))
        elif isinstance(node, Filter):
            self.visit(node.input, [*pushed, *sql.conjuncts(node.predicate)], reducing)
        elif isinstance(node, InnerJoin):
            on = [*pushed, *sql.conjuncts(node.condition)]
            reducers = self.join_reducers(node, on)
            for input in node.inputs:
                self.visit(input, on, [*reducing, *reducers])
        elif isinstance(node, OuterJoin):
            # the preserved side keeps a row that fails its ON conjuncts (padded), so only
            # what filters the join's rows applies to it; the nullable side's rows that fail
            # the ON conjuncts on them alone match nothing, and a condition above the join
            # would see its padding as NULLs
            on = sql.conjuncts(node.condition)
            kind = node.kind
            left = pushed if kind is JoinKind.LEFT else on if kind is JoinKind.RIGHT else []
            right = on if kind is JoinKind.LEFT else pushed if kind is JoinKind.RIGHT else []
            self.visit(node.left, left, reducing if kind is JoinKind.LEFT else [])
            self.visit(node.right, right, reducing if kind is JoinKind.RIGHT else [])
        elif isinstance(node, SemiJoin):
            self.visit(node.input, pushed, [*reducing, *self.semi_reducers(node)])
            self.visit(node.subquery, [], [])
        else:
            # a relation's own filters are inside it; conditions over its output columns are
            # not followed through its expressions
            for child in children(node):
                self.visit(child, [], [])

    def join_reducers(self, node: InnerJoin, on: list[exp.Expr]) -> list[exp.In]:
        """For each scan of a changed source among the join's inputs and each equality
        with a scan of an unchanged one: ``alias.column IN (that one's values)``, the
        partner's filters (and, by its own equalities, its unchanged partners') inside."""
        if not self.unchanged:
            return []
        scans = {i.alias: i for i in node.inputs if isinstance(i, Scan)}
        kept = {a for a, s in scans.items() if s.table.oid in self.unchanged}
        edges: dict[str, list[tuple[str, str, str]]] = {}
        for conjunct in on:
            found = _unparen(conjunct)
            if not isinstance(found, exp.EQ):
                continue
            one, two = _unparen(found.this), _unparen(found.expression)
            if not (isinstance(one, exp.Column) and isinstance(two, exp.Column)):
                continue
            if one.table not in scans or two.table not in scans or one.table == two.table:
                continue
            edges.setdefault(one.table, []).append((one.name, two.table, two.name))
            edges.setdefault(two.table, []).append((two.name, one.table, one.name))

        def values(
            partner: str, column: str, visited: frozenset[str], aliases: Iterator[str]
        ) -> exp.Select | None:
            own = next(aliases)
            conditions = [
                _renamed(implied, partner, own)
                for c in on
                if (implied := _implied(c, partner)) is not None
            ]
            for mine, other, theirs in edges.get(partner, []):
                if other in kept and other not in visited:
                    inner = values(other, theirs, visited | {other}, aliases)
                    if inner is not None:
                        conditions.append(exp.In(this=sql.col(own, mine), query=inner.subquery()))
            if not conditions:
                return None  # every row of the partner: no restriction worth a subquery
            table = scans[partner].table
            return (
                exp.select(sql.col(own, column))
                .from_(sql.table(table.schema, table.name, alias=own))
                .where(exp.and_(*conditions, copy=False), copy=False)
            )

        reducers = []
        for alias in scans:
            if alias in kept:
                continue
            for mine, other, theirs in edges.get(alias, []):
                if other in kept:
                    # a reducer's aliases need only differ from each other
                    keys = values(other, theirs, frozenset({alias, other}), _aliases())
                    if keys is not None:
                        reducers.append(exp.In(this=sql.col(alias, mine), query=keys.subquery()))
        return reducers

    def semi_reducers(self, node: SemiJoin) -> list[exp.In]:
        """An EXISTS or IN over a subquery of unchanged sources (a key transfer's domain):
        ``alias.column IN (its values)`` for each equality of the condition with them."""
        if node.anti or not self.unchanged:
            return []
        project = node.subquery.query
        if not isinstance(project, Project):
            return []
        below: Operator = project.input
        predicates: list[exp.Expr] = []
        while isinstance(below, Filter):
            predicates.extend(sql.conjuncts(below.predicate))
            below = below.input
        if not isinstance(below, Scan) or below.table.oid not in self.unchanged:
            return []
        outputs = {output.name: output.expression for output in project.outputs}
        reducers = []
        for conjunct in sql.conjuncts(node.condition):
            found = _unparen(conjunct)
            if not isinstance(found, exp.EQ):
                continue
            for mine, theirs in ((found.this, found.expression), (found.expression, found.this)):
                mine, theirs = _unparen(mine), _unparen(theirs)
                if not (isinstance(mine, exp.Column) and isinstance(theirs, exp.Column)):
                    continue
                if theirs.table != node.subquery.alias or mine.table == node.subquery.alias:
                    continue
                value = outputs.get(theirs.name)
                if value is None or not _reads_only(value, below.alias):
                    continue
                own = next(_aliases())
                conditions = [
                    _renamed(implied, below.alias, own)
                    for c in predicates
                    if (implied := _implied(c, below.alias)) is not None
                ]
                query = exp.select(_renamed(value, below.alias, own)).from_(
                    sql.table(below.table.schema, below.table.name, alias=own)
                )
                if conditions:
                    query = query.where(exp.and_(*conditions, copy=False), copy=False)
                reducers.append(exp.In(this=sql.col(mine.table, mine.name), query=query.subquery()))
        return reducers


def _aliases() -> Iterator[str]:
    """Aliases for the tables of one reducer's subqueries."""
    return (f"__pgt_r{n}" for n in itertools.count(1))


def _renamed(expression: exp.Expr, alias: str, to: str) -> exp.Expr:
    """``expression`` with the columns of ``alias`` read from ``to``."""

    def rename(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and node.table == alias:
            return sql.col(to, node.name)
        return node

    return expression.copy().transform(rename, copy=False)


def _own(scan: Scan, pushed: list[exp.Expr], reducing: list[exp.In]) -> _Occurrence:
    """What ``pushed`` (conjuncts) implies of ``scan``'s rows alone, from conditions that
    cannot fail, and the ``reducing`` conditions on them, over bare column names."""
    implied = [found for c in pushed if (found := _implied(c, scan.alias)) is not None]
    bare = [c.transform(_bare, copy=False) for c in implied]
    reducers = [
        exp.In(this=_bare(r.this.copy()), query=r.args["query"].copy())
        for r in reducing
        if r.this.table == scan.alias
    ]
    every = [*bare, *reducers]
    if not every:
        return _Occurrence(None, reduced=False)
    condition = exp.and_(*every, copy=False) if len(every) > 1 else every[0]
    return _Occurrence(condition, reduced=bool(reducers))


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
    if isinstance(node, exp.Column) and node.table:
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

    A test of a column against a subquery (``reduced_rows``) is written in a form the
    planner cannot turn into a join (``coalesce(x IN (...), false)``, the same truth value
    in a condition): it runs the subquery once and looks every row up in a hash of its
    values. Its estimate of the netted rows is no guide (the buffers' statistics say little
    of a window), and as a join it probed the partner once per row: 6,000 lineitems of TPC-H
    Q17 against the 200 parts of a brand in a container, 45 ms against 25 for one scan.

    >>> bound('"d" > 1 AND "v" IS NULL', "b", (("d", "n2"), ("v", "n3")))
    '"b"."n2" > 1 AND "b"."n3" IS NULL'
    """
    holding = dict(columns)
    parsed = parse_condition(condition)
    # the source's columns are bare; a subquery's (of a reducer) are qualified
    for column in parsed.find_all(exp.Column):
        if not column.table and column.name not in holding:
            return None

    def rebind(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and not node.table:
            return sql.col(alias, holding[node.name])
        return node

    def hash_tests(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.In) and _tests_source(node):
            return exp.Coalesce(this=node.copy(), expressions=[exp.false()])
        return node

    parsed = parsed.transform(hash_tests, copy=False)
    return render(parsed.transform(rebind, copy=False))


def _tests_source(test: exp.In) -> bool:
    """A bare column (the source's) tested against a subquery."""
    return (
        isinstance(test.this, exp.Column)
        and not test.this.table
        and test.args.get("query") is not None
    )


def parse_condition(condition: str) -> exp.Expr:
    """A condition as ``relevant_rows`` renders it, parsed back."""
    where = parse_one(f"SELECT 1 WHERE {condition}").args.get("where")
    assert isinstance(where, exp.Where) and isinstance(where.this, exp.Expr)
    return where.this


@functools.lru_cache(maxsize=1024)
def partner_queries(condition: str) -> tuple[tuple[str, tuple[str, str]], ...]:
    """The subqueries of a ``reduced_rows`` condition that test the source's own columns,
    with the table each reads (schema, name): how selective they are tells whether the
    condition is worth its cost.

    >>> partner_queries('"a" > 1 AND "k" IN (SELECT "r"."id" FROM "public"."p" AS "r")')
    (('SELECT "r"."id" FROM "public"."p" AS "r"', ('public', 'p')),)
    """
    found = []
    for test in parse_condition(condition).find_all(exp.In):
        query = test.args.get("query")
        if not _tests_source(test) or query is None:
            continue
        select = query.this if isinstance(query, exp.Subquery) else query
        table = select.find(exp.Table) if isinstance(select, exp.Select) else None
        if table is None:
            continue
        found.append((render(select), (table.db, table.name)))
    return tuple(found)


@functools.lru_cache(maxsize=1024)
def with_keys(condition: str, tables: tuple[tuple[str, str], ...]) -> str:
    """``condition`` with each subquery of ``partner_queries`` (by its text) replaced by a
    read of the table (``pg_temp``) that holds its values.

    >>> with_keys('"k" IN (SELECT "r"."id" FROM "public"."p" AS "r")',
    ...           (('SELECT "r"."id" FROM "public"."p" AS "r"', "__pgt_keys_1"),))
    '"k" IN (SELECT "__pgt_keys_1"."k" FROM "pg_temp"."__pgt_keys_1" AS "__pgt_keys_1")'
    """
    by_query = dict(tables)

    def replace(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.In) and _tests_source(node):
            query = node.args["query"]
            select = query.this if isinstance(query, exp.Subquery) else query
            table = by_query.get(render(select))
            if table is not None:
                keys = exp.select(sql.col(table, "k")).from_(sql.table("pg_temp", table, table))
                return exp.In(this=node.this.copy(), query=keys.subquery())
        return node

    return render(parse_condition(condition).transform(replace, copy=False))


@functools.lru_cache(maxsize=1024)
def tables_read(query: str) -> tuple[tuple[str, str], ...]:
    """(schema, name) of every table a partner query reads."""
    return tuple((t.db, t.name) for t in parse_one(query).find_all(exp.Table))
