"""Slow (soak) tests of dvm run only when asked for with ``-m slow``."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if item.nodeid.startswith("tests/dvm/") and item.get_closest_marker("slow"):
            item.add_marker(skip)
