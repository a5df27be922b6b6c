"""Random but valid SELECTs and DML over the harness's tables, as hypothesis strategies.

Every strategy returns SQL text together with what the text means: each value's kind (int,
num, float, text, bool, json) and whether equal values always print alike (``keyable``). The
check compares rows as text, so whatever PostgreSQL may pick one representative of among equal
values (a GROUP BY key, DISTINCT, a set operation, min/max, the rows a TopK keeps) must be
keyable: json has no equality at all, and numerics of several scales are equal but print
differently (``1.5 = 1.50``), so such a numeric is wrapped in ``round(x, 2)`` there.

Values stay in small domains (those of ``tests.dvm.harness.SPECS``) so that joins, groups and
subqueries find partners; no expression can fail at run time (division only by
``NULLIF(x, 0)``, no product of two values near 2**40, no cast that can be out of range), and
no float expression can be minus zero (no products or negations of floats).

One strategy per construct: :func:`queries` picks a shape (:func:`plain_select`,
:func:`grouped_select`, :func:`distinct_select`, :func:`set_operation`, :func:`top_k`,
:func:`with_ctes`); FROM clauses (:func:`from_clause`) join 1 to 4 items (tables, derived
tables, CTEs) by ON, comma or nested joins; WHERE clauses add subquery predicates
(:func:`exists_predicate`, :func:`in_predicate`, :func:`scalar_comparison`).
:func:`cases` adds initial rows and rounds of DML (:func:`statement`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from hypothesis import strategies as st

Kind = Literal["int", "num", "float", "text", "bool", "json"]
VALUE_KINDS: tuple[Kind, ...] = ("int", "num", "float", "text", "bool")
"""Kinds with equality (json has none)."""
ORDERED_KINDS: tuple[Kind, ...] = ("int", "num", "float", "text")
"""Kinds with min/max and ``<``."""
NUMERIC_KINDS: tuple[Kind, ...] = ("int", "num", "float")


@dataclass(frozen=True)
class Expr:
    """An SQL expression and what its values are."""

    sql: str
    kind: Kind
    scales: frozenset[int] | None = None
    """num: the numbers of decimal digits its values can have (None: not known)."""
    big: bool = False
    """int: may hold values near 2**40, so it is never multiplied by another big value."""
    column: bool = False
    """Reads a column (a GROUP BY key must: a bare literal there would be an ordinal)."""
    domain: str | None = None
    """The values it takes, when those of a column (see ``DOMAINS``): literals compared with
    it are drawn from there, and text is joined only with text of the same domain."""

    @property
    def keyable(self) -> bool:
        """Equal values print alike: may be a group key, DISTINCT, set operation or order."""
        if self.kind == "json":
            return False
        if self.kind == "num":
            return self.scales is not None and len(self.scales) == 1
        return True

    def digits(self) -> frozenset[int] | None:
        """The scales of the value as a numeric (an int has scale 0)."""
        return frozenset({0}) if self.kind == "int" else self.scales


def _col(
    name: str, kind: Kind, domain: str, *, scales: int | None = None, big: bool = False
) -> Expr:
    return Expr(
        name,
        kind,
        frozenset({scales}) if scales is not None else None,
        big=big,
        column=True,
        domain=domain,
    )


DOMAINS: dict[str, tuple[str, ...]] = {
    "small": tuple(str(i) for i in range(8)),
    "heavy": ("0", "1", "(-1)", str(2**40)),
    "amount": ("0.00", "1.50", "2.25", "10.00", "19.99"),
    "w": ("CAST(0.5 AS double precision)", "CAST(-1.5 AS double precision)"),
    "note": ("'a'", "'b'", "'c'", "''", "'Zz'"),
    "name": ("'ann'", "'bob'", "'cy'", "'dee'"),
    "region": ("'north'", "'south'", "'east'"),
    "kind": ("'x'", "'y'", "'z'", "'w'"),
    "tag": ("'red'", "'green'", "'blue'"),
}
"""Literals of each column's values (those of ``tests.dvm.harness.SPECS`` and of ``VALUES``)."""


@dataclass(frozen=True)
class Source:
    """A relation a FROM item can name: a table of the harness or a CTE."""

    name: str
    columns: tuple[Expr, ...]
    """Column meanings; ``sql`` is the column name."""
    key: str | None
    tables: frozenset[str]


TABLES: tuple[Source, ...] = (
    Source(
        "orders",
        (
            _col("id", "int", "small"),
            _col("cid", "int", "small"),
            _col("amount", "num", "amount", scales=2),
            _col("qty", "int", "small"),
            _col("heavy", "int", "heavy", big=True),
            _col("note", "text", "note"),
        ),
        "id",
        frozenset({"orders"}),
    ),
    Source(
        "customers",
        (
            _col("id", "int", "small"),
            _col("name", "text", "name"),
            _col("region", "text", "region"),
            _col("info", "json", "json"),
        ),
        "id",
        frozenset({"customers"}),
    ),
    Source(
        "events",
        (_col("kind", "text", "kind"), _col("v", "int", "small"), _col("w", "float", "w")),
        None,
        frozenset({"events"}),
    ),
    Source(
        "tags",
        (_col("cid", "int", "small"), _col("tag", "text", "tag"), _col("kind", "text", "kind")),
        None,
        frozenset({"tags"}),
    ),
)


@dataclass(frozen=True)
class Scope:
    """The columns a clause can read (qualified), and those unique per row."""

    columns: tuple[Expr, ...]
    unique: tuple[str, ...] = ()

    def of(self, *kinds: Kind) -> list[Expr]:
        return [c for c in self.columns if c.kind in kinds]

    def __add__(self, other: Scope) -> Scope:
        return Scope(self.columns + other.columns)


@dataclass(frozen=True)
class From:
    sql: str
    scope: Scope
    conditions: tuple[str, ...]
    """Join conditions of a comma join, for the WHERE clause."""
    tables: frozenset[str]


@dataclass(frozen=True)
class Query:
    sql: str
    outputs: tuple[tuple[str, Expr], ...]
    tables: frozenset[str]
    unique: tuple[str, ...] = ()
    """Output names that together identify a row (for a total order of a TopK)."""


@dataclass(frozen=True)
class Context:
    """What a query being generated can see: aliases already taken, the CTEs in scope."""

    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    ctes: tuple[Source, ...] = ()

    def alias(self, prefix: str) -> str:
        return f"{prefix}{next(self.counter)}"

    def sources(self) -> tuple[Source, ...]:
        return self.ctes + TABLES

    def with_cte(self, cte: Source) -> Context:
        return Context(self.counter, (*self.ctes, cte))


Draw = st.DrawFn
TOP_DEPTH = 2
"""Nesting of a top-level query: its FROM items and subqueries are of depth 1, theirs 0."""
Builder = Callable[[Scope, int], st.SearchStrategy[Expr]]


def coin(draw: Draw) -> bool:
    return draw(st.booleans())


def rarely(draw: Draw, n: int) -> bool:
    """True once in ``n + 1`` draws; shrinks to False (the common, simpler option)."""
    return bool(draw(st.integers(0, n)) == n)


def usually(draw: Draw, n: int) -> bool:
    """False once in ``n + 1`` draws; shrinks to True."""
    return bool(draw(st.integers(0, n)) < n)


# -- literals --------------------------------------------------------------------------------

INT_LITERALS = st.integers(-1, 8).map(lambda i: Expr(f"({i})" if i < 0 else str(i), "int"))
NUM_LITERALS = st.sampled_from(["1.5", "0.00", "2.25", "10", "0.5"]).map(
    lambda t: Expr(t, "num", frozenset({len(t.split(".")[1]) if "." in t else 0}))
)
FLOAT_LITERALS = st.sampled_from(["0.5", "1", "-1.5", "2"]).map(
    lambda t: Expr(f"CAST({t} AS double precision)", "float")
)
TEXT_LITERALS = st.sampled_from(["a", "x", "red", "north", "", "Zz", "ann"]).map(
    lambda t: Expr(f"'{t}'", "text")
)
BOOL_LITERALS = st.sampled_from(["TRUE", "FALSE"]).map(lambda t: Expr(t, "bool"))


def literal_like(e: Expr) -> st.SearchStrategy[Expr]:
    """A literal to compare ``e`` with: mostly one of the values of its column."""
    values = DOMAINS.get(e.domain or "")
    if values is None or e.kind == "json":
        return literal(e.kind)
    return st.sampled_from(values).map(lambda t: Expr(t, e.kind, e.scales)) | literal(e.kind)


def literal(kind: Kind) -> st.SearchStrategy[Expr]:
    return {
        "int": INT_LITERALS,
        "num": NUM_LITERALS,
        "float": FLOAT_LITERALS,
        "text": TEXT_LITERALS,
        "bool": BOOL_LITERALS,
    }[kind]


# -- expressions: one builder per construct ------------------------------------------------


@st.composite
def expression(draw: Draw, scope: Scope, kind: Kind, depth: int = 2, keyable: bool = False) -> Expr:
    """An expression of ``kind`` over ``scope``; keyable (rounded if need be) when asked."""
    builders: list[Builder] = []
    if scope.of(kind):
        # mostly columns: predicates of constants only are true or false for every row
        builders.extend([column_ref(kind)] * 3)
    if kind != "json":
        builders.append(lambda _scope, _depth: literal(kind))
    if depth > 0:
        builders.extend(BUILDERS[kind])
    assert builders, f"no expression of kind {kind}"
    builder = draw(st.sampled_from(builders))
    result = draw(builder(scope, depth - 1))
    if keyable and not result.keyable:
        result = rounded(result)
    return result


def rounded(e: Expr) -> Expr:
    """A numeric of one scale: ``round(x, 2)``."""
    assert e.kind == "num"
    return Expr(f"round({e.sql}, 2)", "num", frozenset({2}), big=e.big, column=e.column)


def column_ref(kind: Kind) -> Builder:
    def build(scope: Scope, depth: int) -> st.SearchStrategy[Expr]:
        return st.sampled_from(scope.of(kind))

    return build


def _sub(scope: Scope, kind: Kind, depth: int) -> st.SearchStrategy[Expr]:
    return expression(scope, kind, max(depth, 0))


def _subject(scope: Scope, kind: Kind, depth: int) -> st.SearchStrategy[Expr]:
    """What a predicate tests: reads a column if it can (else the predicate is constant)."""
    return _sub(scope, kind, depth).filter(lambda a: a.column or not scope.of(kind))


def _merged(*parts: Expr) -> bool:
    return any(p.column for p in parts)


def _big(*parts: Expr) -> bool:
    return any(p.big for p in parts)


@st.composite
def int_arithmetic(draw: Draw, scope: Scope, depth: int) -> Expr:
    a = draw(_sub(scope, "int", depth))
    op = draw(st.sampled_from(["+", "-", "*", "/", "%"]))
    if op in ("+", "-"):
        b = draw(_sub(scope, "int", depth))
        return Expr(f"({a.sql} {op} {b.sql})", "int", big=_big(a, b), column=_merged(a, b))
    if op == "*":
        b = draw(_sub(scope, "int", depth).filter(lambda b: not (a.big and b.big)))
        return Expr(f"({a.sql} * {b.sql})", "int", big=_big(a, b), column=_merged(a, b))
    b = draw(_sub(scope, "int", depth))
    return Expr(f"({a.sql} {op} NULLIF({b.sql}, 0))", "int", big=a.big, column=_merged(a, b))


@st.composite
def num_arithmetic(draw: Draw, scope: Scope, depth: int) -> Expr:
    a = draw(_sub(scope, "num", depth))
    op = draw(st.sampled_from(["+", "-", "*", "/"]))
    b = draw(_sub(scope, draw(st.sampled_from(["num", "int"])), depth))
    left, right = a.digits(), b.digits()
    scales: frozenset[int] | None = None
    if left is not None and right is not None and op != "/":
        if op == "*":
            scales = frozenset(x + y for x in left for y in right)
        else:
            scales = frozenset(max(x, y) for x in left for y in right)
    operand = f"NULLIF({b.sql}, 0)" if op == "/" else b.sql
    return Expr(f"({a.sql} {op} {operand})", "num", scales, big=_big(a, b), column=_merged(a, b))


@st.composite
def float_arithmetic(draw: Draw, scope: Scope, depth: int) -> Expr:
    # sums and differences only: a product or a negation can give minus zero, which equals
    # zero but prints "-0" (then which one a group or DISTINCT keeps is arbitrary)
    a = draw(_sub(scope, "float", depth))
    op = draw(st.sampled_from(["+", "-"]))
    b = draw(_sub(scope, draw(st.sampled_from(["float", "int"])), depth))
    return Expr(f"({a.sql} {op} {b.sql})", "float", big=_big(a, b), column=_merged(a, b))


@st.composite
def negation(draw: Draw, scope: Scope, depth: int, kind: Kind) -> Expr:
    a = draw(_sub(scope, kind, depth))
    function = draw(st.sampled_from(["-", "abs"]))
    text = f"(-{a.sql})" if function == "-" else f"abs({a.sql})"
    return Expr(text, kind, a.scales, big=a.big, column=a.column)


@st.composite
def case_when(draw: Draw, scope: Scope, depth: int, kind: Kind) -> Expr:
    condition = draw(predicate(scope, depth))
    then = draw(_sub(scope, kind, depth))
    otherwise = draw(st.none() | _sub(scope, kind, depth))
    if otherwise is None:
        return Expr(
            f"CASE WHEN {condition.sql} THEN {then.sql} END",
            kind,
            then.scales,
            big=then.big,
            column=_merged(condition, then),
        )
    return Expr(
        f"CASE WHEN {condition.sql} THEN {then.sql} ELSE {otherwise.sql} END",
        kind,
        _union(then, otherwise),
        big=_big(then, otherwise),
        column=_merged(condition, then, otherwise),
    )


def _union(*parts: Expr) -> frozenset[int] | None:
    if parts[0].kind != "num":
        return None
    found: set[int] = set()
    for part in parts:
        digits = part.digits()
        if digits is None:
            return None
        found |= digits
    return frozenset(found)


@st.composite
def coalesce(draw: Draw, scope: Scope, depth: int, kind: Kind) -> Expr:
    a = draw(_sub(scope, kind, depth))
    b = draw(_sub(scope, kind, depth))
    return Expr(
        f"COALESCE({a.sql}, {b.sql})",
        kind,
        _union(a, b),
        big=_big(a, b),
        column=_merged(a, b),
        domain=a.domain if a.domain == b.domain else None,
    )


@st.composite
def nullif(draw: Draw, scope: Scope, depth: int, kind: Kind) -> Expr:
    a = draw(_sub(scope, kind, depth))
    b = draw(literal_like(a))
    return Expr(
        f"NULLIF({a.sql}, {b.sql})", kind, a.scales, big=a.big, column=a.column, domain=a.domain
    )


@st.composite
def greatest(draw: Draw, scope: Scope, depth: int, kind: Kind) -> Expr:
    a = draw(_sub(scope, kind, depth))
    b = draw(_sub(scope, kind, depth))
    function = draw(st.sampled_from(["GREATEST", "LEAST"]))
    return Expr(
        f"{function}({a.sql}, {b.sql})",
        kind,
        _union(a, b),
        big=_big(a, b),
        column=_merged(a, b),
    )


@st.composite
def cast_to_int(draw: Draw, scope: Scope, depth: int) -> Expr:
    kind: Kind = draw(st.sampled_from(["num", "float", "text"]))
    if kind == "text":
        a = draw(_sub(scope, kind, depth))
        return Expr(f"length({a.sql})", "int", column=a.column)
    # values near 2**40 are out of the range of integer
    a = draw(_sub(scope, kind, depth).filter(lambda a: not a.big))
    return Expr(f"CAST({a.sql} AS integer)", "int", column=a.column)


@st.composite
def cast_to_num(draw: Draw, scope: Scope, depth: int) -> Expr:
    a = draw(_sub(scope, draw(st.sampled_from(["int", "num"])), depth))
    target = draw(st.sampled_from(["numeric", "numeric(80,1)", "numeric(80,3)"]))
    scales = a.digits() if target == "numeric" else frozenset({int(target[-2])})
    return Expr(f"CAST({a.sql} AS {target})", "num", scales, big=a.big, column=a.column)


@st.composite
def round_num(draw: Draw, scope: Scope, depth: int) -> Expr:
    a = draw(_sub(scope, draw(st.sampled_from(["num", "float"])), depth))
    digits = draw(st.integers(0, 2))
    if a.kind == "float":
        a = Expr(f"CAST({a.sql} AS numeric)", "num", None, big=a.big, column=a.column)
    return Expr(f"round({a.sql}, {digits})", "num", frozenset({digits}), a.big, a.column)


@st.composite
def cast_to_float(draw: Draw, scope: Scope, depth: int) -> Expr:
    a = draw(_sub(scope, draw(st.sampled_from(["int", "num"])), depth))
    return Expr(f"CAST({a.sql} AS double precision)", "float", big=a.big, column=a.column)


@st.composite
def text_function(draw: Draw, scope: Scope, depth: int) -> Expr:
    a = draw(_sub(scope, "text", depth))
    form = draw(
        st.sampled_from(
            ["upper({})", "lower({})", "substr({}, 1, 1)", "({} || '-')", "concat({}, 'x')"]
        )
    )
    return Expr(form.format(a.sql), "text", column=a.column)


@st.composite
def concatenation(draw: Draw, scope: Scope, depth: int) -> Expr:
    a = draw(_sub(scope, "text", depth))
    b = draw(_sub(scope, "text", depth))
    return Expr(f"({a.sql} || {b.sql})", "text", column=_merged(a, b))


@st.composite
def cast_to_text(draw: Draw, scope: Scope, depth: int) -> Expr:
    kinds: list[Kind] = ["int", "num", "bool"]
    if scope.of("json"):
        kinds.append("json")
    kind = draw(st.sampled_from(kinds))
    a = draw(_sub(scope, kind, depth))
    if kind == "json" and coin(draw):
        return Expr(f"({a.sql} ->> 'a')", "text", column=a.column)
    return Expr(f"CAST({a.sql} AS text)", "text", column=a.column)


def _kind_builders(kind: Kind) -> list[Builder]:
    def of(
        function: Callable[[Scope, int, Kind], st.SearchStrategy[Expr]],
    ) -> Builder:
        return lambda scope, depth: function(scope, depth, kind)

    return [of(case_when), of(coalesce), of(nullif)]


BUILDERS: dict[Kind, list[Builder]] = {
    "int": [
        int_arithmetic,
        lambda s, d: negation(s, d, "int"),
        cast_to_int,
        lambda s, d: greatest(s, d, "int"),
        *_kind_builders("int"),
    ],
    "num": [
        num_arithmetic,
        lambda s, d: negation(s, d, "num"),
        cast_to_num,
        round_num,
        *_kind_builders("num"),
    ],
    "float": [float_arithmetic, cast_to_float, *_kind_builders("float")],
    "text": [text_function, concatenation, cast_to_text, *_kind_builders("text")],
    "bool": [],  # see predicate()
    "json": [],
}


# -- predicates ------------------------------------------------------------------------------


def _kinds_in(scope: Scope, kinds: Sequence[Kind]) -> list[Kind]:
    """Kinds of ``kinds`` that ``scope`` has columns of (else all: literals and casts)."""
    present = [k for k in kinds if scope.of(k)]
    return present or list(kinds)


@st.composite
def comparison(draw: Draw, scope: Scope, depth: int) -> Expr:
    kind = draw(st.sampled_from(_kinds_in(scope, ORDERED_KINDS)))
    a = draw(_subject(scope, kind, depth))
    b = draw(st.one_of(literal_like(a), _sub(scope, kind, depth)))
    op = draw(
        st.sampled_from(
            ["=", "<>", "<", "<=", ">", ">=", "IS DISTINCT FROM", "IS NOT DISTINCT FROM"]
        )
    )
    return Expr(f"{a.sql} {op} {b.sql}", "bool", column=_merged(a, b))


@st.composite
def null_test(draw: Draw, scope: Scope, depth: int) -> Expr:
    kinds = list(VALUE_KINDS) + (["json"] if scope.of("json") else [])
    a = draw(_subject(scope, draw(st.sampled_from(_kinds_in(scope, kinds))), depth))
    test = draw(st.sampled_from(["IS NULL", "IS NOT NULL"]))
    return Expr(f"{a.sql} {test}", "bool", column=a.column)


@st.composite
def between(draw: Draw, scope: Scope, depth: int) -> Expr:
    a = draw(_subject(scope, "int", depth))
    low, high = sorted(draw(st.lists(st.integers(0, 7), min_size=2, max_size=2)))
    negated = draw(st.sampled_from(["", "NOT "]))
    return Expr(f"{a.sql} {negated}BETWEEN {low} AND {high}", "bool", column=a.column)


@st.composite
def in_list(draw: Draw, scope: Scope, depth: int) -> Expr:
    kind = draw(st.sampled_from(_kinds_in(scope, ["int", "text"])))
    a = draw(_subject(scope, kind, depth))
    values = draw(st.lists(literal_like(a), min_size=1, max_size=3))
    negated = draw(st.sampled_from(["", "NOT "]))
    listed = ", ".join(v.sql for v in values)
    return Expr(f"{a.sql} {negated}IN ({listed})", "bool", column=a.column)


@st.composite
def like(draw: Draw, scope: Scope, depth: int) -> Expr:
    a = draw(_subject(scope, "text", depth))
    op = draw(st.sampled_from(["LIKE", "NOT LIKE", "ILIKE"]))
    pattern = draw(st.sampled_from(["a%", "%e%", "_", "z%", "%", "%n"]))
    return Expr(f"{a.sql} {op} '{pattern}'", "bool", column=a.column)


@st.composite
def boolean_operator(draw: Draw, scope: Scope, depth: int) -> Expr:
    a = draw(predicate(scope, depth))
    op = draw(st.sampled_from(["AND", "OR", "NOT"]))
    if op == "NOT":
        return Expr(f"NOT ({a.sql})", "bool", column=a.column)
    b = draw(predicate(scope, depth))
    return Expr(f"({a.sql} {op} {b.sql})", "bool", column=_merged(a, b))


PREDICATES: list[Builder] = [comparison, null_test, between, in_list, like, boolean_operator]


@st.composite
def predicate(draw: Draw, scope: Scope, depth: int = 1) -> Expr:
    builders = PREDICATES if depth > 0 else PREDICATES[:-1]
    builder = draw(st.sampled_from(builders))
    return draw(builder(scope, max(depth - 1, 0)))


def _bool_expression(scope: Scope, depth: int) -> st.SearchStrategy[Expr]:
    # parenthesized: an operand of another operator (a = b = c is not what it means)
    return predicate(scope, depth).map(lambda p: Expr(f"({p.sql})", "bool", column=p.column))


BUILDERS["bool"] = [_bool_expression, *_kind_builders("bool")]


# -- aggregates ------------------------------------------------------------------------------


def count_star(scope: Scope) -> st.SearchStrategy[Expr]:
    return st.just(Expr("count(*)", "int"))


@st.composite
def count_of(draw: Draw, scope: Scope) -> Expr:
    kinds = list(VALUE_KINDS) + (["json"] if scope.of("json") else [])
    a = draw(expression(scope, draw(st.sampled_from(_kinds_in(scope, kinds))), 1))
    distinct = "DISTINCT " if a.kind != "json" and coin(draw) else ""
    return Expr(f"count({distinct}{a.sql})", "int")


@st.composite
def sum_of(draw: Draw, scope: Scope) -> Expr:
    a = draw(expression(scope, draw(st.sampled_from(_kinds_in(scope, NUMERIC_KINDS))), 1))
    if a.kind == "int":
        # sum(integer) is bigint, sum(bigint) numeric: an integer either way
        return (
            Expr(f"sum({a.sql})", "int", big=True)
            if not a.big
            else Expr(f"sum({a.sql})", "num", frozenset({0}))
        )
    return Expr(f"sum({a.sql})", a.kind, a.scales)


@st.composite
def avg_of(draw: Draw, scope: Scope) -> Expr:
    a = draw(expression(scope, draw(st.sampled_from(_kinds_in(scope, NUMERIC_KINDS))), 1))
    return Expr(f"avg({a.sql})", "float" if a.kind == "float" else "num", None)


@st.composite
def min_max(draw: Draw, scope: Scope) -> Expr:
    kind = draw(st.sampled_from(_kinds_in(scope, ORDERED_KINDS)))
    a = draw(expression(scope, kind, 1, keyable=True))
    function = draw(st.sampled_from(["min", "max"]))
    return Expr(f"{function}({a.sql})", kind, a.scales, big=a.big)


@st.composite
def bool_aggregate(draw: Draw, scope: Scope) -> Expr:
    a = draw(predicate(scope, 1))
    function = draw(st.sampled_from(["bool_and", "bool_or", "every"]))
    return Expr(f"{function}({a.sql})", "bool")


@st.composite
def string_agg(draw: Draw, scope: Scope) -> Expr:
    a = draw(expression(scope, "text", 1))
    direction = draw(st.sampled_from(["", " DESC"]))
    # ordered by the value itself: ties are equal strings, so the result is determined
    # with DISTINCT, PostgreSQL rejects a constant argument (its ORDER BY is "not in the list")
    distinct = "DISTINCT " if a.column and rarely(draw, 3) else ""
    return Expr(f"string_agg({distinct}{a.sql}, ',' ORDER BY {a.sql}{direction})", "text")


AGGREGATES: list[Callable[[Scope], st.SearchStrategy[Expr]]] = [
    count_star,
    count_of,
    sum_of,
    avg_of,
    min_max,
    bool_aggregate,
    string_agg,
]


@st.composite
def aggregate(draw: Draw, scope: Scope, filtered: bool = True) -> Expr:
    """An aggregate call, maybe with ``FILTER (WHERE ...)``."""
    call = draw(draw(st.sampled_from(AGGREGATES))(scope))
    if filtered and rarely(draw, 3):
        condition = draw(predicate(scope, 1))
        return Expr(f"{call.sql} FILTER (WHERE {condition.sql})", call.kind, call.scales, call.big)
    return call


@st.composite
def aggregate_expression(draw: Draw, scope: Scope, keys: Sequence[Expr]) -> Expr:
    """An output of a grouped query: an aggregate, or an expression of aggregates and keys."""
    a = draw(aggregate(scope))
    form = draw(st.sampled_from(["plain", "plain", "arithmetic", "coalesce", "case", "ratio"]))
    if form == "arithmetic" and a.kind in ("int", "num"):
        others = [k for k in keys if k.kind in ("int", "num")]
        b = draw(st.sampled_from(others) if others and coin(draw) else count_star(scope))
        op = draw(st.sampled_from(["+", "-"]))
        kind: Kind = "num" if "num" in (a.kind, b.kind) else "int"
        scales = _union(a, b) if kind == "num" else None
        return Expr(f"({a.sql} {op} {b.sql})", kind, scales, big=True)
    if form == "coalesce" and a.kind != "bool":
        b = draw(literal(a.kind))
        return Expr(f"COALESCE({a.sql}, {b.sql})", a.kind, _union(a, b), big=a.big)
    if form == "case" and a.kind in ORDERED_KINDS:
        b = draw(literal(a.kind))
        return Expr(f"CASE WHEN {a.sql} > {b.sql} THEN 'many' ELSE 'few' END", "text")
    if form == "ratio" and a.kind in ("int", "num"):
        return Expr(f"({a.sql} / NULLIF(count(*), 0))", a.kind, None, big=a.big)
    return a


# -- FROM ------------------------------------------------------------------------------------


def _scope_of(alias: str, source: Source) -> Scope:
    columns = tuple(
        Expr(f"{alias}.{c.sql}", c.kind, c.scales, c.big, True, c.domain) for c in source.columns
    )
    unique = (f"{alias}.{source.key}",) if source.key is not None else ()
    return Scope(columns, unique)


@st.composite
def table_item(draw: Draw, ctx: Context) -> From:
    """A table of the harness, or a CTE in scope, under a fresh alias."""
    source = draw(st.sampled_from(ctx.sources()))
    alias = ctx.alias("t")
    return From(f"{source.name} AS {alias}", _scope_of(alias, source), (), source.tables)


@st.composite
def derived_table(draw: Draw, ctx: Context, depth: int) -> From:
    """``(SELECT ...) AS d``: any shape of query in FROM."""
    inner = draw(query(ctx, depth - 1, prefix="v"))
    alias = ctx.alias("d")
    source = _source_of(alias, inner)
    return From(f"({inner.sql}) AS {alias}", _scope_of(alias, source), (), inner.tables)


def _source_of(name: str, inner: Query) -> Source:
    columns = tuple(
        Expr(n, e.kind, e.scales, big=e.big, column=True, domain=e.domain) for n, e in inner.outputs
    )
    key = inner.unique[0] if len(inner.unique) == 1 else None
    return Source(name, columns, key, inner.tables)


@st.composite
def from_item(draw: Draw, ctx: Context, depth: int) -> From:
    if depth > 0 and rarely(draw, 5):
        return draw(derived_table(ctx, depth))
    return draw(table_item(ctx))


def _joinable(a: Expr, b: Expr) -> bool:
    """Equal values can occur: small integers, or text of one domain (a tag is no kind)."""
    if a.kind != b.kind or a.big or b.big:
        return False
    return a.kind == "int" or (a.kind == "text" and a.domain is not None and a.domain == b.domain)


@st.composite
def join_condition(draw: Draw, left: Scope, right: Scope, full: bool = False) -> str:
    """An equality of columns of both sides, maybe with a non-equi or one-sided conjunct.

    PostgreSQL runs a FULL JOIN only by merge or hash: it needs an equality, else ON TRUE.
    """
    pairs = [(a, b) for a in left.columns for b in right.columns if _joinable(a, b)]
    parts: list[str] = []
    if pairs and (full or usually(draw, 5)):
        a, b = draw(st.sampled_from(pairs))
        parts.append(f"{a.sql} = {b.sql}")
    if full and not parts:
        return "TRUE"
    extra = draw(st.sampled_from(["none", "none", "non_equi", "right", "left"]))
    numeric_pairs = [
        (a, b)
        for a in left.columns
        for b in right.columns
        if a.kind in NUMERIC_KINDS and b.kind in NUMERIC_KINDS
    ]
    if (extra == "non_equi" or not parts) and numeric_pairs:
        a, b = draw(st.sampled_from(numeric_pairs))
        op = draw(st.sampled_from(["<", "<=", ">", "<>"]))
        parts.append(f"{a.sql} {op} {b.sql}")
    elif extra in ("right", "left"):
        parts.append(draw(predicate(right if extra == "right" else left, 0)).sql)
    return " AND ".join(parts) if parts else "TRUE"


JOIN_KINDS = ["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN", "CROSS JOIN"]


@st.composite
def join_chain(draw: Draw, ctx: Context, depth: int, count: int) -> From:
    """``a JOIN b ON ... LEFT JOIN c ON ...``: left-deep, of any join kind."""
    result = draw(from_item(ctx, depth))
    for _ in range(count - 1):
        item = draw(from_item(ctx, depth))
        result = _join(result, item, draw(st.sampled_from(JOIN_KINDS)), draw)
    return result


def _join(left: From, right: From, kind: str, draw: Draw) -> From:
    condition = join_condition(left.scope, right.scope, full=kind == "FULL JOIN")
    on = "" if kind == "CROSS JOIN" else f" ON {draw(condition)}"
    return From(
        f"{left.sql} {kind} {right.sql}{on}",
        left.scope + right.scope,
        left.conditions + right.conditions,
        left.tables | right.tables,
    )


@st.composite
def nested_join(draw: Draw, ctx: Context, depth: int) -> From:
    """``a LEFT JOIN (b JOIN c ON ...) ON ...``."""
    first = draw(from_item(ctx, depth))
    inner = _join(
        draw(from_item(ctx, depth)),
        draw(from_item(ctx, depth)),
        draw(st.sampled_from(JOIN_KINDS[:4])),
        draw,
    )
    parenthesized = From(f"({inner.sql})", inner.scope, (), inner.tables)
    return _join(first, parenthesized, draw(st.sampled_from(JOIN_KINDS[:4])), draw)


@st.composite
def comma_join(draw: Draw, ctx: Context, depth: int, count: int) -> From:
    """``FROM a, b, c WHERE a.x = b.y AND ...``."""
    items = [draw(from_item(ctx, depth)) for _ in range(count)]
    conditions: list[str] = []
    scope = items[0].scope
    for item in items[1:]:
        if usually(draw, 4):
            conditions.append(draw(join_condition(scope, item.scope)))
        scope = scope + item.scope
    return From(
        ", ".join(i.sql for i in items),
        scope,
        tuple(conditions),
        frozenset().union(*(i.tables for i in items)),
    )


@st.composite
def from_clause(draw: Draw, ctx: Context, depth: int, max_items: int | None = None) -> From:
    """1 to 4 FROM items at the top (2 in subqueries), joined by one of the join styles."""
    counts = [1, 1, 2, 2, 3, 4] if depth >= TOP_DEPTH else [1, 1, 2]
    count = draw(st.sampled_from([c for c in counts if c <= (max_items or 4)]))
    if count == 1:
        return draw(from_item(ctx, depth))
    style = draw(st.sampled_from(["join", "comma", "nested"]))
    if style == "nested" and count >= 3:
        return draw(nested_join(ctx, depth))
    if style == "comma":
        return draw(comma_join(ctx, depth, count))
    return draw(join_chain(ctx, depth, count))


# -- subqueries ------------------------------------------------------------------------------


@st.composite
def correlation(draw: Draw, inner: Scope, outer: Scope, *, equality: bool) -> str | None:
    """A condition relating an inner column with an outer one (None: no partner found)."""
    pairs = [(a, b) for a in inner.columns for b in outer.columns if _joinable(a, b)]
    if not equality and coin(draw):
        pairs_ne = [
            (a, b)
            for a in inner.columns
            for b in outer.columns
            if a.kind in ("int", "num") and b.kind in ("int", "num")
        ]
        if pairs_ne:
            a, b = draw(st.sampled_from(pairs_ne))
            return f"{a.sql} {draw(st.sampled_from(['<', '>=', '<>']))} {b.sql}"
    if not pairs:
        return None
    a, b = draw(st.sampled_from(pairs))
    return f"{a.sql} = {b.sql}"


def _where(conditions: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


@st.composite
def exists_predicate(
    draw: Draw, ctx: Context, outer: Scope, depth: int
) -> tuple[str, frozenset[str]]:
    """``[NOT] EXISTS (SELECT 1 FROM ... WHERE inner = outer AND ...)``."""
    inner = draw(from_clause(ctx, depth, max_items=2))
    conditions = list(inner.conditions)
    if usually(draw, 3):
        related = draw(correlation(inner.scope, outer, equality=False))
        if related is not None:
            conditions.append(related)
    conditions.extend(p.sql for p in draw(st.lists(predicate(inner.scope), max_size=1)))
    tables = inner.tables
    if depth > 0 and rarely(draw, 4):
        nested, more = draw(subquery_predicate(ctx, inner.scope, depth - 1))
        conditions.append(nested)
        tables |= more
    negated = draw(st.sampled_from(["", "NOT "]))
    return f"{negated}EXISTS (SELECT 1 FROM {inner.sql}{_where(conditions)})", tables


@st.composite
def in_predicate(draw: Draw, ctx: Context, outer: Scope, depth: int) -> tuple[str, frozenset[str]]:
    """``x [NOT] IN (SELECT y FROM ...)``: plain, correlated, grouped, or of a row."""
    inner = draw(from_clause(ctx, depth, max_items=2))
    width = draw(st.sampled_from([1, 1, 1, 2]))
    kinds = [draw(st.sampled_from(_kinds_in(inner.scope, ["int", "text"]))) for _ in range(width)]
    values = [draw(expression(inner.scope, kind, 1, keyable=True)) for kind in kinds]
    lefts = [draw(expression(outer, kind, 1)) for kind in kinds]
    conditions = list(inner.conditions)
    conditions.extend(p.sql for p in draw(st.lists(predicate(inner.scope), max_size=1)))
    form = draw(st.sampled_from(["plain", "correlated", "grouped", "distinct"]))
    selected = ", ".join(v.sql for v in values)
    if form == "correlated":
        related = draw(correlation(inner.scope, outer, equality=False))
        if related is not None:
            conditions.append(related)
    body = f"SELECT {'DISTINCT ' if form == 'distinct' else ''}{selected} FROM {inner.sql}"
    body += _where(conditions)
    if form == "grouped":
        having = draw(st.none() | _having(inner.scope))
        positions = ", ".join(str(i) for i in range(1, width + 1))
        body += f" GROUP BY {positions}" + (f" HAVING {having}" if having else "")
    left = lefts[0].sql if width == 1 else f"({', '.join(x.sql for x in lefts)})"
    negated = draw(st.sampled_from(["", "NOT "]))
    return f"{left} {negated}IN ({body})", inner.tables


@st.composite
def scalar_subquery(
    draw: Draw, ctx: Context, outer: Scope, depth: int
) -> tuple[Expr, frozenset[str]]:
    """``(SELECT agg FROM ...)``: uncorrelated, or correlated by an equality."""
    inner = draw(from_clause(ctx, depth, max_items=2))
    conditions = list(inner.conditions)
    correlated = coin(draw)
    if correlated:
        related = draw(correlation(inner.scope, outer, equality=True))
        if related is not None:
            conditions.append(related)
        else:
            correlated = False
    value = draw(aggregate(inner.scope, filtered=not correlated))
    conditions.extend(p.sql for p in draw(st.lists(predicate(inner.scope), max_size=1)))
    return (
        Expr(
            f"(SELECT {value.sql} FROM {inner.sql}{_where(conditions)})",
            value.kind,
            value.scales,
            big=value.big,
            column=True,
        ),
        inner.tables,
    )


@st.composite
def scalar_comparison(
    draw: Draw, ctx: Context, outer: Scope, depth: int
) -> tuple[str, frozenset[str]]:
    """``x < (SELECT avg(...) FROM ...)``."""
    value, tables = draw(scalar_subquery(ctx, outer, depth))
    kind: Kind = "num" if value.kind == "int" else value.kind
    kind = draw(st.sampled_from(["int", "num"])) if kind == "num" else kind
    other = draw(expression(outer, kind, 1))
    op = draw(st.sampled_from(["=", "<", ">", "<=", "IS DISTINCT FROM"]))
    return f"{other.sql} {op} {value.sql}", tables


@st.composite
def subquery_predicate(
    draw: Draw, ctx: Context, outer: Scope, depth: int
) -> tuple[str, frozenset[str]]:
    builder = draw(st.sampled_from([exists_predicate, in_predicate, scalar_comparison]))
    return draw(builder(ctx, outer, depth))


@st.composite
def where_clause(draw: Draw, ctx: Context, frm: From, depth: int) -> tuple[str, frozenset[str]]:
    """Join conditions of a comma join, plain predicates and subquery predicates, ANDed."""
    conditions = list(frm.conditions)
    plain = [0, 1, 1, 2] if depth >= TOP_DEPTH else [0, 0, 1]
    conditions.extend(draw(predicate(frm.scope)).sql for _ in range(draw(st.sampled_from(plain))))
    tables = frm.tables
    if depth > 0:
        counts = [0, 0, 0, 1, 1, 2] if depth >= TOP_DEPTH else [0, 0, 0, 0, 1]
        for _ in range(draw(st.sampled_from(counts))):
            condition, more = draw(subquery_predicate(ctx, frm.scope, depth - 1))
            conditions.append(condition)
            tables |= more
    order = draw(st.permutations(conditions))
    return _where(order), tables


# -- queries ---------------------------------------------------------------------------------


def _named(prefix: str, expressions: Sequence[Expr]) -> tuple[tuple[str, Expr], ...]:
    return tuple((f"{prefix}{i}", e) for i, e in enumerate(expressions, 1))


def _select_list(outputs: Sequence[tuple[str, Expr]]) -> str:
    return ", ".join(f"{e.sql} AS {name}" for name, e in outputs)


def _output_kinds(scope: Scope, keyable: bool) -> list[Kind]:
    return list(VALUE_KINDS) + (["json"] if scope.of("json") and not keyable else [])


@st.composite
def plain_select(
    draw: Draw, ctx: Context, depth: int, prefix: str = "c", keyable: bool = False
) -> Query:
    """``SELECT expressions FROM ... WHERE ...``, maybe with scalar subqueries as outputs."""
    frm = draw(from_clause(ctx, depth))
    kinds = _output_kinds(frm.scope, keyable)
    expressions = [
        draw(
            expression(
                frm.scope,
                draw(st.sampled_from(kinds)),
                draw(st.sampled_from([0, 1, 1, 2])),
                keyable=keyable,
            )
        )
        for _ in range(draw(st.integers(1, 3)))
    ]
    tables = frm.tables
    if depth > 0 and rarely(draw, 4):
        value, more = draw(scalar_subquery(ctx, frm.scope, depth - 1))
        expressions.append(rounded(value) if keyable and not value.keyable else value)
        tables |= more
    unique: tuple[str, ...] = ()
    if frm.scope.unique and coin(draw):
        column = next(c for c in frm.scope.columns if c.sql == frm.scope.unique[0])
        expressions.insert(draw(st.integers(0, len(expressions))), column)
    outputs = _named(prefix, draw(st.permutations(expressions)))
    if frm.scope.unique:
        unique = tuple(name for name, e in outputs if e.sql == frm.scope.unique[0])[:1]
    where, more = draw(where_clause(ctx, frm, depth))
    sql = f"SELECT {_select_list(outputs)} FROM {frm.sql}{where}"
    return Query(sql, outputs, tables | more, unique)


@st.composite
def _having(draw: Draw, scope: Scope) -> str:
    a = draw(aggregate(scope))
    if a.kind == "bool":
        return a.sql
    b = draw(aggregate(scope))
    if b.kind != a.kind or coin(draw):
        b = draw(literal(a.kind))
    op = draw(st.sampled_from(["=", "<>", "<", ">", ">="]))
    return f"{a.sql} {op} {b.sql}"


@st.composite
def group_key(draw: Draw, scope: Scope) -> Expr:
    kind = draw(st.sampled_from(_kinds_in(scope, VALUE_KINDS)))
    if scope.of(kind) and coin(draw):
        return draw(
            st.sampled_from(scope.of(kind)).map(lambda e: rounded(e) if not e.keyable else e)
        )
    return draw(expression(scope, kind, 1, keyable=True).filter(lambda e: e.column))


@st.composite
def grouped_select(
    draw: Draw,
    ctx: Context,
    depth: int,
    prefix: str = "c",
    keyable: bool = False,
    distinct: bool = False,
) -> Query:
    """``SELECT keys, aggregates FROM ... GROUP BY ... HAVING ...`` (no keys: one row)."""
    frm = draw(from_clause(ctx, depth))
    where, tables = draw(where_clause(ctx, frm, depth))
    keys = draw(st.lists(group_key(frm.scope), max_size=2))
    shown = [k for k in keys if usually(draw, 4)]
    values = [draw(aggregate_expression(frm.scope, keys)) for _ in range(draw(st.integers(1, 3)))]
    if keyable:
        values = [rounded(v) if v.kind == "num" and not v.keyable else v for v in values]
    expressions = draw(st.permutations(shown + values))
    outputs = _named(prefix, expressions)
    sql = f"SELECT {'DISTINCT ' if distinct else ''}{_select_list(outputs)} FROM {frm.sql}{where}"
    if keys:
        if len(shown) == len(keys) and coin(draw):
            positions = [str(expressions.index(k) + 1) for k in keys]
        else:
            positions = [k.sql for k in keys]
        sql += f" GROUP BY {', '.join(positions)}"
    if rarely(draw, 2):
        having = draw(_having(frm.scope))
        if keys and depth > 0 and rarely(draw, 3):
            # compared with an uncorrelated scalar subquery (no outer scope to correlate with);
            # without GROUP BY the compiler says it is not differentiable yet
            value, more = draw(scalar_subquery(ctx, Scope(()), depth - 1))
            total = draw(sum_of(frm.scope))
            if value.kind in ("int", "num") and total.kind in ("int", "num"):
                having = f"{total.sql} > {value.sql}"
                tables |= more
        sql += f" HAVING {having}"
    unique: tuple[str, ...] = ()
    if keys and len(shown) == len(keys):
        unique = tuple(name for name, e in outputs if e in keys)
    return Query(sql, outputs, tables, unique)


@st.composite
def distinct_select(
    draw: Draw, ctx: Context, depth: int, prefix: str = "c", keyable: bool = True
) -> Query:
    """``SELECT DISTINCT ...``, of rows or of groups."""
    if rarely(draw, 3):
        return draw(grouped_select(ctx, depth, prefix, keyable=True, distinct=True))
    base = draw(plain_select(ctx, depth, prefix, keyable=True))
    assert base.sql.startswith("SELECT ")
    names = tuple(name for name, _ in base.outputs)
    return Query("SELECT DISTINCT " + base.sql[len("SELECT ") :], base.outputs, base.tables, names)


@st.composite
def operand(draw: Draw, ctx: Context, depth: int, kinds: Sequence[Kind], prefix: str) -> Query:
    """One SELECT of a set operation: keyable outputs of the given kinds."""
    frm = draw(from_clause(ctx, depth, max_items=2))
    expressions = [
        draw(expression(frm.scope, kind, draw(st.integers(0, 2)), keyable=True)) for kind in kinds
    ]
    outputs = _named(prefix, expressions)
    where, tables = draw(where_clause(ctx, frm, depth))
    distinct = "DISTINCT " if rarely(draw, 4) else ""
    return Query(f"SELECT {distinct}{_select_list(outputs)} FROM {frm.sql}{where}", outputs, tables)


SET_OPERATORS = ["UNION", "UNION ALL", "INTERSECT", "INTERSECT ALL", "EXCEPT", "EXCEPT ALL"]


@st.composite
def set_operation(
    draw: Draw, ctx: Context, depth: int, prefix: str = "c", keyable: bool = True
) -> Query:
    """``SELECT ... UNION [ALL] / INTERSECT [ALL] / EXCEPT [ALL] SELECT ...`` (2 or 3)."""
    kinds: list[Kind] = draw(st.lists(st.sampled_from(VALUE_KINDS), min_size=1, max_size=3))
    operands = [
        draw(operand(ctx, depth, kinds, prefix)) for _ in range(draw(st.sampled_from([2, 2, 3])))
    ]
    parenthesized = coin(draw)
    texts = [f"({o.sql})" if parenthesized else o.sql for o in operands]
    sql = texts[0]
    for text in texts[1:]:
        sql += f" {draw(st.sampled_from(SET_OPERATORS))} {text}"
    names = tuple(name for name, _ in operands[0].outputs)
    tables = frozenset().union(*(o.tables for o in operands))
    return Query(sql, operands[0].outputs, tables, names if "ALL" not in sql else ())


@st.composite
def top_k(draw: Draw, ctx: Context, depth: int, prefix: str = "c", keyable: bool = True) -> Query:
    """``... ORDER BY <a total order> LIMIT k``: ordered by a unique output, or by all."""
    shape = draw(st.sampled_from([plain_select, grouped_select, set_operation]))
    base = draw(shape(ctx, depth, prefix, keyable=True))
    names = [name for name, _ in base.outputs]
    if base.unique and coin(draw):
        others = [n for n in names if n not in base.unique]
        order = draw(st.lists(st.sampled_from(others), unique=True, max_size=2)) if others else []
        order += list(base.unique)
    else:
        order = draw(st.permutations(names))
    items = []
    for name in order:
        written = name if coin(draw) else str(names.index(name) + 1)
        direction = draw(st.sampled_from(["", " DESC", " ASC", " DESC NULLS LAST", " NULLS FIRST"]))
        items.append(written + direction)
    k = draw(st.integers(1, 6))
    skipped = draw(st.sampled_from([0, 0, 1, 3]))
    if usually(draw, 3):
        limit = f" LIMIT {k}" + (f" OFFSET {skipped}" if skipped else "")
    else:
        limit = (f" OFFSET {skipped} ROWS" if skipped else "") + f" FETCH FIRST {k} ROWS ONLY"
    sql = f"{base.sql} ORDER BY {', '.join(items)}{limit}"
    return Query(sql, base.outputs, base.tables, base.unique)


@st.composite
def with_ctes(
    draw: Draw, ctx: Context, depth: int, prefix: str = "c", keyable: bool = False
) -> Query:
    """``WITH w AS (...) [, w2 AS (...)] SELECT ... FROM w ...``."""
    definitions = []
    for _ in range(draw(st.sampled_from([1, 1, 2]))):
        body = draw(query(ctx, depth - 1, prefix="v"))
        name = ctx.alias("w")
        definitions.append(f"{name} AS ({body.sql})")
        ctx = ctx.with_cte(_source_of(name, body))
    main = draw(query(ctx, depth, prefix, keyable=keyable, ctes=False))
    tables = main.tables | frozenset().union(*(c.tables for c in ctx.ctes))
    return Query(f"WITH {', '.join(definitions)} {main.sql}", main.outputs, tables, main.unique)


Shape = Callable[..., st.SearchStrategy[Query]]


@st.composite
def query(
    draw: Draw,
    ctx: Context,
    depth: int,
    prefix: str = "c",
    keyable: bool = False,
    ctes: bool = True,
) -> Query:
    shapes: list[Shape] = [plain_select, grouped_select, distinct_select, set_operation, top_k]
    if ctes and depth > 0:
        shapes.append(with_ctes)
    shape = draw(st.sampled_from(shapes))
    result: Query = draw(shape(ctx, depth, prefix, keyable=keyable))
    return result


@st.composite
def queries(draw: Draw, depth: int = TOP_DEPTH) -> Query:
    """A top-level query: output columns c1, c2, ..."""
    return draw(query(Context(), depth))


# -- data and DML ----------------------------------------------------------------------------

NULL = st.just("NULL")


def nullable(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """NULL once in five (as in the harness); shrinks to a value."""
    return st.one_of(values, values, values, values, NULL)


ORDER_IDS = st.integers(1, 14).map(str)
CUSTOMER_IDS = st.integers(1, 8).map(str)
VALUES: dict[str, dict[str, st.SearchStrategy[str]]] = {
    "orders": {
        "id": ORDER_IDS,
        "cid": nullable(st.integers(1, 6).map(str)),
        "amount": nullable(st.sampled_from(["0.00", "1.50", "2.25", "10.00", "19.99", "7"])),
        "qty": st.integers(0, 7).map(str),
        "heavy": nullable(
            st.sampled_from(["0", "1", "-1", str(2**40), str(-(2**40)), "123456789012"])
        ),
        "note": nullable(st.sampled_from(["'a'", "'b'", "'c'", "''", "'Zz'"])),
    },
    "customers": {
        "id": CUSTOMER_IDS,
        "name": st.sampled_from(["'ann'", "'bob'", "'cy'", "'dee'"]),
        "region": nullable(st.sampled_from(["'north'", "'south'", "'east'"])),
        "info": nullable(st.sampled_from(["'{\"a\": 1}'", "'{\"a\":1}'", "'[]'"])),
    },
    "events": {
        "kind": nullable(st.sampled_from(["'x'", "'y'", "'z'"])),
        "v": nullable(st.integers(0, 4).map(str)),
        "w": nullable(st.integers(-8, 8).map(lambda i: str(i / 2))),
    },
    "tags": {
        "cid": nullable(st.integers(0, 6).map(str)),
        "tag": st.sampled_from(["'red'", "'green'", "'blue'"]),
        "kind": nullable(st.sampled_from(["'x'", "'y'", "'w'"])),
    },
}
KEYS = {"orders": "id", "customers": "id"}
INITIAL_ROWS = {"orders": (4, 12), "customers": (3, 6), "events": (4, 12), "tags": (3, 8)}
"""How many rows each table starts with (at least a few: joins and groups need partners)."""


@st.composite
def row(draw: Draw, table: str) -> tuple[str, ...]:
    return tuple(draw(values) for values in VALUES[table].values())


def _insert(table: str, rows: Sequence[tuple[str, ...]]) -> str:
    listed = ", ".join(f"({', '.join(r)})" for r in rows)
    conflict = " ON CONFLICT DO NOTHING" if table in KEYS else ""
    return f"INSERT INTO {table} VALUES {listed}{conflict}"


@st.composite
def initial_rows(draw: Draw, table: str) -> str | None:
    unique_by = (lambda r: r[0]) if table in KEYS else None
    low, high = INITIAL_ROWS[table]
    rows = draw(st.lists(row(table), min_size=low, max_size=high, unique_by=unique_by))
    return _insert(table, rows) if rows else None


@st.composite
def condition(draw: Draw, table: str) -> str:
    """Which rows a statement touches: one key, or all of some value (json has no =)."""
    column = draw(st.sampled_from([c for c in VALUES[table] if c != "info"]))
    value = draw(VALUES[table][column])
    if value == "NULL":
        return f"{column} IS NULL"
    op = draw(st.sampled_from(["=", "=", "<"]))
    return f"{column} {op} {value}"


@st.composite
def insert(draw: Draw, table: str) -> str:
    return _insert(table, draw(st.lists(row(table), min_size=1, max_size=2)))


@st.composite
def update_values(draw: Draw, table: str) -> str:
    settable = [c for c in VALUES[table] if c != KEYS.get(table)]
    columns = draw(st.lists(st.sampled_from(settable), min_size=1, max_size=2, unique=True))
    assignments = []
    for column in columns:
        if column in ("qty", "v", "cid") and rarely(draw, 3):
            assignments.append(f"{column} = {column} + 1")
        else:
            assignments.append(f"{column} = {draw(VALUES[table][column])}")
    return f"UPDATE {table} SET {', '.join(assignments)} WHERE {draw(condition(table))}"


@st.composite
def update_key(draw: Draw, table: str) -> str:
    old, new = draw(VALUES[table]["id"]), draw(VALUES[table]["id"])
    return (
        f"UPDATE {table} SET id = {new} WHERE id = {old}"
        f" AND NOT EXISTS (SELECT FROM {table} WHERE id = {new})"
    )


@st.composite
def delete(draw: Draw, table: str) -> str:
    return f"DELETE FROM {table} WHERE {draw(condition(table))}"


@st.composite
def delete_one_copy(draw: Draw, table: str) -> str:
    found = draw(condition(table))
    return f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE {found} LIMIT 1)"


@st.composite
def duplicate(draw: Draw, table: str) -> str:
    return f"INSERT INTO {table} SELECT * FROM {table} WHERE {draw(condition(table))}"


@st.composite
def statement(draw: Draw, tables: Sequence[str]) -> str:
    table = draw(st.sampled_from(sorted(tables)))
    kinds = [insert, update_values, delete]
    kinds += [update_key] if table in KEYS else [delete_one_copy, duplicate]
    return draw(draw(st.sampled_from(kinds))(table))


@dataclass(frozen=True)
class Case:
    """A query, the rows the tables start with, and rounds of DML between refreshes."""

    query: str
    setup: tuple[str, ...] = ()
    rounds: tuple[tuple[str, ...], ...] = ()

    def describe(self) -> str:
        lines = [f"query: {self.query}", *(f"setup: {s}" for s in self.setup)]
        for number, statements in enumerate(self.rounds, 1):
            lines.extend(f"round {number}: {s}" for s in statements)
        return "\n".join(lines)


@st.composite
def cases(draw: Draw, max_rounds: int = 3) -> Case:
    q = draw(queries())
    tables = sorted(q.tables)
    setup = tuple(s for s in (draw(initial_rows(t)) for t in tables) if s is not None)
    rounds = draw(
        st.lists(
            st.lists(statement(tables), min_size=1, max_size=5).map(tuple),
            min_size=1,
            max_size=max_rounds,
        )
    )
    return Case(q.sql, setup, tuple(rounds))
