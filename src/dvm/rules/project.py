"""Project: linear, the output expressions apply to both states and to every delta term."""

from __future__ import annotations

from sqlglot import exp

from dvm import sql
from dvm.operators import Output, Project
from dvm.rules import Derived, rows, rule
from dvm.zset import Context, DerivedRelation, Term, live, union_all


def outputs_of(outputs: tuple[Output, ...]) -> list[exp.Expr]:
    return [sql.alias(output.expression.copy(), output.name) for output in outputs]


@rule(Project)
def project(node: Project, inputs: tuple[Derived], context: Context) -> DerivedRelation:
    (derived,) = inputs
    input = rows(derived)
    columns = outputs_of(node.outputs)

    def state(term: Term) -> exp.Query:
        return term.select(columns, weighted=False)

    delta = union_all([term.select(columns, weighted=True) for term in live(input.delta)])
    return DerivedRelation(
        columns=node.columns,
        new=state(input.new),
        old=state(input.old),
        delta=context.cte(delta),
    )
