"""Open a state database (the outbox, the journal) so that a damaged one heals instead of
stopping the daemon.

A power loss or a failing disk can leave an SQLite file that SQLite itself calls malformed
(``SQLITE_CORRUPT``) or not a database at all (``SQLITE_NOTADB``).  Before this module such a
file stopped the daemon at every start, with the undelivered verdicts still inside.  Now
:func:`open_state_db`:

1. opens the file and runs ``PRAGMA quick_check`` (every page of every b-tree is read);
2. when it is damaged, moves it aside with a UTC timestamp, together with its ``-wal`` and
   ``-shm`` (``outbox.sqlite3.damaged-20261202T190000Z``, ``...-wal``, ``...-shm``), so the
   evidence stays for IT and nothing is overwritten;
3. creates a fresh database with the caller's schema and copies into it, table by table and
   row by row in rowid order, every row SQLite can still read from the damaged copy; a row the
   fresh schema or the caller's row check refuses (a NULL in a NOT NULL column, a payload torn
   by a truncated page) is skipped and counted;
4. returns the connection with a :class:`Damage` record that the daemon reports as a health
   problem (component ``state``).

Errors that are not damage (a full or read-only disk, a missing folder) are not healed: they
propagate as ``sqlite3.Error``, because moving a sound database aside for them would lose it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_worker.errors import EdgeWorkerError

log = logging.getLogger(__name__)

# Primary result codes (the low byte of an extended code) that mean the file is damaged.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_MAX_ROWID = 2**63 - 1
_SIDE_FILES = ("-wal", "-shm")

#: ``accept(table, row)``: whether a row read from a damaged file is whole (``row`` maps column
#: names to values).  A page cut short by truncation reads as zeros at its end, so a row can be
#: readable yet torn; the store knows what its rows must look like.
RowCheck = Callable[[str, dict[str, object]], bool]


@dataclass(frozen=True)
class Damage:
    """What was found and done when a state database was damaged.

    ``moved_to``: the damaged file's new name (its ``-wal``/``-shm`` sit beside it with the same
    stem).  ``why``: SQLite's own words.  ``recovered``: rows copied into the fresh database, by
    table.  ``skipped``: rows that could be read but that the fresh schema refused, by table.
    """

    path: Path
    moved_to: Path
    why: str
    recovered: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the log and the health report."""
        rows = ", ".join(f"{n} {t} row(s)" for t, n in self.recovered.items()) or "no rows"
        skipped = sum(self.skipped.values())
        extra = f"; {skipped} unreadable row(s) skipped" if skipped else ""
        return (
            f"{self.path.name} was damaged ({self.why}); moved aside as {self.moved_to.name}, "
            f"recovered {rows}{extra}; rows in damaged pages may be lost"
        )


@dataclass
class Opened:
    """An open state database, and the damage healed on the way (``None``: it was sound)."""

    db: sqlite3.Connection
    damage: Damage | None = None


def is_damage(exc: BaseException) -> bool:
    """True for an SQLite error that means the file is damaged, not the disk full or read-only."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    # Without an error code (another driver), only SQLite's own words can tell.
    text = str(exc)
    return "malformed" in text or "not a database" in text


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: the callers issue BEGIN/COMMIT themselves.
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss, and a
    # state row (a verdict waiting for the broker, a message id) must survive it.
    db.execute("PRAGMA synchronous=FULL")
    return db


def _check(db: sqlite3.Connection, schema: Sequence[str]) -> None:
    """Raise ``sqlite3.DatabaseError`` (corrupt) unless the file passes ``quick_check``."""
    rows = db.execute("PRAGMA quick_check").fetchall()
    if [tuple(r) for r in rows] != [("ok",)]:
        detail = "; ".join(str(r[0]) for r in rows[:3])
        exc = sqlite3.DatabaseError(f"quick_check: {detail}")
        exc.sqlite_errorcode = _SQLITE_CORRUPT  # type: ignore[attr-defined]
        raise exc
    for statement in schema:
        db.execute(statement)


def _move_aside(path: Path) -> Path:
    """Rename ``path`` and its side files to ``<name>.damaged-<UTC time>``; return the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():  # two heals within one second: never overwrite evidence
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
        n += 1
    # The side files first: a crash in between must not pair the old WAL with a fresh file.
    for suffix in _SIDE_FILES:
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.replace(side, Path(f"{target}{suffix}"))
    os.replace(path, target)
    return target


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in db.execute(f'PRAGMA table_info("{table}")').fetchall()]


def _readable_rows(
    db: sqlite3.Connection, table: str, columns: list[str]
) -> Iterator[tuple[object, ...]]:
    """Rows of ``table`` in rowid order, stepping over the rowid ranges SQLite cannot read.

    A damaged page raises in the middle of a scan; the scan restarts past it with a gap that
    doubles until a readable row is found, so a damaged stretch costs a few dozen seeks.
    """
    select = ", ".join(f'"{c}"' for c in columns)
    low, gap = 0, 1  # the outbox and journal tables only ever hold positive rowids
    while low <= _MAX_ROWID:
        try:
            for row in db.execute(
                f'SELECT rowid, {select} FROM "{table}" WHERE rowid >= ? ORDER BY rowid', (low,)
            ):
                rowid = row[0]
                if not isinstance(rowid, int) or rowid < low:
                    raise sqlite3.DatabaseError("rowids out of order")  # a garbage page
                yield tuple(row[1:])
                low, gap = rowid + 1, 1
            return
        except sqlite3.DatabaseError:
            low, gap = low + gap, gap * 2


def _salvage(
    damaged: Path,
    fresh: sqlite3.Connection,
    accept: RowCheck | None,
    recovered: dict[str, int],
    skipped: dict[str, int],
) -> None:
    """Copy every readable row of the fresh database's tables from ``damaged``; count them
    into ``recovered`` and ``skipped`` (filled table by table, so a failure keeps the counts)."""
    old = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
    try:
        # Accepts a file shorter than its header says (truncated mid-page), as .recover does;
        # this connection is only read from.
        old.execute("PRAGMA writable_schema=ON")
        tables = [
            str(r[0])
            for r in fresh.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                " ORDER BY rowid"
            ).fetchall()
        ]
        for table in tables:
            columns = _columns(fresh, table)
            placeholders = ", ".join("?" for _ in columns)
            insert = (
                f'INSERT OR IGNORE INTO "{table}" ({", ".join(columns)}) VALUES ({placeholders})'
            )
            done = bad = 0
            fresh.execute("BEGIN IMMEDIATE")
            try:
                for row in _readable_rows(old, table, columns):
                    if accept is not None and not accept(table, dict(zip(columns, row))):
                        bad += 1
                        continue
                    try:
                        fresh.execute(insert, row)
                        done += 1
                    except sqlite3.IntegrityError:
                        bad += 1
                fresh.execute("COMMIT")
            except BaseException:
                fresh.execute("ROLLBACK")
                raise
            recovered[table], skipped[table] = done, bad
    finally:
        old.close()


def claim_schema_version(db: sqlite3.Connection, version: int, what: str) -> None:
    """Stamp a new file with ``version`` (SQLite's ``user_version``), or refuse a file written
    by another schema version: the connection is closed and ``EdgeWorkerError`` names ``what``."""
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found == 0:
        db.execute(f"PRAGMA user_version={int(version)}")
    elif found != version:
        db.close()
        raise EdgeWorkerError(f"{what} has schema version {found}, expected {version}")


def open_state_db(path: Path, schema: Sequence[str], accept: RowCheck | None = None) -> Opened:
    """Open (or create) the SQLite file at ``path`` with ``schema`` (CREATE ... IF NOT EXISTS
    statements), healing it if it is damaged; see the module docstring.  ``accept`` vets each
    row recovered from a damaged file (see :data:`RowCheck`); refused rows count as skipped.

    Returns the open connection (WAL, ``synchronous=FULL``) and the :class:`Damage` healed, if
    any.  Raises ``sqlite3.Error`` for what is not damage (a full or read-only disk).
    """
    path = Path(path)
    db: sqlite3.Connection | None = None
    try:
        db = _connect(path)
        _check(db, schema)
        return Opened(db)
    except sqlite3.DatabaseError as exc:
        if db is not None:
            db.close()
        if not is_damage(exc):
            raise
        why = str(exc)
    moved = _move_aside(path)
    log.error("state database %s is damaged (%s); moved aside as %s", path, why, moved.name)
    fresh = _connect(path)
    for statement in schema:
        fresh.execute(statement)
    recovered: dict[str, int] = {}
    skipped: dict[str, int] = {}
    try:
        _salvage(moved, fresh, accept, recovered, skipped)
    except sqlite3.Error as exc:  # the fresh database is in use already; what was copied stays
        log.error("recovering rows from %s stopped: %s", moved.name, exc)
    damage = Damage(path=path, moved_to=moved, why=why, recovered=recovered, skipped=skipped)
    log.error("state database %s replaced by a fresh one: %s", path, damage.describe())
    return Opened(fresh, damage)
