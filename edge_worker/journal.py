"""The journal of processed files: a restart neither loses a file nor judges it twice.

A file is keyed by its path relative to the watch folder, its size and its mtime; the
journal records the id of the message it produced.  It is written after the message is in
the outbox, so a crash between the two re-judges the file (at least once) and the stable
message id lets subscribers drop the duplicate.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path


class Journal:
    """SQLite table of processed files, safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a journal row must not vanish on power loss, or the file is judged twice.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS processed ("
            " key TEXT PRIMARY KEY, message_id TEXT NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL)"
        )

    @staticmethod
    def key(path: Path, size: int, mtime_ns: int) -> str:
        """The journal key of one version of one file."""
        return f"{path}|{size}|{mtime_ns}"

    def seen(self, key: str) -> str | None:
        """The message id recorded for ``key``, or ``None`` if it was never processed."""
        with self._lock:
            row = self._db.execute("SELECT message_id FROM processed WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def record(self, key: str, message_id: str, kind: str) -> None:
        """Remember that ``key`` produced ``message_id`` (a verdict or an error)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO processed (key, message_id, kind, at) VALUES (?, ?, ?, ?)",
                (key, message_id, kind, time.time()),
            )

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM processed").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
