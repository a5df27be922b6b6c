"""docs/SQL_SUPPORT.md, generated from the test cases so that it cannot drift.

Every construct row names the execute-mode shape (tests/dvm/test_execute.py) that maintains it
over random changes on both servers; what the compiler says about each query (differentiable
or not, aggregate classes, the reason it refuses) is compiled afresh, not written by hand.
``python -m tests.dvm.support_matrix`` rewrites the document; ``test_sql_support`` checks it.
"""

from __future__ import annotations

from pathlib import Path

import sqlglot
from sqlglot import exp

from dvm.catalog import CatalogFacts, Column, SourceTable
from dvm.compile import compile_query
from dvm.naming import identifier_name
from tests.dvm.harness import SPECS
from tests.dvm.test_compile import REFUSED
from tests.dvm.test_execute import SHAPES

DOCUMENT = Path(__file__).parents[2] / "docs" / "SQL_SUPPORT.md"

# (section, construct, execute-mode shape that proves it)
CONSTRUCTS: list[tuple[str, str, str]] = [
    (
        "Scans and expressions",
        "projection, expressions, WHERE (keyed source)",
        "filter_project_keyed",
    ),
    ("Scans and expressions", "SELECT * (json columns included)", "star_keyed_json"),
    (
        "Scans and expressions",
        "a source without primary key (bag of rows)",
        "filter_project_keyless",
    ),
    ("Scans and expressions", "literals, operators, casts, date_part", "filter_project_keyed"),
    ("Scans and expressions", "quoted identifiers and odd names", "quoted_names_filter"),
    (
        "Scans and expressions",
        "ORDER BY without LIMIT (ignored: a table has no order)",
        "order_by_ignored",
    ),
    ("Joins", "inner join, ON with expressions", "join_keyed"),
    ("Joins", "column aliases on a table: t AS a(x, y)", "table_column_aliases"),
    ("Joins", "comma join with the condition in WHERE", "join_comma"),
    ("Joins", "join of keyed and keyless sources, *", "join_star_keyed_keyless"),
    ("Joins", "join of keyless sources", "join_keyless"),
    ("Joins", "self-join with a non-equi condition", "self_join"),
    ("Joins", "three or more tables (one n-way join, n delta terms)", "join_three"),
    ("Joins", "LEFT JOIN", "join_left"),
    ("Joins", "RIGHT JOIN", "join_right_keyless"),
    ("Joins", "FULL JOIN with a non-equi condition", "join_full_non_equi"),
    ("Joins", "parenthesized join trees", "join_nested_parenthesized"),
    ("Joins", "LEFT JOIN followed by inner joins", "join_left_then_inner"),
    ("Joins", "NATURAL JOIN and USING", "join_using_natural"),
    ("Subqueries", "derived tables", "derived_table"),
    (
        "Subqueries",
        "derived table with column aliases over an aggregate",
        "derived_aggregate_grouped_again",
    ),
    ("Subqueries", "non-recursive CTE, read twice", "cte_used_twice"),
    ("Subqueries", "EXISTS (correlated)", "exists"),
    ("Subqueries", "NOT EXISTS (correlated)", "not_exists"),
    ("Subqueries", "IN (subquery)", "in_subquery"),
    ("Subqueries", "NOT IN (subquery) with SQL's NULL semantics", "not_in_with_nulls"),
    ("Subqueries", "IN (subquery with GROUP BY … HAVING)", "in_grouped_having"),
    ("Subqueries", "scalar subquery, uncorrelated, in WHERE", "scalar_uncorrelated"),
    ("Subqueries", "scalar subquery, correlated by equality, in WHERE", "scalar_correlated"),
    ("Subqueries", "correlated count() in SELECT (0 for no rows)", "scalar_correlated_count"),
    ("Subqueries", "scalar subquery in SELECT", "scalar_in_select"),
    ("Subqueries", "scalar subquery in HAVING", "having_scalar_subquery"),
    (
        "Aggregates",
        "GROUP BY with count, sum, avg (kept with auxiliary columns)",
        "group_count_sum_avg",
    ),
    ("Aggregates", "GROUP BY over a keyless source", "group_keyless"),
    (
        "Aggregates",
        "sum and avg of a numeric of any scale (a count per scale kept)",
        "group_sum_of_any_scale",
    ),
    ("Aggregates", "GROUP BY an expression or an ordinal", "group_expression"),
    ("Aggregates", "aggregate over a join", "join_aggregate"),
    ("Aggregates", "aggregate over a join of keyless sources (USING)", "join_aggregate_keyless"),
    ("Aggregates", "aggregate of quoted names", "quoted_names_aggregate"),
    ("Aggregates", "HAVING over a join of keyless sources", "having_join_keyless"),
    (
        "Aggregates",
        "aggregate without GROUP BY over a filtered keyless source",
        "scalar_keyless_filtered",
    ),
    ("Aggregates", "floating point sum without GROUP BY", "float_scalar_rescan"),
    ("Aggregates", "aggregate over a LEFT JOIN", "join_left_aggregate"),
    ("Aggregates", "HAVING (affected groups recomputed)", "having_rescan"),
    ("Aggregates", "aggregate without GROUP BY (one row)", "scalar"),
    ("Aggregates", "aggregate without GROUP BY, with HAVING", "scalar_having"),
    ("Aggregates", "floating point sums (affected groups recomputed)", "float_sum_rescan"),
    ("Aggregates", "GROUP BY without aggregates", "group_without_aggregates"),
    ("Aggregates", "min and max", "min_max"),
    ("Aggregates", "count(DISTINCT …) and FILTER (WHERE …)", "distinct_and_filter_aggregates"),
    ("Aggregates", "bool_and, bool_or, every (with FILTER)", "bool_aggregates"),
    (
        "Aggregates",
        "bool_and, bool_or, every, string_agg, array_agg, json_agg, stddev, variance",
        "rescanned_aggregates",
    ),
    ("Aggregates", "sum(CASE … THEN price ELSE 0 END): values of several scales", "case_in_sum"),
    ("Aggregates", "group keys equal by value (numeric 1.0 and 1.00)", "numeric_keys_by_value"),
    ("DISTINCT and set operations", "SELECT DISTINCT", "distinct"),
    ("DISTINCT and set operations", "SELECT DISTINCT over a keyless source", "distinct_keyless"),
    ("DISTINCT and set operations", "UNION", "union"),
    ("DISTINCT and set operations", "UNION ALL", "union_all"),
    ("DISTINCT and set operations", "INTERSECT", "intersect"),
    ("DISTINCT and set operations", "INTERSECT ALL", "intersect_all"),
    ("DISTINCT and set operations", "EXCEPT", "except"),
    ("DISTINCT and set operations", "EXCEPT ALL", "except_all"),
    ("TopK", "ORDER BY … LIMIT k (validated at each refresh, else recomputed)", "top_k"),
    (
        "TopK",
        "ORDER BY … LIMIT k over an aggregate (every group kept: never recomputed)",
        "top_k_aggregate",
    ),
    ("TopK", "… over a sum of a numeric of any scale", "top_sum_of_any_scale"),
    ("TopK", "ORDER BY … LIMIT k OFFSET m (validated likewise)", "top_k_offset"),
    (
        "TopK",
        "ORDER BY … OFFSET m ROWS FETCH FIRST k ROWS ONLY over an aggregate",
        "top_k_aggregate_offset",
    ),
    (
        "TopK",
        "ORDER BY … LIMIT k OFFSET m in a subquery (recomputed)",
        "top_k_offset_in_a_subquery",
    ),
]

# One call per aggregate the issue lists, over the test tables (orders: qty integer, amount
# numeric(12,2), note text; events: w double precision).
AGGREGATES = [
    "count(*)",
    "count(amount)",
    "sum(qty)",
    "sum(amount)",
    "sum(CASE WHEN qty > 2 THEN amount ELSE 0 END)",
    "avg(amount)",
    "count(*) FILTER (WHERE qty > 2)",
    "sum(amount) FILTER (WHERE qty > 2)",
    "min(qty)",
    "max(note)",
    "count(DISTINCT qty)",
    "bool_and(qty > 2)",
    "bool_or(qty > 2)",
    "every(qty > 2)",
    "string_agg(note, ',' ORDER BY id)",
    "array_agg(qty ORDER BY id)",
    "json_agg(qty ORDER BY id)",
    "jsonb_agg(qty ORDER BY id)",
    "stddev(qty)",
    "variance(qty)",
    "sum(w)",
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY qty)",
]


def catalog() -> CatalogFacts:
    """The execute-mode tables (tests/dvm/harness.py) as the service would describe them."""
    tables: dict[tuple[str, str], SourceTable] = {}
    for oid, spec in enumerate(SPECS.values(), start=100):
        create = sqlglot.parse_one(spec.ddl, dialect="postgres")
        assert isinstance(create, exp.Create)
        schema = create.this
        columns = []
        key: list[str] = []
        for definition in schema.expressions:
            name = identifier_name(definition.this)
            constraints = [c.kind for c in definition.args.get("constraints") or []]
            primary = any(isinstance(c, exp.PrimaryKeyColumnConstraint) for c in constraints)
            not_null = primary or any(
                isinstance(c, exp.NotNullColumnConstraint) for c in constraints
            )
            columns.append(
                Column(name, definition.args["kind"].sql(dialect="postgres").lower(), not_null)
            )
            if primary:
                key.append(name)
        table = SourceTable(oid, "public", spec.name, tuple(columns), tuple(key))
        tables[("public", spec.name)] = table
    return CatalogFacts(tables)


def render() -> str:
    facts = catalog()
    lines = [
        "# SQL support",
        "",
        "Generated by `python -m tests.dvm.support_matrix` from the test cases; a test fails",
        "when this file and the compiler disagree. **full**: the stream table is recomputed by",
        "its query at each refresh (any query PostgreSQL runs). **differential**: the refresh",
        "applies only what the changes since the last refresh imply. **immediate** (maintained in",
        "the writing transaction) is not built yet: it is the scheduler issue's work.",
        "",
        "Every construct marked differential is maintained, in the test named beside it, over",
        "rounds of random inserts, updates and deletes on PostgreSQL 15 and 18, and compared",
        "with its query after each refresh (tests/dvm/test_execute.py). The 22 TPC-H queries",
        "are all differential (tests/e2e/test_tpch.py).",
        "",
    ]
    section = None
    for name, construct, shape in CONSTRUCTS:
        if name != section:
            section = name
            lines += [
                f"## {name}",
                "",
                "| construct | full | differential | immediate | test |",
                "| --- | --- | --- | --- | --- |",
            ]
        plan = compile_query(SHAPES[shape][0], facts, ("public", "st"))
        differential = "yes" if plan.differentiable else "no: " + "; ".join(map(str, plan.reasons))
        lines.append(f"| {construct} | yes | {differential} | not yet | `{shape}` |")
        if name != _next_section(name, construct):
            lines.append("")
    lines += [
        "## Aggregate classes",
        "",
        "Each aggregate of a GROUP BY is classified; `pgtrickle explain` shows the class and",
        "`pgtrickle apply` warns about GROUP_RESCAN ones in differential stream tables. The class",
        "applies to the aggregate the stream table stores; an aggregate inside a subquery, a CTE",
        "or below a join is maintained by recomputing the groups a change touches.",
        "",
        "| aggregate | class | how |",
        "| --- | --- | --- |",
    ]
    for call in AGGREGATES:
        table = "events" if "(w)" in call else "orders"
        plan = compile_query(f"SELECT {call} AS a FROM {table}", facts, ("public", "st"))
        classes = plan.aggregate_classes()
        assert plan.differentiable and len(classes) == 1, (call, plan.reasons)
        _, kind, why = classes[0]
        lines.append(f"| `{call}` | {kind.value} | {why} |")
    lines += [
        "",
        "## Not differentiable",
        "",
        "These fall back to full under `auto` (the reason is logged and shown by `explain`);",
        "`differential` refuses them with the reason.",
        "",
        "| query | reason |",
        "| --- | --- |",
    ]
    for query, _ in REFUSED:
        try:
            plan = compile_query(query, facts, ("public", "st"))
        except Exception as error:  # refused outright (an invalid query)
            lines.append(f"| `{query}` | {error} |")
            continue
        assert not plan.differentiable, query
        lines.append(f"| `{query}` | {'; '.join(map(str, plan.reasons))} |")
    lines.append("")
    return "\n".join(lines)


def _next_section(name: str, construct: str) -> str:
    index = [c for _, c, _ in CONSTRUCTS].index(construct)
    return CONSTRUCTS[index + 1][0] if index + 1 < len(CONSTRUCTS) else ""


if __name__ == "__main__":
    DOCUMENT.write_text(render())
    print(f"rewrote {DOCUMENT}")
