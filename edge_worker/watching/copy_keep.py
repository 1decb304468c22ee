"""The review copies kept on the box: ``<state>/review-copies/<verdict_id>.<ext>``.

Each copy has a sidecar ``<verdict_id>.<ext>.source`` naming its source file where it is now
(archived, or left in the watch folder with ``judged = "keep"``).  A copy never outlives its
source: :meth:`KeptCopies.prune` deletes every copy whose source is gone (the archive's own
pruning took it, or another system cleared the watch folder), then those older than the age
bound, then the oldest until the size bound holds (:func:`~edge_worker.watching.retention.
select_for_removal`, the archive's own rule).  With ``judged = "delete"`` nothing is kept.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from edge_worker.watching.retention import DAY_S, MIB, Item, delete_items, select_for_removal

log = logging.getLogger(__name__)

SOURCE_SUFFIX = ".source"
_NAME = re.compile(r"^[0-9a-f-]{36}\.(png|jpg)$")


class KeptCopies:
    """Copies in ``folder``, bounded by ``max_age_days`` (0: none) and ``max_total_mib`` (0: none)."""

    def __init__(self, folder: Path, max_age_days: float, max_total_mib: float) -> None:
        self.folder = folder
        self.max_age_days = max_age_days
        self.max_total_mib = max_total_mib

    def keep(self, verdict_id: str, extension: str, data: bytes, source: Path) -> Path:
        """Write the copy (atomically: a hidden temporary name, then a rename) and its sidecar.

        Raises ValueError for a name that is not ``<uuid>.<png|jpg>``, OSError from the disk.
        """
        name = f"{verdict_id}.{extension}"
        if not _NAME.match(name):
            raise ValueError(f"not a review-copy name: {name!r}")
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        for target, content in ((path.with_name(name + SOURCE_SUFFIX), os.fsencode(source.absolute())),
                                (path, data)):  # fmt: skip
            temporary = target.with_name(f".{target.name}.tmp")
            temporary.write_bytes(content)
            os.replace(temporary, target)
        return path

    def path_of(self, verdict_id: str) -> Path | None:
        """The kept copy of ``verdict_id``, or None."""
        for extension in ("png", "jpg"):
            path = self.folder / f"{verdict_id}.{extension}"
            if path.exists():
                return path
        return None

    def _items(self) -> tuple[list[Item], list[Item]]:
        """``(orphans, items)``: copies whose source is gone (and lone sidecars), and the others."""
        orphans: list[Item] = []
        items: list[Item] = []
        try:
            names = set(os.listdir(self.folder))
        except FileNotFoundError:
            return [], []
        for name in names:
            owner = name.removesuffix(SOURCE_SUFFIX)
            if owner != name and _NAME.match(owner) and owner not in names:  # its copy was never written
                orphans.append(Item((self.folder / name,), 0, 0.0))
            if not _NAME.match(name):
                continue
            path = self.folder / name
            sidecar = path.with_name(name + SOURCE_SUFFIX)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            try:
                source: Path | None = Path(os.fsdecode(sidecar.read_bytes()))
            except FileNotFoundError:
                source = None  # a write cut short: its source is unknown, so it goes
            item = Item((path, sidecar), st.st_size, st.st_mtime)
            (orphans if source is None or not source.exists() else items).append(item)
        return orphans, items

    def prune(self, now: float) -> int:
        """Delete orphans, then by age and total size; returns how many copies were deleted."""
        orphans, items = self._items()
        chosen = orphans + select_for_removal(items, now, self.max_age_days * DAY_S, int(self.max_total_mib * MIB))
        removed = len(delete_items(chosen, "review copies"))
        if removed:
            log.info("review copies: deleted %d (%d whose source file is gone)", removed, len(orphans))
        return removed
