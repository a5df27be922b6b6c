"""Docstring examples are specifications: run every one of them."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("dvm", "walstream", "scheduler")
MODULES = sorted(
    info.name
    for package in PACKAGES
    for info in pkgutil.walk_packages(
        importlib.import_module(package).__path__, prefix=f"{package}."
    )
    if info.name != "pgtrickle.dev.demo"
)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
