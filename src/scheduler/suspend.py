"""What a source's schema change means for the stream tables reading it: they stop.

The reader reports a captured column that is gone (``walstream.reader.SchemaChange``); the
stream tables reading that source are suspended with an ``UpstreamSchemaChanged`` that says
why and what to do, and refresh no more until they are re-created. The others keep going.
"""

from __future__ import annotations

import structlog

from scheduler.errors import UpstreamSchemaChanged
from walstream.catalog import StreamTableStatus
from walstream.dsn import connect
from walstream.reader import SchemaChange

log = structlog.get_logger("pgtrickle.scheduler")


def schema_change_error(change: SchemaChange) -> UpstreamSchemaChanged:
    """
    >>> from walstream.buffers import CapturedSource
    >>> source = CapturedSource(1, "public", "orders", "changes_1", ("id", "amount"), ("", ""))
    >>> print(schema_change_error(SchemaChange(source, ("amount",))).message)
    source "public.orders" changed: column amount no longer exists
    """
    columns = ", ".join(change.missing_columns)
    noun = "column" if len(change.missing_columns) == 1 else "columns"
    verb = "no longer exists" if len(change.missing_columns) == 1 else "no longer exist"
    return UpstreamSchemaChanged(
        f'source "{change.source.display_name}" changed: {noun} {columns} {verb}',
        detail="The stream tables reading it are suspended: its changes can no longer be"
        " captured as they were declared.",
        hint=f"restore the {noun} and run `pgtrickle apply`; or stop declaring every stream"
        " table that reads the source, `pgtrickle apply --prune`, then declare them again"
        " (its changes are then captured with the columns it has now)",
    )


class SchemaChangeHandler:
    """Suspends the readers of a changed source; the reader calls it (``on_schema_change``)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def __call__(self, change: SchemaChange) -> None:
        error = schema_change_error(change)
        with connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "UPDATE pgtrickle.stream_tables SET status = %s, last_error = %s,"
                " updated_at = now() WHERE status <> %s AND id IN (SELECT stream_table_id"
                " FROM pgtrickle.dependencies WHERE source_oid = %s)"
                " RETURNING schema_name, name",
                (
                    StreamTableStatus.SUSPENDED.value,
                    str(error),
                    StreamTableStatus.SUSPENDED.value,
                    change.source.oid,
                ),
            ).fetchall()
        for schema, name in rows:
            log.error(
                "stream table suspended",
                stream_table=f"{schema}.{name}",
                code=error.code,
                reason=error.message,
            )
