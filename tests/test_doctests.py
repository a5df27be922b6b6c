"""Docstring examples are specifications: every module's run, once, here."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("pgtrickle", "scheduler", "walstream", "dvm")
MODULES = sorted(
    info.name
    for package in PACKAGES
    for info in pkgutil.walk_packages(
        importlib.import_module(package).__path__, prefix=f"{package}."
    )
)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_every_package_has_examples_to_run() -> None:
    finder = doctest.DocTestFinder()
    for package in PACKAGES:
        examples = sum(
            len(test.examples)
            for name in MODULES
            if name.startswith(f"{package}.")
            for test in finder.find(importlib.import_module(name))
        )
        assert examples > 0, f"{package} has no docstring example"
