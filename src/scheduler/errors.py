"""The errors of scheduling and refreshing.

>>> err = WaitTimeout("stream tables did not catch up within 5 s")
>>> err.code, err.exit_code
('PGT301', 3)
"""

from __future__ import annotations

from dvm.errors import PgTrickleError

__all__ = [
    "CycleDetected",
    "InvalidSchedule",
    "QueryFailed",
    "ReaderBehind",
    "RefreshMismatch",
    "UpstreamSchemaChanged",
    "WaitTimeout",
]

EXIT_TIMEOUT = 3


class CycleDetected(PgTrickleError, code="PGT104"):
    """Stream tables would read each other in a cycle, so no refresh order exists."""


class InvalidSchedule(PgTrickleError, code="PGT105"):
    """A schedule is not a duration, a cron expression or ``calculated``."""


class QueryFailed(PgTrickleError, code="PGT110"):
    """The server failed a stream table's query (or its delta) while populating or refreshing."""


class WaitTimeout(PgTrickleError, code="PGT301"):
    """``wait`` gave up before every stream table caught up with the WAL position asked for."""

    exit_code = EXIT_TIMEOUT


class RefreshMismatch(PgTrickleError, code="PGT302"):
    """Check mode: after a refresh the stream table differed from its query at S."""


class UpstreamSchemaChanged(PgTrickleError, code="PGT303"):
    """A table a stream table reads was altered in a way its compiled delta cannot follow."""


class ReaderBehind(PgTrickleError, code="PGT304"):
    """The change reader did not buffer what a refresh's snapshot needs in time."""
