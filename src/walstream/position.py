"""How far the change reader has buffered, seen from a process that is not the daemon.

The reader confirms the slot exactly to its position, so the slot's ``confirmed_flush_lsn``
is that position for everyone. When no reader holds the slot (no daemon runs), the caller
runs one itself until it has caught up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from walstream.capture import SLOT_NAME
from walstream.dsn import connect
from walstream.errors import MissingPrivilege
from walstream.reader import ChangeReader, SchemaChange
from walstream.replication import parse_lsn
from walstream.server import server_facts


class SlotPosition:
    def __init__(
        self,
        dsn: str,
        slot: str = SLOT_NAME,
        *,
        on_schema_change: Callable[[SchemaChange], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self.slot = slot
        self.on_schema_change = on_schema_change
        self.conn = connect(dsn, autocommit=True)
        self._may_read: bool | None = None

    def close(self) -> None:
        self.conn.close()

    def current(self) -> tuple[int, bool]:
        """(confirmed position, whether a reader is streaming from the slot)."""
        row = self.conn.execute(
            "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots"
            " WHERE slot_name = %s",
            (self.slot,),
        ).fetchone()
        if row is None or row[0] is None:
            return 0, False
        return parse_lsn(row[0]), bool(row[1])

    def wait_for(self, lsn: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            position, active = self.current()
            if position >= lsn:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if not active:
                # nobody reads the slot: read it here, just far enough
                self._check_may_read()
                reader = ChangeReader(
                    self.dsn, slot=self.slot, on_schema_change=self.on_schema_change
                )
                if reader.run_until(lsn, remaining):
                    return True
                continue
            time.sleep(min(0.002, remaining))

    def _check_may_read(self) -> None:
        if self._may_read is None:
            self._may_read = server_facts(self.conn).replication
        if not self._may_read:
            raise MissingPrivilege(
                "no daemon is reading the changes, and this role may not read them itself",
                detail="reading the replication slot needs a role with the REPLICATION"
                " attribute, or a superuser",
                hint="start `pgtrickle run`, or run this command as a role with REPLICATION",
            )
