"""A small sample schema and a writer of random transactions, for the demo and the tests.

The shop: ``customers`` (keyed), ``orders`` (keyed, referencing customers by a plain column
so that join keys can change freely) and ``events`` (keyless: duplicates are real rows). The
writer mixes inserts, updates of values, join keys and group keys, deletes, rolled-back
transactions and savepoints, and asynchronous commits, which is what a refresh must survive.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

SCHEMA = """
CREATE TABLE customers (
    id      integer PRIMARY KEY,
    region  text    NOT NULL,
    tier    integer
);
CREATE TABLE orders (
    id          bigint  PRIMARY KEY,
    customer_id integer NOT NULL,
    amount      numeric(10, 2),
    status      text    NOT NULL
);
CREATE TABLE events (
    kind    text,
    n       integer
);
"""

REGIONS = ("north", "south", "east", "west", "centre")
STATUSES = ("new", "paid", "shipped", "returned")
KINDS = ("click", "view", "buy", None)


def create_schema(dsn: str, customers: int = 50, orders: int = 500, events: int = 200) -> None:
    rng = random.Random(7)
    with psycopg.connect(dsn) as conn:
        conn.execute(SCHEMA)
        with conn.cursor().copy("COPY customers (id, region, tier) FROM STDIN") as copy:
            for i in range(1, customers + 1):
                copy.write_row((i, rng.choice(REGIONS), rng.choice((1, 2, 3, None))))
        with conn.cursor().copy("COPY orders (id, customer_id, amount, status) FROM STDIN") as copy:
            for i in range(1, orders + 1):
                copy.write_row(
                    (i, rng.randint(1, customers + 5), _amount(rng), rng.choice(STATUSES))
                )
        with conn.cursor().copy("COPY events (kind, n) FROM STDIN") as copy:
            for _ in range(events):
                copy.write_row((rng.choice(KINDS), rng.randint(-2, 5)))


def _amount(rng: random.Random) -> str | None:
    return None if rng.random() < 0.05 else f"{rng.uniform(0, 100):.2f}"


@dataclass
class WriterStats:
    committed: int = 0
    rolled_back: int = 0
    errors: int = 0


@dataclass
class Writer:
    """Random transactions against the sample schema until stopped."""

    dsn: str
    seed: int
    customers: int = 50
    rate: float | None = None  # transactions per second; None: as fast as possible
    rollback_share: float = 0.1
    async_share: float = 0.3
    id_block: int | None = None
    """Which million of order ids this writer inserts (default: its seed's); writers that
    run together need blocks of their own."""
    stats: WriterStats = field(default_factory=WriterStats)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        block = self.seed if self.id_block is None else self.id_block
        self._next_id = 1_000_000 * (block + 1)

    def run(self, stop: threading.Event) -> None:
        with psycopg.connect(self.dsn) as conn:
            while not stop.is_set():
                started = time.monotonic()
                self.transaction(conn)
                if self.rate:
                    stop.wait(max(0.0, 1.0 / self.rate - (time.monotonic() - started)))

    def transaction(self, conn: psycopg.Connection[Any], *, commit: bool = True) -> None:
        """One random transaction (sometimes rolled back, sometimes with a rolled-back
        savepoint, sometimes committed asynchronously); ``commit`` False leaves it open."""
        rng = self._rng
        try:
            if rng.random() < self.async_share:
                conn.execute("SET LOCAL synchronous_commit = off")
            for _ in range(rng.randint(1, 5)):
                self._next_id = self._statement(conn, rng, self._next_id)
            if rng.random() < 0.15:
                conn.execute("SAVEPOINT s")
                self._next_id = self._statement(conn, rng, self._next_id)
                conn.execute("ROLLBACK TO SAVEPOINT s")
            if not commit:
                return
            if rng.random() < self.rollback_share:
                conn.rollback()
                self.stats.rolled_back += 1
            else:
                conn.commit()
                self.stats.committed += 1
        except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected):
            conn.rollback()
            self.stats.errors += 1

    def _statement(self, conn: psycopg.Connection[Any], rng: random.Random, next_id: int) -> int:
        choice = rng.random()
        if choice < 0.25:
            conn.execute(
                "INSERT INTO orders (id, customer_id, amount, status) VALUES (%s, %s, %s, %s)",
                (next_id, rng.randint(1, self.customers + 5), _amount(rng), rng.choice(STATUSES)),
            )
            return next_id + 1
        if choice < 0.40:
            conn.execute(
                "UPDATE orders SET amount = %s WHERE id = (SELECT id FROM orders"
                " ORDER BY random() LIMIT 1)",
                (_amount(rng),),
            )
        elif choice < 0.50:
            conn.execute(
                "UPDATE orders SET customer_id = %s, status = %s WHERE id IN (SELECT id FROM"
                " orders ORDER BY random() LIMIT 2)",
                (rng.randint(1, self.customers + 5), rng.choice(STATUSES)),
            )
        elif choice < 0.60:
            conn.execute(
                "DELETE FROM orders WHERE id = (SELECT id FROM orders ORDER BY random() LIMIT 1)"
            )
        elif choice < 0.70:
            conn.execute(
                "UPDATE customers SET region = %s, tier = %s WHERE id = %s",
                (rng.choice(REGIONS), rng.choice((1, 2, 3, None)), rng.randint(1, self.customers)),
            )
        elif choice < 0.82:
            conn.execute(
                "INSERT INTO events (kind, n) VALUES (%s, %s), (%s, %s)",
                (rng.choice(KINDS), rng.randint(-2, 5), rng.choice(KINDS), rng.randint(-2, 5)),
            )
        elif choice < 0.92:
            conn.execute(
                "UPDATE events SET n = n + 1 WHERE ctid = (SELECT ctid FROM events"
                " ORDER BY random() LIMIT 1)"
            )
        else:
            conn.execute(
                "DELETE FROM events WHERE ctid ="
                " (SELECT ctid FROM events ORDER BY random() LIMIT 1)"
            )
        return next_id
