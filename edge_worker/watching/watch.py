"""Watch the folder a modality writes into and hand on each file once it is complete.

A file becomes a candidate when an event vouches that its writer finished (inotify
``IN_CLOSE_WRITE``, watchdog ``FileClosedEvent``; or a rename into the folder), or when a scan
finds it (reconcile at start, a new or moved-in directory, safety rescan, polling mode).
Creation is never a trigger: a new file is still being written.  Every candidate must then
hold still for a settle time before it is handed on, once per (path, size, mtime), unless the
consumer's ``is_whole`` check proves a vouched file complete: then it is handed on at once (a
DICOM file carries that proof: :mod:`edge_worker.ingest.whole`).

Holding still means more than size and mtime: writers preallocate a file at its full size and
fill it later, write blocks out of order, or copy with the source's mtime, and network shares
cache attributes.  So a settling file must keep its size, mtime and ctime *and* its content
fingerprint (:func:`edge_worker.watching.stillness.fingerprint`: about 160 KiB read, whatever the
file's size) from the first look at which its stat held still to the end of the window.  A
file whose last 64 KiB are all zeros (preallocated, not yet filled) must hold still for
``scan_settle_s`` at least.  Cost: one extra tick (at most 0.1 s) and two fingerprint reads
per settled file; nothing on the ``is_whole`` fast path.

Threads::

    watchdog observer --(bounded hint queue + sentinel)--> settle thread --> on_ready
                                                                         +-> on_incomplete

The observer's handler only filters names and enqueues, never blocks: when the hint queue is
full it drops the hint and asks for a full rescan, so a burst costs latency, never a file.  No
state is kept on disk: after a restart, files still in the folder are handed on again, so the
consumer must move them away or be idempotent.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from edge_worker.errors import EdgeWorkerError
from edge_worker.names import printable
from edge_worker.watching.stillness import fingerprint

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver

logger = logging.getLogger(__name__)

#: Name endings that writers use while a file is in progress; such files are never candidates.
TEMP_SUFFIXES: tuple[str, ...] = (".tmp", ".part", "~")

_FILE, _NEW_DIR, _MOVED_DIR, _GONE, _GONE_DIR = "file", "new_dir", "moved_dir", "gone", "gone_dir"
_STOP = ("stop", "")
_STALL_S = 1.0  # a gap between two looks at a file longer than this means we were held up
_EVENT_TYPES: list[type[FileSystemEvent]] = [FileClosedEvent, FileMovedEvent, DirMovedEvent,
                                              DirCreatedEvent, FileDeletedEvent, DirDeletedEvent]


class WatchError(EdgeWorkerError):
    """The folder cannot be watched (missing, not a directory, inotify watch limit reached)."""


@dataclass(frozen=True)
class _PathFilter:
    """Decides from the path string alone whether a file or directory is of interest."""

    root: str
    recursive: bool
    excluded: tuple[str, ...]
    suffixes: tuple[str, ...]

    def _parts(self, path: str) -> list[str] | None:
        prefix = os.path.join(self.root, "")
        if not path.startswith(prefix):
            return None
        if any(path == ex or path.startswith(os.path.join(ex, "")) for ex in self.excluded):
            return None
        parts = path[len(prefix):].split(os.sep)
        if any(part.startswith(".") or not part for part in parts):
            return None
        return parts

    def wants_file(self, path: str) -> bool:
        """True for a visible, non-temporary file inside the watched tree and not excluded."""
        parts = self._parts(path)
        if parts is None or (not self.recursive and len(parts) > 1):
            return False
        return not parts[-1].lower().endswith(self.suffixes)

    def wants_dir(self, path: str) -> bool:
        """True for a visible subdirectory to descend into (never in non-recursive mode)."""
        return self.recursive and self._parts(path) is not None


def _walk(flt: _PathFilter, top: str) -> Iterator[tuple[str, os.stat_result]]:
    """Yield ``(path, stat)`` for every wanted regular file in ``top`` and its wanted subfolders."""
    stack = [top]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if flt.wants_dir(entry.path):
                                stack.append(entry.path)
                        elif flt.wants_file(entry.path):
                            st = entry.stat()
                            if stat.S_ISREG(st.st_mode):
                                yield entry.path, st
                    except FileNotFoundError:
                        continue  # removed between listing and stat
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            logger.warning("cannot scan %s: %s", printable(current), exc)


@dataclass(eq=False)  # watchdog keeps handlers in sets: they must stay hashable
class _Forwarder(FileSystemEventHandler):
    """Runs in the observer thread: turns watchdog events into hints; never blocks or raises."""

    _flt: _PathFilter
    _hints: queue.Queue[tuple[str, str]]
    _overflow: threading.Event

    def _put(self, kind: str, path: str) -> None:
        try:
            self._hints.put_nowait((kind, path))
        except queue.Full:
            self._overflow.set()

    def dispatch(self, event: FileSystemEvent) -> None:
        """Forward close-write, moves, new directories and removals; everything else is noise."""
        src = os.fsdecode(event.src_path)
        gone = _GONE_DIR if event.is_directory else _GONE
        if isinstance(event, (FileMovedEvent, DirMovedEvent)):
            dest = os.fsdecode(event.dest_path)
            if src:
                self._put(gone, src)
            if event.is_directory and dest and self._flt.wants_dir(dest):
                self._put(_MOVED_DIR, dest)
            elif not event.is_directory and dest and self._flt.wants_file(dest):
                self._put(_FILE, dest)
        elif isinstance(event, FileClosedEvent):
            if self._flt.wants_file(src):
                self._put(_FILE, src)
        elif isinstance(event, DirCreatedEvent):
            if self._flt.wants_dir(src):
                self._put(_NEW_DIR, src)
        elif isinstance(event, (FileDeletedEvent, DirDeletedEvent)):
            self._put(gone, src)


@dataclass
class _Pending:
    """A candidate being watched until it is stable or its deadline passes."""

    vouched: bool
    size: int
    mtime_ns: int
    changed_at: float
    observed_at: float
    deadline_at: float
    ctime_ns: int = 0
    #: (size, mtime_ns, ctime_ns) that ``is_whole`` last said no to: asked again only after a change.
    refused: tuple[int, int, int] | None = None
    #: The content fingerprint taken at ``printed_at``, the first look at which the stat held
    #: still; ``None`` while the stat changes.  The settle window runs from ``printed_at``.
    printed: bytes | None = None
    printed_at: float = 0.0
    zero_tail: bool = False


class FolderWatcher:
    """Hand on each complete file that appears in ``folder``, once.

    :param folder: the directory the modality writes into; must exist at :meth:`start`.
    :param on_ready: called with each complete file's path, or a bounded queue the path is put
        on (blocking while full: back-pressure on the settle thread).
    :param on_incomplete: called with ``(path, reason_text)`` for a file still changing, or
        still empty, after ``incomplete_deadline_s``.  Callbacks run in the settle thread;
        :meth:`stop` cannot interrupt one that blocks.
    :param settle_s: how long size, mtime, ctime and content fingerprint must stay unchanged
        after a close/move event.
    :param is_whole: optional check of a vouched candidate's content; ``True`` hands it on at
        once, without the settle wait.  Asked once per (size, mtime, ctime); an exception
        counts as no.
    :param scan_settle_s: the same for files found only by a scan (at least ``settle_s``), and
        for any file whose last 64 KiB are zeros (preallocated and not yet filled).
    :param incomplete_deadline_s: how long a candidate may take to become stable and non-empty.
    :param recursive: also watch subfolders (modalities write study/series trees).
    :param exclude: folders to ignore, absolute or relative to ``folder`` (e.g. the quarantine).
    :param ignore_suffixes: name endings of in-progress files; names starting with '.' are
        always ignored, as is everything under a directory whose name starts with '.'.
    :param use_polling: scan every ``poll_interval_s`` instead of inotify (network shares, where
        inotify misses writes by other machines).  Forced off Linux: no close-write event.
    :param rescan_interval_s: with inotify, a full rescan this often catches events the kernel
        dropped; ``None`` disables it.
    :param hint_queue_size: bound on events waiting for the settle thread.
    :raises ValueError: for inconsistent timings or an unbounded output queue.
    """

    def __init__(
        self,
        folder: Path,
        on_ready: Callable[[Path], None] | queue.Queue[Path],
        *,
        on_incomplete: Callable[[Path, str], None],
        settle_s: float = 0.5,
        is_whole: Callable[[str], bool] | None = None,
        incomplete_deadline_s: float = 60.0,
        scan_settle_s: float = 2.0,
        recursive: bool = True,
        exclude: Iterable[Path] = (),
        ignore_suffixes: tuple[str, ...] = TEMP_SUFFIXES,
        use_polling: bool = False,
        poll_interval_s: float = 2.0,
        rescan_interval_s: float | None = 300.0,
        hint_queue_size: int = 10_000,
    ) -> None:
        if settle_s < 0 or poll_interval_s <= 0 or hint_queue_size <= 0:
            raise ValueError("settle_s must be >= 0, poll_interval_s and hint_queue_size > 0")
        if incomplete_deadline_s <= max(settle_s, scan_settle_s):
            raise ValueError("incomplete_deadline_s must exceed settle_s and scan_settle_s")
        if isinstance(on_ready, queue.Queue) and on_ready.maxsize <= 0:
            raise ValueError("on_ready queue must be bounded (maxsize > 0)")
        root = os.path.abspath(folder)
        self.folder = Path(root)
        self._on_ready = on_ready
        self._on_incomplete = on_incomplete
        self._settle_s = settle_s
        self._is_whole = is_whole
        self._scan_settle_s = max(settle_s, scan_settle_s)
        self._deadline_s = incomplete_deadline_s
        self._polling = use_polling or not sys.platform.startswith("linux")
        if self._polling != use_polling:
            logger.warning("no close-write events on %s: polling %s", sys.platform, root)
        self._scan_every = poll_interval_s if self._polling else rescan_interval_s
        self._tick = max(0.01, min(0.1, settle_s / 4))
        excluded = tuple(os.path.abspath(os.path.join(root, p)) for p in exclude)
        suffixes = tuple(s.lower() for s in ignore_suffixes)
        self._flt = _PathFilter(root, recursive, excluded, suffixes)
        self._hints: queue.Queue[tuple[str, str]] = queue.Queue(maxsize=hint_queue_size)
        self._overflow = threading.Event()
        self._stop = threading.Event()
        self._pending: dict[str, _Pending] = {}
        # (size, mtime_ns) last handed on, per path: what makes emission once-only.  Pruned by
        # removal events and by every full scan, so it stays the size of the folder.
        self._seen: dict[str, tuple[int, int]] = {}
        self._observer: BaseObserver | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching; the reconcile scan runs in the background thread.

        :raises WatchError: the folder is missing or cannot be watched.
        :raises RuntimeError: called twice.
        """
        if self._thread is not None:
            raise RuntimeError("FolderWatcher.start() called twice")
        if not self.folder.is_dir():
            raise WatchError(f"watch folder {self.folder} is not a directory")
        if not self._polling:
            self._observer = self._start_observer()
        self._thread = threading.Thread(target=self._run, name="edge-worker/watch", daemon=True)
        self._thread.start()

    def _start_observer(self) -> BaseObserver:
        # Imported here: the inotify module only exists on Linux.
        from watchdog.observers.inotify import InotifyObserver

        handler = _Forwarder(self._flt, self._hints, self._overflow)
        observer = None
        try:
            # Full events report a file renamed in from outside the tree as a move with an
            # empty source; the default reports a creation, which we must not act on.
            observer = InotifyObserver(generate_full_events=True)
            observer.schedule(handler, str(self.folder), recursive=self._flt.recursive,
                              event_filter=_EVENT_TYPES)
            observer.start()
        except OSError as exc:
            if observer is not None:
                observer.stop()  # also ends the inotify reader thread its constructor started
            sysctl = {errno.ENOSPC: "max_user_watches", errno.EMFILE: "max_user_instances"}
            hint = f" (raise fs.inotify.{sysctl[exc.errno]})" if exc.errno in sysctl else ""
            raise WatchError(f"cannot watch {self.folder}: {exc}{hint}") from exc
        return observer

    def stop(self) -> None:
        """Ask every thread to stop; returns at once.  Safe to call more than once."""
        self._stop.set()
        # When the queue is full the sentinel is not needed: the settle thread polls the event.
        with contextlib.suppress(queue.Full):
            self._hints.put_nowait(_STOP)
        if self._observer is not None:
            self._observer.stop()

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds in all for the threads to end."""
        end = None if timeout is None else time.monotonic() + timeout
        for thread in (self._observer, self._thread):
            if thread is not None and thread.ident is not None:
                thread.join(None if end is None else max(0.0, end - time.monotonic()))

    def is_alive(self) -> bool:
        """True while every thread runs; False after :meth:`stop` or when one died (for
        instance the folder was deleted): a health fault."""
        if self._thread is None or not self._thread.is_alive():
            return False
        obs = self._observer
        return obs is None or (obs.is_alive() and all(e.is_alive() for e in obs.emitters))

    def _run(self) -> None:
        try:
            self._full_scan("startup reconcile")
            next_scan = time.monotonic() + (self._scan_every or float("inf"))
            while not self._stop.is_set():
                wait = self._tick if self._pending else min(1.0, next_scan - time.monotonic())
                self._drain(max(wait, 0.0))
                if self._stop.is_set():
                    break
                if self._overflow.is_set():
                    self._overflow.clear()
                    logger.warning("hint queue overflowed: rescanning %s", self.folder)
                    self._full_scan("overflow rescan")
                if time.monotonic() >= next_scan:
                    self._full_scan("poll" if self._polling else "periodic rescan")
                    next_scan = time.monotonic() + (self._scan_every or float("inf"))
                self._settle()
        except Exception:
            # Log here rather than let threading's hook print it: a watcher that dies silently
            # is the classic watchdog failure; is_alive() now reports it.
            logger.exception("folder watcher for %s died", self.folder)

    def _drain(self, timeout: float) -> None:
        with contextlib.suppress(queue.Empty):
            hint = self._hints.get(timeout=timeout)
            for _ in range(1000):  # bounded, so settling is never starved by a burst
                if hint == _STOP:
                    return
                self._apply(*hint)
                hint = self._hints.get_nowait()

    def _apply(self, kind: str, path: str) -> None:
        if kind == _FILE:
            self._consider(path, vouched=True)
        elif kind in (_NEW_DIR, _MOVED_DIR):
            # A directory renamed in is the writer's atomic publish; one that was just created
            # may hold files whose close-write happened before inotify watched it.
            for file_path, st in _walk(self._flt, path):
                self._consider(file_path, vouched=kind == _MOVED_DIR, st=st)
        elif kind == _GONE:
            self._pending.pop(path, None)
            self._seen.pop(path, None)
        elif kind == _GONE_DIR:
            prefix = os.path.join(path, "")
            for table in (self._pending, self._seen):
                for key in [k for k in table if k == path or k.startswith(prefix)]:
                    del table[key]

    def _full_scan(self, why: str) -> None:
        found = set()
        for path, st in _walk(self._flt, self._flt.root):
            if self._stop.is_set():
                return
            found.add(path)
            self._consider(path, vouched=False, st=st)
        for path in [p for p in self._seen if p not in found]:
            del self._seen[path]
        logger.debug("%s of %s: %d files, %d pending", why, self.folder, len(found),
                     len(self._pending))

    def _consider(self, path: str, *, vouched: bool, st: os.stat_result | None = None) -> None:
        entry = self._pending.get(path)
        if entry is not None:
            entry.vouched = entry.vouched or vouched
            return
        st = st or _stat(path)
        if st is None or not stat.S_ISREG(st.st_mode):
            return
        if self._seen.get(path) == (st.st_size, st.st_mtime_ns):
            return
        now = time.monotonic()
        self._pending[path] = _Pending(vouched, st.st_size, st.st_mtime_ns, now, now,
                                       now + self._deadline_s, st.st_ctime_ns)

    def _settle(self) -> None:
        for path, entry in list(self._pending.items()):
            if self._stop.is_set():
                return
            st = _stat(path)
            if st is None:
                del self._pending[path]
                continue
            now = time.monotonic()
            if now - entry.observed_at > _STALL_S:
                # This thread was held up (a slow callback, a full output queue): the deadline
                # clock must not run while nobody was looking.
                entry.deadline_at += now - entry.observed_at
            entry.observed_at = now
            if (st.st_size, st.st_mtime_ns, st.st_ctime_ns) != (entry.size, entry.mtime_ns,
                                                                entry.ctime_ns):
                entry.size, entry.mtime_ns, entry.ctime_ns = st.st_size, st.st_mtime_ns, st.st_ctime_ns
                entry.changed_at, entry.printed = now, None
            # The proof first: a whole file costs no fingerprint read.
            stable = entry.vouched and entry.size > 0 and self._proved_whole(path, entry)
            if not stable and entry.size > 0 and now > entry.changed_at:
                stable = self._held_still(path, entry, now)
            if not stable and now < entry.deadline_at:
                continue
            del self._pending[path]
            self._seen[path] = (entry.size, entry.mtime_ns)
            if stable:
                self._emit(path)
            else:
                state = "still empty" if entry.size == 0 else f"still changing ({entry.size} bytes)"
                reason = f"{state} after {self._deadline_s:g} s"
                logger.info("incomplete file %s: %s", printable(path), reason)
                _call_safely(self._on_incomplete, Path(path), reason)

    def _held_still(self, path: str, entry: _Pending, now: float) -> bool:
        """True once the file's content fingerprint held for the whole settle window.

        Called only while the stat holds still; the first call takes the fingerprint, the
        ones after the window compare it (a change starts the window again).
        """
        if entry.printed is None:
            taken = fingerprint(path)
            if taken is None:
                return False
            (entry.printed, entry.zero_tail), entry.printed_at = taken, now
            return False
        window = self._settle_s if entry.vouched else self._scan_settle_s
        if entry.zero_tail:
            window = max(window, self._scan_settle_s)
        if now - entry.printed_at < window:
            return False
        taken = fingerprint(path)
        if taken is None:
            return False
        if taken[0] != entry.printed:
            (entry.printed, entry.zero_tail), entry.printed_at = taken, now
            entry.changed_at = now
            return False
        return True

    def _proved_whole(self, path: str, entry: _Pending) -> bool:
        """Ask ``is_whole`` about a vouched file once per (size, mtime, ctime) it has."""
        key = (entry.size, entry.mtime_ns, entry.ctime_ns)
        if self._is_whole is None or entry.refused == key:
            return False
        try:
            whole = bool(self._is_whole(path))
        except Exception:
            logger.exception("is_whole check failed for %s; settling instead", printable(path))
            whole = False
        if not whole:
            entry.refused = key
        return whole

    def _emit(self, path: str) -> None:
        sink = self._on_ready
        if isinstance(sink, queue.Queue):
            while not self._stop.is_set():
                with contextlib.suppress(queue.Full):
                    sink.put(Path(path), timeout=0.1)
                    return
        else:
            _call_safely(sink, Path(path))


def _stat(path: str) -> os.stat_result | None:
    """The file's stat, or None when it is gone or cannot be looked at (then it is dropped)."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("cannot stat %s, ignoring it: %s", printable(path), exc)
        return None


def _call_safely(callback: Callable[..., None], *args: object) -> None:
    """Run a consumer's callback; its bug must not stop the watching, so log it and go on."""
    try:
        callback(*args)
    except Exception:
        logger.exception("%r failed for %s", callback, [printable(str(a)) for a in args])
