"""Review copies after the verdict, on a thread of their own (``[verdict] review_copy``).

The judge thread stores the verdict in the outbox first, then hands the file here
(:meth:`ReviewCopier.submit`) instead of disposing of it; this thread reads the file again at
``review_copy_size`` (the judge read it at the pipeline's 512 pixels), checks it is still the
image the verdict was about (the verdict id is a hash of the SOP Instance UID, the stored
pixels and the pack), makes the copy (:mod:`edge_worker.judging.review_copy`), stores it in the
outbox (``review-copy`` kind, after the verdict, so it survives outages and restarts like one),
disposes of the file as retention says, and keeps the copy on the box beside its source
(:mod:`edge_worker.watching.copy_keep`).  The verdict never waits for any of this.

A full queue (the copies fall behind) or an outbox more than half full (the broker has been
away long: its room is for verdicts) skips the copy, logged; the file is disposed of at once.
A copy not yet made when the daemon stops or dies is not made (the file is disposed of by the
next start's sweep).  Decoding runs in a decode process of its own when ``[ingest]
decode_isolated`` is on, so it never waits for, or blocks, the judge's; the thread and that
process run at nice 19, so they take the CPU only where the judge leaves it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_worker.errors import EdgeWorkerError, Rejection
from edge_worker.ingest import read_radiograph
from edge_worker.ingest.sandbox import DecodeSandbox
from edge_worker.ingest.types import IngestPolicy, Radiograph
from edge_worker.judging.review_copy import EncodedCopy, make_review_copy
from edge_worker.names import printable
from edge_worker.publish.mqtt import Publisher
from edge_worker.publish.review_copy import build_review_copy
from edge_worker.publish.verdict import verdict_id
from edge_worker.service.config import Config
from edge_worker.watching.copy_keep import KeptCopies

log = logging.getLogger(__name__)

_STOP = object()
QUEUE_SIZE = 64


class ReviewCopier:
    """Makes, sends and keeps one review copy per verdict handed to :meth:`submit`.

    ``dispose(path)`` archives or deletes a file as retention says and returns the archived
    path (None: deleted, kept, or failed); ``prune_every_s``: how often the kept copies are
    pruned (the retention interval).
    """

    def __init__(self, *, size: int, policy: IngestPolicy, publisher: Publisher, outbox_limit: int,
                 kept: KeptCopies, dispose: Callable[[Path], Path | None], prune_every_s: float,
                 sandbox: DecodeSandbox | None = None, queue_size: int = QUEUE_SIZE) -> None:  # fmt: skip
        self.size = size
        self.policy = policy
        self.publisher = publisher
        self.outbox_limit = outbox_limit
        self.kept = kept
        self.dispose = dispose
        self.prune_every_s = prune_every_s
        self.sandbox = sandbox
        self.read = sandbox.read if sandbox is not None else read_radiograph
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._held: set[Path] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="edge-worker/review-copies", daemon=True)
        self._next_prune = 0.0
        #: Counts since start, for tests and the log: made, skipped.
        self.made = 0
        self.skipped = 0

    @classmethod
    def from_config(cls, config: Config, policy: IngestPolicy, publisher: Publisher,
                    dispose: Callable[[Path], Path | None]) -> ReviewCopier | None:  # fmt: skip
        """The copier ``config`` asks for, or None when ``[verdict] review_copy`` is off."""
        v = config.verdict
        if not v.review_copy:
            return None
        ingest = config.ingest
        sandbox = DecodeSandbox(ingest.decode_memory_mib, ingest.decode_timeout_seconds) if ingest.decode_isolated else None
        kept = KeptCopies(config.state.folder / "review-copies", v.review_copy_max_age_days, v.review_copy_max_total_mib)
        return cls(size=v.review_copy_size, policy=policy, publisher=publisher,
                   outbox_limit=config.state.outbox_max_messages, kept=kept, dispose=dispose,
                   prune_every_s=config.retention.interval_seconds, sandbox=sandbox)  # fmt: skip

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread (it starts the decode process, if isolated)."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the copies queued so far within ``timeout``, then stop.  Idempotent."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("review copies: %d file(s) left uncopied at stop", self._queue.qsize())
        if self.sandbox is not None:
            self.sandbox.stop()

    # -- the judge thread's side -----------------------------------------------------------
    def submit(self, path: Path, verdict: dict[str, Any]) -> bool:
        """Take over ``path`` (judged, its verdict in the outbox): copy it, then dispose of it.

        Returns False, taking nothing, when the queue is full: the caller disposes of the file.
        """
        with self._lock:
            self._held.add(path)
        try:
            self._queue.put_nowait((path, verdict))
        except queue.Full:
            with self._lock:
                self._held.discard(path)
            self.skipped += 1
            log.warning("review copies: queue full; no copy of %s", printable(path.name))
            return False
        return True

    def holds(self, path: Path) -> bool:
        """Whether ``path`` waits here (retention's sweep must leave it alone)."""
        with self._lock:
            return path in self._held

    # -- this thread -----------------------------------------------------------------------
    def _run(self) -> None:
        _lowest_priority()
        if self.sandbox is not None:
            try:  # started from this thread, so the child inherits its priority
                self.sandbox.start()
            except EdgeWorkerError as exc:
                log.error("review copies: %s; each copy tries again", exc)
        while True:
            try:
                job = self._queue.get(timeout=max(0.1, self._next_prune - time.monotonic()))
            except queue.Empty:
                job = None
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + self.prune_every_s
                try:
                    self.kept.prune(time.time())
                except OSError as exc:
                    log.error("review copies: pruning failed: %s", exc)
            if job is _STOP:
                return
            if isinstance(job, tuple):
                path: Path = job[0]
                verdict: dict[str, Any] = job[1]
                try:
                    self._copy(path, verdict)
                except Exception:  # the thread must outlive one bad file; the file is disposed below
                    log.exception("review copies: copy of %s failed", printable(path.name))
                    self.dispose(path)
                finally:
                    with self._lock:
                        self._held.discard(path)

    def _copy(self, path: Path, verdict: dict[str, Any]) -> None:
        vid = str(verdict["id"])
        data = self._make(path, verdict)
        if data is None:
            self.skipped += 1
            self.dispose(path)
            return
        copy, payload = data
        try:
            self.publisher.publish("review-copy", payload, key=f"review-copy:{vid}")
        except EdgeWorkerError as exc:  # OutboxFull, or a payload paho would not take
            log.warning("review copies: no copy of %s sent: %s", vid, exc)
            self.skipped += 1
            self.dispose(path)
            return
        archived = self.dispose(path)
        source = archived if archived is not None else path
        if source.exists():  # with judged = "delete" the source is gone: nothing is kept
            self.kept.keep(vid, copy.extension, copy.data, source)
        self.made += 1

    def _make(self, path: Path, verdict: dict[str, Any]) -> tuple[EncodedCopy, dict[str, Any]] | None:
        """The copy and its payload, or None (logged) when none can or may be made."""
        if self.publisher.outbox_depth * 2 >= self.outbox_limit:
            log.warning("review copies: outbox more than half full; no copy of %s", verdict["id"])
            return None
        try:
            image = self.read(path, self.policy, max_side=self.size)
        except Rejection as exc:
            log.warning("review copies: %s cannot be read again: %s", printable(path.name), exc)
            return None
        made = copy_for_verdict(image, verdict, self.size)
        if made is None:
            log.warning("review copies: %s changed since its verdict %s; no copy", printable(path.name), verdict["id"])
        return made


def _lowest_priority() -> None:
    """Nice 19 for the calling thread (Linux: a thread is a task of its own for setpriority),
    and so for the decode process it starts: under load the judge's threads, at 0, get ~98 % of
    a core they share with this one, so a copy never delays the next verdict by much."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: copies run at normal priority
        log.info("review copies: cannot lower the thread's priority (%s)", exc)


def copy_for_verdict(image: Radiograph, verdict: dict[str, Any], size: int) -> tuple[EncodedCopy, dict[str, Any]] | None:
    """The copy of ``image`` and its ``xray-qc/review-copy@1`` payload for ``verdict``, or None
    when ``image`` is not the one the verdict was about (its id is not the verdict's)."""
    pack_digest = str(verdict["pack"]["digest"])
    if verdict_id(image.header.sop_instance_uid, image.pixel_digest, pack_digest) != verdict["id"]:
        return None
    copy = make_review_copy(image, size)
    payload = build_review_copy(
        verdict_id=str(verdict["id"]), site=str(verdict["site"]), station=str(verdict["station"]),
        media_type=copy.media_type, width=copy.width, height=copy.height, scale=copy.scale, data=copy.data,
    )  # fmt: skip
    return copy, payload
