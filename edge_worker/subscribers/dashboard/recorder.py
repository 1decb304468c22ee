"""Writes what the feed receives into the review store, off the feed's thread.

paho's network thread only puts messages on a bounded queue (:meth:`Recorder.offer`, never
blocking): a slow or stopped database must not hold up the live board.  One thread takes
them in order and writes them: a verdict with ``ReviewStore.record_verdict`` (idempotent by
id, so a redelivery changes nothing), a review copy with ``ReviewCopies.accept``.  While the
database is unavailable the thread keeps the message it holds and tries again every
``retry_s`` seconds, so a verdict received during an outage is recorded once the database is
back; the queue meanwhile holds up to ``depth`` more (a verdict is about 10 kB), beyond which
new messages are not recorded, each logged at ERROR.  The same thread prunes the copy store
every ``prune_s`` seconds (by age and total size, ``ReviewCopies.prune``).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any, Protocol, cast

from edge_worker.subscribers.review.errors import StoreUnavailable
from edge_worker.subscribers.review.store import InvalidVerdict, ReviewStore

log = logging.getLogger(__name__)

_STOP = object()


class CopyAcceptor(Protocol):
    """What the recorder needs of the copy store (``review.copies.ReviewCopies``)."""

    def accept(self, payload: bytes) -> str | None: ...

    def prune(self) -> int: ...


class Recorder:
    """A thread that records verdicts (and review copies) in the store, retrying while it is down."""

    def __init__(self, store: ReviewStore, copies: CopyAcceptor | None = None, *,
                 depth: int = 100_000, retry_s: float = 2.0, prune_s: float = 3600.0) -> None:  # fmt: skip
        self.store = store
        self.copies = copies
        self.retry_s = retry_s
        self.prune_s = prune_s
        self._next_prune = time.monotonic()  # once at start, then every prune_s
        self.pruned = 0
        self._queue: queue.Queue[object] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.recorded = 0  # new verdicts written
        self.copies_kept = 0
        self.dropped = 0  # over the queue's depth, or unusable
        self.waiting_for_database = False

    @property
    def pending(self) -> int:
        """Messages received and not yet written."""
        return self._queue.qsize()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="edge-worker/dashboard-review-recorder")
        self._thread.start()

    def stop(self) -> None:
        """Stop after the message in hand (what is still queued is logged, not written); join."""
        self._stop.set()
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass  # the loop sees the stop event after its current message
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        left = self.pending
        if left:
            log.warning("review: stopping with %d received message(s) not yet recorded", left)

    def offer(self, kind: str, payload: bytes) -> None:
        """Queue a ``verdict`` or ``review-copy`` payload; never blocks (called on paho's thread)."""
        try:
            self._queue.put_nowait((kind, payload))
        except queue.Full:
            with self._lock:
                self.dropped += 1
            log.error("review: %d messages waiting for the database; this %s is not recorded", self._queue.maxsize, kind)

    def drain(self, timeout: float) -> bool:
        """Wait until everything queued so far is written (tests); False on timeout."""
        done = threading.Event()
        try:
            self._queue.put(("sync", done), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._prune_when_due()
            try:
                wait = None if self.copies is None else max(self._next_prune - time.monotonic(), 0.05)
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                continue
            if item is _STOP:
                return
            kind, payload = cast(tuple[str, Any], item)
            if kind == "sync":
                cast(threading.Event, payload).set()
                continue
            while not self._stop.is_set():
                try:
                    self._write(kind, payload)
                    break
                except StoreUnavailable as exc:
                    if not self.waiting_for_database:
                        log.warning("review: %s; keeping received verdicts and retrying every %.0f s", exc, self.retry_s)
                    self.waiting_for_database = True
                    self._stop.wait(self.retry_s)
            else:
                return

    def _write(self, kind: str, payload: bytes) -> None:
        if kind == "review-copy":
            if self.copies is None:
                return
            verdict_id = self.copies.accept(payload)
            if verdict_id is None:
                log.warning("review: a review copy was refused (%d bytes)", len(payload))
            else:
                self.copies_kept += 1
            self._back()
            return
        try:
            document: Any = json.loads(payload)
            _, new = self.store.record_verdict(document)
        except (ValueError, InvalidVerdict) as exc:
            with self._lock:
                self.dropped += 1
            log.warning("review: a verdict message was not recorded: %s", exc)
            return
        self.recorded += int(new)
        self._back()

    def _prune_when_due(self) -> None:
        if self.copies is None or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self.prune_s
        try:
            removed = self.copies.prune()
        except StoreUnavailable as exc:
            log.warning("review: copies not pruned: %s; next try in %.0f s", exc, self.prune_s)
            return
        self.pruned += removed
        if removed:
            log.info("review: pruned %d review copies (age or total size)", removed)

    def _back(self) -> None:
        if self.waiting_for_database:
            log.info("review: the database is back; recording again")
        self.waiting_for_database = False
