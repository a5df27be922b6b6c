"""The pgoutput decoder alone: narrow Insert messages per second, in memory."""

from __future__ import annotations

import struct
import time

from walstream.pgoutput import decode


def insert_message(relation_oid: int, values: list[str | None]) -> bytes:
    parts = [b"I", struct.pack("!I", relation_oid), b"N", struct.pack("!h", len(values))]
    for value in values:
        if value is None:
            parts.append(b"n")
        else:
            data = value.encode()
            parts.append(b"t" + struct.pack("!i", len(data)) + data)
    return b"".join(parts)


def run(n: int = 200_000) -> dict[str, float]:
    messages = [insert_message(16384, [str(i), "north", f"{i % 1000}.25", None]) for i in range(n)]
    started = time.perf_counter()
    for message in messages:
        decode(message)
    elapsed = time.perf_counter() - started
    return {"messages": n, "seconds": round(elapsed, 3), "rows_per_s": round(n / elapsed)}
