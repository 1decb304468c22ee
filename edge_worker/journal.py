"""The journal: one message per image, the same content every time it is sent.

Three tables in one SQLite file (WAL, ``synchronous=FULL``):

* ``messages``: every verdict or error message ever made, by message id, with its payload.
  A message id is derived from the image (SOP Instance UID) and the pack, so when the same
  image is judged again (a restart in the middle, or the modality sending it twice) the stored
  payload is reused: a redelivery carries the same id *and* the same content.
* ``processed``: which file versions (path relative to the watch folder, size, mtime) have
  been handed to the outbox, so a restart does not judge them twice.
* ``latest``: the last message queued for each path, so that a verdict on a file whose
  content changed afterwards can name the one it replaces (``supersedes``).

Order of writes for one file: judge -> ``remember`` the message -> outbox -> ``mark_queued``.
A crash between any two steps is repaired at start by :meth:`unqueued` (messages remembered
but never handed to the outbox) and by judging again a file that was never marked.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any


class Journal:
    """SQLite journal of messages and processed files, safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a row must survive power loss, or an image could be judged into a second,
        # different message under the same id.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS processed ("
            " key TEXT PRIMARY KEY, message_id TEXT NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS messages ("
            " message_id TEXT PRIMARY KEY, kind TEXT NOT NULL, payload TEXT NOT NULL,"
            " queued INTEGER NOT NULL DEFAULT 0, at REAL NOT NULL)"
        )

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
        return int(a) + int(b)

    def count(self) -> int:
        """Number of processed file versions."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM processed").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
