"""Every advisory lock pgtrickle takes, and its key: one place, so no two purposes collide.

Keys are pairs ``(class, id)``: the class is pgtrickle's (``"pgtr"``) plus a purpose, the id
says which object. Session locks (``pg_advisory_lock``) are taken before a transaction
starts, so before its snapshot; transaction locks (``pg_advisory_xact_lock``) serialize
statements that need no snapshot of their own.

>>> refresh_lock(7)
AdvisoryLock(key_class=1885828211, key_id=7)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import psycopg

_PGTRICKLE = 0x7067_7472  # "pgtr"


class Purpose(IntEnum):
    MIGRATION = 0
    """Catalog migrations run one at a time (id 1)."""
    REFRESH = 1
    """One refresh, populate or re-create of a stream table at a time (id: its catalog id)."""
    APPLY = 2
    """One ``apply`` per database at a time (id 1): it plans against what it then changes,
    and installs frontiers older than others; pruning waits for it (see ``buffers.prune``)."""


@dataclass(frozen=True)
class AdvisoryLock:
    key_class: int
    key_id: int

    def lock(self, conn: psycopg.Connection[Any]) -> None:
        """Take it for the session (blocks until it is free)."""
        conn.execute("SELECT pg_advisory_lock(%s, %s)", (self.key_class, self.key_id))

    def unlock(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", (self.key_class, self.key_id))

    def lock_for_transaction(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (self.key_class, self.key_id))

    def try_lock_for_transaction(self, conn: psycopg.Connection[Any]) -> bool:
        """Take it until the transaction ends if it is free; False if someone holds it."""
        row = conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s, %s)", (self.key_class, self.key_id)
        ).fetchone()
        return bool(row and row[0])


MIGRATION_LOCK = AdvisoryLock(_PGTRICKLE + Purpose.MIGRATION, 1)
APPLY_LOCK = AdvisoryLock(_PGTRICKLE + Purpose.APPLY, 1)


def refresh_lock(stream_table_id: int) -> AdvisoryLock:
    return AdvisoryLock(_PGTRICKLE + Purpose.REFRESH, stream_table_id)
