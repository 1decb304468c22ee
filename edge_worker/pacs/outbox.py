"""The durable PACS outbox: every DICOM object is stored here before it is sent.

SQLite in the state folder (``pacs.sqlite3``), opened like the MQTT outbox
(:mod:`edge_worker.statedb`: WAL, ``synchronous=FULL``, a damaged file moved aside and its whole
rows copied into a fresh one).  Tables:

``objects``
    one row per object (key ``sr:<verdict id>`` or ``kos:<command id>``): its SOP Instance UID,
    its Part 10 bytes while pending, attempts, next try, last error.  A row is never deleted once
    sent: it is marked ``sent`` and its bytes dropped, so a re-judged image or a repeated command
    finds the key and nothing is sent twice.
``sources``
    per verdict, what the worker keeps of the judged image's header (DICOM JSON of
    :data:`edge_worker.pacs.sr.SOURCE_KEYWORDS`), so a KOS can be made after the file is gone.
``commands``
    per reject command id, the key of the object it made (or its refusal), for idempotence.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_worker.statedb import Damage, claim_schema_version, open_state_db

_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS objects (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        key        TEXT    NOT NULL UNIQUE,
        kind       TEXT    NOT NULL,
        verdict_id TEXT    NOT NULL,
        sop_uid    TEXT    NOT NULL,
        data       BLOB,
        state      TEXT    NOT NULL,
        attempts   INTEGER NOT NULL,
        next_try   REAL    NOT NULL,
        last_error TEXT    NOT NULL,
        created    REAL    NOT NULL,
        sent_at    REAL
    )""",
    "CREATE TABLE IF NOT EXISTS sources (verdict_id TEXT PRIMARY KEY, header TEXT NOT NULL, kept REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS commands (id TEXT PRIMARY KEY, result TEXT NOT NULL, at REAL NOT NULL)",
)


def _whole_row(table: str, row: dict[str, object]) -> bool:
    """A row recovered from a damaged file is whole when its object still reads as Part 10
    (the ``DICM`` prefix) and its JSON parses; a torn one must not reach the PACS."""
    if table == "objects":
        data = row.get("data")
        return data is None or (isinstance(data, bytes) and data[128:132] == b"DICM")
    text = row.get("header" if table == "sources" else "result")
    try:
        json.loads(str(text))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class PacsEntry:
    """One pending object, as :meth:`PacsOutbox.due` returns it."""

    row_id: int
    key: str
    kind: str
    verdict_id: str
    sop_uid: str
    data: bytes
    attempts: int


class PacsOutbox:
    """Objects waiting for the PACS, what is known of each judged image, and command results.

    Thread-safe (one connection under a lock).  Raises ``sqlite3.Error`` when the file cannot be
    opened or written (a full or read-only disk); a damaged file is healed (:attr:`damage`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        opened = open_state_db(self.path, _SCHEMA, _whole_row)
        self._db = opened.db
        #: The damage healed while opening (None: the file was sound).
        self.damage: Damage | None = opened.damage
        claim_schema_version(self._db, _SCHEMA_VERSION, f"PACS outbox {self.path}")

    # -- objects -----------------------------------------------------------------------------
    def put(self, key: str, kind: str, verdict_id: str, sop_uid: str, data: bytes) -> bool:
        """Store an object to send; False (nothing stored) when ``key`` was ever stored before."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO objects (key, kind, verdict_id, sop_uid, data, state, attempts,"
                " next_try, last_error, created) VALUES (?, ?, ?, ?, ?, 'pending', 0, 0, '', ?)",
                (key, kind, verdict_id, sop_uid, bytes(data), time.time()),
            )  # fmt: skip
        return cur.rowcount > 0

    def due(self, now: float, limit: int = 20) -> list[PacsEntry]:
        """Pending objects whose next try is due, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, key, kind, verdict_id, sop_uid, data, attempts FROM objects"
                " WHERE state = 'pending' AND next_try <= ? ORDER BY id LIMIT ?", (now, limit),
            ).fetchall()  # fmt: skip
        return [PacsEntry(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), bytes(r[5]), int(r[6])) for r in rows]

    def next_due(self) -> float | None:
        """When the earliest pending object is due (None: nothing pending)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(next_try) FROM objects WHERE state = 'pending'").fetchone()
        return None if row[0] is None else float(row[0])

    def mark_sent(self, row_id: int) -> None:
        """The PACS stored it: keep the row (and key) as sent, drop the bytes."""
        with self._lock:
            self._db.execute("UPDATE objects SET state = 'sent', data = NULL, sent_at = ?, last_error = ''"
                             " WHERE id = ?", (time.time(), row_id))  # fmt: skip

    def mark_failed(self, row_id: int, error: str, next_try: float) -> None:
        """An attempt failed: count it, remember why, try again at ``next_try``."""
        with self._lock:
            self._db.execute("UPDATE objects SET attempts = attempts + 1, last_error = ?, next_try = ?"
                             " WHERE id = ?", (error, next_try, row_id))  # fmt: skip

    def state(self, key: str) -> tuple[str, str] | None:
        """``(state, SOP Instance UID)`` of the object stored under ``key``, or None."""
        with self._lock:
            row = self._db.execute("SELECT state, sop_uid FROM objects WHERE key = ?", (key,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def latest_for(self, verdict_id: str, kinds: tuple[str, ...]) -> tuple[str, str, str, str] | None:
        """``(key, kind, state, SOP UID)`` of the newest object of ``kinds`` for a verdict, or None."""
        marks = ",".join("?" * len(kinds))
        with self._lock:
            row = self._db.execute(f"SELECT key, kind, state, sop_uid FROM objects WHERE verdict_id = ?"
                                   f" AND kind IN ({marks}) ORDER BY id DESC LIMIT 1", (verdict_id, *kinds)).fetchone()  # fmt: skip
        return None if row is None else (str(row[0]), str(row[1]), str(row[2]), str(row[3]))

    def cancel(self, key: str) -> bool:
        """Never send a pending object (its rejection was withdrawn first); False unless it is
        pending and was never tried (a try that timed out may have reached the PACS)."""
        with self._lock:
            cur = self._db.execute("UPDATE objects SET state = 'cancelled', data = NULL WHERE key = ?"
                                   " AND state = 'pending' AND attempts = 0", (key,))  # fmt: skip
        return cur.rowcount > 0

    def depth(self) -> int:
        """Objects not yet stored by the PACS."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM objects WHERE state = 'pending'").fetchone()[0])

    def oldest_error(self) -> str | None:
        """The last error of the oldest pending object that failed, for health."""
        with self._lock:
            row = self._db.execute("SELECT last_error FROM objects WHERE state = 'pending' AND attempts > 0"
                                   " ORDER BY id LIMIT 1").fetchone()  # fmt: skip
        return None if row is None else str(row[0])

    # -- sources -----------------------------------------------------------------------------
    def keep_source(self, verdict_id: str, header_json: str) -> None:
        """Remember the judged image's header for ``verdict_id`` (the first one stays)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO sources (verdict_id, header, kept) VALUES (?, ?, ?)",
                             (verdict_id, header_json, time.time()))  # fmt: skip

    def source(self, verdict_id: str) -> str | None:
        """The kept header (DICOM JSON) of ``verdict_id``'s image, or None when nothing is known."""
        with self._lock:
            row = self._db.execute("SELECT header FROM sources WHERE verdict_id = ?", (verdict_id,)).fetchone()
        return None if row is None else str(row[0])

    # -- commands ----------------------------------------------------------------------------
    def command(self, command_id: str) -> dict[str, object] | None:
        """What a command id was answered before (None: never seen)."""
        with self._lock:
            row = self._db.execute("SELECT result FROM commands WHERE id = ?", (command_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def remember_command(self, command_id: str, result: dict[str, object]) -> None:
        """Record a command's answer (first one stays: an id is acted on once)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO commands (id, result, at) VALUES (?, ?, ?)",
                             (command_id, json.dumps(result, sort_keys=True), time.time()))  # fmt: skip

    def prune(self, before: float) -> int:
        """Forget kept headers and sent or cancelled objects older than ``before`` (a POSIX time);
        pending objects stay whatever their age.  Returns the rows deleted."""
        with self._lock:
            a = self._db.execute("DELETE FROM sources WHERE kept < ?", (before,)).rowcount
            b = self._db.execute("DELETE FROM objects WHERE state != 'pending' AND created < ?", (before,)).rowcount
            c = self._db.execute("DELETE FROM commands WHERE at < ?", (before,)).rowcount
        return int(a + b + c)

    def close(self) -> None:
        """Close the database.  Idempotent."""
        with self._lock:
            self._db.close()
