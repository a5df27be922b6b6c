"""Name resolution, scope by scope, into the operator tree.

Every SELECT is a scope: its FROM items (base tables, views expanded to their definitions,
derived tables, CTEs, parenthesized joins), the scopes around it (a subquery may read the
columns of an enclosing query: correlation) and the CTEs visible in it. Every column is
qualified with the alias of the FROM item it belongs to, ``*`` is expanded, USING and NATURAL
become conditions, and the outputs are named as PostgreSQL names them. Subqueries become
operators: EXISTS / IN (and their negations) semi- and anti-joins, scalar subqueries joined
as one-row relations (correlated ones grouped by their correlation keys).

Unknown tables and columns are :class:`InvalidQuery` errors, as the server would report them;
what cannot be differentiated raises :class:`NotDifferentiable` with every reason found.

>>> from dvm.catalog import CatalogFacts, Column, SourceTable
>>> from dvm.dialect import parse_one
>>> from dvm.operators import explain_tree
>>> t = SourceTable(1, "public", "t", (Column("id", "integer"), Column("v", "text")), ("id",))
>>> q = "select *, v || 'x' as w from t where id > 1"
>>> resolved = resolve(parse_one(q), q, CatalogFacts({("public", "t"): t}))
>>> print("\\n".join(explain_tree(resolved.tree)))
Project "t"."id", "t"."v", "t"."v" || 'x' AS w
└─ Filter "t"."id" > 1
   └─ Scan public.t AS t [keyed by id] reads id, v
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlglot import exp

from dvm import sql
from dvm.catalog import CatalogFacts, SourceTable, View
from dvm.classes import classify, exactness, scales
from dvm.dialect import parse_one, render
from dvm.errors import InvalidQuery
from dvm.naming import identifier_name, output_name
from dvm.operators import (
    Aggregate,
    AggregateCall,
    Filter,
    InnerJoin,
    JoinKind,
    OuterJoin,
    Output,
    Project,
    Relation,
    Rows,
    Scan,
    SemiJoin,
    SetKind,
    SetOperation,
    SubqueryScan,
    TopK,
    UnionAll,
    relation_types,
)
from dvm.reason import Reason
from dvm.support import aggregate_calls, function_name, volatile_calls


class NotDifferentiable(Exception):
    """The query can be computed (FULL) but not maintained incrementally; says why."""

    def __init__(self, reasons: Sequence[Reason]) -> None:
        super().__init__("; ".join(map(str, reasons)))
        self.reasons = list(reasons)


def _refuse(construct: str, why: str) -> NotDifferentiable:
    return NotDifferentiable([Reason(construct, why)])


@dataclass(frozen=True)
class Resolved:
    tree: Relation
    notes: tuple[Reason, ...]
    """Clauses the compiler ignored and why (ORDER BY without LIMIT)."""
    columns_read: dict[int, tuple[str, ...]]
    """Source oid -> the columns read of it, in table order."""
    sources: tuple[SourceTable, ...]
    views: tuple[View, ...] = ()
    """The views the query reads (expanded), at any depth."""


def table_name(node: exp.Table) -> tuple[str | None, str]:
    """(schema or None, name) of a table reference, folded as PostgreSQL folds them."""
    schema = node.args.get("db")
    return (identifier_name(schema) if schema is not None else None), identifier_name(
        node.args["this"]
    )


def lookup_relation(node: exp.Table, catalog: CatalogFacts) -> SourceTable | View:
    if node.args.get("catalog") is not None:
        raise InvalidQuery(
            f"cross-database reference {node.sql(dialect='postgres')} is not allowed",
            hint="name tables as schema.table or table",
        )
    schema, name = table_name(node)
    found = catalog.lookup_relation(schema, name)
    if found is None:
        shown = f"{schema}.{name}" if schema is not None else name
        raise InvalidQuery(
            f'relation "{shown}" does not exist',
            detail=(
                None
                if schema is not None
                else f"searched schemas: {', '.join(catalog.search_path) or '(none)'}"
            ),
            hint="check the table name, its schema and the search_path",
        )
    return found


def resolve(statement: exp.Expr, query: str, catalog: CatalogFacts) -> Resolved:
    """The operator tree of ``statement`` (parsed from ``query``) over ``catalog``'s tables."""
    resolver = _Resolver(query, catalog)
    tree = resolver.query(statement, None, {}, top=True)
    columns_read: dict[int, set[str]] = {}
    tables: dict[int, SourceTable] = {}
    for entry in resolver.entries:
        if entry.table is not None:
            tables.setdefault(entry.table.oid, entry.table)
            read = columns_read.setdefault(entry.table.oid, set())
            read.update(entry.read, entry.table.primary_key)
    return Resolved(
        tree=tree,
        notes=tuple(dict.fromkeys(resolver.notes)),
        columns_read={
            oid: tuple(c for c in table.column_names() if c in columns_read[oid])
            for oid, table in tables.items()
        },
        sources=tuple(tables.values()),
        views=tuple(resolver.expanded.values()),
    )


# -- scopes ------------------------------------------------------------------------------


@dataclass(eq=False)
class _Entry:
    """One FROM item: a base table, or a relation under an alias."""

    alias: str
    columns: tuple[str, ...]
    types: dict[str, str | None]
    not_null: frozenset[str]
    table: SourceTable | None = None
    relation: Relation | None = None
    origin: str = "subquery"
    nullable: bool = False
    """On the nullable side of an outer join: NOT NULL columns can be NULL here."""
    read: set[str] = field(default_factory=set)

    def node(self) -> Rows:
        if self.table is not None:
            read = self.read | set(self.table.primary_key)
            columns = tuple(c for c in self.table.column_names() if c in read)
            return Scan(self.table, self.alias, columns)
        assert self.relation is not None
        return SubqueryScan(self.relation, self.alias, self.columns, self.origin)


@dataclass(eq=False)
class _Join:
    kind: str
    """``inner``, ``cross``, ``left``, ``right``, ``full``."""
    left: _From
    right: _From
    condition: exp.Expr | None


_From = _Entry | _Join


@dataclass(eq=False)
class _Cte:
    relation: Relation
    columns: tuple[str, ...]


@dataclass(eq=False)
class _Scope:
    outer: _Scope | None
    ctes: dict[str, _Cte]
    entries: list[_Entry] = field(default_factory=list)
    merged: dict[str, str] = field(default_factory=dict)
    """USING/NATURAL column name -> the alias whose column an unqualified name means."""
    outer_refs: list[exp.Column] = field(default_factory=list)
    """References to enclosing scopes' columns, collected while qualifying."""
    joins: list[tuple[str, SubqueryScan, exp.Expr | None]] = field(default_factory=list)
    """Scalar subqueries joined to the FROM: (kind, relation, condition)."""
    scalar_columns: list[exp.Column] = field(default_factory=list)
    """Values of scalar subqueries read by the select list or HAVING."""
    tree: _From | None = None

    def find(self, alias: str, schema: str | None = None) -> _Entry | None:
        for entry in self.entries:
            if entry.alias == alias and (
                schema is None or (entry.table is not None and entry.table.schema == schema)
            ):
                return entry
        return None


def _visible(node: _From) -> list[tuple[str, str]]:
    """(column, alias) in the order ``*`` lists them."""
    if isinstance(node, _Entry):
        return [(name, node.alias) for name in node.columns]
    return node_visible(node)


def node_visible(node: _Join) -> list[tuple[str, str]]:
    return _visible(node.left) + _visible(node.right)


def _entries(node: _From) -> list[_Entry]:
    if isinstance(node, _Entry):
        return [node]
    return _entries(node.left) + _entries(node.right)


class _Resolver:
    def __init__(self, query: str, catalog: CatalogFacts) -> None:
        self.text = query
        self.catalog = catalog
        self.entries: list[_Entry] = []
        self.notes: list[Reason] = []
        self.counter = 0
        self.views: list[str] = []
        self.expanded: dict[str, View] = {}
        self._merged_visible: dict[int, list[tuple[str, str]]] = {}

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"__pgt_{prefix}{self.counter}"

    # -- queries ------------------------------------------------------------------------

    def query(
        self,
        node: exp.Expr,
        outer: _Scope | None,
        ctes: dict[str, _Cte],
        *,
        top: bool = False,
    ) -> Relation:
        """A query without correlation to ``outer`` (a derived table, CTE or set operand)."""
        relation, correlation = self.correlated_query(node, outer, ctes, top=top, alias=None)
        assert not correlation
        return relation

    def correlated_query(
        self,
        node: exp.Expr,
        outer: _Scope | None,
        ctes: dict[str, _Cte],
        *,
        alias: str | None,
        top: bool = False,
        exists: bool = False,
    ) -> tuple[Relation, list[exp.Expr]]:
        """The relation of ``node`` and the conditions correlating it with ``outer``.

        Correlation conditions (conjuncts of the WHERE reading enclosing columns) refer to
        the relation under ``alias``; without an alias, correlation is refused.
        """
        if isinstance(node, exp.Subquery):
            return self.correlated_query(
                node.this, outer, ctes, alias=alias, top=top, exists=exists
            )
        ctes = self._with(node, outer, ctes)
        if isinstance(node, exp.SetOperation):
            relation = self._set_operation(node, outer, ctes)
            return self._limited(node, relation, [], top=top), []
        if not isinstance(node, exp.Select):
            raise _refuse(f"a {node.key.upper()} query", "only SELECT can be differentiated")
        return self._select(node, outer, ctes, alias=alias, top=top, exists=exists)

    def _with(self, node: exp.Expr, outer: _Scope | None, ctes: dict[str, _Cte]) -> dict[str, _Cte]:
        with_ = node.args.get("with_")
        if with_ is None:
            return ctes
        if with_.args.get("recursive"):
            raise _refuse("WITH RECURSIVE", "recursive queries are not differentiable yet")
        visible = dict(ctes)
        for cte in with_.expressions:
            alias = cte.args["alias"]
            name = identifier_name(alias.this)
            body = cte.this
            if not isinstance(body, exp.Select | exp.SetOperation | exp.Subquery):
                raise _refuse("data-modifying WITH", "a stream table's query only reads")
            relation = self.query(body, outer, visible)
            renamed = [identifier_name(c) for c in alias.args.get("columns") or []]
            columns = tuple(renamed) + relation.columns[len(renamed) :]
            visible[name] = _Cte(relation, columns)
        return visible

    def _set_operation(
        self, node: exp.SetOperation, outer: _Scope | None, ctes: dict[str, _Cte]
    ) -> Relation:
        left = self.query(node.this, outer, ctes)
        right = self.query(node.expression, outer, ctes)
        word = {exp.Union: "UNION", exp.Intersect: "INTERSECT", exp.Except: "EXCEPT"}[type(node)]
        if len(left.columns) != len(right.columns):
            raise InvalidQuery(
                f"each {word} query must have the same number of columns",
                detail=f"{len(left.columns)} columns on the left,"
                f" {len(right.columns)} on the right",
            )
        distinct = bool(node.args.get("distinct", True))
        columns = left.columns
        if isinstance(node, exp.Union):
            inputs = _union_inputs(left) + _union_inputs(right)
            union = UnionAll(inputs, columns)
            if not distinct:
                return union
            return self._distinct_of(union, "UNION")
        kind = SetKind.INTERSECT if isinstance(node, exp.Intersect) else SetKind.EXCEPT
        return SetOperation(kind, not distinct, left, right, columns)

    def _distinct_of(self, relation: Relation, origin: str) -> Aggregate:
        """DISTINCT rows of ``relation``: grouped by all its columns."""
        alias = self.fresh("q")
        scan = SubqueryScan(relation, alias, relation.columns, origin)
        keys = tuple(sql.col(alias, c) for c in relation.columns)
        return Aggregate(
            input=scan,
            group_by=keys,
            calls=(),
            having=None,
            outputs=tuple(Output(c, k) for c, k in zip(relation.columns, keys, strict=True)),
            not_null=(False,) * len(keys),
            key_types=relation_types(relation),
            distinct=True,
        )

    # -- one SELECT -----------------------------------------------------------------------

    def _select(
        self,
        select: exp.Select,
        outer: _Scope | None,
        ctes: dict[str, _Cte],
        *,
        alias: str | None,
        top: bool,
        exists: bool,
    ) -> tuple[Relation, list[exp.Expr]]:
        if select.args.get("into") is not None:
            raise InvalidQuery(
                "SELECT INTO is not a query",
                detail="SELECT INTO creates a table",
                hint="remove the INTO clause: pgtrickle creates the stream table",
            )
        if select.args.get("locks"):
            raise _refuse(
                "FOR UPDATE/SHARE", "row locking clauses have no meaning in a stream table"
            )
        from_ = select.args.get("from_")
        if from_ is None:
            raise _refuse("SELECT without FROM", "the query reads no table, nothing to maintain")
        scope = _Scope(outer, ctes)
        tree = self._from_list(from_.this, select.args.get("joins") or [], scope)
        scope.tree = tree

        # WHERE: plain conjuncts filter; subquery predicates become semi-joins
        filters: list[exp.Expr] = []
        semis: list[tuple[exp.Expr, bool]] = []
        correlation: list[exp.Expr] = []
        where = select.args.get("where")
        for conjunct in sql.conjuncts(where.this) if where is not None else []:
            if _subquery_predicate(conjunct):
                semis.append((conjunct, True))
                continue
            scope.outer_refs.clear()
            qualified = self._qualify(conjunct, scope, clause="WHERE")
            if scope.outer_refs:
                correlation.append(qualified)
            else:
                filters.append(qualified)
        scope.outer_refs.clear()

        scope.scalar_columns.clear()
        outputs = self._outputs(select, scope, exists=exists)
        group_by = self._group_by(select, outputs, scope)
        having_node = select.args.get("having")
        having = (
            self._qualify(having_node.this, scope, clause="HAVING")
            if having_node is not None
            else None
        )
        if scope.outer_refs:
            raise _refuse(
                "correlated reference outside WHERE",
                "a subquery may read enclosing columns only in its WHERE conjuncts",
            )
        scalar_in_outputs = list(scope.scalar_columns)

        calls = self._aggregate_calls(outputs, having)
        aggregating = group_by is not None or bool(calls)
        for clause, expressions in (("WHERE", filters + correlation), ("GROUP BY", group_by or ())):
            for expression in expressions:
                if aggregate_calls(expression, self.text):
                    raise InvalidQuery(
                        f"aggregate functions are not allowed in {clause}",
                        detail=f"in {render(expression)}",
                        hint="filter groups with HAVING instead",
                    )
        self._check_expressions([o.expression for o in outputs] + filters + correlation)
        if having is not None:
            self._check_expressions([having])

        # before the FROM is built: the predicates read columns of its tables
        semi_joins = [self._semi_join(conjunct, scope) for conjunct, _ in semis]
        rows: Rows = self._build(tree)
        if isinstance(rows, InnerJoin):
            # WHERE conjuncts over the FROM's tables join them: in the join's condition every
            # delta term carries them (and a grouped input can be reduced by them)
            bound = {entry.alias for entry in _entries(tree)}
            joining = [f for f in filters if _reads_only(f, bound)]
            if joining:
                filters = [f for f in filters if not any(f is j for j in joining)]
                condition = sql.and_all([c for c in (rows.condition, *joining) if c is not None])
                rows = InnerJoin(rows.inputs, condition)
        for kind, scan, condition in scope.joins:
            if kind == "inner":
                rows = InnerJoin((rows, scan), condition)
            else:
                rows = OuterJoin(JoinKind.LEFT, rows, scan, condition or exp.true())
        if filters:
            rows = Filter(rows, sql.and_all(filters) or exp.true())
        for subscan, condition, negated, written in semi_joins:
            rows = SemiJoin(rows, subscan, condition, negated, written)

        exposed: list[Output] = []
        if correlation:
            if alias is None:
                raise _refuse("correlated subquery", "only subqueries in predicates may correlate")
            correlation, exposed = self._expose(correlation, scope, alias, aggregating)

        relation: Relation
        distinct = select.args.get("distinct")
        if distinct is not None and distinct.args.get("on") is not None:
            raise _refuse("DISTINCT ON", "not differentiable yet")
        if aggregating:
            keys = list(group_by or ())
            if scalar_in_outputs:
                if group_by is None:
                    raise _refuse(
                        "scalar subquery beside aggregates without GROUP BY",
                        "not differentiable yet",
                    )
                keys.extend(scalar_in_outputs)
            if exposed:
                if group_by is not None:
                    raise _refuse("correlated subquery with GROUP BY", "not differentiable yet")
                keys.extend(output.expression for output in exposed)
            self._check_grouped(outputs, having, keys, calls)
            relation = self._aggregate(
                rows,
                tuple(keys),
                calls,
                having,
                tuple(outputs + exposed),
                scope,
                scalar=group_by is None and not exposed,
            )
            if distinct is not None:
                relation = self._distinct_of(relation, "SELECT DISTINCT")
        else:
            all_outputs = tuple(outputs + exposed)
            if distinct is not None:
                relation = self._distinct(rows, all_outputs, scope)
            else:
                relation = Project(rows, all_outputs)
        return self._limited(select, relation, outputs, top=top), correlation

    def _limited(
        self, node: exp.Expr, relation: Relation, outputs: list[Output], *, top: bool
    ) -> Relation:
        """ORDER BY … LIMIT: a TopK; ORDER BY alone: ignored (a table has no row order)."""
        order = node.args.get("order")
        limit = node.args.get("limit") or node.args.get("fetch")
        offset = node.args.get("offset")
        skipped = offset.expression if isinstance(offset, exp.Offset) else None
        if offset is not None and not (
            isinstance(skipped, exp.Literal) and not skipped.is_string and skipped.is_int
        ):
            raise _refuse("OFFSET with an expression", "only a constant OFFSET is differentiable")
        if offset is not None and limit is None:
            raise _refuse("OFFSET without LIMIT", "not differentiable yet")
        if limit is None:
            if order is not None and top:
                self.notes.append(Reason("ORDER BY", "ignored, a stream table has no row order"))
            return relation
        count = limit.expression if isinstance(limit, exp.Limit) else limit.args.get("count")
        if not (isinstance(count, exp.Literal) and not count.is_string):
            raise _refuse("LIMIT with an expression", "only a constant LIMIT is differentiable")
        if order is None:
            raise _refuse("LIMIT without ORDER BY", "which rows it keeps is not defined")
        items = tuple(self._order_item(item, relation, outputs) for item in order.expressions)
        return TopK(relation, items, int(count.this), int(skipped.this) if skipped else 0)

    def _order_item(
        self, item: exp.Ordered, relation: Relation, outputs: list[Output]
    ) -> exp.Ordered:
        """An ORDER BY item as an output column of ``relation``."""
        target = item.this
        name: str | None = None
        if isinstance(target, exp.Literal) and not target.is_string:
            position = int(target.this)
            if not 1 <= position <= len(relation.columns):
                raise InvalidQuery(f"ORDER BY position {position} is not in select list")
            name = relation.columns[position - 1]
        elif (
            isinstance(target, exp.Column)
            and target.args.get("table") is None
            and identifier_name(target.args["this"]) in relation.columns
        ):
            name = identifier_name(target.args["this"])
        else:
            written = _unquoted(target)
            for output in outputs:
                if written in (_unquoted(output.expression), _unqualified(output.expression)):
                    name = output.name
        if name is None:
            raise _refuse(
                f"ORDER BY {render(target)}",
                "TopK orders by output columns only: add it to the select list",
            )
        return exp.Ordered(
            this=exp.Column(this=sql.ident(name)),
            desc=bool(item.args.get("desc")),
            nulls_first=item.args.get("nulls_first"),
        )

    # -- FROM -----------------------------------------------------------------------------

    def _from_list(self, first: exp.Expr, joins: list[exp.Join], scope: _Scope) -> _From:
        tree = self._from_item(first, scope)
        for join in joins:
            tree = self._join(tree, join, scope)
        return tree

    def _from_item(self, node: exp.Expr, scope: _Scope) -> _From:
        if isinstance(node, exp.Subquery) and parenthesized_from(node):
            if node.args.get("alias") is not None:
                raise _refuse("an aliased join", "name the joined tables, not the join")
            inner = node.this
            joins = inner.args.get("joins") or []
            base = inner.copy()
            base.set("joins", None)
            return self._from_list(base, joins, scope)
        if isinstance(node, exp.Subquery):
            if node.args.get("lateral"):
                raise _refuse("LATERAL", "not differentiable yet")
            relation = self.query(node.this, None, scope.ctes)
            alias_node = node.args.get("alias")
            alias = self.fresh("sub") if alias_node is None else identifier_name(alias_node.this)
            return self._relation_entry(
                relation, alias, relation.columns, alias_node, scope, "subquery"
            )
        if isinstance(node, exp.Lateral):
            raise _refuse("LATERAL", "not differentiable yet")
        if not isinstance(node, exp.Table) or not isinstance(node.args.get("this"), exp.Identifier):
            raise _refuse(
                "function or VALUES in FROM", "only tables and queries are differentiable"
            )
        unsupported = sorted(
            key
            for key, value in node.args.items()
            if value and key not in ("this", "db", "catalog", "alias", "joins")
        )
        if unsupported:
            raise _refuse(
                f"FROM item option {', '.join(unsupported).upper()}",
                "only plain table references can be differentiated",
            )
        alias_node = node.args.get("alias")
        schema, name = table_name(node)
        if schema is None and name in scope.ctes:
            cte = scope.ctes[name]
            alias = identifier_name(alias_node.this) if alias_node is not None else name
            return self._relation_entry(
                cte.relation, alias, cte.columns, alias_node, scope, f"CTE {name}"
            )
        found = lookup_relation(node, self.catalog)
        alias = identifier_name(alias_node.this) if alias_node is not None else found.name
        if isinstance(found, View):
            relation = self._view(found)
            return self._relation_entry(
                relation, alias, found.columns, alias_node, scope, f"view {found.qualified_name}"
            )
        if alias_node is not None and alias_node.columns:
            # t AS a(x, y): the table's rows with its first columns renamed
            scan = Scan(found, alias, found.column_names())
            outputs = tuple(Output(c.name, sql.col(alias, c.name), c.type) for c in found.columns)
            self.entries.append(
                _Entry(
                    alias,
                    found.column_names(),
                    {},
                    frozenset(),
                    table=found,
                    read=set(found.column_names()),
                )
            )
            return self._relation_entry(
                Project(scan, outputs), alias, found.column_names(), alias_node, scope, "table"
            )
        entry = _Entry(
            alias=alias,
            columns=found.column_names(),
            types={c.name: c.type for c in found.columns},
            not_null=frozenset(c.name for c in found.columns if c.not_null),
            table=found,
        )
        return self._add(entry, scope)

    def _view(self, view: View) -> Relation:
        if view.qualified_name in self.views:
            raise InvalidQuery(f'infinite recursion detected in view "{view.name}"')
        statement = parse_one(view.definition)
        self.views.append(view.qualified_name)
        self.expanded.setdefault(view.qualified_name, view)
        saved = self.text
        self.text = view.definition
        try:
            return self.query(statement, None, {})
        finally:
            self.text = saved
            self.views.pop()

    def _relation_entry(
        self,
        relation: Relation,
        alias: str,
        columns: tuple[str, ...],
        alias_node: exp.TableAlias | None,
        scope: _Scope,
        origin: str,
    ) -> _Entry:
        if len(set(columns)) != len(columns):
            raise _refuse(
                f"{origin} with duplicate column names", "give its columns distinct names"
            )
        entry = _Entry(
            alias=alias,
            columns=columns,
            types=dict(zip(columns, relation_types(relation), strict=True)),
            not_null=frozenset(),
            relation=relation,
            origin=origin,
        )
        if alias_node is not None and alias_node.columns:
            self._rename(entry, alias_node)
        return self._add(entry, scope)

    def _rename(self, entry: _Entry, alias_node: exp.TableAlias) -> None:
        renamed = [identifier_name(c) for c in alias_node.columns]
        if len(renamed) > len(entry.columns):
            raise InvalidQuery(
                f'table "{entry.alias}" has {len(entry.columns)} columns available but'
                f" {len(renamed)} columns specified"
            )
        types = [entry.types.get(c) for c in entry.columns]
        entry.columns = tuple(renamed) + entry.columns[len(renamed) :]
        entry.types = dict(zip(entry.columns, types, strict=True))

    def _add(self, entry: _Entry, scope: _Scope) -> _Entry:
        if scope.find(entry.alias) is not None:
            raise InvalidQuery(
                f'table name "{entry.alias}" specified more than once',
                hint="give each table in FROM a distinct alias",
            )
        scope.entries.append(entry)
        self.entries.append(entry)
        return entry

    def _join(self, left: _From, join: exp.Join, scope: _Scope) -> _From:
        right = self._from_item(join.this, scope)
        side = (join.args.get("side") or "").lower()
        kind_word = (join.args.get("kind") or "").lower()
        natural = (join.args.get("method") or "").lower() == "natural"
        if kind_word in ("semi", "anti"):
            raise _refuse(f"{kind_word.upper()} JOIN", "write EXISTS or NOT EXISTS")
        using = [identifier_name(name) for name in join.args.get("using") or []]
        if natural:
            left_names = {name for name, _ in self._visible_of(left)}
            using = [name for name, _ in self._visible_of(right) if name in left_names]
        on = join.args.get("on")
        if side:
            kind = side
        elif kind_word == "cross" or (on is None and not using and not natural):
            kind = "cross"
        else:
            kind = "inner"
        if kind in ("left", "full"):
            for entry in _entries(right):
                entry.nullable = True
        if kind in ("right", "full"):
            for entry in _entries(left):
                entry.nullable = True
        node = _Join(kind, left, right, None)
        if using:
            node.condition = self._using(node, using, scope)
        elif on is not None:
            node.condition = self._qualify(on, scope, clause="JOIN conditions")
        if node.kind in ("left", "right", "full") and node.condition is None:
            node.condition = exp.true()
        return node

    def _visible_of(self, node: _From) -> list[tuple[str, str]]:
        if isinstance(node, _Join) and id(node) in self._merged_visible:
            return self._merged_visible[id(node)]
        if isinstance(node, _Join):
            return self._visible_of(node.left) + self._visible_of(node.right)
        return _visible(node)

    def _using(self, node: _Join, using: list[str], scope: _Scope) -> exp.Expr | None:
        if node.kind == "full":
            raise _refuse("FULL JOIN with USING", "write the join with ON")
        left_visible = self._visible_of(node.left)
        right_visible = self._visible_of(node.right)
        equalities: list[exp.Expr] = []
        for name in using:
            owners = [alias for column, alias in left_visible if column == name]
            right_owners = [alias for column, alias in right_visible if column == name]
            if len(owners) > 1:
                raise InvalidQuery(
                    f'common column name "{name}" appears more than once in left table',
                    hint="qualify the join with ON instead of USING",
                )
            if not owners or not right_owners:
                which = "left" if not owners else "right"
                raise InvalidQuery(
                    f'column "{name}" specified in USING clause does not exist in {which} table',
                    hint="USING names columns present in both joined tables",
                )
            left_alias = owners[0]
            right_alias = right_owners[0]
            for alias in (left_alias, right_alias):
                entry = scope.find(alias)
                if entry is not None:
                    entry.read.add(name)
            equalities.append(sql.col(left_alias, name).eq(sql.col(right_alias, name)))
            # the merged column is the left one, except the right one of a RIGHT JOIN
            scope.merged[name] = right_alias if node.kind == "right" else left_alias
        merged = [(name, scope.merged[name]) for name in using]
        rest = [(c, a) for c, a in left_visible + right_visible if c not in using]
        self._merged_visible[id(node)] = merged + rest
        return sql.and_all(equalities)

    def _build(self, node: _From) -> Rows:
        """The row operators of a FROM tree: inner and cross chains as one n-way join."""
        if isinstance(node, _Entry):
            return node.node()
        if node.kind in ("inner", "cross"):
            inputs: list[Rows] = []
            conditions: list[exp.Expr] = []
            self._flatten(node, inputs, conditions)
            return InnerJoin(tuple(inputs), sql.and_all(conditions))
        kind = JoinKind(node.kind)
        assert node.condition is not None
        return OuterJoin(kind, self._build(node.left), self._build(node.right), node.condition)

    def _flatten(self, node: _From, inputs: list[Rows], conditions: list[exp.Expr]) -> None:
        if isinstance(node, _Join) and node.kind in ("inner", "cross"):
            self._flatten(node.left, inputs, conditions)
            self._flatten(node.right, inputs, conditions)
            if node.condition is not None:
                conditions.append(node.condition)
            return
        inputs.append(self._build(node))

    # -- subqueries -----------------------------------------------------------------------

    def _semi_join(
        self, conjunct: exp.Expr, scope: _Scope
    ) -> tuple[SubqueryScan, exp.Expr, bool, str]:
        """The subquery of an [NOT] EXISTS / IN conjunct as a scan, and the condition that
        finds a row's partners in it."""
        negated = isinstance(conjunct, exp.Not)
        predicate = conjunct.this if negated else conjunct
        while isinstance(predicate, exp.Paren):
            predicate = predicate.this
        alias = self.fresh("sq")
        names: tuple[str, ...]
        if isinstance(predicate, exp.Exists):
            relation, correlation = self.correlated_query(
                predicate.this, scope, scope.ctes, alias=alias, exists=True
            )
            condition = sql.and_all(correlation) or exp.true()
            written = "NOT EXISTS" if negated else "EXISTS"
            names = relation.columns
        else:
            assert isinstance(predicate, exp.In)
            subquery = predicate.args["query"]
            relation, correlation = self.correlated_query(
                subquery.this, scope, scope.ctes, alias=alias
            )
            left = predicate.this
            lefts = left.expressions if isinstance(left, exp.Tuple) else [left]
            values = [self._qualify(value, scope, clause="IN") for value in lefts]
            width = len(relation.columns) - len(_exposed(relation))
            if width != len(values):
                raise InvalidQuery(
                    "subquery has too many columns"
                    if width > len(values)
                    else "subquery has too few columns",
                    detail=f"{len(values)} values compared with {width} columns",
                )
            # the compared outputs by position: their names may repeat (or be ?column?)
            names = tuple(f"__pgt_v{i}" for i in range(1, width + 1)) + relation.columns[width:]
            columns = [sql.col(alias, c) for c in names[:width]]
            equal: exp.Expr = (
                sql.and_all([v.eq(c) for v, c in zip(values, columns, strict=True)]) or exp.true()
            )
            if negated and not all(self._not_null(v, scope) for v in values):
                # x NOT IN (...) is not true when a comparison is unknown: such a row is a
                # partner too (NOT ((x = y) IS FALSE))
                equal = exp.Not(this=exp.Is(this=exp.paren(equal), expression=exp.false()))
            condition = sql.and_all([*correlation, equal]) or exp.true()
            written = "NOT IN" if negated else "IN"
        subscan = SubqueryScan(relation, alias, names, f"{written} subquery")
        return subscan, condition, negated, written

    def _scalar(self, node: exp.Subquery, scope: _Scope) -> exp.Expr:
        """A scalar subquery: joined to the FROM as a one-row relation, its value a column."""
        alias = self.fresh("s")
        relation, correlation = self.correlated_query(node.this, scope, scope.ctes, alias=alias)
        width = len(relation.columns) - len(_exposed(relation))
        if width != 1:
            raise InvalidQuery("subquery must return only one column")
        value_name = relation.columns[0]
        value: exp.Expr = sql.col(alias, value_name)
        scan = SubqueryScan(relation, alias, relation.columns, "scalar subquery")
        one_row = isinstance(relation, Aggregate) and relation.scalar
        if correlation:
            assert isinstance(relation, Aggregate)
            output = relation.outputs[0].expression
            if any(call.name == "count" for call in relation.calls):
                # no rows in the group is count 0, where the join finds no group: NULL
                if not isinstance(output, exp.Count):
                    raise _refuse(
                        "correlated scalar subquery over count()",
                        "only a plain count() is differentiable there",
                    )
                value = sql.coalesce_zero(value)
            scope.joins.append(("left", scan, sql.and_all(correlation)))
        else:
            scope.joins.append(("inner" if one_row else "left", scan, None))
        scope.scalar_columns.append(sql.col(alias, value_name))
        return value

    def _expose(
        self, correlation: list[exp.Expr], scope: _Scope, alias: str, aggregating: bool
    ) -> tuple[list[exp.Expr], list[Output]]:
        """Inner columns the correlation reads become outputs ``__pgt_c<n>`` of the
        subquery; the conditions read them from ``alias``. With aggregates each condition
        must equate an inner column with enclosing values: the column becomes a group key.
        """
        inner = {entry.alias for entry in scope.entries}
        exposed: dict[str, Output] = {}

        def expose(column: exp.Column) -> exp.Expr:
            key = render(column)
            if key not in exposed:
                exposed[key] = Output(f"__pgt_c{len(exposed) + 1}", column.copy())
            return sql.col(alias, exposed[key].name)

        rewritten = []
        for condition in correlation:
            if aggregating:
                sides = (
                    (condition.this, condition.expression) if isinstance(condition, exp.EQ) else ()
                )
                if not sides or not any(
                    isinstance(side, exp.Column)
                    and side.table in inner
                    and not any(c.table in inner for c in other.find_all(exp.Column))
                    for side, other in (sides, sides[::-1])
                ):
                    raise _refuse(
                        "correlated aggregate subquery",
                        f"only equality correlations are differentiable (got {render(condition)})",
                    )

            def replace(node: exp.Expr) -> exp.Expr:
                if isinstance(node, exp.Column) and node.table in inner:
                    return expose(node)
                return node

            rewritten.append(condition.copy().transform(replace, copy=False))
        return rewritten, list(exposed.values())

    # -- expressions ----------------------------------------------------------------------

    def _column(self, node: exp.Column, scope: _Scope) -> exp.Expr:
        name = identifier_name(node.args["this"])
        qualifier = node.args.get("table")
        if qualifier is not None:
            alias = identifier_name(qualifier)
            schema_node = node.args.get("db")
            schema = identifier_name(schema_node) if schema_node is not None else None
            current: _Scope | None = scope
            while current is not None:
                entry = current.find(alias, schema)
                if entry is not None:
                    if name not in entry.columns:
                        raise _unknown_column(name, [entry])
                    return self._read(entry, name, scope, current)
                current = current.outer
            raise InvalidQuery(
                f'missing FROM-clause entry for table "{alias}"',
                detail=f"column reference {node.sql(dialect='postgres')}",
                hint="qualify columns with a table name or alias listed in FROM",
            )
        current = scope
        while current is not None:
            if name in current.merged:
                entry = current.find(current.merged[name])
                assert entry is not None
                return self._read(entry, name, scope, current)
            owners = [e for e in current.entries if name in e.columns]
            if len(owners) > 1:
                raise InvalidQuery(
                    f'column reference "{name}" is ambiguous',
                    detail=f"it is a column of {', '.join(e.alias for e in owners)}",
                    hint="qualify the column with its table alias",
                )
            if owners:
                return self._read(owners[0], name, scope, current)
            if any(e.alias == name for e in current.entries):
                raise _refuse("whole-row reference", f'"{name}" stands for a whole row')
            current = current.outer
        raise _unknown_column(name, scope.entries)

    def _read(self, entry: _Entry, name: str, scope: _Scope, owner: _Scope) -> exp.Column:
        entry.read.add(name)
        column = sql.col(entry.alias, name)
        if owner is not scope:
            scope.outer_refs.append(column)
        return column

    def _qualify(self, expression: exp.Expr, scope: _Scope, *, clause: str) -> exp.Expr:
        def replace(node: exp.Expr) -> exp.Expr:
            if isinstance(node, exp.Column):
                if isinstance(node.args.get("this"), exp.Star):
                    raise _refuse("t.* inside an expression", "list the columns instead")
                return self._column(node, scope)
            if isinstance(node, exp.Subquery):
                return self._scalar(node, scope)
            if isinstance(node, exp.Exists) or (
                isinstance(node, exp.In) and node.args.get("query") is not None
            ):
                raise _refuse(
                    f"{'EXISTS' if isinstance(node, exp.Exists) else 'IN'} subquery in {clause}",
                    "only as a condition ANDed to the WHERE clause",
                )
            if isinstance(node, exp.Any | exp.All):
                raise _refuse("ANY/ALL subquery", "not differentiable yet")
            if isinstance(node, exp.Parameter | exp.Placeholder):
                raise InvalidQuery(
                    f"parameter {node.sql(dialect='postgres')} in the defining query",
                    hint="a stream table's query cannot take parameters; write the value",
                )
            return node

        return expression.copy().transform(replace, copy=False)

    def _not_null(self, expression: exp.Expr, scope: _Scope) -> bool:
        """Known never to be NULL: a NOT NULL column of a table not padded by an outer join."""
        if not isinstance(expression, exp.Column):
            return False
        current: _Scope | None = scope
        while current is not None:
            entry = current.find(expression.table)
            if entry is not None:
                return not entry.nullable and expression.name in entry.not_null
            current = current.outer
        return False

    def _type(self, expression: exp.Expr, scope: _Scope) -> str | None:
        if not isinstance(expression, exp.Column):
            return None
        current: _Scope | None = scope
        while current is not None:
            entry = current.find(expression.table)
            if entry is not None:
                return entry.types.get(expression.name)
            current = current.outer
        return None

    def _output_type(self, expression: exp.Expr, scope: _Scope) -> str | None:
        """The type of an output as far as exactness and scale go: a column's own type, an
        exact number of one scale as ``numeric(1000,s)``, floating point, or unknown."""
        if isinstance(expression, exp.Column):
            return self._type(expression, scope)
        argument = expression
        if isinstance(expression, exp.Count):
            return "bigint"
        if isinstance(expression, exp.Sum | exp.Min | exp.Max):
            argument = expression.this

        def type_of(node: exp.Expr) -> str | None:
            return self._type(node, scope)

        exact = exactness(argument, type_of)
        if exact is False:
            return "double precision"
        found = scales(argument, type_of)
        if exact and found is not None and len(found) == 1:
            return f"numeric(1000,{next(iter(found))})"
        return "numeric" if exact else None

    def _check_expressions(self, expressions: list[exp.Expr]) -> None:
        reasons = []
        for expression in expressions:
            for window in expression.find_all(exp.Window):
                name = function_name(window.this, self.text)
                reasons.append(Reason(f"window function {name}()", "not differentiable yet"))
            for call in volatile_calls(expression, self.text):
                reasons.append(
                    Reason(call, "volatile or time-dependent functions change between refreshes")
                )
        if reasons:
            raise NotDifferentiable(list(dict.fromkeys(reasons)))

    # -- outputs, GROUP BY, aggregates --------------------------------------------------------

    def _outputs(self, select: exp.Select, scope: _Scope, *, exists: bool) -> list[Output]:
        if exists:
            return []  # what EXISTS selects does not matter, only whether a row is there
        outputs: list[Output] = []
        for item in select.expressions:
            if isinstance(item, exp.Star):
                for name, alias in self._star(scope):
                    column = self._read_alias(scope, alias, name)
                    outputs.append(Output(name, column, self._type(column, scope)))
            elif isinstance(item, exp.Column) and isinstance(item.args.get("this"), exp.Star):
                alias = identifier_name(item.args["table"])
                entry = scope.find(alias)
                if entry is None:
                    raise InvalidQuery(f'missing FROM-clause entry for table "{alias}"')
                for name in entry.columns:
                    column = self._read(entry, name, scope, scope)
                    outputs.append(Output(name, column, self._type(column, scope)))
            else:
                expression = item.this if isinstance(item, exp.Alias) else item
                name = output_name(item, self.text)
                qualified = self._qualify(expression, scope, clause="SELECT")
                outputs.append(Output(name, qualified, self._output_type(qualified, scope)))
        return outputs

    def _star(self, scope: _Scope) -> list[tuple[str, str]]:
        """``*``: USING columns once, then every other column, in FROM order."""
        assert scope.tree is not None
        return self._visible_of(scope.tree)

    def _read_alias(self, scope: _Scope, alias: str, name: str) -> exp.Column:
        entry = scope.find(alias)
        assert entry is not None
        return self._read(entry, name, scope, scope)

    def _group_by(
        self, select: exp.Select, outputs: list[Output], scope: _Scope
    ) -> tuple[exp.Expr, ...] | None:
        group = select.args.get("group")
        if group is None:
            return None
        for key in ("grouping_sets", "cube", "rollup"):
            if group.args.get(key):
                raise _refuse("GROUPING SETS, ROLLUP or CUBE", "only plain GROUP BY")
        keys: list[exp.Expr] = []
        for item in group.expressions:
            if isinstance(item, exp.Rollup | exp.Cube | exp.GroupingSets):
                raise _refuse("GROUPING SETS, ROLLUP or CUBE", "only plain GROUP BY")
            keys.append(
                self._output_reference(item, outputs, scope)
                or self._qualify(item, scope, clause="GROUP BY")
            )
        return tuple(keys)

    def _output_reference(
        self, item: exp.Expr, outputs: list[Output], scope: _Scope
    ) -> exp.Expr | None:
        """An ordinal (``GROUP BY 1``) or an output alias that is not an input column."""
        if isinstance(item, exp.Literal) and not item.is_string:
            position = int(item.this)
            if not 1 <= position <= len(outputs):
                raise InvalidQuery(f"GROUP BY position {position} is not in select list")
            return outputs[position - 1].expression.copy()
        if isinstance(item, exp.Column) and item.args.get("table") is None:
            name = identifier_name(item.args["this"])
            is_input = name in scope.merged or any(name in e.columns for e in scope.entries)
            matches = [output for output in outputs if output.name == name]
            if not is_input and len(matches) == 1:
                return matches[0].expression.copy()
        return None

    def _aggregate_calls(self, outputs: list[Output], having: exp.Expr | None) -> list[exp.Expr]:
        found: list[exp.Expr] = []
        for expression in [o.expression for o in outputs] + (
            [having] if having is not None else []
        ):
            found.extend(aggregate_calls(expression, self.text))
        return found

    def _check_grouped(
        self,
        outputs: list[Output],
        having: exp.Expr | None,
        keys: list[exp.Expr],
        calls: list[exp.Expr],
    ) -> None:
        """Columns used outside aggregates and group keys (PostgreSQL allows them when the
        primary key is grouped, but the compiler does not follow functional dependencies)."""
        covered = {render(key) for key in keys} | {render(call) for call in calls}
        reasons = []

        def visit(node: exp.Expr) -> None:
            if render(node) in covered:
                return
            if isinstance(node, exp.Column):
                reasons.append(
                    Reason(
                        f"column {render(node)} outside GROUP BY",
                        "only grouped columns and aggregates can be differentiated",
                    )
                )
                return
            for child in node.iter_expressions():
                visit(child)

        for expression in [o.expression for o in outputs] + ([having] if having else []):
            visit(expression)
        if reasons:
            raise NotDifferentiable(list(dict.fromkeys(reasons)))

    def _aggregate(
        self,
        rows: Rows,
        keys: tuple[exp.Expr, ...],
        found: list[exp.Expr],
        having: exp.Expr | None,
        outputs: tuple[Output, ...],
        scope: _Scope,
        *,
        scalar: bool,
    ) -> Aggregate:
        calls: dict[str, AggregateCall] = {}
        for node in found:
            calls.setdefault(
                render(node), classify(node, self.text, lambda e: self._type(e, scope))
            )
        return Aggregate(
            input=rows,
            group_by=keys,
            calls=tuple(calls.values()),
            having=having,
            outputs=outputs,
            scalar=scalar,
            not_null=tuple(self._not_null(k, scope) for k in keys),
            key_types=tuple(self._output_type(k, scope) for k in keys),
            input_types=self._column_types(
                [*keys, *(o.expression for o in outputs), having], scope
            ),
        )

    def _distinct(self, rows: Rows, outputs: tuple[Output, ...], scope: _Scope) -> Aggregate:
        keys = tuple(output.expression for output in outputs)
        return Aggregate(
            input=rows,
            group_by=keys,
            calls=(),
            having=None,
            outputs=outputs,
            not_null=tuple(self._not_null(k, scope) for k in keys),
            key_types=tuple(self._output_type(k, scope) for k in keys),
            distinct=True,
            input_types=self._column_types(keys, scope),
        )

    def _column_types(
        self, expressions: Sequence[exp.Expr | None], scope: _Scope
    ) -> tuple[tuple[str, str, str | None], ...]:
        found: dict[tuple[str, str], str | None] = {}
        for expression in expressions:
            for column in expression.find_all(exp.Column) if expression is not None else ():
                found.setdefault((column.table, column.name), self._type(column, scope))
        return tuple((table, name, type_) for (table, name), type_ in found.items())


def _reads_only(expression: exp.Expr, aliases: set[str]) -> bool:
    """Whether ``expression`` reads columns of ``aliases`` only, and no subquery."""
    if expression.find(exp.Subquery, exp.Exists) is not None:
        return False
    return all(column.table in aliases for column in expression.find_all(exp.Column))


def parenthesized_from(node: exp.Subquery) -> bool:
    """``(a JOIN b ...)`` or ``((SELECT ...) AS d JOIN b ...)``: FROM items in parentheses,
    not a derived table (sqlglot parses both as a Subquery)."""
    inner = node.this
    if not isinstance(inner, exp.Query):
        return True
    return isinstance(inner, exp.Subquery) and bool(
        inner.args.get("joins") or inner.args.get("alias")
    )


def _union_inputs(relation: Relation) -> tuple[Relation, ...]:
    """UNION ALL of UNION ALLs is one n-ary UNION ALL."""
    return relation.inputs if isinstance(relation, UnionAll) else (relation,)


def _exposed(relation: Relation) -> list[str]:
    return [c for c in relation.columns if c.startswith("__pgt_c")]


def _subquery_predicate(conjunct: exp.Expr) -> bool:
    """EXISTS, NOT EXISTS, IN (subquery) or NOT IN (subquery)."""
    node = conjunct.this if isinstance(conjunct, exp.Not) else conjunct
    while isinstance(node, exp.Paren):
        node = node.this
    return isinstance(node, exp.Exists) or (
        isinstance(node, exp.In) and node.args.get("query") is not None
    )


def _unquoted(expression: exp.Expr) -> str:
    """An expression's text with every identifier folded as PostgreSQL folds it."""

    def fold(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Identifier):
            return exp.to_identifier(identifier_name(node), quoted=False)
        return node

    return render(expression.copy().transform(fold, copy=False))


def _unqualified(expression: exp.Expr) -> str:
    def strip(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column):
            return exp.column(node.name)
        return node

    return render(expression.copy().transform(strip, copy=False))


_RESERVED_PREFIX = "__pgt_"


def check_output_names(names: Sequence[str]) -> None:
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


def _unknown_column(name: str, entries: Sequence[_Entry]) -> InvalidQuery:
    if len(entries) == 1 and entries[0].table is not None:
        table = entries[0].table
        return InvalidQuery(
            f'column "{name}" does not exist in table {table.qualified_name}',
            detail=f"{table.qualified_name} has columns: {', '.join(table.column_names())}",
            hint="check the column name (unquoted names are folded to lower case)",
        )
    if len(entries) == 1:
        return InvalidQuery(
            f"column {entries[0].alias}.{name} does not exist",
            detail=f"{entries[0].alias} has columns: {', '.join(entries[0].columns)}",
            hint="check the column name (unquoted names are folded to lower case)",
        )
    names = ", ".join(
        f"{e.table.qualified_name} AS {e.alias}" if e.table is not None else e.alias
        for e in entries
    )
    return InvalidQuery(
        f'column "{name}" does not exist in any of {names}',
        hint="check the column name (unquoted names are folded to lower case)",
    )
