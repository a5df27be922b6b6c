"""Every dvm module's docstring example runs: the examples are the specification."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import dvm

MODULES = sorted(module.name for module in pkgutil.iter_modules(dvm.__path__))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(f"dvm.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
