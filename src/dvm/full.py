"""FULL refresh for queries the compiler cannot differentiate: their storage query, output
column names and sources, found without resolving every name.

The storage query renames the outputs positionally (``AS q(c1, c2)``), so the stored columns
are exactly the names the plan reports, and identifies a row by the hash of all its values.

>>> from dvm.catalog import CatalogFacts, Column, SourceTable
>>> from dvm.dialect import parse_one, render_pretty
>>> t = SourceTable(1, "public", "t", (Column("a", "integer"), Column("b", "text")))
>>> catalog = CatalogFacts({("public", "t"): t})
>>> q = "select distinct * from t"
>>> output_names(parse_one(q), q, catalog)
['a', 'b']
>>> print(render_pretty(storage_query(parse_one(q), ["a", "b"])))
SELECT
  HASHTEXTEXTENDED(CAST(ROW("__pgt_q".*) AS TEXT), 0) AS "__pgt_row_id",
  "__pgt_q"."a",
  "__pgt_q"."b"
FROM (
  SELECT DISTINCT
    *
  FROM t
) AS "__pgt_q"("a", "b")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlglot import exp

from dvm import sql
from dvm.catalog import CatalogFacts, SourceTable, View
from dvm.dialect import parse_one
from dvm.errors import UnsupportedQuery
from dvm.naming import identifier_name, output_name
from dvm.resolve import lookup_relation, parenthesized_from
from dvm.zset import ROW_ID

_Q = "__pgt_q"


def storage_query(statement: exp.Expr, columns: Sequence[str]) -> exp.Select:
    """``SELECT hash(whole row) AS __pgt_row_id, q.* FROM (<query>) AS q(columns)``."""
    assert isinstance(statement, exp.Query)
    whole_row = sql.func("ROW", exp.Column(this=exp.Star(), table=sql.ident(_Q)))
    row_id = sql.func("HASHTEXTEXTENDED", sql.cast(whole_row, "text"), sql.lit(0))
    source = exp.Subquery(
        this=statement.copy(),
        alias=exp.TableAlias(this=sql.ident(_Q), columns=[sql.ident(c) for c in columns]),
    )
    return exp.select(sql.alias(row_id, ROW_ID), *[sql.col(_Q, c) for c in columns]).from_(
        source, copy=False
    )


def cte_names(statement: exp.Expr) -> set[str]:
    return {identifier_name(cte.args["alias"].this) for cte in statement.find_all(exp.CTE)}


def sources(statement: exp.Expr, catalog: CatalogFacts) -> list[SourceTable]:
    """Every base table the query reads (CTE names excepted, views expanded), in order of
    appearance."""
    found: dict[int, SourceTable] = {}
    for part in _with_views(statement, catalog, ()):
        for table in _named(part, catalog):
            if isinstance(table, SourceTable):
                found.setdefault(table.oid, table)
    return list(found.values())


def _named(statement: exp.Expr, catalog: CatalogFacts) -> list[SourceTable | View]:
    ctes = cte_names(statement)
    named: list[tuple[int, SourceTable | View]] = []
    for node in statement.find_all(exp.Table):
        name = node.args.get("this")
        if not isinstance(name, exp.Identifier):
            continue
        if node.args.get("db") is None and identifier_name(name) in ctes:
            continue
        start = name.meta.get("start")
        named.append((start if isinstance(start, int) else 0, lookup_relation(node, catalog)))
    return [relation for _, relation in sorted(named, key=lambda item: item[0])]


def _with_views(
    statement: exp.Expr, catalog: CatalogFacts, seen: tuple[str, ...]
) -> list[exp.Expr]:
    """The statement and the definitions of the views it reads, recursively."""
    parts = [statement]
    for relation in _named(statement, catalog):
        if isinstance(relation, View) and relation.qualified_name not in seen:
            definition = parse_one(relation.definition)
            parts.extend(_with_views(definition, catalog, (*seen, relation.qualified_name)))
    return parts


def columns_read(
    statement: exp.Expr, tables: Sequence[SourceTable], catalog: CatalogFacts | None = None
) -> dict[int, tuple[str, ...]]:
    """A superset of the columns read: names mentioned anywhere (views' definitions
    included), or all columns when the query has a ``*`` or a name that is no column
    (possibly a whole-row reference)."""
    mentioned = set()
    everything = False
    known = {column for table in tables for column in table.column_names()}
    parts = _with_views(statement, catalog, ()) if catalog is not None else [statement]
    for node in (found for part in parts for found in part.find_all(exp.Column, exp.Star)):
        if isinstance(node, exp.Star) or isinstance(node.args.get("this"), exp.Star):
            everything = True
            continue
        name = identifier_name(node.args["this"])
        if name not in known:
            everything = True
        mentioned.add(name)
    return {
        table.oid: tuple(
            c
            for c in table.column_names()
            if everything or c in mentioned or c in table.primary_key
        )
        for table in tables
    }


def output_names(
    node: exp.Expr,
    query: str,
    catalog: CatalogFacts,
    ctes: Mapping[str, list[str]] | None = None,
) -> list[str]:
    """The output column names of any query, ``*`` expanded where the columns are known."""
    scope = dict(ctes or {})
    if isinstance(node, exp.Subquery):
        return output_names(node.this, query, catalog, scope)
    with_ = node.args.get("with_")
    if with_ is not None:
        for cte in with_.expressions:
            alias = cte.args["alias"]
            scope[identifier_name(alias.this)] = _renamed(
                output_names(cte.this, query, catalog, scope), alias
            )
    if isinstance(node, exp.SetOperation):
        return output_names(node.this, query, catalog, scope)
    if not isinstance(node, exp.Select):
        raise _unnameable(f"a {type(node).__name__} query")
    items: list[tuple[str, list[str] | None]] = []
    from_ = node.args.get("from_")
    if from_ is not None:
        for item in _from_items(from_.this, node.args.get("joins") or []):
            items.append(_item_columns(item, query, catalog, scope))
    names: list[str] = []
    for item in node.expressions:
        if isinstance(item, exp.Star):
            if len(items) > 1 and any(
                join.args.get("using") or join.args.get("method") for join in node.args["joins"]
            ):
                raise _unnameable("* over a join with USING or NATURAL")
            for alias, columns in items:
                if columns is None:
                    raise _unnameable(f"* over {alias}")
                names.extend(columns)
        elif isinstance(item, exp.Column) and isinstance(item.args.get("this"), exp.Star):
            wanted = identifier_name(item.args["table"])
            match = [columns for alias, columns in items if alias == wanted]
            if not match or match[0] is None:
                raise _unnameable(f"{wanted}.*")
            names.extend(match[0])
        else:
            names.append(output_name(item, query))
    return names


def _from_items(first: exp.Expr, joins: Sequence[exp.Join]) -> list[exp.Expr]:
    """The FROM items in order, those of parenthesized joins included."""
    items = []
    for item in [first, *(join.this for join in joins)]:
        if isinstance(item, exp.Subquery) and parenthesized_from(item):
            inner = item.this
            base = inner.copy()
            base.set("joins", None)
            items.extend(_from_items(base, inner.args.get("joins") or []))
        else:
            items.append(item)
    return items


def _item_columns(
    item: exp.Expr, query: str, catalog: CatalogFacts, ctes: Mapping[str, list[str]]
) -> tuple[str, list[str] | None]:
    alias_node = item.args.get("alias")
    alias = identifier_name(alias_node.this) if alias_node is not None else ""
    columns: list[str] | None = None
    if isinstance(item, exp.Table) and isinstance(item.args.get("this"), exp.Identifier):
        name = identifier_name(item.args["this"])
        alias = alias or name
        if item.args.get("db") is None and name in ctes:
            columns = list(ctes[name])
        else:
            found = lookup_relation(item, catalog)
            columns = list(found.columns if isinstance(found, View) else found.column_names())
    elif isinstance(item, exp.Subquery):
        columns = output_names(item.this, query, catalog, ctes)
    if columns is not None and alias_node is not None:
        columns = _renamed(columns, alias_node)
    return alias, columns


def _renamed(columns: list[str], alias: exp.Expr) -> list[str]:
    renamed = [identifier_name(c) for c in alias.args.get("columns") or []]
    return renamed + columns[len(renamed) :]


def _unnameable(what: str) -> UnsupportedQuery:
    return UnsupportedQuery(
        "cannot determine the output columns of the defining query",
        detail=f"the columns of {what} are not known to pgtrickle",
        hint="list the output columns explicitly instead of using *",
    )
