"""Collect the files of each MR series until it is complete, then hand the series on once.

The watcher hands on files one by one; a cross-sectional series is judged as a whole.  Files
are keyed by Series Instance UID (their header facts only, :mod:`edge_worker.ingest.slices`:
nothing is decoded while a series waits).  A series is *due* when no file of it came for
``quiet_seconds`` and then either

* nothing says more will come (:func:`edge_worker.ingest.volume.missing`: the count headers
  agree with the frames present, no gap in the positions): handed on as ``complete``; or
* it is still short, and ``max_wait_seconds`` have passed since its first file: handed on with
  the reason it is short (``slice_missing`` for a gap, ``series_timeout`` for images that never
  came), so nothing is held forever.

Time is the caller's (``now``), so :class:`SeriesCollector` is tested without sleeping;
:class:`SeriesWatch` is the thread that ticks it.  State lives in memory only: the files stay
in the watch folder until their series is judged, and the watcher's reconcile at start hands
them on again, so a restart re-collects them.  A file's first-seen time is its mtime when that
is earlier, so a series left incomplete before a restart still times out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_worker.errors import Rejection, RejectReason
from edge_worker.ingest.slices import SliceFile
from edge_worker.ingest.volume import expected_count, frames_of, missing
from edge_worker.names import printable

log = logging.getLogger(__name__)

#: How often the collector thread looks for due series.
TICK_SECONDS = 0.25


@dataclass(frozen=True)
class DueSeries:
    """A series handed on: its files, and why it is short when it timed out (None: complete)."""

    series_uid: str
    files: tuple[SliceFile, ...]
    first_seen: float
    last_seen: float
    short: Rejection | None = None


@dataclass
class _Waiting:
    files: dict[Path, SliceFile] = field(default_factory=dict)
    first_seen: float = 0.0
    last_seen: float = 0.0


class SeriesCollector:
    """The series waiting for their last file (not thread-safe: :class:`SeriesWatch` locks)."""

    def __init__(self, quiet_seconds: float, max_wait_seconds: float) -> None:
        self.quiet_seconds = quiet_seconds
        self.max_wait_seconds = max_wait_seconds
        self._waiting: dict[str, _Waiting] = {}

    def add(self, facts: SliceFile, now: float, mtime: float | None = None) -> None:
        """Collect one file (a new version of a path replaces the old one)."""
        entry = self._waiting.get(facts.series_uid)
        first = min(now, mtime) if mtime is not None else now
        if entry is None:
            entry = self._waiting[facts.series_uid] = _Waiting(first_seen=first)
        entry.first_seen = min(entry.first_seen, first)
        entry.files[facts.path] = facts
        entry.last_seen = now

    def holds(self, path: Path) -> bool:
        """Whether ``path`` waits in a series."""
        return any(path in w.files for w in self._waiting.values())

    def waiting(self) -> dict[str, int]:
        """Series UID -> frames collected so far."""
        return {uid: len(frames_of(list(w.files.values()))) for uid, w in self._waiting.items()}

    def due(self, now: float) -> list[DueSeries]:
        """Take the series that are due (see the module docstring), oldest first."""
        out = []
        for uid, w in sorted(self._waiting.items(), key=lambda kv: kv[1].first_seen):
            if now - w.last_seen < self.quiet_seconds:
                continue
            files = tuple(sorted(w.files.values(), key=lambda f: printable(f.path)))
            short = missing(files)
            if short is not None:
                waited = now - w.first_seen
                if waited < self.max_wait_seconds:
                    continue
                if short.reason is not RejectReason.SLICE_MISSING:
                    expected = expected_count(files)
                    short = Rejection(RejectReason.SERIES_TIMEOUT, (
                        f"{len(frames_of(files))} of {expected} images came; the series was still "
                        f"incomplete {waited:.0f} s after its first file ([series] max_wait_seconds "
                        f"{self.max_wait_seconds:g})"
                    ))  # fmt: skip
            del self._waiting[uid]
            out.append(DueSeries(uid, files, w.first_seen, w.last_seen, short))
        return out


class SeriesWatch:
    """The thread that ticks a :class:`SeriesCollector` and hands each due series to ``on_due``.

    ``read`` gives a file's series facts (None: not a series file, so :meth:`offer` returns
    False and the caller judges it as a radiograph).  ``on_due`` runs on this thread, so a
    series being judged never delays a radiograph on the judge thread.
    """

    def __init__(
        self,
        read: Callable[[Path], SliceFile | None],
        on_due: Callable[[DueSeries], object],
        quiet_seconds: float,
        max_wait_seconds: float,
        name: str = "edge-worker/series",
    ) -> None:
        self.read = read
        self.on_due = on_due
        self.collector = SeriesCollector(quiet_seconds, max_wait_seconds)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def offer(self, path: Path) -> bool:
        """Collect ``path`` when it belongs to a series (True), else leave it to the caller."""
        facts = self.read(path)
        if facts is None:
            return False
        try:
            mtime: float | None = path.stat().st_mtime
        except OSError:
            mtime = None
        with self._lock:
            self.collector.add(facts, time.time(), mtime)
        log.debug("%s collected into series %s", printable(path.name), facts.series_uid)
        return True

    def holds(self, path: Path) -> bool:
        with self._lock:
            return self.collector.holds(path)

    def waiting(self) -> dict[str, int]:
        with self._lock:
            return self.collector.waiting()

    def tick(self, now: float | None = None) -> Sequence[DueSeries]:
        """Hand on the series due at ``now`` (default: the clock); the series handed on."""
        with self._lock:
            due = self.collector.due(time.time() if now is None else now)
        for series in due:
            try:
                self.on_due(series)
            except Exception:  # one series' failure must not stop the others being judged
                log.exception("series %s could not be handled", series.series_uid)
        return due

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            self.tick()
