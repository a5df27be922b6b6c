"""compile_query: a defining SELECT and catalog facts in, a DeltaPlan out.

The pipeline: parse (sqlglot, postgres) -> resolve names -> operator tree -> one rule per
operator (``scan``, ``filter``, ``join``, ``project``, ``aggregate``) -> ``consolidate`` into
the KEYED or BAG delta contract. What cannot be differentiated gets a FULL-only plan that says
which construct and why.

>>> from dvm.catalog import CatalogFacts, Column, SourceTable
>>> columns = (Column("id", "integer"), Column("v", "integer"))
>>> t = SourceTable(16384, "public", "t", columns, ("id",))
>>> catalog = CatalogFacts({("public", "t"): t})
>>> plan = compile_query("select distinct v from t", catalog, ("public", "st"))
>>> plan.differentiable, [str(reason) for reason in plan.reasons]
(False, ['DISTINCT: not differentiable yet (needs row multiplicities)'])
>>> mode, fallback = effective_mode(plan, RefreshMode.AUTO)
>>> mode, [reason.construct for reason in fallback]
(<RefreshMode.FULL: 'full'>, ['DISTINCT'])

The plan carries the query as the compiler understood it, normalized: comments, a trailing
semicolon and odd white space are gone, so it can be embedded in other SQL as it is.

>>> plan.query
'SELECT DISTINCT v FROM t'
"""

from __future__ import annotations

from types import MappingProxyType

from sqlglot import exp

from dvm import aggregate as aggregate_rule
from dvm import consolidate, full
from dvm.catalog import CatalogFacts, SourceTable
from dvm.dialect import parse_statements, render
from dvm.errors import InvalidQuery, UnsupportedQuery
from dvm.filter import filter_
from dvm.join import join
from dvm.operators import Aggregate, Filter, Join, Operator, Project, Scan
from dvm.plan import ApplyStrategy, DeltaPlan, RefreshMode
from dvm.project import project
from dvm.reason import Reason, summary
from dvm.resolve import NotResolvable, ResolvedSelect, resolve_select
from dvm.scan import delta_relation, scan
from dvm.support import check_renderable, shape_reasons
from dvm.translate import NotDifferentiable, translate
from dvm.zset import ROW_ID, Derived

__all__ = ["compile_query", "delta_relation", "effective_mode", "normalize"]

_RESERVED_PREFIX = "__pgt_"


def compile_query(query: str, catalog: CatalogFacts, storage: tuple[str, str]) -> DeltaPlan:
    """Compile the defining ``query`` of a stream table stored in ``storage`` (schema, name).

    Raises InvalidQuery when ``query`` is not one SELECT, or names unknown tables or columns.
    """
    statement = _single_query(query)
    check_renderable(statement)
    normalized = render(statement)
    reasons = shape_reasons(statement)
    resolved: ResolvedSelect | None = None
    if not reasons:
        assert isinstance(statement, exp.Select)
        try:
            resolved = resolve_select(statement, query, catalog)
        except NotResolvable as error:
            reasons.append(Reason(error.construct, error.why))
    if resolved is not None:
        _check_output_names([output.name for output in resolved.outputs])
        try:
            tree, notes = translate(resolved, query)
        except NotDifferentiable as error:
            reasons.extend(error.reasons)
        else:
            return _differential(normalized, query, resolved, tree, notes, storage)
    return _full_only(normalized, query, statement, catalog, resolved, reasons, storage)


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


def _check_output_names(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name.startswith(_RESERVED_PREFIX):
            raise InvalidQuery(
                f'output column name "{name}" is reserved',
                detail=f"names starting with {_RESERVED_PREFIX} are pgtrickle's hidden columns",
                hint="rename the column with AS",
            )
        if name in seen:
            raise InvalidQuery(
                f'column "{name}" appears more than once in the output',
                detail="a stream table, like any table, needs distinct column names",
                hint="give the columns distinct names with AS",
            )
        seen.add(name)


def _derive(node: Operator) -> Derived:
    """New rows and delta of an operator below the projection, rule by rule."""
    if isinstance(node, Scan):
        return scan(node)
    if isinstance(node, Filter):
        return filter_(node, _derive(node.input))
    if isinstance(node, Join):
        return join(node, _derive(node.left), _derive(node.right))
    raise AssertionError(f"no rule for {type(node).__name__} here")


def _sources(
    resolved: ResolvedSelect,
) -> tuple[tuple[SourceTable, ...], dict[int, tuple[str, ...]]]:
    tables: dict[int, SourceTable] = {}
    read: dict[int, set[str]] = {}
    for relation in resolved.relations:
        tables.setdefault(relation.table.oid, relation.table)
        read.setdefault(relation.table.oid, set()).update(resolved.columns_read[relation.alias])
    columns_read = {
        oid: tuple(c for c in table.column_names() if c in read[oid])
        for oid, table in tables.items()
    }
    return tuple(tables.values()), columns_read


def _differential(
    normalized: str,
    query: str,
    resolved: ResolvedSelect,
    tree: Operator,
    notes: list[Reason],
    storage: tuple[str, str],
) -> DeltaPlan:
    assert isinstance(tree, Project)
    names = tuple(output.name for output in tree.outputs)
    below = tree.input
    if isinstance(below, Aggregate):
        derived = _derive(below.input)
        storage_query: exp.Query = aggregate_rule.storage_query(below, tree.outputs, derived.new)
        delta_query = aggregate_rule.aggregate(below, tree.outputs, derived, storage)
        strategy = ApplyStrategy.KEYED
        hidden = (ROW_ID, *aggregate_rule.aux_columns(below))
    else:
        derived = _derive(below)
        storage_query = project(tree, derived.new, weighted=False)
        changes = project(tree, derived.delta, weighted=True)
        if derived.delta.keyed:
            delta_query = consolidate.keyed(changes, names)
            strategy = ApplyStrategy.KEYED
        else:
            delta_query = consolidate.bag(changes, names)
            strategy = ApplyStrategy.BAG
        hidden = (ROW_ID,)
    sources, columns_read = _sources(resolved)
    return DeltaPlan(
        query=normalized,
        sources=sources,
        columns_read=MappingProxyType(columns_read),
        user_columns=names,
        hidden_columns=hidden,
        storage_query=render(storage_query),
        delta_query=render(delta_query),
        apply_strategy=strategy,
        differentiable=True,
        reasons=tuple(notes),
        storage=storage,
        tree=tree,
    )


def _full_only(
    normalized: str,
    query: str,
    statement: exp.Expr,
    catalog: CatalogFacts,
    resolved: ResolvedSelect | None,
    reasons: list[Reason],
    storage: tuple[str, str],
) -> DeltaPlan:
    if resolved is not None:
        names = [output.name for output in resolved.outputs]
        sources, columns_read = _sources(resolved)
    else:
        names = full.output_names(statement, query, catalog)
        _check_output_names(names)
        tables = full.sources(statement, catalog)
        sources, columns_read = tuple(tables), full.columns_read(statement, tables)
    return DeltaPlan(
        query=normalized,
        sources=sources,
        columns_read=MappingProxyType(columns_read),
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
