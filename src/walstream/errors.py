"""The errors of change capture and the catalog: reaching the server, its settings, the catalog.

Service code raises these by class, and callers choose what to do by type (``except
ConnectionFailed``), never by reading messages:

>>> err = ConnectionFailed("cannot connect to the database", hint="is the server running?")
>>> err.code, err.exit_code, isinstance(err, PgTrickleError)
('PGT201', 4, True)
"""

from __future__ import annotations

from dvm.errors import PgTrickleError

__all__ = [
    "CatalogOutdated",
    "CatalogTooNew",
    "ConnectionFailed",
    "DatabaseError",
    "InvalidDsn",
    "InvalidMigration",
    "MissingPrivilege",
    "NotFound",
    "OlderTransactionsRunning",
    "PgTrickleError",
    "ServerNotReady",
]

EXIT_UNAVAILABLE = 4


class NotFound(PgTrickleError, code="PGT106"):
    """The named stream table does not exist."""


class ConnectionFailed(PgTrickleError, code="PGT201"):
    """The server cannot be reached, refused the login, or the connection broke."""

    exit_code = EXIT_UNAVAILABLE


class InvalidDsn(PgTrickleError, code="PGT202"):
    """The connection string is not one libpq can read."""


class ServerNotReady(PgTrickleError, code="PGT203"):
    """A server setting pgtrickle needs is missing: ``wal_level``, free replication slots."""


class MissingPrivilege(PgTrickleError, code="PGT204"):
    """The role pgtrickle connects as may not do what the command needs."""


class CatalogOutdated(PgTrickleError, code="PGT205"):
    """The ``pgtrickle`` catalog is missing or older than this code."""


class CatalogTooNew(PgTrickleError, code="PGT206"):
    """The ``pgtrickle`` catalog was written by a newer pgtrickle than this one."""


class OlderTransactionsRunning(PgTrickleError, code="PGT207"):
    """A new source cannot be populated while transactions older than its capture run."""


class DatabaseError(PgTrickleError, code="PGT210"):
    """The server refused a statement pgtrickle sent, for a reason not foreseen elsewhere."""


class InvalidMigration(PgTrickleError, code="PGT212"):
    """A file of ``migrations/`` is misnamed or two share a version."""
