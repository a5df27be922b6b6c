"""The errors pgtrickle reports: a stable code, a message, a DETAIL and a HINT.

Every subclass registers its code when it is defined, the way psycopg maps one class to each
SQLSTATE, so callers and scripts decide by class or by code, never by reading messages. The
base class lives in ``dvm`` because it is the package everything else depends on; each package
defines the errors it raises in its own ``errors`` module.

>>> err = InvalidQuery("the defining query must be a SELECT", hint="give one SELECT")
>>> err.code, PgTrickleError.lookup("PGT102") is InvalidQuery
('PGT102', True)
>>> print(err)
the defining query must be a SELECT
HINT: give one SELECT
"""

from __future__ import annotations

import re
from typing import ClassVar

_CODE = re.compile(r"PGT\d{3}")


class PgTrickleError(Exception):
    """Base of every error pgtrickle reports to a user; never raised itself."""

    code: ClassVar[str] = "PGT000"
    #: the exit status of a command that ends with this error
    exit_code: ClassVar[int] = 1
    _registry: ClassVar[dict[str, type[PgTrickleError]]] = {}

    def __init_subclass__(cls, *, code: str, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not _CODE.fullmatch(code):
            raise TypeError(f"{cls.__name__}: error code {code!r} is not PGTnnn")
        taken = PgTrickleError._registry.get(code)
        if taken is not None and (taken.__module__, taken.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise TypeError(f"{cls.__name__}: error code {code} is taken by {taken.__name__}")
        cls.code = code
        PgTrickleError._registry[code] = cls

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

    def with_context(self, prefix: str) -> PgTrickleError:
        """The same error (class, code, detail, hint) with ``prefix: `` before its message."""
        error = type(self).__new__(type(self))
        PgTrickleError.__init__(
            error, f"{prefix}: {self.message}", detail=self.detail, hint=self.hint
        )
        return error

    def as_dict(self) -> dict[str, str | None]:
        return {
            "code": self.code,
            "error": type(self).__name__,
            "message": self.message,
            "detail": self.detail,
            "hint": self.hint,
        }

    @classmethod
    def lookup(cls, code: str) -> type[PgTrickleError]:
        return cls._registry[code]

    @classmethod
    def registered(cls) -> dict[str, type[PgTrickleError]]:
        """Every error class by its code (those of modules imported so far)."""
        return dict(sorted(cls._registry.items()))


class InvalidQuery(PgTrickleError, code="PGT102"):
    """The defining query is not a single SELECT, or names unknown tables or columns."""


class UnsupportedQuery(PgTrickleError, code="PGT103"):
    """The defining query uses a construct that cannot be maintained as asked."""
