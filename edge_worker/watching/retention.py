"""Folders that do not grow forever: judged files archived or deleted, archive and quarantine pruned.

* What to remove is decided by pure functions over :class:`Item` values (a file with its
  sidecars, its size and time): :func:`select_expired`, :func:`select_over_size` and
  :func:`select_for_removal`, each testable without a disk.
* :func:`archive_file` moves a judged file to ``<archive>/<YYYY-MM-DD>/<path in the watch folder>``
  (same name taken: ``x__1.dcm``); :func:`scan` and :func:`prune` read and trim a folder.
* :class:`Retention` applies the ``[retention]`` config: the daemon calls :meth:`Retention.dispose`
  for each file whose verdict is stored for sending, and :meth:`Retention.prune_all` now and then.

The archive lives outside the watch folder (or the watcher excludes it), so an archived file is
never judged again.  A quarantined file and its ``.reason.json`` are pruned together.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from edge_worker.service.config import RetentionConfig
from edge_worker.watching.relink import rename_over

log = logging.getLogger(__name__)

DAY_S = 86_400.0
MIB = 1 << 20
#: Files that belong to another file and go with it (the quarantine's reason records).
SIDECAR_SUFFIXES = (".reason.json",)
_MAX_VARIANTS = 10_000


@dataclass(frozen=True)
class Item:
    """One removable unit: a file and its sidecars, their total size and the file's mtime."""

    paths: tuple[Path, ...]
    size: int
    mtime: float


def select_expired(items: Iterable[Item], now: float, max_age_s: float) -> list[Item]:
    """Items older than ``max_age_s`` at ``now`` (POSIX s), oldest first; none if ``max_age_s <= 0``."""
    if max_age_s <= 0:
        return []
    return sorted((i for i in items if now - i.mtime > max_age_s), key=lambda i: i.mtime)


def select_over_size(items: Iterable[Item], max_bytes: int) -> list[Item]:
    """The oldest items to remove so the rest total at most ``max_bytes``; none if ``max_bytes <= 0``."""
    ordered = sorted(items, key=lambda i: i.mtime)
    if max_bytes <= 0:
        return []
    total = sum(i.size for i in ordered)
    chosen: list[Item] = []
    for item in ordered:
        if total <= max_bytes:
            break
        chosen.append(item)
        total -= item.size
    return chosen


def select_for_removal(items: Iterable[Item], now: float, max_age_s: float, max_bytes: int) -> list[Item]:
    """Everything expired, then the oldest of the rest until the size bound holds; oldest first."""
    pool = list(items)
    expired = select_expired(pool, now, max_age_s)
    gone = set(expired)
    over = select_over_size([i for i in pool if i not in gone], max_bytes)
    return sorted(expired + over, key=lambda i: i.mtime)


def scan(folder: Path) -> list[Item]:
    """Every file under ``folder`` as an :class:`Item`, sidecars joined to their file.

    Files that vanish while being read are skipped; a missing folder is empty.
    """
    sizes: dict[Path, tuple[int, float]] = {}
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            try:
                st = path.stat()
            except OSError:
                continue
            sizes[path] = (st.st_size, st.st_mtime)
    groups: dict[Path, list[Path]] = {}
    for path in sizes:
        owner = next((path.with_name(path.name[: -len(s)]) for s in SIDECAR_SUFFIXES if path.name.endswith(s)), path)
        groups.setdefault(owner if owner in sizes else path, []).append(path)
    return [
        Item(tuple(sorted(paths)), sum(sizes[p][0] for p in paths), sizes[owner][1])
        for owner, paths in groups.items()
    ]


def delete_items(items: list[Item], what: str) -> list[Item]:
    """Delete every file of each item; the items wholly deleted.  A failure is logged (``what``
    names the caller) and the item counts as kept."""
    deleted = []
    for item in items:
        try:
            for path in item.paths:
                path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("%s: cannot delete %s: %s", what, item.paths[0], exc)
            continue
        deleted.append(item)
    return deleted


def prune(folder: Path, now: float, max_age_s: float, max_bytes: int) -> tuple[int, int]:
    """Delete from ``folder`` what :func:`select_for_removal` picks; ``(items, bytes)`` removed.

    Empty subfolders left behind are removed too (never ``folder`` itself).  A file that
    cannot be deleted is logged and counted as kept.
    """
    deleted = delete_items(select_for_removal(scan(folder), now, max_age_s, max_bytes), "retention")
    for root, dirs, files in os.walk(folder, topdown=False):
        if Path(root) != Path(folder) and not dirs and not files:
            try:
                Path(root).rmdir()
            except OSError:
                pass  # something arrived meanwhile: it stays
    return len(deleted), sum(item.size for item in deleted)


def _variant(path: Path, n: int) -> Path:
    return path if n == 0 else path.with_name(f"{path.stem}__{n}{path.suffix}")


def archive_file(path: Path, watch_root: Path, archive_root: Path, when: float) -> Path:
    """Move ``path`` to ``archive_root/<local date of when>/<its path under watch_root>``.

    A free name is claimed exclusively first (``x__1.dcm`` when ``x.dcm`` is taken: modalities
    reuse names), then the file is renamed onto it, or copied and the original removed when
    the archive is on another filesystem.  Returns the new path; raises ``OSError``, leaving
    the original in place.
    """
    try:
        rel = path.relative_to(watch_root)
    except ValueError:
        rel = Path(path.name)
    day = datetime.fromtimestamp(when).strftime("%Y-%m-%d")
    target = archive_root / day / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    for n in range(_MAX_VARIANTS):
        dest = _variant(target, n)
        try:
            with open(dest, "x"):
                pass
        except FileExistsError:
            continue
        break
    else:
        raise OSError(f"no free name for {target.name} in {target.parent}")
    try:
        rename_over(path, dest)
    except OSError as exc:
        if exc.errno != getattr(os, "EXDEV", 18):
            dest.unlink(missing_ok=True)
            raise
        try:
            shutil.copy2(path, dest)
            path.unlink()
        except OSError:
            dest.unlink(missing_ok=True)
            raise
    return dest


class Retention:
    """The ``[retention]`` policy for one station's watch, archive and quarantine folders."""

    def __init__(self, config: RetentionConfig, watch_root: Path, archive: Path, quarantine: Path) -> None:
        """``config``: the ``[retention]`` section; the three folders as configured."""
        self.config = config
        self.watch_root = watch_root
        self.archive = archive
        self.quarantine = quarantine

    def dispose(self, path: Path, now: float) -> Path | None:
        """Archive or delete a judged file (or leave it, with ``judged = "keep"``).

        Returns the archived path, None otherwise.  Raises ``OSError`` when the file cannot be
        moved or deleted (it stays where it is; the caller retries later).
        """
        mode = self.config.judged
        if mode == "keep":
            return None
        if mode == "delete":
            path.unlink(missing_ok=True)
            log.debug("retention: deleted judged %s", path)
            return None
        try:
            dest = archive_file(path, self.watch_root, self.archive, now)
        except FileNotFoundError:
            return None  # gone already (the sweep and the judge raced for it, or the modality)
        log.debug("retention: archived %s as %s", path, dest)
        return dest

    def sweep(self, is_judged: Callable[[Path], bool], exclude: Sequence[Path], now: float) -> int:
        """Dispose of judged files still in the watch folder; how many were moved or deleted.

        They are left by a crash between the verdict and its disposal, or were judged while
        ``judged = "keep"``.  ``is_judged`` says whether a file's current version is done;
        folders in ``exclude`` (quarantine, state, archive) and hidden files (a writer's
        temporary names) are skipped.  Raises ``OSError`` from the first failed disposal.
        """
        if self.config.judged == "keep":
            return 0
        skip = {p.absolute() for p in exclude}
        done = 0
        for root, dirs, names in os.walk(self.watch_root):
            dirs[:] = [d for d in dirs if (Path(root) / d).absolute() not in skip]
            for name in names:
                path = Path(root) / name
                if not name.startswith(".") and is_judged(path):
                    self.dispose(path, now)
                    done += 1
        return done

    def prune_all(self, now: float) -> dict[str, tuple[int, int]]:
        """Prune the archive and the quarantine by age and size; ``{folder: (items, bytes)}``."""
        c = self.config
        done: dict[str, tuple[int, int]] = {}
        targets = [("quarantine", self.quarantine, c.quarantine_max_age_days, c.quarantine_max_total_mib)]
        if c.judged == "archive":
            targets.insert(0, ("archive", self.archive, c.max_age_days, c.max_total_mib))
        for name, folder, days, mib in targets:
            removed, freed = prune(folder, now, days * DAY_S, int(mib * MIB))
            done[name] = (removed, freed)
            if removed:
                log.info("retention: removed %d item(s), %.1f MiB, from the %s %s",
                         removed, freed / MIB, name, folder)  # fmt: skip
        return done
