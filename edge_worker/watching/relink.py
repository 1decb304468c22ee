"""Move a file out of the watch folder without stalling the watcher.

A rename out of a watched tree leaves inotify an ``IN_MOVED_FROM`` with no ``IN_MOVED_TO``
to pair it with.  watchdog holds such an event for half a second in a first-in first-out
queue, waiting for its partner, and every event behind it waits too: a file closed in the
watch folder less than 0.5 s after the previous one was archived or quarantined was seen up to
0.5 s late (BENCHMARKS.md, "Archive without stalling the watcher").  A hard link at the
destination followed by an unlink of the original gives ``IN_DELETE`` instead, which nothing
holds.  Where the filesystem has no hard links, the rename is used.
"""

from __future__ import annotations

import os
from pathlib import Path


def rename_over(source: Path, dest: Path) -> None:
    """Put ``source`` at ``dest`` (a placeholder the caller claimed), removing ``source``.

    Raises ``OSError`` only while ``source`` is still in place (the caller may then remove
    ``dest``), including ``EXDEV`` when ``dest`` is on another filesystem.
    """
    link = dest.with_name(f".{dest.name}.link")
    try:
        os.link(source, link)
    except OSError:
        os.replace(source, dest)  # no hard links here (or a stale link name): a plain rename
        return
    try:
        os.replace(link, dest)
    except OSError:
        link.unlink(missing_ok=True)
        raise
    try:
        source.unlink()
    except FileNotFoundError:
        pass  # gone already: the file is where it belongs
    except OSError:
        dest.unlink(missing_ok=True)  # both names point at the file: keep the original
        raise
