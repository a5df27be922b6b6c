"""One rule per operator: a node and its inputs' derived relations in, a derived relation out.

Rules register themselves with :func:`rule`; :func:`derive` walks a tree bottom-up and calls
the rule of each node's type, so any operator composes above any other and a new operator is
a new module, not another branch. A node reached twice (a CTE read twice) is derived once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from dvm.operators import Operator, children
from dvm.zset import Context, DerivedRelation, DerivedRows, is_empty, nothing

Derived = DerivedRows | DerivedRelation
RuleFunction = Callable[[Any, tuple[Any, ...], Context], Derived]
_Rule = TypeVar("_Rule", bound=Callable[..., Derived])

_RULES: dict[type, RuleFunction] = {}


def rule(kind: type) -> Callable[[_Rule], _Rule]:
    """Register the decorated function as the rule for nodes of type ``kind``."""

    def register(function: _Rule) -> _Rule:
        assert kind not in _RULES, f"two rules for {kind.__name__}"
        _RULES[kind] = function
        return function

    return register


def derive(node: Operator, context: Context, memo: dict[int, Derived] | None = None) -> Derived:
    """The derived relation of ``node``, its inputs' derived first."""
    memo = {} if memo is None else memo
    found = memo.get(id(node))
    if found is not None:
        return found
    inputs = tuple(derive(child, context, memo) for child in children(node))
    derived = _RULES[type(node)](node, inputs, context)
    if inputs and all(_empty(input) for input in inputs):
        # no input changes in this refresh: neither does the node
        if isinstance(derived, DerivedRows):
            derived = replace(derived, delta=(derived.delta[0].emptied(),))
        else:
            empty = context.cte(nothing(derived.columns, derived.new))
            derived = replace(derived, delta=empty, empty=True)
    memo[id(node)] = derived
    return derived


def _empty(derived: Derived) -> bool:
    if isinstance(derived, DerivedRows):
        return is_empty(derived.delta)
    return derived.empty


def rows(derived: Derived) -> DerivedRows:
    assert isinstance(derived, DerivedRows), "a row node's input is a row node"
    return derived


def relation(derived: Derived) -> DerivedRelation:
    assert isinstance(derived, DerivedRelation), "a relation node's input is a relation"
    return derived


# the rules register on import
from dvm.rules import (  # noqa: E402
    aggregate,
    filter,
    join,
    limit,
    outer,
    project,
    scan,
    semi,
    setop,
    subquery,
    union,
)

__all__ = [
    "aggregate",
    "derive",
    "filter",
    "join",
    "limit",
    "outer",
    "project",
    "relation",
    "rows",
    "rule",
    "scan",
    "semi",
    "setop",
    "subquery",
    "union",
]
