"""The errors of the face: declarations, and what ``apply`` refuses to do to a database.

Every error pgtrickle reports, whichever package raises it, is a ``PgTrickleError`` with a
stable code; ``error_codes()`` lists them all, as ``--help`` and the README do.

>>> InvalidDeclaration("pgtrickle.yaml:3: unknown key").code
'PGT101'
>>> sorted(error_codes())[:3]
['PGT101', 'PGT102', 'PGT103']
"""

from __future__ import annotations

# Imported for their error classes alone, so that the registry is complete.
import dvm.stored  # noqa: F401
import scheduler.errors  # noqa: F401
import walstream.errors
import walstream.pgoutput
import walstream.replication  # noqa: F401
from dvm.errors import PgTrickleError

__all__ = [
    "DependentObjects",
    "InternalError",
    "InvalidDeclaration",
    "NameTaken",
    "PgTrickleError",
    "PruneRequired",
    "error_codes",
]

EXIT_INTERNAL = 70  # EX_SOFTWARE of sysexits.h


class InvalidDeclaration(PgTrickleError, code="PGT101"):
    """``pgtrickle.yaml`` (or a schedule in it) says something pgtrickle cannot accept."""


class NameTaken(PgTrickleError, code="PGT107"):
    """A stream table would be created where a table, view or other relation exists."""


class DependentObjects(PgTrickleError, code="PGT108"):
    """Views or other objects depend on a stream table that ``apply`` would drop or re-create."""


class PruneRequired(PgTrickleError, code="PGT109"):
    """``apply`` would drop stream tables that are no longer declared, and was not told to."""


class InternalError(PgTrickleError, code="PGT999"):
    """Something pgtrickle did not expect: a bug, to be reported."""

    exit_code = EXIT_INTERNAL


def error_codes() -> dict[str, type[PgTrickleError]]:
    """Every error class by its code."""
    return PgTrickleError.registered()
