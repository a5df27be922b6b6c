"""Settings of every session that fills a storage table or applies a delta to one.

Row ids hash the text form of values, and that text depends on a few settings; a session with
other values would give the same row another id.
"""

from __future__ import annotations

from typing import Any

import psycopg

from dvm.plan import ROW_ID_SETTINGS

STORAGE_SETTINGS: tuple[tuple[str, str], ...] = (
    *ROW_ID_SETTINGS,
    ("TimeZone", "UTC"),
    # a delta statement of a many-way join costs a lot by estimate and runs in milliseconds:
    # JIT compilation of it took 10-45 s on PostgreSQL 15
    ("jit", "off"),
)


def pin_storage_settings(conn: psycopg.Connection[Any], *, local: bool = False) -> None:
    """Set them for the session (or, with ``local``, for the current transaction)."""
    for name, value in STORAGE_SETTINGS:
        conn.execute("SELECT set_config(%s, %s, %s)", (name, value, local))
