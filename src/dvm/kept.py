"""The aggregate under a TopK, kept whole: ``ORDER BY … LIMIT k`` over a GROUP BY.

A stream table holds the first k groups only. When a change removes one of them, or lowers
it, the group that takes its place is one the stream table does not hold, so a TopK stored
alone must then recompute (``dvm.topk``'s guard): one refresh in three of TPC-H Q10 at
0.1 % changed orders did, and every refresh of Q21, whose changes touch most of its groups,
rescanned them all. Here the aggregate of every group is kept beside the stream table, in
a hidden table of ``pgtrickle_state`` maintained like any stored aggregate (``dvm.aggregate``:
auxiliary values, MERGE by group), and the stream table is replaced by its first rows after
each refresh: k rows read in the order of an index on the kept table, compared with the k
stored. Nothing ever has to be recomputed, whatever leaves the top.

>>> from dvm.catalog import CatalogFacts, Column, SourceTable
>>> from dvm.compile import compile_query
>>> t = SourceTable(1, "public", "t", (Column("id", "integer"), Column("g", "integer")), ("id",))
>>> query = "select g, count(*) as n from t group by g order by n desc, g limit 3"
>>> plan = compile_query(query, CatalogFacts({("public", "t"): t}), ("public", "top"))
>>> plan.kept.table, plan.kept.order
(('pgtrickle_state', 'top__7ae494159068101e'), (('n', True, True), ('g', False, False)))
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlglot import exp

from dvm import apply, consolidate, sql
from dvm.naming import identifier_name
from dvm.operators import Aggregate, TopK
from dvm.rules.limit import first_rows
from dvm.zset import ROW_ID, WEIGHT

KEPT_SCHEMA = "pgtrickle_state"
"""Where hidden tables that a stream table's maintenance keeps live (migration 0004)."""

_NAME_BYTES = 40


@dataclass(frozen=True)
class Kept:
    """The hidden table a stream table's refresh maintains beside it, and how the stream
    table is made from it."""

    table: tuple[str, str]
    """(schema, name) of the kept table."""
    storage_query: str
    """Row id, columns and auxiliary values of every group: populates the kept table."""
    columns: tuple[str, ...]
    """The aggregate's output columns (the stream table's columns too)."""
    hidden_columns: tuple[str, ...]
    """Row id, then the auxiliary values."""
    order: tuple[tuple[str, bool, bool], ...] | None
    """(column, descending, nulls first) of the TopK's ORDER BY, when every item is a plain
    column: the kept table is indexed so, and the first rows are an index's first entries."""
    top_sql: str
    """ONE statement replacing the stream table's rows with the first rows of the kept
    table; it returns (deleted, inserted)."""

    @property
    def aux_columns(self) -> tuple[str, ...]:
        return self.hidden_columns[1:]


def keeps(node: object) -> bool:
    """Whether a stored relation is a TopK kept this way: over an aggregate with groups."""
    return isinstance(node, TopK) and isinstance(node.input, Aggregate) and not node.input.scalar


def kept_table(storage: tuple[str, str]) -> tuple[str, str]:
    """The kept table of the stream table stored in ``storage``: its name's first bytes and a
    hash of schema and name (unique, and within PostgreSQL's 63 bytes)."""
    schema, name = storage
    digest = hashlib.md5(f"{schema}\0{name}".encode(), usedforsecurity=False).hexdigest()[:16]
    prefix = name.encode()[:_NAME_BYTES].decode(errors="ignore")
    return KEPT_SCHEMA, f"{prefix}__{digest}"


def order_columns(node: TopK) -> tuple[tuple[str, bool, bool], ...] | None:
    """The ORDER BY as (column, descending, nulls first), when every item is a column."""
    found = []
    for item in node.order:
        if not isinstance(item.this, exp.Column) or item.this.table:
            return None
        name = identifier_name(item.this.args["this"])
        found.append((name, bool(item.args.get("desc")), bool(item.args.get("nulls_first"))))
    return tuple(found)


def first_of_kept(node: TopK, kept: tuple[str, str]) -> exp.Select:
    """The stream table's rows: row id and columns of the first rows of the kept table."""
    columns = node.columns
    top = first_rows(
        node, exp.select(*[sql.col("k", c) for c in columns]).from_(sql.table(*kept, alias="k"))
    )
    values = [sql.col("f", c) for c in columns]
    return exp.select(sql.alias(sql.row_hash(values), ROW_ID), *values).from_(
        top.subquery(sql.ident("f")), copy=False
    )


def replace_first_rows(node: TopK, kept: tuple[str, str], storage: tuple[str, str]) -> exp.Select:
    """The statement making the stream table the first rows of the kept table: those rows
    (+1) and the stored ones (-1), netted per row, deleted and inserted."""
    columns = node.columns
    first = exp.select(
        sql.col("f", ROW_ID), sql.alias(sql.lit(1), WEIGHT), *[sql.col("f", c) for c in columns]
    ).from_(first_of_kept(node, kept).subquery(sql.ident("f")), copy=False)
    stored = exp.select(
        sql.col("s", ROW_ID), sql.alias(sql.lit(-1), WEIGHT), *[sql.col("s", c) for c in columns]
    ).from_(sql.table(*storage, alias="s"))
    change = exp.union(first, stored, distinct=False, copy=False)
    return apply.bag(storage, consolidate.bag(change, columns), columns)
