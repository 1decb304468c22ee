"""The journal: one message per image, the same content every time it is sent.

Five tables in one SQLite file (WAL, ``synchronous=FULL``):

* ``messages``: every verdict or error message ever made, by message id, with its payload.
  A message id is derived from the image (SOP Instance UID) and the pack, so when the same
  image is judged again (a restart in the middle, or the modality sending it twice) the stored
  payload is reused: a redelivery carries the same id *and* the same content.
* ``processed``: which file versions (path relative to the watch folder, size, mtime) have
  been handed to the outbox, so a restart does not judge them twice.
* ``images``: which pixel content (sha256 of the stored Pixel Data) each SOP Instance UID
  came with, so a second, different image under a UID already seen is told apart and said so.
* ``in_progress``: the file versions being judged now, and for each how many times the
  worker died while judging it (``strikes``).  A row is written before a file is judged and
  deleted once its message is stored; a row still ``running`` at start means the worker died
  on it (a decoder's memory bomb under ``MemoryMax``, a segfault).  See :meth:`crashed`.
* ``latest``: the last message queued for each path, so that a verdict on a file whose
  content changed afterwards can name the one it replaces (``supersedes``).

Order of writes for one file: ``begin`` -> judge -> ``remember`` the message -> outbox ->
``mark_queued`` -> ``end``.
A crash between any two steps is repaired at start by :meth:`unqueued` (messages remembered
but never handed to the outbox) and by judging again a file that was never marked.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from edge_worker.statedb import Damage, open_state_db

#: The journal's tables; a damaged journal is rebuilt with these and its readable rows copied.
SCHEMA: tuple[str, ...] = (
    (
        "CREATE TABLE IF NOT EXISTS processed ("
        " key TEXT PRIMARY KEY, message_id TEXT NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL)"
    ),
    (
        "CREATE TABLE IF NOT EXISTS messages ("
        " message_id TEXT PRIMARY KEY, kind TEXT NOT NULL, payload TEXT NOT NULL,"
        " queued INTEGER NOT NULL DEFAULT 0, at REAL NOT NULL)"
    ),
    (
        "CREATE TABLE IF NOT EXISTS images ("
        " sop_uid TEXT NOT NULL, pixel_digest TEXT NOT NULL, message_id TEXT NOT NULL,"
        " at REAL NOT NULL, PRIMARY KEY (sop_uid, pixel_digest))"
    ),
    (
        "CREATE TABLE IF NOT EXISTS in_progress ("
        " key TEXT PRIMARY KEY, strikes INTEGER NOT NULL DEFAULT 0,"
        " running INTEGER NOT NULL DEFAULT 0, at REAL NOT NULL)"
    ),
)


def _whole_row(table: str, row: dict[str, object]) -> bool:
    """Whether a row recovered from a damaged journal is whole: a message's payload must parse
    (a truncated page reads as zeros), a processed key must keep its ``path|size|mtime`` form."""
    if table == "messages":
        try:
            return isinstance(json.loads(str(row["payload"])), dict)
        except ValueError:
            return False
    if table == "processed":
        return str(row["key"]).count("|") >= 2 and "\0" not in str(row["key"])
    return True


class Journal:
    """SQLite journal of messages and processed files, safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        """Open (or create) the journal at ``path``; a damaged file is healed (moved aside, its
        readable rows copied into a fresh one, see :mod:`edge_worker.statedb`) and described in
        :attr:`damage`.  Raises ``sqlite3.Error`` for a full or read-only disk."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # synchronous=FULL (open_state_db): a row must survive power loss, or an image could be
        # judged into a second, different message under the same id.
        opened = open_state_db(path, SCHEMA, _whole_row)
        self._db = opened.db
        #: The damage healed while opening (``None``: the file was sound); the daemon reports it.
        self.damage: Damage | None = opened.damage

    @staticmethod
    def key(path: Path, size: int, mtime_ns: int) -> str:
        """The journal key of one version of one file."""
        return f"{path}|{size}|{mtime_ns}"

    def seen(self, key: str) -> str | None:
        """The message id recorded for file version ``key``, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT message_id FROM processed WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def remember(self, message_id: str, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Store the message unless one with this id exists; return the stored payload."""
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO messages (message_id, kind, payload, at) VALUES (?, ?, ?, ?)",
                (message_id, kind, text, time.time()),
            )
            row = self._db.execute(
                "SELECT payload FROM messages WHERE message_id = ?", (message_id,)
            ).fetchone()
        stored: dict[str, Any] = json.loads(row[0])
        return stored

    def other_image(self, sop_uid: str, pixel_digest: str) -> str | None:
        """The message id of the latest earlier image with this UID but other pixels, or ``None``."""
        with self._lock:
            row = self._db.execute(
                "SELECT message_id FROM images WHERE sop_uid = ? AND pixel_digest != ?"
                " ORDER BY at DESC LIMIT 1",
                (sop_uid, pixel_digest),
            ).fetchone()
        return None if row is None else str(row[0])

    def record_image(self, sop_uid: str, pixel_digest: str, message_id: str) -> None:
        """Remember that ``sop_uid`` came with this pixel content (first message id kept)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO images (sop_uid, pixel_digest, message_id, at) VALUES (?, ?, ?, ?)",
                (sop_uid, pixel_digest, message_id, time.time()),
            )

    def mark_queued(self, key: str | None, message_id: str, kind: str) -> None:
        """The message is in the outbox; the file version ``key`` (if any) is done."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("UPDATE messages SET queued = 1 WHERE message_id = ?", (message_id,))
                if key is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO processed (key, message_id, kind, at) VALUES (?, ?, ?, ?)",
                        (key, message_id, kind, time.time()),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                # A full disk: leave no transaction open, or every later write would fail too.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _latest_table(self) -> None:
        # Created on first use rather than in the constructor: cheap when it exists already.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS latest ("
            " path TEXT PRIMARY KEY, message_id TEXT NOT NULL, kind TEXT NOT NULL,"
            " sop_instance_uid TEXT, at REAL NOT NULL)"
        )

    def last_message(self, path: str) -> tuple[str, str, str | None] | None:
        """``(message_id, kind, sop_instance_uid)`` of the last message queued for ``path``.

        ``path`` is the watch-folder-relative name in printable form
        (:func:`edge_worker.names.printable`); ``None`` when nothing was sent for it.
        """
        with self._lock:
            self._latest_table()
            row = self._db.execute(
                "SELECT message_id, kind, sop_instance_uid FROM latest WHERE path = ?", (path,)
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), row[2])

    def set_last_message(self, path: str, message_id: str, kind: str, sop_instance_uid: str | None) -> None:
        """Record ``message_id`` (a ``kind`` message) as the last one queued for ``path``."""
        with self._lock:
            self._latest_table()
            self._db.execute(
                "INSERT OR REPLACE INTO latest (path, message_id, kind, sop_instance_uid, at)"
                " VALUES (?, ?, ?, ?, ?)",
                (path, message_id, kind, sop_instance_uid, time.time()),
            )

    def unqueued(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Messages remembered but never handed to the outbox: ``(id, kind, payload)``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT message_id, kind, payload FROM messages WHERE queued = 0 ORDER BY at"
            ).fetchall()
        return [(str(r[0]), str(r[1]), json.loads(r[2])) for r in rows]

    def prune(self, older_than_s: float) -> int:
        """Forget messages and files older than ``older_than_s`` seconds; returns rows removed."""
        cutoff = time.time() - older_than_s
        with self._lock:
            a = self._db.execute("DELETE FROM processed WHERE at < ?", (cutoff,)).rowcount
            b = self._db.execute("DELETE FROM messages WHERE at < ? AND queued = 1", (cutoff,)).rowcount
            c = self._db.execute("DELETE FROM images WHERE at < ?", (cutoff,)).rowcount
        return int(a) + int(b) + int(c)

    def begin(self, keys: list[str]) -> None:
        """File versions ``keys`` are about to be judged (together): mark them running."""
        now = time.time()
        with self._lock:
            self._db.executemany(
                "INSERT INTO in_progress (key, running, at) VALUES (?, 1, ?)"
                " ON CONFLICT(key) DO UPDATE SET running = 1, at = excluded.at",
                [(key, now) for key in keys],
            )

    def end(self, keys: list[str]) -> None:
        """File versions ``keys`` were judged (or need no judging): forget their rows."""
        with self._lock:
            self._db.executemany("DELETE FROM in_progress WHERE key = ?", [(k,) for k in keys])

    def strikes(self, keys: list[str]) -> dict[str, int]:
        """For those of ``keys`` the worker died on before: key -> times it died on them."""
        with self._lock:
            rows = [
                self._db.execute(
                    "SELECT strikes FROM in_progress WHERE key = ? AND strikes > 0", (key,)
                ).fetchone()
                for key in keys
            ]
        return {key: int(row[0]) for key, row in zip(keys, rows) if row is not None}

    def crashed(self) -> dict[str, int]:
        """At start: count a strike for every file the last run died judging; return them all.

        Returns key -> strikes for every file version the worker has died on and that is not
        done yet.  Call once per start, before anything is judged.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE in_progress SET strikes = strikes + 1, running = 0 WHERE running = 1"
                )
                # Died after the message was stored but before the row was deleted: done.
                self._db.execute("DELETE FROM in_progress WHERE key IN (SELECT key FROM processed)")
                rows = self._db.execute(
                    "SELECT key, strikes FROM in_progress WHERE strikes > 0 ORDER BY at"
                ).fetchall()
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return {str(key): int(n) for key, n in rows}

    def count(self) -> int:
        """Number of processed file versions."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM processed").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
