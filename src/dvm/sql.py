"""Small builders for the SQL dvm generates: quoted identifiers, row ids, casts.

Every user-supplied name goes through :func:`ident`, so it is always quoted.

>>> from dvm.dialect import render
>>> render(col("o", "amount"))
'"o"."amount"'
>>> render(row_hash([col("t", "id")]))
'HASHTEXTEXTENDED(CAST(ROW("t"."id") AS TEXT), 0)'
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlglot import exp


def ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def col(table: str | None, name: str) -> exp.Column:
    return exp.Column(this=ident(name), table=ident(table) if table is not None else None)


def table(schema: str | None, name: str, alias: str | None = None) -> exp.Table:
    node = exp.Table(this=ident(name), db=ident(schema) if schema is not None else None)
    if alias is not None:
        node.set("alias", exp.TableAlias(this=ident(alias)))
    return node


def alias(expression: exp.Expr, name: str) -> exp.Alias:
    return exp.Alias(this=expression, alias=ident(name))


def lit(value: int | str) -> exp.Expr:
    return exp.Literal.number(value) if isinstance(value, int) else exp.Literal.string(value)


def cast(expression: exp.Expr, to: str) -> exp.Cast:
    return exp.Cast(this=expression, to=exp.DataType.build(to, dialect="postgres"))


def func(name: str, *args: exp.Expr) -> exp.Anonymous:
    return exp.Anonymous(this=name, expressions=list(args))


def row_text(values: Sequence[exp.Expr]) -> exp.Expr:
    """``ROW(v1, v2, ...)::text``: a NULL-safe canonical text of any values."""
    return cast(func("ROW", *[value.copy() for value in values]), "text")


def row_hash(values: Sequence[exp.Expr]) -> exp.Expr:
    """A bigint row id: ``hashtextextended(ROW(values)::text, 0)``."""
    return func("HASHTEXTEXTENDED", row_text(values), lit(0))


def group_key(key: exp.Expr) -> exp.Expr:
    """``key`` as a GROUP BY item: a constant is written ``(SELECT c)``, since PostgreSQL reads a
    bare literal there as an output's position (``1``) or refuses it (``1.5``, ``'x'``)."""
    if any(True for _ in key.find_all(exp.Column)):
        return key.copy()
    return exp.Subquery(this=exp.select(key.copy()))


def coalesce_zero(expression: exp.Expr) -> exp.Expr:
    return exp.Coalesce(this=expression, expressions=[lit(0)])


def conjuncts(expression: exp.Expr | None) -> list[exp.Expr]:
    """The operands of a top-level AND (parentheses looked through); [] for None."""
    if expression is None:
        return []
    while isinstance(expression, exp.Paren):
        expression = expression.this
    if isinstance(expression, exp.And):
        return conjuncts(expression.this) + conjuncts(expression.expression)
    return [expression]


def equated(
    condition: exp.Expr | None, outer: set[str], inner: set[str]
) -> list[tuple[exp.Expr, exp.Column]]:
    """(expression over ``outer``'s aliases, column of an ``inner`` alias) for each equality
    among ``condition``'s conjuncts that ties the two: a row of ``outer`` matches a row of
    ``inner`` only if its expression is among the values of the column."""
    pairs: list[tuple[exp.Expr, exp.Column]] = []
    for conjunct in conjuncts(condition):
        if not isinstance(conjunct, exp.EQ):
            continue
        for one, two in (
            (conjunct.this, conjunct.expression),
            (conjunct.expression, conjunct.this),
        ):
            tables = {column.table for column in one.find_all(exp.Column)}
            if (
                isinstance(two, exp.Column)
                and two.table in inner
                and tables
                and tables <= outer
                and one.find(exp.Query) is None
            ):
                pairs.append((one, two))
                break
    return pairs


def and_all(conditions: Sequence[exp.Expr]) -> exp.Expr | None:
    if not conditions:
        return None
    return exp.and_(*[c.copy() for c in conditions], copy=False)


FAITHFUL_TYPES = frozenset(
    {
        "smallint",
        "integer",
        "bigint",
        "boolean",
        "date",
        "uuid",
        "oid",
        '"char"',
        "timestamp without time zone",
        "timestamp with time zone",
        "time without time zone",
    }
)
"""Types whose equal values have one text form: netted by value, which is cheaper."""
BYTEWISE_TYPES = frozenset({"text", "character varying", "character", "name"})
"""Types compared byte by byte under the C collation: equal there means one text form."""


def is_numeric(type_: str | None) -> bool:
    return (
        type_ is not None
        and type_.split("(")[0].strip() in ("numeric", "decimal")
        and not type_.endswith("[]")
    )


def groupable(type_: str | None) -> bool:
    """Whether values of ``type_`` (``format_type`` text; None: unknown, so not) can be told
    apart as their text does by a GROUP BY that gives them back (``identity``)."""
    if type_ is None:
        return False
    base = type_.split("(")[0].strip()
    return base in FAITHFUL_TYPES or base in BYTEWISE_TYPES or is_numeric(type_)


def identity(value: exp.Expr, type_: str) -> list[exp.Expr]:
    """GROUP BY items that split values of a ``groupable`` type where their text differs,
    ``value`` itself first (so a query grouped by them can select it): a numeric with its
    scale (``1.5`` and ``1.50`` are equal), a string with its bytes (a nondeterministic
    collation makes different strings equal)."""
    base = type_.split("(")[0].strip()
    if base in BYTEWISE_TYPES:
        return [value.copy(), exp.Collate(this=value.copy(), expression=exp.Var(this='"C"'))]
    if is_numeric(type_):
        return [value.copy(), func("SCALE", value.copy())]
    return [value.copy()]


UNHASHABLE_TYPES = frozenset(
    {"money", "bit", "bit varying", "tsvector", "tsquery", "point", "box", "line", "lseg"}
)
"""Types without a hash operator class: their values are hashed by their text."""


def _signless_hash(type_: str | None) -> bool:
    return type_ is not None and type_.split("(")[0].strip() in ("numeric", "decimal")


def hashable(type_: str | None) -> bool:
    """Whether values of ``type_`` (``format_type`` text; None: unknown) hash by equality."""
    if type_ is None:
        return True
    base = type_.split("(")[0].strip().removesuffix("[]")
    return base not in UNHASHABLE_TYPES


def value_hash(values: Sequence[exp.Expr], types: Sequence[str | None] = ()) -> exp.Expr:
    """A bigint equal for values equal as SQL compares them (``1.0`` and ``1.00``, ``-0.0``
    and ``0.0``, NULL and NULL): ``hash_record_extended(ROW(v1, v1 IS NULL, ...), 0)``, which
    hashes each value by its type's hash operator class. A value of a type without one is
    hashed by its text.
    """
    kinds = list(types) + [None] * (len(values) - len(types))
    hashed: list[exp.Expr] = []
    for value, kind in zip(values, kinds, strict=True):
        untyped = isinstance(value, exp.Literal) and value.is_string  # 'x' is of type unknown
        by_text = untyped or not hashable(kind)
        hashed.append(cast(value.copy(), "text") if by_text else value.copy())
        # a NULL hashes like 0.0 (both 0): its flag tells them apart
        hashed.append(exp.Is(this=value.copy(), expression=exp.Null()))
        if _signless_hash(kind):
            # numeric's hash ignores the sign: 1.5 and -1.5 hash alike
            hashed.append(exp.LT(this=value.copy(), expression=lit(0)))
    return func("HASH_RECORD_EXTENDED", func("ROW", *hashed), lit(0))
