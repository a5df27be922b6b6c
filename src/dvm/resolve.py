"""Name resolution for a single-level SELECT over base tables.

Finds every table in the catalog, qualifies every column with its table's alias, expands
``*`` and ``t.*``, turns USING and NATURAL into conditions, and names the outputs as
PostgreSQL would. Unknown tables and columns are :class:`InvalidQuery` errors.

>>> from dvm.catalog import CatalogFacts, Column, SourceTable
>>> from dvm.dialect import parse_one, render
>>> t = SourceTable(1, "public", "t", (Column("id", "integer"), Column("v", "text")), ("id",))
>>> q = "select *, v || 'x' as w from t where id > 1"
>>> r = resolve_select(parse_one(q), q, CatalogFacts({("public", "t"): t}))
>>> [(o.name, render(o.expression)) for o in r.outputs]
[('id', '"t"."id"'), ('v', '"t"."v"'), ('w', '"t"."v" || \\'x\\'')]
>>> render(r.where)
'"t"."id" > 1'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlglot import exp

from dvm import sql
from dvm.catalog import CatalogFacts, SourceTable
from dvm.errors import InvalidQuery
from dvm.naming import identifier_name, output_name
from dvm.operators import Output


class NotResolvable(Exception):
    """The query's shape is beyond what the resolver understands (it says which construct)."""

    def __init__(self, construct: str, why: str) -> None:
        super().__init__(f"{construct}: {why}")
        self.construct = construct
        self.why = why


@dataclass(frozen=True)
class Relation:
    alias: str
    table: SourceTable


@dataclass(frozen=True)
class JoinStep:
    """How ``relations[i + 1]`` joins what comes before it."""

    kind: str
    """``inner``, ``cross`` (also a comma), ``left``, ``right``, ``full``."""
    condition: exp.Expr | None


@dataclass(frozen=True)
class ResolvedSelect:
    relations: tuple[Relation, ...]
    joins: tuple[JoinStep, ...]
    outputs: tuple[Output, ...]
    where: exp.Expr | None
    group_by: tuple[exp.Expr, ...] | None
    """None without GROUP BY; ordinals and output aliases already replaced by expressions."""
    having: exp.Expr | None
    columns_read: Mapping[str, tuple[str, ...]]
    """Alias -> the columns the query reads of it, in table order."""
    distinct: str | None = None
    """``DISTINCT`` or ``DISTINCT ON`` when the query has it."""
    limited: bool = False
    """LIMIT, OFFSET or FETCH."""
    ordered: bool = False

    def relation(self, alias: str) -> Relation:
        for relation in self.relations:
            if relation.alias == alias:
                return relation
        raise KeyError(alias)

    def column_type(self, column: exp.Column) -> str | None:
        """The catalog type of a qualified column."""
        found = self.relation(column.table).table.column(column.name)
        return found.type if found is not None else None


def table_name(node: exp.Table) -> tuple[str | None, str]:
    """(schema or None, name) of a table reference, folded as PostgreSQL folds them."""
    schema = node.args.get("db")
    return (identifier_name(schema) if schema is not None else None), identifier_name(
        node.args["this"]
    )


def lookup_table(node: exp.Table, catalog: CatalogFacts) -> SourceTable:
    if node.args.get("catalog") is not None:
        raise InvalidQuery(
            f"cross-database reference {node.sql(dialect='postgres')} is not allowed",
            hint="name tables as schema.table or table",
        )
    schema, name = table_name(node)
    found = catalog.lookup(schema, name)
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


def resolve_select(select: exp.Select, query: str, catalog: CatalogFacts) -> ResolvedSelect:
    """Resolve ``select`` (one level: FROM items are tables) against ``catalog``."""
    return _Resolver(select, query, catalog).resolve()


class _Resolver:
    def __init__(self, select: exp.Select, query: str, catalog: CatalogFacts) -> None:
        self.select = select
        self.query = query
        self.catalog = catalog
        self.relations: list[Relation] = []
        self.joins: list[JoinStep] = []
        self.merged: dict[str, str] = {}
        """USING/NATURAL column name -> the alias whose column an unqualified name means."""
        self.visible: list[tuple[str, str]] = []
        """(column, alias) in the order ``*`` lists them."""
        self.read: dict[str, set[str]] = {}

    def resolve(self) -> ResolvedSelect:
        from_ = self.select.args.get("from_")
        if from_ is None:
            raise NotResolvable("SELECT without FROM", "the query reads no table")
        self._add_first(from_.this)
        for join in self.select.args.get("joins") or []:
            self._add_join(join)
        outputs = self._outputs()
        where = self._qualify_optional(self.select.args.get("where"))
        group_by = self._group_by(outputs)
        having = self._qualify_optional(self.select.args.get("having"))
        for ordered in (self.select.args.get("order") or exp.Order()).expressions:
            self._check_order_item(ordered.this, outputs)
        for relation in self.relations:
            for key in relation.table.primary_key:
                self.read.setdefault(relation.alias, set()).add(key)
        columns_read = {
            relation.alias: tuple(
                name
                for name in relation.table.column_names()
                if name in self.read.get(relation.alias, set())
            )
            for relation in self.relations
        }
        return ResolvedSelect(
            relations=tuple(self.relations),
            joins=tuple(self.joins),
            outputs=tuple(outputs),
            where=where,
            group_by=group_by,
            having=having,
            columns_read=columns_read,
            distinct=self._distinct(),
            limited=any(self.select.args.get(key) for key in ("limit", "offset", "fetch")),
            ordered=self.select.args.get("order") is not None,
        )

    def _distinct(self) -> str | None:
        distinct = self.select.args.get("distinct")
        if distinct is None:
            return None
        return "DISTINCT ON" if distinct.args.get("on") is not None else "DISTINCT"

    # FROM

    def _relation(self, node: exp.Expr) -> Relation:
        if not isinstance(node, exp.Table) or not isinstance(node.args.get("this"), exp.Identifier):
            kind = "subquery" if isinstance(node, exp.Subquery) else "function or VALUES"
            raise NotResolvable(f"{kind} in FROM", "only base tables can be differentiated")
        unsupported = sorted(
            key
            for key, value in node.args.items()
            if value and key not in ("this", "db", "catalog", "alias")
        )
        if unsupported:
            raise NotResolvable(
                f"FROM item option {', '.join(unsupported).upper()}",
                "only plain table references can be differentiated",
            )
        table = lookup_table(node, self.catalog)
        alias_node = node.args.get("alias")
        if alias_node is not None and alias_node.columns:
            raise NotResolvable(
                "column aliases in FROM", "write the aliases in the select list instead"
            )
        alias = identifier_name(alias_node.this) if alias_node is not None else table.name
        if any(existing.alias == alias for existing in self.relations):
            raise InvalidQuery(
                f'table name "{alias}" specified more than once',
                hint="give each table in FROM a distinct alias",
            )
        relation = Relation(alias, table)
        self.relations.append(relation)
        return relation

    def _add_first(self, node: exp.Expr) -> None:
        relation = self._relation(node)
        self.visible = [(name, relation.alias) for name in relation.table.column_names()]

    def _add_join(self, join: exp.Join) -> None:
        if join.args.get("joins"):
            raise NotResolvable("parenthesized joins", "write the joins without parentheses")
        relation = self._relation(join.this)
        side = (join.args.get("side") or "").lower()
        kind_word = (join.args.get("kind") or "").lower()
        if side:
            kind = side
        elif kind_word in ("semi", "anti"):
            kind = kind_word
        elif kind_word == "cross" or (
            join.args.get("on") is None
            and not join.args.get("using")
            and (join.args.get("method") or "").lower() != "natural"
        ):
            kind = "cross"
        else:
            kind = "inner"
        using = [identifier_name(name) for name in join.args.get("using") or []]
        if (join.args.get("method") or "").lower() == "natural":
            left_names = {name for name, _ in self.visible}
            using = [name for name in relation.table.column_names() if name in left_names]
        condition: exp.Expr | None
        if using:
            condition = self._using(relation, using)
        else:
            self.visible += [(name, relation.alias) for name in relation.table.column_names()]
            on = join.args.get("on")
            condition = self._qualify(on) if on is not None else None
        self.joins.append(JoinStep(kind, condition))

    def _using(self, relation: Relation, using: list[str]) -> exp.Expr | None:
        equalities: list[exp.Expr] = []
        for name in using:
            owners = [alias for column, alias in self.visible if column == name]
            if len(owners) > 1:
                raise InvalidQuery(
                    f'common column name "{name}" appears more than once in left table',
                    hint="qualify the join with ON instead of USING",
                )
            if not owners or relation.table.column(name) is None:
                side = "left" if not owners else "right"
                raise InvalidQuery(
                    f'column "{name}" specified in USING clause does not exist in {side} table',
                    hint="USING names columns present in both joined tables",
                )
            left_alias = self.merged.get(name, owners[0])
            self._note_read(left_alias, name)
            self._note_read(relation.alias, name)
            equalities.append(sql.col(left_alias, name).eq(sql.col(relation.alias, name)))
            self.merged[name] = left_alias
        merged_first = [(name, self.merged[name]) for name in using]
        rest_left = [(c, a) for c, a in self.visible if c not in using]
        rest_right = [(c, relation.alias) for c in relation.table.column_names() if c not in using]
        self.visible = merged_first + rest_left + rest_right
        return sql.and_all(equalities)

    # columns

    def _note_read(self, alias: str, name: str) -> None:
        self.read.setdefault(alias, set()).add(name)

    def _column(self, node: exp.Column) -> exp.Expr:
        name = identifier_name(node.args["this"])
        qualifier = node.args.get("table")
        if qualifier is not None:
            alias = identifier_name(qualifier)
            schema = node.args.get("db")
            relation = self._find_alias(alias, identifier_name(schema) if schema else None)
            if relation is None:
                raise InvalidQuery(
                    f'missing FROM-clause entry for table "{alias}"',
                    detail=f"column reference {node.sql(dialect='postgres')}",
                    hint="qualify columns with a table name or alias listed in FROM",
                )
            if relation.table.column(name) is None:
                raise _unknown_column(name, [relation])
            self._note_read(relation.alias, name)
            return sql.col(relation.alias, name)
        if name in self.merged:
            self._note_read(self.merged[name], name)
            return sql.col(self.merged[name], name)
        owners = [r for r in self.relations if r.table.column(name) is not None]
        if len(owners) > 1:
            raise InvalidQuery(
                f'column reference "{name}" is ambiguous',
                detail=f"it is a column of {', '.join(r.alias for r in owners)}",
                hint="qualify the column with its table alias",
            )
        if not owners:
            if any(r.alias == name for r in self.relations):
                raise NotResolvable("whole-row reference", f'"{name}" stands for a whole row')
            raise _unknown_column(name, self.relations)
        self._note_read(owners[0].alias, name)
        return sql.col(owners[0].alias, name)

    def _find_alias(self, alias: str, schema: str | None) -> Relation | None:
        for relation in self.relations:
            if relation.alias == alias and schema in (None, relation.table.schema):
                return relation
        return None

    def _qualify(self, expression: exp.Expr) -> exp.Expr:
        def replace(node: exp.Expr) -> exp.Expr:
            if isinstance(node, exp.Column):
                if isinstance(node.args.get("this"), exp.Star):
                    raise NotResolvable("t.* inside an expression", "list the columns instead")
                return self._column(node)
            if isinstance(node, exp.Parameter | exp.Placeholder):
                raise InvalidQuery(
                    f"parameter {node.sql(dialect='postgres')} in the defining query",
                    hint="a stream table's query cannot take parameters; write the value",
                )
            return node

        return expression.copy().transform(replace, copy=False)

    def _qualify_optional(self, clause: exp.Expr | None) -> exp.Expr | None:
        return self._qualify(clause.this) if clause is not None else None

    # outputs, GROUP BY, ORDER BY

    def _outputs(self) -> list[Output]:
        outputs: list[Output] = []
        for item in self.select.expressions:
            if isinstance(item, exp.Star):
                for name, alias in self.visible:
                    self._note_read(alias, name)
                    outputs.append(Output(name, sql.col(alias, name)))
            elif isinstance(item, exp.Column) and isinstance(item.args.get("this"), exp.Star):
                alias = identifier_name(item.args["table"])
                relation = self._find_alias(alias, None)
                if relation is None:
                    raise InvalidQuery(f'missing FROM-clause entry for table "{alias}"')
                for name in relation.table.column_names():
                    self._note_read(relation.alias, name)
                    outputs.append(Output(name, sql.col(relation.alias, name)))
            else:
                expression = item.this if isinstance(item, exp.Alias) else item
                outputs.append(Output(output_name(item, self.query), self._qualify(expression)))
        return outputs

    def _group_by(self, outputs: list[Output]) -> tuple[exp.Expr, ...] | None:
        group = self.select.args.get("group")
        if group is None:
            return None
        keys: list[exp.Expr] = []
        for item in group.expressions:
            if isinstance(item, exp.Rollup | exp.Cube | exp.GroupingSets):
                raise NotResolvable("GROUPING SETS, ROLLUP or CUBE", "only plain GROUP BY")
            keys.append(self._output_reference(item, outputs) or self._qualify(item))
        for key in ("grouping_sets", "cube", "rollup"):
            if group.args.get(key):
                raise NotResolvable("GROUPING SETS, ROLLUP or CUBE", "only plain GROUP BY")
        return tuple(keys)

    def _output_reference(self, item: exp.Expr, outputs: list[Output]) -> exp.Expr | None:
        """An ordinal (``GROUP BY 1``) or an output alias that is not an input column."""
        if isinstance(item, exp.Literal) and not item.is_string:
            position = int(item.this)
            if not 1 <= position <= len(outputs):
                raise InvalidQuery(f"position {position} is not in select list")
            return outputs[position - 1].expression.copy()
        if isinstance(item, exp.Column) and item.args.get("table") is None:
            name = identifier_name(item.args["this"])
            is_input = name in self.merged or any(
                r.table.column(name) is not None for r in self.relations
            )
            matches = [output for output in outputs if output.name == name]
            if not is_input and len(matches) == 1:
                return matches[0].expression.copy()
        return None

    def _check_order_item(self, item: exp.Expr, outputs: list[Output]) -> None:
        if self._output_reference(item, outputs) is None:
            self._qualify(item)


def _unknown_column(name: str, relations: list[Relation]) -> InvalidQuery:
    if len(relations) == 1:
        table = relations[0].table
        return InvalidQuery(
            f'column "{name}" does not exist in table {table.qualified_name}',
            detail=f"{table.qualified_name} has columns: {', '.join(table.column_names())}",
            hint="check the column name (unquoted names are folded to lower case)",
        )
    tables = ", ".join(f"{r.table.qualified_name} AS {r.alias}" for r in relations)
    return InvalidQuery(
        f'column "{name}" does not exist in any of the tables {tables}',
        hint="check the column name (unquoted names are folded to lower case)",
    )
