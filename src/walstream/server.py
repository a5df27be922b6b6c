"""Whether the server and the role can capture changes at all: checked before anything starts.

Logical decoding needs ``wal_level = logical``, a role with ``REPLICATION`` (or a superuser),
and a free replication slot for pgtrickle's own; without them the first replication command
fails with an error that says little about the cure. These checks say it first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from walstream.capture import SLOT_NAME
from walstream.errors import MissingPrivilege, ServerNotReady


@dataclass(frozen=True)
class ServerFacts:
    version_num: int
    wal_level: str
    role: str
    superuser: bool
    replication: bool
    """The role has the REPLICATION attribute (or is a superuser)."""
    slot_exists: bool
    slots_in_use: int
    max_replication_slots: int
    max_wal_senders: int
    can_create_in_database: bool

    @property
    def free_slots(self) -> int:
        return max(self.max_replication_slots - self.slots_in_use, 0)


def server_facts(conn: psycopg.Connection[Any]) -> ServerFacts:
    row = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('wal_level'),"
        " current_user, r.rolsuper, r.rolsuper OR r.rolreplication,"
        " EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s),"
        " (SELECT count(*) FROM pg_replication_slots)::int,"
        " current_setting('max_replication_slots')::int,"
        " current_setting('max_wal_senders')::int,"
        " has_database_privilege(current_database(), 'CREATE')"
        " FROM pg_roles r WHERE r.rolname = current_user",
        (SLOT_NAME,),
    ).fetchone()
    assert row is not None  # current_user is always a role
    return ServerFacts(*row)


def check_capture(facts: ServerFacts) -> None:
    """Refuse a server or role that cannot run logical replication for pgtrickle."""
    if facts.version_num < 150000:
        raise ServerNotReady(
            f"PostgreSQL {facts.version_num // 10000} is not supported",
            detail="pgtrickle needs PostgreSQL 15 or newer (MERGE, pg_snapshot functions)",
            hint="upgrade the server",
        )
    if facts.wal_level != "logical":
        raise ServerNotReady(
            f"the server runs with wal_level = {facts.wal_level}",
            detail="pgtrickle reads changes by logical decoding, which needs wal_level = logical",
            hint="set wal_level = logical (ALTER SYSTEM SET wal_level = logical) and restart the"
            " server; on a managed service, turn on its logical replication setting",
        )
    if not facts.replication:
        raise MissingPrivilege(
            f'role "{facts.role}" may not use replication',
            detail="reading changes needs a role with the REPLICATION attribute, or a superuser",
            hint=f'ALTER ROLE "{facts.role}" REPLICATION (as a superuser), or connect as a role'
            " that has it",
        )
    if not facts.slot_exists and facts.free_slots == 0:
        raise ServerNotReady(
            "no replication slot is free for pgtrickle",
            detail=f"all {facts.max_replication_slots} slots (max_replication_slots) are in use",
            hint="drop an unused slot (pg_replication_slots lists them) or raise"
            " max_replication_slots and restart the server",
        )
    if facts.max_wal_senders == 0:
        raise ServerNotReady(
            "the server allows no replication connections",
            detail="max_wal_senders = 0",
            hint="raise max_wal_senders (10 is the default) and restart the server",
        )
