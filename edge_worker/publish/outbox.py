"""Durable outbox: every MQTT message is stored here before it is sent.

A row is written by :meth:`Outbox.put` before the publisher hands the message to paho, and
deleted by :meth:`Outbox.ack` only once the broker has acknowledged it (PUBACK).  paho keeps
unacknowledged QoS 1 messages only in memory, so without this table a crash, a restart or a
long broker outage would lose verdicts.

Policy when full: :meth:`Outbox.put` raises :class:`OutboxFull` and stores nothing.  Old rows are
never evicted to make room, because each row is a verdict a ward is waiting for; the caller
turns the error into a health failure (the worker stops reporting ready) so that an operator
sees the broker outage instead of losing results silently.

Idempotence: the message key (the verdict id) is unique.  Putting a key that is still pending
returns the existing row and stores nothing.  Once a row has been acknowledged and deleted, the
key is forgotten; a later put with that key is a new message (consumers deduplicate on the id,
as they must for any QoS 1 stream).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_worker.errors import EdgeWorkerError
from edge_worker.statedb import Damage, claim_schema_version, open_state_db

if TYPE_CHECKING:
    from typing import Self  # 3.11+; annotations are not evaluated on 3.10

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 10_000
_SCHEMA_VERSION = 1

# AUTOINCREMENT (not plain rowid) so an id is never reused after the table empties: ids give
# the send order, and the publisher maps paho message ids to row ids while rows are in flight.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    key     TEXT    NOT NULL UNIQUE,
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    qos     INTEGER NOT NULL,
    retain  INTEGER NOT NULL,
    created REAL    NOT NULL
)
"""


def _whole_row(table: str, row: dict[str, object]) -> bool:
    """Whether a row recovered from a damaged outbox is whole: the publisher stores JSON only,
    so a payload that does not parse was torn by the damage and must not reach the broker."""
    payload, topic = row.get("payload"), row.get("topic")
    if not isinstance(payload, bytes) or not isinstance(topic, str) or not topic:
        return False
    try:
        json.loads(payload)
    except ValueError:  # UnicodeDecodeError is a ValueError too
        return False
    return True


class OutboxFull(EdgeWorkerError):
    """The outbox holds ``max_rows`` unacknowledged messages; the new one was not stored.

    Raised by :meth:`Outbox.put`.  It means the broker has been unreachable for a long time (or
    refuses our messages); the daemon must report unhealthy rather than drop anything.
    """

    def __init__(self, depth: int, max_rows: int) -> None:
        super().__init__(
            f"outbox full: {depth} unacknowledged messages (limit {max_rows}); "
            "the broker has not acknowledged messages for a long time"
        )
        self.depth = depth
        self.max_rows = max_rows


@dataclass(frozen=True)
class OutboxEntry:
    """One stored message, as returned by :meth:`Outbox.pending`."""

    row_id: int
    key: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float


@dataclass(frozen=True)
class PutResult:
    """What :meth:`Outbox.put` did: the row holding the key, and whether it is new."""

    row_id: int
    created: bool


class Outbox:
    """A bounded, durable FIFO of messages waiting for a broker acknowledgement.

    Thread-safe: one connection guarded by a lock (writes are tiny; one verdict per image).
    """

    def __init__(self, path: str | Path, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        """Open (or create) the outbox database at ``path``.

        ``max_rows`` bounds the number of unacknowledged messages; see the module docstring for
        what happens when it is reached.  A damaged file is healed (see
        :mod:`edge_worker.statedb`) and described in :attr:`damage`.  Raises ``ValueError`` for
        ``max_rows < 1`` and ``sqlite3.Error`` when the file cannot be opened (a full or
        read-only disk).
        """
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.path = Path(path)
        self.max_rows = max_rows
        self._lock = threading.Lock()
        # open_state_db: WAL with synchronous=FULL (a verdict is on disk before it is sent; one
        # fsync per verdict is cheap next to that), BEGIN/COMMIT issued here so that a put's
        # capacity check and its insert are one write transaction, and a damaged file healed:
        # moved aside, its readable rows copied into a fresh one in id order.
        opened = open_state_db(self.path, (_SCHEMA,), _whole_row)
        self._db = opened.db
        #: The damage healed while opening (``None``: the file was sound); the daemon reports it.
        self.damage: Damage | None = opened.damage
        claim_schema_version(self._db, _SCHEMA_VERSION, f"outbox {self.path}")
        self._closed = False
        depth = self.depth()
        if depth:
            log.info("outbox %s reopened with %d unacknowledged message(s)", self.path, depth)

    def put(self, topic: str, payload: bytes, key: str, qos: int = 1, retain: bool = False) -> PutResult:
        """Store a message durably; return its row id and whether a new row was written.

        A key that is already pending is not stored again (``created=False``; the first payload
        wins).  Raises :class:`OutboxFull` when ``max_rows`` messages are pending and ``key`` is
        new, and ``ValueError`` for an empty key or a QoS outside 0..2.
        """
        if not key:
            raise ValueError("outbox key must be a non-empty string")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT id FROM outbox WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    self._db.execute("COMMIT")
                    return PutResult(row_id=int(row[0]), created=False)
                depth = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
                if depth >= self.max_rows:
                    raise OutboxFull(depth, self.max_rows)
                cur = self._db.execute(
                    "INSERT INTO outbox (key, topic, payload, qos, retain, created)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (key, topic, bytes(payload), qos, int(retain), time.time()),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        assert cur.lastrowid is not None
        return PutResult(row_id=cur.lastrowid, created=True)

    def pending(self, limit: int = 100, after_id: int = 0) -> list[OutboxEntry]:
        """Return up to ``limit`` unacknowledged messages with ``row_id > after_id``, oldest first."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT id, key, topic, payload, qos, retain, created FROM outbox"
                " WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [
            OutboxEntry(
                row_id=int(r[0]),
                key=str(r[1]),
                topic=str(r[2]),
                payload=bytes(r[3]),
                qos=int(r[4]),
                retain=bool(r[5]),
                created=float(r[6]),
            )
            for r in rows
        ]

    def ack(self, row_id: int) -> bool:
        """Delete an acknowledged message; return False if the row was already gone."""
        with self._lock:
            self._check_open()
            cur = self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
        return cur.rowcount > 0

    def depth(self) -> int:
        """Return the number of unacknowledged messages."""
        with self._lock:
            self._check_open()
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        """Close the database; further calls raise ``RuntimeError``.  Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"outbox {self.path} is closed")
