"""Z-sets as SQL: unions of weighted SELECT terms over base tables and staged deltas.

A term is one SELECT over FROM items that keep the query's own table aliases, so user
expressions apply to it verbatim whether an alias stands for a base table (its state at the
refresh snapshot) or for the staged delta of that table. A term's weight is its sign times the
product of its delta items' ``__pgt_w``.

>>> from dvm import sql
>>> from dvm.dialect import render_pretty
>>> delta = Source("o", sql.table("pg_temp", "__pgt_delta_1"), delta=True)
>>> term = Term((delta,), (), 1, sql.row_hash([sql.col("o", "id")]))
>>> print(render_pretty(term.select([("v", sql.col("o", "v"))], weighted=True)))
SELECT
  HASHTEXTEXTENDED(CAST(ROW("o"."id") AS TEXT), 0) AS "__pgt_row_id",
  "o"."__pgt_w" AS "__pgt_w",
  "o"."v" AS "v"
FROM "pg_temp"."__pgt_delta_1" AS "o"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlglot import exp

from dvm import sql

ROW_ID = "__pgt_row_id"
WEIGHT = "__pgt_w"


@dataclass(frozen=True)
class Source:
    """One FROM item of a term: a base table or a staged delta, under the query's alias."""

    alias: str
    relation: exp.Table
    delta: bool


@dataclass(frozen=True)
class Term:
    sources: tuple[Source, ...]
    conditions: tuple[exp.Expr, ...]
    sign: int
    row_id: exp.Expr | None
    """The identity of the term's rows; None when an input has no key (bag semantics)."""

    def weight(self) -> exp.Expr:
        factors: list[exp.Expr] = [
            sql.col(source.alias, WEIGHT) for source in self.sources if source.delta
        ]
        if not factors:
            return sql.lit(self.sign)
        product = factors[0]
        for factor in factors[1:]:
            product = exp.Mul(this=product, expression=factor)
        return exp.Neg(this=exp.paren(product)) if self.sign < 0 else product

    def where(self, condition: exp.Expr) -> Term:
        return Term(self.sources, (*self.conditions, condition), self.sign, self.row_id)

    def select(
        self,
        outputs: Sequence[tuple[str, exp.Expr]],
        *,
        weighted: bool,
        identified: bool = True,
    ) -> exp.Select:
        """``SELECT [row id,] [weight,] outputs FROM sources WHERE conditions``."""
        columns: list[exp.Expr] = []
        if identified and self.row_id is not None:
            columns.append(sql.alias(self.row_id.copy(), ROW_ID))
        if weighted:
            columns.append(sql.alias(self.weight(), WEIGHT))
        columns.extend(sql.alias(expression.copy(), name) for name, expression in outputs)
        return self.from_where(exp.select(*columns))

    def from_where(self, select: exp.Select) -> exp.Select:
        """``select`` with this term's FROM items and conditions added."""
        first, *rest = self.sources
        select = select.from_(_aliased(first), copy=False)
        for source in rest:
            select = select.join(_aliased(source), copy=False)
        condition = sql.and_all(self.conditions)
        return select.where(condition, copy=False) if condition is not None else select


def _aliased(source: Source) -> exp.Table:
    table = source.relation.copy()
    table.set("alias", exp.TableAlias(this=sql.ident(source.alias)))
    return table


@dataclass(frozen=True)
class ZSet:
    terms: tuple[Term, ...]

    @property
    def keyed(self) -> bool:
        return all(term.row_id is not None for term in self.terms)

    def where(self, condition: exp.Expr) -> ZSet:
        return ZSet(tuple(term.where(condition) for term in self.terms))

    def negate(self) -> ZSet:
        return ZSet(tuple(Term(t.sources, t.conditions, -t.sign, t.row_id) for t in self.terms))

    def union(self, other: ZSet) -> ZSet:
        return ZSet(self.terms + other.terms)

    def select(
        self,
        outputs: Sequence[tuple[str, exp.Expr]],
        *,
        weighted: bool,
        identified: bool = True,
    ) -> exp.Query:
        """All terms' SELECTs combined with UNION ALL."""
        selects = [
            term.select(outputs, weighted=weighted, identified=identified) for term in self.terms
        ]
        query: exp.Query = selects[0]
        for select in selects[1:]:
            query = exp.union(query, select, distinct=False, copy=False)
        return query


@dataclass(frozen=True)
class Derived:
    """What a rule knows about an operator: its rows at the snapshot, and their change."""

    new: ZSet
    delta: ZSet
