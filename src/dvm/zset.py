"""Z-sets as SQL: what every rule takes in and gives out.

A *term* is one SELECT's FROM and WHERE: FROM items (cross-joined; an item may be a
parenthesized join), conditions, and a weight, its sign times the product of the weights of
its delta items. Items keep the query's own table aliases, so user expressions apply to a
term verbatim, whether an alias stands for a base table, its state before the refresh, or its
staged delta.

What a rule knows about a node it differentiates:

- ``DerivedRows`` for row nodes (FROM clauses): the new state (at the refresh snapshot) and
  the old state (at the stream table's frontier) as unweighted terms, and the delta as a union
  of weighted terms;
- ``DerivedRelation`` for relation nodes (named columns): new and old state as queries, and
  the delta as a CTE ``(__pgt_w, columns...)`` of the statement being built (``Context``).

>>> from dvm.dialect import render_pretty
>>> staged = aliased(sql.table("pg_temp", "__pgt_delta_1"), "o")
>>> delta = Term((staged,), (), (sql.col("o", WEIGHT),))
>>> print(render_pretty(delta.select([sql.alias(sql.col("o", "v"), "v")], weighted=True)))
SELECT
  "o"."__pgt_w" AS "__pgt_w",
  "o"."v" AS "v"
FROM "pg_temp"."__pgt_delta_1" AS "o"
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from sqlglot import exp

from dvm import sql

ROW_ID = "__pgt_row_id"
WEIGHT = "__pgt_w"
GUARD = "__pgt_guard"
"""The CTE of a TopK's delta query holding its guard: one row, a boolean ``valid``."""
_FENCE = "__pgt_f"
_KEEP = "__pgt_keep"
"""A fenced term's subquery and its column of the late tests (see ``Term.where_late``)."""
_JOINED = "__pgt_j"
LATE_KEYS = "__pgt_lt"
"""The alias a ``Keyed`` test reads its key columns ``__pgt_lk1..n`` from."""


def aliased(item: exp.Expr, alias: str, columns: Sequence[str] | None = None) -> exp.Expr:
    """``item AS alias[(columns)]`` for a table or a subquery."""
    node = item.copy()
    if isinstance(node, exp.Query):
        node = node.subquery()
    node.set(
        "alias",
        exp.TableAlias(
            this=sql.ident(alias),
            columns=[sql.ident(c) for c in columns] if columns is not None else None,
        ),
    )
    return node


def joined(left: exp.Expr, side: str | None, right: exp.Expr, on: exp.Expr) -> exp.Expr:
    """The parenthesized FROM item ``(left [side] JOIN right ON on)``."""
    base = left.copy()
    join = exp.Join(this=right.copy(), on=on.copy())
    if side is not None:
        join.set("side", side)
    base.set("joins", [*(base.args.get("joins") or []), join])
    return exp.Subquery(this=base)


@dataclass(frozen=True)
class Keyed:
    """A late test that depends on a row only through ``keys``, the operands of equalities
    in its condition: the same test written over the columns ``__pgt_lk1..n`` of
    ``LATE_KEYS`` for those expressions, so that it can run once per distinct key."""

    keys: tuple[exp.Expr, ...]
    test: exp.Expr
    when_null: bool
    """The test's value for a row with a NULL key (which equals nothing)."""


@dataclass(frozen=True)
class Late:
    """A costly test of a joined row: ``condition`` over the row, and where it only depends
    on some of the row's expressions, the test per distinct value of those."""

    condition: exp.Expr
    keyed: Keyed | None = None


def key_column(index: int) -> str:
    return f"__pgt_lk{index}"


@dataclass(frozen=True)
class Term:
    items: tuple[exp.Expr, ...]
    conditions: tuple[exp.Expr, ...] = ()
    factors: tuple[exp.Expr, ...] = ()
    sign: int = 1
    deltas: frozenset[str] = frozenset()
    """The aliases of the items that are staged or derived deltas (small: a term is driven
    by them)."""
    empty: bool = False
    """Known to have no rows in this refresh (its sources staged none): its SQL ends in
    ``WHERE FALSE``, and a rule leaves it out wherever a union of terms can do without it."""
    late: tuple[Late, ...] = ()
    """Costly tests of a joined row (existence in a state), applied after the join of the
    items (see ``where_late``)."""

    def weight(self) -> exp.Expr:
        if not self.factors:
            return sql.lit(self.sign)
        product: exp.Expr = self.factors[0].copy()
        for factor in self.factors[1:]:
            product = exp.Mul(this=product, expression=factor.copy())
        return exp.Neg(this=exp.paren(product)) if self.sign < 0 else product

    def where(self, *conditions: exp.Expr) -> Term:
        return replace(self, conditions=(*self.conditions, *conditions))

    def where_late(self, condition: exp.Expr, keyed: Keyed | None = None) -> Term:
        """``where(condition)`` for a costly test of a row (existence in a state), applied to
        the rows the items' join gives, not inside it.

        In a condition the planner costs the test as a filter of each row an index scan
        fetches, and then prefers hashing a whole table (TPC-H Q18: all of ``orders``, 870 ms,
        where a nested loop over the delta takes 48). So ``select`` computes the test in the
        select list of a fenced subquery (``OFFSET 0``) and filters on it outside; where a
        query needs the term's FROM and WHERE themselves, it is written ``condition OR
        d.__pgt_w IS NULL`` for a delta item ``d`` (whose weight is never NULL), which
        PostgreSQL also tests at the delta's join, if costed as above.

        With ``keyed`` (the test depends on the row only through some expressions), the
        fenced select runs it once per distinct value of those instead of once per row (Q18:
        its ``IN`` over 1,500 changed orders was tested for each of 6,000 lineitems joined).
        """
        return replace(self, late=(*self.late, Late(condition, keyed)))

    def _late_conditions(self) -> tuple[exp.Expr, ...]:
        """The late tests as conditions: ``(test OR d.__pgt_w IS NULL)``; in a term without
        a delta item (rows of a new state that a change touched), the tests themselves."""
        if not self.late:
            return ()
        if not self.deltas:
            return tuple(late.condition.copy() for late in self.late)
        weight = sql.col(sorted(self.deltas)[0], WEIGHT)
        return tuple(
            exp.paren(
                exp.or_(
                    exp.paren(late.condition.copy()),
                    exp.Is(this=weight.copy(), expression=exp.Null()),
                )
            )
            for late in self.late
        )

    def times(self, other: Term) -> Term:
        """The cross product: items, conditions and weights of both."""
        return Term(
            self.items + other.items,
            self.conditions + other.conditions,
            self.factors + other.factors,
            self.sign * other.sign,
            self.deltas | other.deltas,
            self.empty or other.empty,
            self.late + other.late,
        )

    def negated(self) -> Term:
        return replace(self, sign=-self.sign)

    def emptied(self) -> Term:
        """The term known to have no rows: the same columns, ``WHERE FALSE``."""
        if self.empty:
            return self
        return replace(self, conditions=(*self.conditions, exp.false()), empty=True)

    def with_items(self, items: tuple[exp.Expr, ...]) -> Term:
        return replace(self, items=items)

    def as_item(self) -> exp.Expr:
        """The items as one FROM item: a join whose last ON holds the conditions."""
        first, *rest = self.items
        conditions = self.conditions + self._late_conditions()
        assert rest or not conditions, "a FROM tree's state of one item has no conditions"
        item = first
        for index, other in enumerate(rest):
            last = index == len(rest) - 1
            on = sql.and_all(conditions) if last and conditions else exp.true()
            item = joined(item, None, other, on or exp.true())
        return item

    def select(
        self, columns: Sequence[exp.Expr], *, weighted: bool, fenced: bool = True
    ) -> exp.Select:
        """``SELECT [weight AS __pgt_w,] columns FROM items WHERE conditions``; with late
        tests and ``fenced``, ``SELECT … FROM (SELECT …, tests AS keep … OFFSET 0) WHERE
        keep`` (see ``where_late``), where every column has a name to keep."""
        listed: list[exp.Expr] = [sql.alias(self.weight(), WEIGHT)] if weighted else []
        listed.extend(column.copy() for column in columns)
        names = [column.alias_or_name for column in listed]
        if not (self.late and fenced and all(names)):
            return self.from_where(exp.select(*listed))
        keyed = [late.keyed for late in self.late if late.keyed is not None]
        if len(keyed) == len(self.late):
            return self._select_keyed(listed, names, keyed)
        keep = exp.and_(*[late.condition.copy() for late in self.late], copy=False)
        inner = replace(self, late=()).from_where(exp.select(*listed, sql.alias(keep, _KEEP)))
        positions = [f"__pgt_f{i}" for i in range(1, len(listed) + 1)]
        fence = aliased(inner.offset(0, copy=False), _FENCE, [*positions, _KEEP])
        return (
            exp.select(
                *[sql.alias(sql.col(_FENCE, p), n) for p, n in zip(positions, names, strict=True)]
            )
            .from_(fence, copy=False)
            .where(sql.col(_FENCE, _KEEP), copy=False)
        )

    def _select_keyed(
        self, listed: list[exp.Expr], names: list[str], tests: list[Keyed]
    ) -> exp.Select:
        """The fenced select of a term whose late tests are all ``Keyed``:

            SELECT … FROM (WITH __pgt_j AS MATERIALIZED (SELECT …, keys FROM items WHERE …)
                           SELECT __pgt_j.* FROM __pgt_j
                           LEFT JOIN (SELECT k.*, test AS keep
                                      FROM (SELECT DISTINCT keys FROM __pgt_j) k OFFSET 0) t
                           ON keys = t.keys WHERE coalesce(t.keep, when NULL)) __pgt_f

        A row whose key is NULL finds no partner in ``t``: its test is ``when_null``."""
        positions = [f"__pgt_f{i}" for i in range(1, len(listed) + 1)]
        columns = [
            sql.alias(column.unalias().copy(), p)
            for column, p in zip(listed, positions, strict=True)
        ]
        keys: list[list[str]] = []
        for test in tests:
            start = sum(map(len, keys))
            keys.append([key_column(start + i) for i in range(1, len(test.keys) + 1)])
            columns.extend(
                sql.alias(key.copy(), name) for key, name in zip(test.keys, keys[-1], strict=True)
            )
        joined_rows = replace(self, late=()).from_where(exp.select(*columns))
        body = exp.select(*[sql.col(_JOINED, p) for p in positions]).from_(
            cte_item(_JOINED, _JOINED), copy=False
        )
        kept: list[exp.Expr] = []
        for index, (test, names_here) in enumerate(zip(tests, keys, strict=True), start=1):
            own = [key_column(i) for i in range(1, len(names_here) + 1)]
            distinct = exp.select(
                *[sql.alias(sql.col(_JOINED, n), o) for n, o in zip(names_here, own, strict=True)]
            ).from_(cte_item(_JOINED, _JOINED), copy=False)
            distinct.set("distinct", exp.Distinct())
            per_key = (
                exp.select(
                    *[sql.col(LATE_KEYS, o) for o in own], sql.alias(test.test.copy(), _KEEP)
                )
                .from_(distinct.subquery(sql.ident(LATE_KEYS)), copy=False)
                .offset(0, copy=False)
            )
            alias = f"__pgt_t{index}"
            on = exp.and_(
                *[
                    exp.EQ(this=sql.col(_JOINED, n), expression=sql.col(alias, o))
                    for n, o in zip(names_here, own, strict=True)
                ],
                copy=False,
            )
            body = body.join(
                per_key.subquery(sql.ident(alias)), on=on, join_type="left", copy=False
            )
            kept.append(
                exp.Coalesce(
                    this=sql.col(alias, _KEEP),
                    expressions=[exp.true() if test.when_null else exp.false()],
                )
            )
        body = body.where(exp.and_(*kept, copy=False), copy=False).with_(
            _JOINED, as_=joined_rows, materialized=True, copy=False
        )
        fence = aliased(body, _FENCE, positions)
        return exp.select(
            *[sql.alias(sql.col(_FENCE, p), n) for p, n in zip(positions, names, strict=True)]
        ).from_(fence, copy=False)

    def from_where(self, select: exp.Select) -> exp.Select:
        first, *rest = self.items
        select = select.from_(first.copy(), copy=False)
        for item in rest:
            select = select.join(item.copy(), join_type="cross", copy=False)
        condition = sql.and_all(self.conditions + self._late_conditions())
        return select.where(condition, copy=False) if condition is not None else select

    def exists(self, condition: exp.Expr | None = None) -> exp.Exists:
        """``EXISTS (SELECT 1 FROM items WHERE conditions [AND condition])``.

        Over an aggregated relation it ends in ``OFFSET 0``: PostgreSQL then keeps it a
        correlated subplan, and pushes the condition on the group key into the aggregate
        (one group read by index), instead of joining with every group computed.
        """
        term = self.where(condition) if condition is not None else self
        select = term.select([sql.lit(1)], weighted=False, fenced=False)
        if any(item.find(exp.Group, exp.AggFunc) is not None for item in self.items):
            select = select.offset(0, copy=False)
        return exp.Exists(this=select)


def nonempty(terms: Iterable[Term]) -> list[Term]:
    """The terms that may have rows in this refresh."""
    return [term for term in terms if not term.empty]


def live(terms: Sequence[Term]) -> list[Term]:
    """The terms that may have rows in this refresh; one known empty term when none may (a
    union of no terms has no columns)."""
    return nonempty(terms) or [terms[0]]


def is_empty(terms: Sequence[Term]) -> bool:
    """Whether every term is known to have no rows in this refresh."""
    return all(term.empty for term in terms)


def touched(
    delta: Sequence[Term],
    condition: exp.Expr,
    also: exp.Expr | None = None,
    keys: Sequence[tuple[exp.Expr, exp.Column]] = (),
) -> exp.Expr:
    """Whether a row has a partner in ``delta`` by ``condition`` [and ``also`` holds]: the
    costly ``also`` (existence in a state) goes inside each EXISTS, tested late (see
    ``Term.where_late``) on the rows that have a partner.

    ``keys`` (see ``sql.equated``): with one, the test starts with ``expression IN (the
    delta's values of the column)``, which the planner can serve by an index of the row's
    table; the EXISTS alone (correlated by more than an equality) it tests on every row.
    """
    terms = live(delta)
    parts = [
        (term.where(condition) if also is None else term.where(condition).where_late(also)).exists()
        for term in terms
    ]
    found = exp.or_(*parts)
    if not keys:
        return found
    expression, column = keys[0]
    values = union_all([term.select([column.copy()], weighted=False) for term in terms])
    return exp.and_(exp.In(this=expression.copy(), query=values.subquery()), exp.paren(found))


@dataclass(frozen=True)
class DerivedRows:
    """A row node: its states before and after, and its change."""

    new: Term
    old: Term
    delta: tuple[Term, ...]
    weighted_old: Term | None = None
    """The old state as a Z-set (new rows +1, the delta's -w): equal to ``old`` as a multiset
    and cheaper to join (a plain table in a UNION ALL, whose index the planner can use);
    valid where weights multiply (inner-join products), not in EXISTS or a rescan."""
    reduced: Reducer | None = field(default=None, compare=False)
    """The states with only the rows whose ``column`` is among the values of a query, when
    that is cheaper than filtering them: a grouped relation computes only those groups."""

    @property
    def old_in_products(self) -> Term:
        return self.weighted_old if self.weighted_old is not None else self.old


@dataclass(frozen=True)
class DerivedRelation:
    """A relation node: its states as queries, its change as a CTE ``(__pgt_w, columns)``."""

    columns: tuple[str, ...]
    new: exp.Query
    old: exp.Query
    delta: str
    restricted: Restrictor | None = field(default=None, compare=False)
    """(new, old) with only the rows whose ``column`` is among the values of a query (an
    aggregate: the groups of those keys, the condition inside its GROUP BY query); None
    where the column is not one it can restrict by."""
    empty: bool = False
    """Its delta is known to have no rows in this refresh (its sources staged none)."""


Restrictor = Callable[[str, exp.Query], "tuple[exp.Query, exp.Query] | None"]
Reducer = Callable[[str, exp.Query], "DerivedRows | None"]


@dataclass
class Context:
    """The statement being built: the CTEs every rule adds, in dependency order."""

    ctes: list[tuple[str, exp.Query]] = field(default_factory=list)
    counter: int = 0
    changed: frozenset[int] | None = None
    """The sources (oids) whose staged delta has rows in the refresh this statement is built
    for; None for a statement valid whatever changed. The others' deltas are empty and their
    old states their tables, so terms that read them go, and joins expand into terms over
    new states and deltas only (which the planner estimates from statistics)."""

    def unchanged(self, oid: int) -> bool:
        return self.changed is not None and oid not in self.changed

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"__pgt_{prefix}{self.counter}"

    def cte(self, query: exp.Query, prefix: str = "d") -> str:
        """Add ``query`` as a materialized CTE; its name."""
        name = self.name(prefix)
        self.ctes.append((name, query))
        return name

    def statement(self, final: exp.Select) -> exp.Select:
        """``WITH <every CTE> final``."""
        for name, query in self.ctes:
            final = final.with_(name, as_=query, materialized=True, copy=False)
        return final


def cte_item(name: str, alias: str) -> exp.Expr:
    return exp.Table(this=sql.ident(name), alias=exp.TableAlias(this=sql.ident(alias)))


def nothing(columns: Sequence[str], state: exp.Query) -> exp.Select:
    """A delta CTE's query known to have no rows: ``(__pgt_w, columns)`` typed as ``state``'s
    columns, ``WHERE FALSE`` (PostgreSQL plans it as a Result it never runs)."""
    # read by position: a relation's column names may repeat (two outputs named ?column?)
    positions = [f"__pgt_e{i}" for i in range(1, len(columns) + 1)]
    values = [sql.alias(sql.col("__pgt_e", p), c) for p, c in zip(positions, columns, strict=True)]
    return (
        exp.select(sql.alias(sql.lit(0), WEIGHT), *values)
        .from_(aliased(state, "__pgt_e", positions))
        .where(exp.false(), copy=False)
    )


def union_all(queries: Sequence[exp.Query]) -> exp.Query:
    query = queries[0]
    for other in queries[1:]:
        query = exp.union(query, other, distinct=False, copy=False)
    return query
