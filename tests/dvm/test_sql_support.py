"""docs/SQL_SUPPORT.md says what the compiler does, for every construct the tests maintain."""

from __future__ import annotations

from tests.dvm.support_matrix import CONSTRUCTS, DOCUMENT, render
from tests.dvm.test_execute import SHAPES


def test_the_support_matrix_is_what_the_compiler_says() -> None:
    assert DOCUMENT.read_text() == render(), (
        "docs/SQL_SUPPORT.md is out of date: run `python -m tests.dvm.support_matrix`"
    )


def test_every_maintained_shape_is_in_the_support_matrix() -> None:
    listed = {shape for _, _, shape in CONSTRUCTS}
    assert set(SHAPES) - listed == set(), "describe each execute-mode shape in the matrix"
