"""The errors the service raises, all subclasses of ``dvm.errors.PgTrickleError``.

Service code imports every error from here, including the compiler's, so callers choose what
to do by type (``except CycleDetected``) rather than by reading messages:

>>> from walstream.errors import InvalidDeclaration, PgTrickleError
>>> err = InvalidDeclaration('pgtrickle.yaml:3: stream table "t": unknown key "shedule"',
...                          hint='did you mean "schedule"?')
>>> isinstance(err, PgTrickleError), err.hint
(True, 'did you mean "schedule"?')
"""

from __future__ import annotations

from dvm.errors import InvalidQuery, PgTrickleError, UnsupportedQuery

__all__ = [
    "CatalogTooNew",
    "CycleDetected",
    "FuseBlown",
    "InvalidDeclaration",
    "InvalidQuery",
    "NotFound",
    "PgTrickleError",
    "UnsupportedQuery",
    "UpstreamSchemaChanged",
    "WaitTimeout",
]


class InvalidDeclaration(PgTrickleError):
    """``pgtrickle.yaml`` (or a schedule in it) says something pgtrickle cannot accept."""


class CycleDetected(PgTrickleError):
    """Stream tables would read each other in a cycle, so no refresh order exists."""


class UpstreamSchemaChanged(PgTrickleError):
    """A table a stream table reads was altered in a way its compiled delta cannot follow."""


class FuseBlown(PgTrickleError):
    """A stream table's fuse tripped; it stays stopped until an operator resets it."""


class CatalogTooNew(PgTrickleError):
    """The ``pgtrickle`` catalog was written by a newer pgtrickle than this one."""


class NotFound(PgTrickleError):
    """The named stream table does not exist."""


class WaitTimeout(PgTrickleError):
    """``wait`` gave up before every stream table caught up with the WAL position asked for."""
