"""compile_query: a defining SELECT and catalog facts in, a DeltaPlan out.

The pipeline: parse (sqlglot, postgres) -> resolve names scope by scope into the operator
tree (``dvm.resolve``) -> narrow grouped subqueries to the keys their joins can match
(``dvm.transfer``) -> derive every node by its rule (``dvm.rules``) -> the stored
relation's strategy: an aggregate kept with auxiliary values or rescanned per group (KEYED,
``dvm.aggregate``), a TopK (``dvm.topk``), anything else as a bag of rows (BAG). What cannot be
differentiated gets a FULL-only plan that says which construct and why.

>>> from dvm.catalog import CatalogFacts, Column, SourceTable
>>> columns = (Column("id", "integer"), Column("v", "integer"))
>>> t = SourceTable(16384, "public", "t", columns, ("id",))
>>> catalog = CatalogFacts({("public", "t"): t})
>>> plan = compile_query("select v, random() from t", catalog, ("public", "st"))
>>> plan.differentiable, [str(reason) for reason in plan.reasons]
(False, ['random(): volatile or time-dependent functions change between refreshes'])
>>> mode, fallback = effective_mode(plan, RefreshMode.AUTO)
>>> mode, [reason.construct for reason in fallback]
(<RefreshMode.FULL: 'full'>, ['random()'])

The plan carries the query as the compiler understood it, normalized: comments, a trailing
semicolon and odd white space are gone, so it can be embedded in other SQL as it is.

>>> plan.query
'SELECT v, RANDOM() FROM t'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from types import MappingProxyType

from sqlglot import exp

from dvm import aggregate, consolidate, full, kept, sql, topk
from dvm.catalog import CatalogFacts, SourceTable
from dvm.dialect import parse_statements, render
from dvm.errors import InvalidQuery, UnsupportedQuery
from dvm.operators import Aggregate, Relation, TopK
from dvm.plan import ApplyStrategy, DeltaPlan, RefreshMode
from dvm.reason import Reason, summary
from dvm.relevance import reduced_rows, relevant_rows
from dvm.resolve import NotDifferentiable, Resolved, check_output_names, resolve
from dvm.rules import derive, relation, rows
from dvm.rules.scan import KEY_LOOKUP, delta_relation
from dvm.support import check_renderable
from dvm.transfer import transferred
from dvm.zset import ROW_ID, WEIGHT, Context, DerivedRelation, cte_item

__all__ = ["compile_query", "delta_relation", "effective_mode", "normalize"]


def compile_query(
    query: str,
    catalog: CatalogFacts,
    storage: tuple[str, str],
    changed: frozenset[int] | None = None,
) -> DeltaPlan:
    """Compile the defining ``query`` of a stream table stored in ``storage`` (schema, name).

    ``changed``: the sources (oids) with staged rows in the one refresh the delta is for
    (see ``dvm.zset.Context.changed``); None for a delta valid whatever changed.

    Raises InvalidQuery when ``query`` is not one SELECT, or names unknown tables or columns.
    """
    statement = _single_query(query)
    check_renderable(statement)
    normalized = render(statement)
    try:
        resolved = resolve(statement, query, catalog)
    except NotDifferentiable as error:
        return _full_only(normalized, query, statement, catalog, error.reasons, storage)
    check_output_names(resolved.tree.columns)
    resolved = replace(resolved, tree=transferred(resolved.tree))
    plan = _differential(normalized, statement, resolved, storage, changed)
    read = CatalogFacts(
        tables={(t.schema, t.name): t for t in resolved.sources},
        search_path=catalog.search_path,
        views={(v.schema, v.name): v for v in resolved.views},
    )
    return replace(plan, catalog=read)


def normalize(query: str) -> str:
    """The defining query as one SELECT statement the server can embed in other SQL.

    >>> normalize("  select a  -- the key\\n from t ;")
    'SELECT a FROM t'
    """
    statement = _single_query(query)
    check_renderable(statement)
    return render(statement)


def effective_mode(
    plan: DeltaPlan, requested: RefreshMode
) -> tuple[RefreshMode, tuple[Reason, ...]]:
    """The mode a refresh really runs in, and the reasons it differs from the one requested."""
    if requested is RefreshMode.IMMEDIATE:
        raise UnsupportedQuery(
            "refresh_mode immediate is not supported yet", hint="use differential or auto"
        )
    if requested is RefreshMode.FULL:
        return RefreshMode.FULL, ()
    if plan.differentiable:
        return RefreshMode.DIFFERENTIAL, ()
    reasons = plan.reasons or (Reason("the query", "cannot be differentiated"),)
    if requested is RefreshMode.AUTO:
        return RefreshMode.FULL, reasons
    raise UnsupportedQuery(
        f"refresh_mode differential is not possible: {reasons[0].construct} cannot be "
        "maintained incrementally",
        detail=summary(reasons),
        hint="use refresh_mode full or auto, or rewrite the query without it",
    )


def _single_query(query: str) -> exp.Expr:
    statements = parse_statements(query)
    if len(statements) != 1:
        raise InvalidQuery(
            f"the defining query must be one statement, got {len(statements)}",
            detail="statements are separated by semicolons" if statements else "the query is empty",
            hint="give exactly one SELECT statement",
        )
    statement = statements[0]
    if not isinstance(statement, exp.Select | exp.SetOperation):
        kind = (
            statement.key.upper()
            if not isinstance(statement, exp.Command)
            else str(statement.this).upper()
        )
        raise InvalidQuery(
            f"the defining query must be a SELECT, got {kind}",
            detail=f"statement: {render(statement)[:200]}",
            hint="a stream table is defined by a SELECT; pgtrickle runs the DML itself",
        )
    return statement


def _differential(
    normalized: str,
    statement: exp.Expr,
    resolved: Resolved,
    storage: tuple[str, str],
    changed: frozenset[int] | None,
) -> DeltaPlan:
    root = resolved.tree
    names = root.columns
    context = Context(changed=changed)
    guarding: exp.Query | None = None
    keeping: kept.Kept | None = None
    hidden: tuple[str, ...] = (ROW_ID,)
    if isinstance(root, Aggregate):
        input = rows(derive(root.input, context))
        storage_query: exp.Query = aggregate.storage_query(root, input)
        delta_query: exp.Query = aggregate.delta_query(root, input, context, storage)
        strategy = ApplyStrategy.KEYED
        hidden = (ROW_ID, *aggregate.aux_columns(root))
    elif kept.keeps(root):
        assert isinstance(root, TopK) and isinstance(root.input, Aggregate)
        grouped = root.input
        table = kept.kept_table(storage)
        input = rows(derive(grouped.input, context))
        delta_query = aggregate.delta_query(grouped, input, context, table)
        strategy = ApplyStrategy.KEYED
        storage_query = kept.first_of_kept(root, table)
        keeping = kept.Kept(
            table=table,
            storage_query=render(aggregate.storage_query(grouped, input)),
            columns=names,
            hidden_columns=(ROW_ID, *aggregate.aux_columns(grouped)),
            order=kept.order_columns(root),
            top_sql=render(kept.replace_first_rows(root, table, storage)),
        )
    elif isinstance(root, TopK):
        storage_query = full.storage_query(statement, names)
        delta_query = topk.delta_query(root, _derived(root.input, context), context, storage)
        checking = Context(changed=changed)
        guarding = topk.guard_query(root, _derived(root.input, checking), checking, storage)
        strategy = ApplyStrategy.BAG
    else:
        unordered = statement.copy()
        unordered.set("order", None)  # a table has no row order: no sort to populate it
        storage_query = full.storage_query(unordered, names)
        changes = _derived(root, context).delta
        values = [sql.col("d", name) for name in names]
        identified = exp.select(
            sql.alias(sql.row_hash(values), ROW_ID), sql.col("d", WEIGHT), *values
        ).from_(cte_item(changes, "d"))
        delta_query = context.statement(consolidate.bag(identified, names))
        strategy = ApplyStrategy.BAG
    queries = [delta_query] if guarding is None else [delta_query, guarding]
    indexed = _name_staged_tables(queries, resolved.sources)
    return DeltaPlan(
        query=normalized,
        sources=resolved.sources,
        columns_read=MappingProxyType(resolved.columns_read),
        user_columns=names,
        hidden_columns=hidden,
        storage_query=render(storage_query),
        delta_query=render(delta_query),
        apply_strategy=strategy,
        differentiable=True,
        reasons=resolved.notes,
        storage=storage,
        tree=root,
        guard_query=None if guarding is None else render(guarding),
        indexed_deltas=indexed,
        staging_filters=MappingProxyType(relevant_rows(root)),
        reduced_filters=MappingProxyType(
            {}
            if changed is None
            else reduced_rows(root, frozenset(s.oid for s in resolved.sources) - changed)
        ),
        kept=keeping,
    )


def _name_staged_tables(
    queries: Sequence[exp.Expr], sources: Sequence[SourceTable]
) -> frozenset[int]:
    """The sources whose staged delta ``queries`` look up by key, which they read from the
    indexed temp table; the others' they read from the plain one (renamed in place)."""
    looked_up = frozenset(
        int(test.meta[KEY_LOOKUP])
        for query in queries
        for test in query.find_all(exp.Exists)
        if KEY_LOOKUP in test.meta
    )
    plain = {
        delta_relation(s): delta_relation(s, indexed=False)
        for s in sources
        if s.oid not in looked_up
    }
    for query in queries:
        for table in query.find_all(exp.Table):
            if table.db == "pg_temp" and table.name in plain:
                table.set("this", sql.ident(plain[table.name]))
    return looked_up


def _derived(node: Relation, context: Context) -> DerivedRelation:
    return relation(derive(node, context))


def _full_only(
    normalized: str,
    query: str,
    statement: exp.Expr,
    catalog: CatalogFacts,
    reasons: list[Reason],
    storage: tuple[str, str],
) -> DeltaPlan:
    names = full.output_names(statement, query, catalog)
    check_output_names(names)
    tables = full.sources(statement, catalog)
    return DeltaPlan(
        query=normalized,
        sources=tuple(tables),
        columns_read=MappingProxyType(full.columns_read(statement, tables, catalog)),
        user_columns=tuple(names),
        hidden_columns=(ROW_ID,),
        storage_query=render(full.storage_query(statement, names)),
        delta_query=None,
        apply_strategy=ApplyStrategy.BAG,
        differentiable=False,
        reasons=tuple(dict.fromkeys(reasons)),
        storage=storage,
        tree=None,
    )
