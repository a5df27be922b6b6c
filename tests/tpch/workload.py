"""The gate's writes: TPC-H's refresh functions and random updates, by concurrent writers.

``rf1`` inserts new orders with their lineitems and ``rf2`` deletes orders with theirs
(specification 2.5); ``update`` changes, at random, every column the 22 queries read but the
few in ``NOT_UPDATED``, with values from the columns' domains (specification 4.2.3), so that
rows move into and out of the queries' filters, groups and top sets. ``round`` runs one RF1,
one RF2 and the updates as small transactions of two concurrent writers, a fifth of them
rolled back.

Everything random comes from a ``random.Random``: a seed fixes every choice a writer makes.
What a choice finds (which order is the first at or after a random key) depends on the data,
and with two writers on the interleaving of their commits, which the server decides: a replay
makes the same kinds of changes, not necessarily to the same rows.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from random import Random
from typing import Any

import psycopg
from psycopg import sql

from tests.tpch.queries import QUERIES

Cursor = psycopg.Cursor[Any]

# -- the specification's domains (4.2.2, 4.2.3) ----------------------------------------------

START_DATE = date(1992, 1, 1)
END_DATE = date(1998, 12, 31)
CURRENT_DATE = date(1995, 6, 17)
"""Lines shipped after it are open ('O'), received after it not yet returned ('N')."""
LAST_ORDER_DATE = END_DATE - timedelta(days=151)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


PRIORITIES = ("1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW")
SEGMENTS = ("AUTOMOBILE", "BUILDING", "FURNITURE", "MACHINERY", "HOUSEHOLD")
SHIP_INSTRUCTIONS = ("DELIVER IN PERSON", "COLLECT COD", "NONE", "TAKE BACK RETURN")
SHIP_MODES = ("REG AIR", "AIR", "RAIL", "SHIP", "TRUCK", "MAIL", "FOB")
TYPE_SYLLABLES = (
    ("STANDARD", "SMALL", "MEDIUM", "LARGE", "ECONOMY", "PROMO"),
    ("ANODIZED", "BURNISHED", "PLATED", "POLISHED", "BRUSHED"),
    ("TIN", "NICKEL", "BRASS", "STEEL", "COPPER"),
)
CONTAINER_SYLLABLES = (
    ("SM", "LG", "MED", "JUMBO", "WRAP"),
    ("CASE", "BOX", "BAG", "JAR", "PKG", "PACK", "CAN", "DRUM"),
)
COLORS = _words(
    """almond antique aquamarine azure beige bisque black blanched blue blush brown burlywood
    burnished chartreuse chiffon chocolate coral cornflower cornsilk cream cyan dark deep dim
    dodger drab firebrick floral forest frosted gainsboro ghost goldenrod green grey honeydew
    hot indian ivory khaki lace lavender lawn lemon light lime linen magenta maroon medium
    metallic midnight mint misty moccasin navajo navy olive orange orchid pale papaya peach
    peru pink plum powder puff purple red rose rosy royal saddle salmon sandy seashell sienna
    sky slate smoke snow spring steel tan thistle tomato turquoise violet wheat white
    yellow"""
)
WORDS = _words(
    """furiously slyly carefully blithely quickly fluffily final regular express ironic even
    bold pending silent unusual special requests deposits accounts packages instructions
    theodolites foxes pinto beans ideas dependencies platelets asymptotes courts dolphins
    customer complaints sleep wake haggle nag use cajole boost detect integrate among above
    according"""
)
_ALPHANUMERIC = string.ascii_letters + string.digits + ",. "
_CENT = Decimal("0.01")


def _day(rng: Random, first: date = START_DATE, last: date = END_DATE) -> date:
    return first + timedelta(days=rng.randint(0, (last - first).days))


def _clamp(day: date) -> date:
    return min(max(day, START_DATE), END_DATE)


def _cents(rng: Random, low: int, high: int) -> Decimal:
    """A money value between ``low`` and ``high`` cents, with two decimals."""
    return Decimal(rng.randint(low, high)).scaleb(-2)


def _text(rng: Random, shortest: int, longest: int, *, words: Sequence[str] = WORDS) -> str:
    """Words up to a length between ``shortest`` and ``longest``, as the generator's comments."""
    limit = rng.randint(shortest, longest)
    out = rng.choice(words)
    while len(out) < limit:
        out += " " + rng.choice(words)
    return out[:limit]


def _order_comment(rng: Random) -> str:
    """One in four mentions special requests, in that order (Q13 leaves those orders out)."""
    if rng.random() < 0.25:
        return f"{_text(rng, 2, 20)} special {_text(rng, 2, 20)} requests {_text(rng, 2, 20)}"
    return _text(rng, 19, 78)


def _supplier_comment(rng: Random) -> str:
    """One in four is a Customer Complaint (Q16 leaves those suppliers out)."""
    if rng.random() < 0.25:
        return f"{_text(rng, 2, 30)} Customer {_text(rng, 2, 30)} Complaints"
    return _text(rng, 25, 100)


def _phone(rng: Random) -> str:
    """The country code is 10 + a nation key (Q22 selects customers by it)."""
    return (
        f"{rng.randint(10, 34)}-{rng.randint(100, 999)}-{rng.randint(100, 999)}"
        f"-{rng.randint(1000, 9999)}"
    )


def _address(rng: Random) -> str:
    return "".join(rng.choices(_ALPHANUMERIC, k=rng.randint(10, 40))).strip() or "x"


def _part_name(rng: Random) -> str:
    """Five distinct colors; 'forest' first and 'green' anywhere often enough for Q20 and Q9."""
    colors = rng.sample(COLORS, 5)
    if rng.random() < 0.2:
        colors = ["forest", *(c for c in colors if c != "forest")][:5]
    if rng.random() < 0.2 and "green" not in colors:
        colors[rng.randrange(1, 5)] = "green"
    return " ".join(colors)


# -- finding rows --------------------------------------------------------------------------


@dataclass(frozen=True)
class Lane:
    """Which new order keys a writer may take: those above every key it sees (committed, or
    its own) that are ``index`` modulo ``count``. Writers in lanes of their own never take
    the same key, so no insert (or re-keyed order) collides with another writer's."""

    index: int = 0
    count: int = 1

    def new_order_keys(self, cur: Cursor, n: int) -> list[int]:
        top = _one(cur, "SELECT coalesce(max(o_orderkey), 0) FROM orders")
        first = top + 1 + (self.index - top - 1) % self.count
        return [first + i * self.count for i in range(n)]


@dataclass(frozen=True)
class Sizes:
    """The dimension tables' key ranges: rows of these are never inserted or deleted, and the
    generator numbers them from 1."""

    customers: int
    parts: int
    suppliers: int

    @classmethod
    def read(cls, cur: Cursor) -> Sizes:
        row = cur.execute(
            "SELECT (SELECT max(c_custkey) FROM customer), (SELECT max(p_partkey) FROM part),"
            " (SELECT max(s_suppkey) FROM supplier)"
        ).fetchone()
        assert row is not None and None not in row, "the TPC-H tables are empty"
        return cls(int(row[0]), int(row[1]), int(row[2]))


def _one(cur: Cursor, query: str) -> int:
    row = cur.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _pick_order(cur: Cursor, rng: Random, lines: int = 1) -> int | None:
    """An existing order with at least ``lines`` lines: the first at or after a random key
    (None when there is none)."""
    top = _one(cur, "SELECT coalesce(max(o_orderkey), 0) FROM orders")
    probe = rng.randint(1, max(top, 1))
    if lines > 1:
        row = cur.execute(
            "SELECT l_orderkey FROM lineitem WHERE l_orderkey >= %s AND l_linenumber = %s"
            " ORDER BY l_orderkey LIMIT 1",
            (probe, lines),
        ).fetchone()
    else:
        row = cur.execute(
            "SELECT o_orderkey FROM orders WHERE o_orderkey >= %s ORDER BY o_orderkey LIMIT 1",
            (probe,),
        ).fetchone()
    return None if row is None else int(row[0])


def _pick_line(cur: Cursor, rng: Random) -> tuple[int, int] | None:
    order = _pick_order(cur, rng)
    if order is None:
        return None
    lines = cur.execute(
        "SELECT l_linenumber FROM lineitem WHERE l_orderkey = %s ORDER BY l_linenumber",
        (order,),
    ).fetchall()
    return (order, int(rng.choice(lines)[0])) if lines else None


def _pick_partsupp(cur: Cursor, rng: Random, sizes: Sizes) -> tuple[int, int]:
    """A random part and one of its suppliers (every part has four)."""
    part = rng.randint(1, sizes.parts)
    suppliers = cur.execute(
        "SELECT ps_suppkey FROM partsupp WHERE ps_partkey = %s ORDER BY ps_suppkey", (part,)
    ).fetchall()
    return part, int(rng.choice(suppliers)[0])


# -- the refresh functions -----------------------------------------------------------------


def rf1(conn: psycopg.Connection[Any], rng: Random, count: int, lane: Lane = Lane()) -> None:
    """Insert ``count`` new orders, each with 1 to 7 lineitems (specification 2.5.2), keys
    above the current maximum, values as the generator draws them."""
    with conn.cursor() as cur:
        sizes = Sizes.read(cur)
        for key in lane.new_order_keys(cur, count):
            _insert_order(cur, rng, sizes, key)


_LINE_COLUMNS = (
    "l_orderkey", "l_partkey", "l_suppkey", "l_linenumber", "l_quantity", "l_extendedprice",
    "l_discount", "l_tax", "l_returnflag", "l_linestatus", "l_shipdate", "l_commitdate",
    "l_receiptdate", "l_shipinstruct", "l_shipmode", "l_comment",
)  # fmt: skip
_INSERT_LINE = sql.SQL("INSERT INTO lineitem ({}) VALUES ({})").format(
    sql.SQL(", ").join(map(sql.Identifier, _LINE_COLUMNS)),
    sql.SQL(", ").join(map(sql.Placeholder, _LINE_COLUMNS)),
)


def _insert_order(cur: Cursor, rng: Random, sizes: Sizes, key: int) -> None:
    ordered = _day(rng, START_DATE, LAST_ORDER_DATE)
    # a third of the customers never order (4.2.3), so that Q13 and Q22 have some to count
    customer = rng.randint(1, sizes.customers)
    while customer % 3 == 0:
        customer = rng.randint(1, sizes.customers)
    lines = [_new_line(cur, rng, sizes, key, n, ordered) for n in range(1, rng.randint(1, 7) + 1)]
    statuses = {line["l_linestatus"] for line in lines}
    total = sum(
        (line["l_extendedprice"] * (1 + line["l_tax"]) * (1 - line["l_discount"])) for line in lines
    )
    cur.execute(
        "INSERT INTO orders (o_orderkey, o_custkey, o_orderstatus, o_totalprice, o_orderdate,"
        " o_orderpriority, o_clerk, o_shippriority, o_comment)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, 0, %s)",
        (
            key,
            customer,
            statuses.pop() if len(statuses) == 1 else "P",
            Decimal(total).quantize(_CENT, ROUND_HALF_UP),
            ordered,
            rng.choice(PRIORITIES),
            f"Clerk#{rng.randint(1, 1000):09d}",
            _order_comment(rng),
        ),
    )
    cur.executemany(_INSERT_LINE, lines)


def _new_line(
    cur: Cursor, rng: Random, sizes: Sizes, order: int, number: int, ordered: date
) -> dict[str, Any]:
    """A lineitem as the generator makes one (4.2.3): its flags follow from its dates."""
    part, supplier = _pick_partsupp(cur, rng, sizes)
    row = cur.execute("SELECT p_retailprice FROM part WHERE p_partkey = %s", (part,)).fetchone()
    assert row is not None
    quantity = rng.randint(1, 50)
    shipped = ordered + timedelta(days=rng.randint(1, 121))
    received = shipped + timedelta(days=rng.randint(1, 30))
    return {
        "l_orderkey": order,
        "l_partkey": part,
        "l_suppkey": supplier,
        "l_linenumber": number,
        "l_quantity": Decimal(quantity),
        "l_extendedprice": quantity * Decimal(row[0]),
        "l_discount": _cents(rng, 0, 10),
        "l_tax": _cents(rng, 0, 8),
        "l_returnflag": rng.choice("RA") if received <= CURRENT_DATE else "N",
        "l_linestatus": "O" if shipped > CURRENT_DATE else "F",
        "l_shipdate": shipped,
        "l_commitdate": ordered + timedelta(days=rng.randint(30, 90)),
        "l_receiptdate": received,
        "l_shipinstruct": rng.choice(SHIP_INSTRUCTIONS),
        "l_shipmode": rng.choice(SHIP_MODES),
        "l_comment": _text(rng, 10, 43),
    }


def rf2(conn: psycopg.Connection[Any], rng: Random, count: int) -> None:
    """Delete ``count`` existing orders with their lineitems (specification 2.5.3)."""
    with conn.cursor() as cur:
        for _ in range(count):
            key = _pick_order(cur, rng)
            if key is None:
                return
            cur.execute("DELETE FROM lineitem WHERE l_orderkey = %s", (key,))
            cur.execute("DELETE FROM orders WHERE o_orderkey = %s", (key,))


# -- the random updates --------------------------------------------------------------------

Run = Callable[[Cursor, Random, Sizes, Lane], None]
Values = Callable[[Random, Sizes], tuple[object, ...]]


@dataclass(frozen=True)
class Change:
    """One kind of random UPDATE: the columns it sets, how often it is chosen, what it does."""

    columns: tuple[str, ...]
    weight: int
    run: Run


KEYS: dict[str, tuple[str, ...]] = {
    "lineitem": ("l_orderkey", "l_linenumber"),
    "orders": ("o_orderkey",),
    "customer": ("c_custkey",),
    "part": ("p_partkey",),
    "partsupp": ("ps_partkey", "ps_suppkey"),
    "supplier": ("s_suppkey",),
}


FOCUS_SHARE = 0.3
"""How often a random row is drawn from one of the table's ``FOCUS`` sets instead."""

_IN_Q03 = f"SELECT l_orderkey FROM ({QUERIES['q03']}) AS q03"
_IN_Q10 = f"SELECT c_custkey FROM ({QUERIES['q10']}) AS q10"

FOCUS: dict[str, tuple[str, ...]] = {
    "lineitem": (
        # Q17 and Q19: the lines of the parts their brands and containers select
        "SELECT l_orderkey, l_linenumber FROM lineitem JOIN part ON p_partkey = l_partkey"
        " WHERE p_brand = 'Brand#23' AND p_container = 'SM PACK'",
        "SELECT l_orderkey, l_linenumber FROM lineitem JOIN part ON p_partkey = l_partkey"
        " WHERE p_brand IN ('Brand#12', 'Brand#23', 'Brand#34') AND p_size <= 15"
        " AND l_quantity <= 30 AND l_shipmode IN ('AIR', 'AIR REG')"
        " AND l_shipinstruct = 'DELIVER IN PERSON'",
        # Q15 (and Q14): a supplier's revenue in the first quarter of 1996, September 1995
        "SELECT l_orderkey, l_linenumber FROM lineitem"
        " WHERE l_shipdate >= date '1996-01-01' AND l_shipdate < date '1996-04-01'",
        "SELECT l_orderkey, l_linenumber FROM lineitem"
        " WHERE l_shipdate >= date '1995-09-01' AND l_shipdate < date '1995-10-01'",
        # Q21: the lines of Saudi Arabian suppliers
        "SELECT l_orderkey, l_linenumber FROM lineitem JOIN supplier ON s_suppkey = l_suppkey"
        " JOIN nation ON n_nationkey = s_nationkey WHERE n_name = 'SAUDI ARABIA'",
        # Q3 and Q10, TopK: the lines of the orders (customers) in the top set now
        f"SELECT l_orderkey, l_linenumber FROM lineitem WHERE l_orderkey IN ({_IN_Q03})",
        "SELECT l_orderkey, l_linenumber FROM lineitem JOIN orders ON o_orderkey = l_orderkey"
        f" WHERE o_custkey IN ({_IN_Q10})",
    ),
    "orders": (
        f"SELECT o_orderkey FROM orders WHERE o_orderkey IN ({_IN_Q03})",
        f"SELECT o_orderkey FROM orders WHERE o_custkey IN ({_IN_Q10})",
        # Q21: the orders of Saudi Arabian suppliers
        "SELECT DISTINCT l_orderkey FROM lineitem JOIN supplier ON s_suppkey = l_suppkey"
        " JOIN nation ON n_nationkey = s_nationkey WHERE n_name = 'SAUDI ARABIA'",
    ),
    "customer": (
        f"SELECT c_custkey FROM customer WHERE c_custkey IN ({_IN_Q10})",
        # Q22: the customers without orders
        "SELECT c_custkey FROM customer"
        " WHERE NOT EXISTS (SELECT FROM orders WHERE o_custkey = c_custkey)",
    ),
    "part": (
        "SELECT p_partkey FROM part WHERE p_brand = 'Brand#23' AND p_container = 'SM PACK'",
        "SELECT p_partkey FROM part WHERE p_size = 15 AND p_type LIKE '%BRASS'",
        "SELECT p_partkey FROM part WHERE p_name LIKE 'forest%'",
    ),
    "partsupp": (
        # Q11: the German suppliers' stock; Q2: the brass parts of size 15; Q20: forest parts
        "SELECT ps_partkey, ps_suppkey FROM partsupp JOIN supplier ON s_suppkey = ps_suppkey"
        " JOIN nation ON n_nationkey = s_nationkey WHERE n_name = 'GERMANY'",
        "SELECT ps_partkey, ps_suppkey FROM partsupp JOIN part ON p_partkey = ps_partkey"
        " WHERE p_size = 15 AND p_type LIKE '%BRASS'",
        "SELECT ps_partkey, ps_suppkey FROM partsupp JOIN part ON p_partkey = ps_partkey"
        " WHERE p_name LIKE 'forest%'",
    ),
    "supplier": (
        "SELECT s_suppkey FROM supplier JOIN nation ON n_nationkey = s_nationkey"
        " WHERE n_name IN ('SAUDI ARABIA', 'CANADA', 'GERMANY')",
    ),
}
"""Rows that narrow filters and top sets select: a uniform draw rarely finds them (Q17 reads
about 180 of 60,000 lines), so a share of the draws is made among them. Each statement
returns the table's key columns."""


def _pick(table: str, cur: Cursor, rng: Random, sizes: Sizes) -> tuple[int, ...] | None:
    """The key of a random row of ``table``: uniform, or from one of its ``FOCUS`` sets."""
    if table in FOCUS and rng.random() < FOCUS_SHARE:
        rows = cur.execute(rng.choice(FOCUS[table])).fetchall()
        if rows:
            return tuple(int(v) for v in rng.choice(rows))
    if table == "lineitem":
        return _pick_line(cur, rng)
    if table == "orders":
        order = _pick_order(cur, rng)
        return None if order is None else (order,)
    if table == "partsupp":
        return _pick_partsupp(cur, rng, sizes)
    top = {"customer": sizes.customers, "part": sizes.parts, "supplier": sizes.suppliers}
    return (rng.randint(1, top[table]),)


def _set(
    table: str,
    assignments: dict[str, str],
    values: Values,
    weight: int,
) -> Change:
    """Set columns of a random row of ``table``: ``assignments`` maps each to an expression
    (a constant of this module) of one parameter, which ``values`` draws."""
    statement = sql.SQL("UPDATE {} SET {} WHERE {}").format(
        sql.Identifier(table),
        sql.SQL(", ").join(
            sql.SQL("{} = ").format(sql.Identifier(column)) + sql.SQL(expression)
            for column, expression in assignments.items()
        ),
        sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in KEYS[table]),
    )

    def run(cur: Cursor, rng: Random, sizes: Sizes, lane: Lane) -> None:
        key = _pick(table, cur, rng, sizes)
        if key is not None:
            cur.execute(statement, (*values(rng, sizes), *key))

    return Change(tuple(assignments), weight, run)


def _plain(*columns: str) -> dict[str, str]:
    return dict.fromkeys(columns, "%s")


_PRICE = "%s * (SELECT p_retailprice FROM part WHERE p_partkey = l_partkey)"


def _quantity(rng: Random, sizes: Sizes) -> tuple[object, ...]:
    """A quantity, and again for the price that goes with it (4.2.3: quantity x retail
    price); small ones often, which move lines under Q17's fifth of the average."""
    quantity = rng.randint(1, 5) if rng.random() < 0.3 else rng.randint(1, 50)
    return quantity, quantity


def _line_dates(rng: Random, sizes: Sizes) -> tuple[object, ...]:
    """Ship, commit and receipt dates as the generator relates them, but with the commit date
    on either side of the others, so that lines move across Q4's, Q12's and Q21's
    comparisons as well as the date ranges."""
    shipped = _day(rng, START_DATE + timedelta(days=1), END_DATE - timedelta(days=30))
    committed = _clamp(shipped + timedelta(days=rng.randint(-60, 60)))
    return shipped, committed, shipped + timedelta(days=rng.randint(1, 30))


def _order_quantities(cur: Cursor, rng: Random, sizes: Sizes, lane: Lane) -> None:
    """Every line of an order large (or any size): moves orders across Q18's 300. Large goes
    to an order of seven lines, the only ones that can reach it (7 x 50 = 350)."""
    large = rng.random() < 0.5
    order = _pick_order(cur, rng, lines=7 if large else 1)
    if order is None:
        return
    numbers = cur.execute(
        "SELECT l_linenumber FROM lineitem WHERE l_orderkey = %s ORDER BY 1", (order,)
    ).fetchall()
    for (number,) in numbers:
        quantity = rng.randint(40 if large else 1, 50)
        cur.execute(
            f"UPDATE lineitem SET l_quantity = %s, l_extendedprice = {_PRICE}"
            " WHERE l_orderkey = %s AND l_linenumber = %s",
            (quantity, quantity, order, number),
        )


def _line_part(cur: Cursor, rng: Random, sizes: Sizes, lane: Lane) -> None:
    """Another part, from one of its suppliers (so Q9's and Q20's partsupp rows exist)."""
    line = _pick("lineitem", cur, rng, sizes)
    if line is None:
        return
    part, supplier = _pick_partsupp(cur, rng, sizes)
    cur.execute(
        "UPDATE lineitem SET l_partkey = %s, l_suppkey = %s,"
        " l_extendedprice = l_quantity * (SELECT p_retailprice FROM part WHERE p_partkey = %s)"
        " WHERE l_orderkey = %s AND l_linenumber = %s",
        (part, supplier, part, *line),
    )


def _rekey_order(cur: Cursor, rng: Random, sizes: Sizes, lane: Lane) -> None:
    """A new primary key for an order and its lines: a delete and an insert to every query."""
    found = _pick("orders", cur, rng, sizes)
    if found is None:
        return
    (old,) = found
    (new,) = lane.new_order_keys(cur, 1)
    cur.execute("UPDATE orders SET o_orderkey = %s WHERE o_orderkey = %s", (new, old))
    cur.execute("UPDATE lineitem SET l_orderkey = %s WHERE l_orderkey = %s", (new, old))


def _swap(table: str, key: str, column: str, rows: int, weight: int) -> Change:
    """Swap ``column`` between two of the ``rows`` rows of ``table`` (nation, region): the
    values stay the specification's set, so that 'GERMANY' or 'ASIA' still exists, but every
    query filtering on one sees other rows. Both rows are locked before either is read, so
    that two concurrent swaps cannot leave one value on two rows."""
    select = sql.SQL("SELECT {k}, {c} FROM {t} WHERE {k} IN (%s, %s) ORDER BY {k} FOR UPDATE")
    update = sql.SQL("UPDATE {t} SET {c} = %s WHERE {k} = %s")
    names = {"t": sql.Identifier(table), "k": sql.Identifier(key), "c": sql.Identifier(column)}

    def run(cur: Cursor, rng: Random, sizes: Sizes, lane: Lane) -> None:
        found = cur.execute(select.format(**names), rng.sample(range(rows), 2)).fetchall()
        if len(found) == 2:
            (first, first_value), (second, second_value) = found
            cur.execute(update.format(**names), (second_value, first))
            cur.execute(update.format(**names), (first_value, second))

    return Change((column,), weight, run)


def _one_of(*choices: Sequence[str]) -> Values:
    """A value of each ``choices``, drawn at random."""
    return lambda rng, sizes: tuple(rng.choice(c) for c in choices)


def _between(low: int, high: int) -> Values:
    return lambda rng, sizes: (rng.randint(low, high),)


def _money(low: int, high: int) -> Values:
    """An amount between ``low`` and ``high`` cents."""
    return lambda rng, sizes: (_cents(rng, low, high),)


def _text_of(make: Callable[[Random], str]) -> Values:
    return lambda rng, sizes: (make(rng),)


def _factor(rng: Random, sizes: Sizes) -> tuple[object, ...]:
    return (Decimal(rng.randint(80, 120)).scaleb(-2),)


def _discount_tax(rng: Random, sizes: Sizes) -> tuple[object, ...]:
    return _cents(rng, 0, 10), _cents(rng, 0, 8)


def _priorities(rng: Random, sizes: Sizes) -> tuple[object, ...]:
    """o_shippriority is always 0 in generated data; a 1 shows whether Q3 follows it."""
    return rng.choice(PRIORITIES), int(rng.random() < 0.2)


def _customer_of(rng: Random, sizes: Sizes) -> tuple[object, ...]:
    """Any customer, also one that had no orders (Q13's zero counts, Q22's NOT EXISTS)."""
    return (rng.randint(1, sizes.customers),)


def _customer_text(rng: Random, sizes: Sizes) -> tuple[object, ...]:
    name = f"Customer#{rng.randint(1, sizes.customers):09d}"
    return name, _address(rng), _text(rng, 29, 116)


def _brand(rng: Random, sizes: Sizes) -> tuple[object, ...]:
    """A brand and the manufacturer it belongs to (Brand#MN is made by Manufacturer#M)."""
    maker = rng.randint(1, 5)
    return f"Brand#{maker}{rng.randint(1, 5)}", f"Manufacturer#{maker}"


def _syllables(syllables: Sequence[Sequence[str]]) -> Values:
    return lambda rng, sizes: (" ".join(rng.choice(s) for s in syllables),)


CHANGES: tuple[Change, ...] = (
    # lineitem: what Q1, Q3-Q10, Q12, Q14, Q15, Q17-Q21 filter, group and sum
    _set("lineitem", {"l_quantity": "%s", "l_extendedprice": _PRICE}, _quantity, 6),
    Change(("l_quantity", "l_extendedprice"), 2, _order_quantities),
    _set("lineitem", {"l_extendedprice": "round(l_extendedprice * %s, 2)"}, _factor, 3),
    _set("lineitem", _plain("l_discount", "l_tax"), _discount_tax, 4),
    _set("lineitem", _plain("l_returnflag", "l_linestatus"), _one_of("RAN", "OF"), 3),
    _set("lineitem", _plain("l_shipdate", "l_commitdate", "l_receiptdate"), _line_dates, 6),
    _set(
        "lineitem",
        _plain("l_shipmode", "l_shipinstruct"),
        _one_of(SHIP_MODES, SHIP_INSTRUCTIONS),
        3,
    ),
    Change(("l_partkey", "l_suppkey", "l_extendedprice"), 3, _line_part),
    # orders
    _set("orders", _plain("o_orderdate"), lambda rng, s: (_day(rng, last=LAST_ORDER_DATE),), 4),
    _set("orders", _plain("o_orderpriority", "o_shippriority"), _priorities, 3),
    _set("orders", _plain("o_orderstatus"), _one_of("FOP"), 3),
    _set("orders", _plain("o_totalprice"), _money(90_000, 55_000_000), 3),
    _set("orders", _plain("o_comment"), _text_of(_order_comment), 3),
    _set("orders", _plain("o_custkey"), _customer_of, 3),
    Change(("o_orderkey", "l_orderkey"), 1, _rekey_order),
    # customer
    _set("customer", _plain("c_mktsegment"), _one_of(SEGMENTS), 2),
    _set("customer", _plain("c_acctbal"), _money(-99_999, 999_999), 2),
    _set("customer", _plain("c_phone"), _text_of(_phone), 2),
    _set("customer", _plain("c_nationkey"), _between(0, 24), 1),
    _set("customer", _plain("c_name", "c_address", "c_comment"), _customer_text, 1),
    # part
    _set("part", _plain("p_brand", "p_mfgr"), _brand, 1),
    _set("part", _plain("p_type"), _syllables(TYPE_SYLLABLES), 2),
    _set("part", _plain("p_size"), _between(1, 50), 2),
    _set("part", _plain("p_container"), _syllables(CONTAINER_SYLLABLES), 2),
    _set("part", _plain("p_name"), _text_of(_part_name), 2),
    # partsupp
    _set("partsupp", _plain("ps_supplycost"), _money(100, 100_000), 3),
    _set("partsupp", _plain("ps_availqty"), _between(1, 9_999), 3),
    # supplier
    _set("supplier", _plain("s_acctbal"), _money(-99_999, 999_999), 1),
    _set("supplier", _plain("s_comment"), _text_of(_supplier_comment), 1),
    _set("supplier", _plain("s_nationkey"), _between(0, 24), 1),
    _set(
        "supplier",
        _plain("s_address", "s_phone"),
        lambda rng, s: (_address(rng), _phone(rng)),
        1,
    ),
    # nation and region: rare, and each moves many rows of many queries
    _swap("nation", "n_nationkey", "n_name", 25, 1),
    _swap("nation", "n_nationkey", "n_regionkey", 25, 1),
    _swap("region", "r_regionkey", "r_name", 5, 1),
)
"""Every kind of random UPDATE, weighted."""

NOT_UPDATED: dict[str, str] = {
    **dict.fromkeys(
        ("c_custkey", "p_partkey", "ps_partkey", "ps_suppkey", "s_suppkey"),
        "the workload finds these rows by their keys, numbered from 1 (Sizes)",
    ),
    **dict.fromkeys(("n_nationkey", "r_regionkey"), "swapping names and regions moves as much"),
    "s_name": "Q2 and Q21 break ties by it: it must keep naming one supplier",
}
"""The columns the queries read that no update sets, and why."""


def update(conn: psycopg.Connection[Any], rng: Random, count: int, lane: Lane = Lane()) -> None:
    """``count`` random UPDATEs, chosen by weight from ``CHANGES``."""
    weights = [change.weight for change in CHANGES]
    with conn.cursor() as cur:
        sizes = Sizes.read(cur)
        for change in rng.choices(CHANGES, weights, k=count):
            change.run(cur, rng, sizes, lane)


# -- a round -------------------------------------------------------------------------------


@dataclass
class RoundStats:
    """What became of a round's transactions."""

    committed: int = 0
    rolled_back: int = 0
    deadlocked: int = 0
    """Aborted by the server: two writers' updates locked rows in opposite orders."""

    def add(self, other: RoundStats) -> None:
        self.committed += other.committed
        self.rolled_back += other.rolled_back
        self.deadlocked += other.deadlocked


@dataclass(frozen=True)
class _Transaction:
    kind: str
    size: int


def _run_kind(conn: psycopg.Connection[Any], rng: Random, work: _Transaction, lane: Lane) -> None:
    if work.kind == "rf1":
        rf1(conn, rng, work.size, lane)
    elif work.kind == "rf2":
        rf2(conn, rng, work.size)
    else:
        update(conn, rng, work.size, lane)


def _sizes(rng: Random, total: int, smallest: int, largest: int) -> list[int]:
    """Transaction sizes between ``smallest`` and ``largest`` that add up to ``total``."""
    out: list[int] = []
    while total > 0:
        size = min(total, rng.randint(smallest, largest))
        out.append(size)
        total -= size
    return out


def round(
    dsn: str,
    rng: Random,
    *,
    orders: int = 15,
    updates: int = 150,
    writers: int = 2,
    rollback: float = 0.2,
) -> RoundStats:
    """RF1 of ``orders`` new orders, RF2 of ``orders`` deletions and ``updates`` UPDATEs, cut
    into transactions of a few statements, shuffled and dealt to ``writers`` concurrent
    writers; each transaction is rolled back with probability ``rollback``.

    The default ``orders`` is the specification's refresh size at SF 0.01 (0.1 % of orders).
    """
    work = [_Transaction("rf1", n) for n in _sizes(rng, orders, 1, 3)]
    work += [_Transaction("rf2", n) for n in _sizes(rng, orders, 1, 3)]
    work += [_Transaction("update", n) for n in _sizes(rng, updates, 2, 6)]
    rng.shuffle(work)
    seeds = [rng.getrandbits(64) for _ in range(writers)]
    with ThreadPoolExecutor(writers, thread_name_prefix="tpch-writer") as pool:
        futures = [
            pool.submit(_write, dsn, Random(seed), work[i::writers], Lane(i, writers), rollback)
            for i, seed in enumerate(seeds)
        ]
        total = RoundStats()
        for future in futures:
            total.add(future.result())
    return total


def _write(
    dsn: str, rng: Random, work: Sequence[_Transaction], lane: Lane, rollback: float
) -> RoundStats:
    stats = RoundStats()
    with psycopg.connect(dsn) as conn:
        for transaction in work:
            try:
                _run_kind(conn, rng, transaction, lane)
                if rng.random() < rollback:
                    conn.rollback()
                    stats.rolled_back += 1
                else:
                    conn.commit()
                    stats.committed += 1
            except psycopg.errors.DeadlockDetected:
                conn.rollback()
                stats.deadlocked += 1
    return stats
