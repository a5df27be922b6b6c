"""The errors pgtrickle raises: a message, a DETAIL and a HINT, like PostgreSQL's own.

The base class lives in ``dvm`` because it is the package everything else depends on; the
service adds its own subclasses in ``walstream.errors``.
"""

from __future__ import annotations


class PgTrickleError(Exception):
    """Base of every error pgtrickle reports to a user."""

    def __init__(self, message: str, *, detail: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint

    def __str__(self) -> str:
        parts = [self.message]
        if self.detail:
            parts.append(f"DETAIL: {self.detail}")
        if self.hint:
            parts.append(f"HINT: {self.hint}")
        return "\n".join(parts)

    def as_dict(self) -> dict[str, str | None]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "detail": self.detail,
            "hint": self.hint,
        }


class UnsupportedQuery(PgTrickleError):
    """The defining query uses a construct that cannot be maintained as asked."""


class InvalidQuery(PgTrickleError):
    """The defining query is not a single SELECT, or names unknown tables or columns."""
