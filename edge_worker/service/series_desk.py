"""The station's MR series desk: collect, assemble, judge, and send one message per series.

The daemon (:mod:`edge_worker.service.daemon`) hands every complete file to :meth:`SeriesDesk.offer`
first; a file of a ``[series] modalities`` modality is collected (:mod:`edge_worker.watching.series`)
and never reaches the radiograph judge, whose per-file path and latency stay as they are.  A due
series is judged on the collector's own thread:

* short (timed out), mixed, inconsistent or too large: every file is quarantined with the typed
  reason and ONE error message names the series and its quarantined files;
* otherwise the volume is built (:mod:`edge_worker.ingest.volume`), judged by the volume pack's
  ``Pipeline.judge_volume`` and ONE verdict is sent (:mod:`edge_worker.publish.series_verdict`).

Either way every file's journal key is marked with that message's id, so a restart does not
judge it again, and the judged files are disposed of as ``[retention]`` says.  Pixels are
decoded in this process (not the decode sandbox: its protocol carries one radiograph).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_worker.errors import ConfigError, EdgeWorkerError, Rejection, RejectReason
from edge_worker.ingest.slices import SliceFile, slice_file
from edge_worker.ingest.volume import build_volume, expected_count, geometry
from edge_worker.judging.process import Outcome
from edge_worker.judging.series_montage import series_montage
from edge_worker.names import printable
from edge_worker.publish.journal import Journal
from edge_worker.publish.review_copy import build_review_copy
from edge_worker.publish.series_verdict import build_series_verdict
from edge_worker.publish.verdict import build_error
from edge_worker.service.config import Config
from edge_worker.watching.series import DueSeries, SeriesWatch

log = logging.getLogger(__name__)


class SeriesDesk:
    """Series collection and judging for one station (wired by the daemon).

    ``pipeline``: the volume pack's pipeline (``judges_volumes``), or None (complete series are
    refused ``no_pack_for_body_part``).  ``send(outcome, key)``: the daemon's durable send;
    ``quarantine(path, rejection)`` -> quarantined name or None; ``dispose(path)``;
    ``journal_key(path)`` -> key or None; ``retry(key)``: hand a file on again later.
    """

    def __init__(
        self,
        config: Config,
        pipeline: Any | None,
        journal: Journal,
        *,
        send: Callable[[Outcome, str | None], None],
        quarantine: Callable[[Path, Rejection], str | None],
        dispose: Callable[[Path], object],
        journal_key: Callable[[Path], str | None],
        retry: Callable[[str | None], None],
        on_outcome: Callable[[Outcome, float], None] | None = None,
        publisher: Any | None = None,
    ) -> None:
        if pipeline is not None and not getattr(pipeline, "judges_volumes", False):
            raise ConfigError(
                f"series.pack: pack {pipeline.pack.name} has no tiled_volume stage: it judges no volume"
            )
        self.config = config
        self.pipeline = pipeline
        self.journal = journal
        self._send, self._quarantine, self._dispose = send, quarantine, dispose
        self._key, self._retry, self._on_outcome = journal_key, retry, on_outcome
        #: Review copies (a montage of a few slices) go through this publisher's outbox.
        self.publisher = publisher if config.verdict.review_copy else None
        modalities = tuple(m.upper() for m in config.series.modalities)
        s = config.series
        self.watch = SeriesWatch(lambda p: slice_file(p, modalities), self.judge, s.quiet_seconds,
                                 s.max_wait_seconds, name=f"edge-worker/series-{config.station}")  # fmt: skip

    def start(self) -> None:
        self.watch.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.watch.stop(timeout)

    def offer(self, path: Path) -> bool:
        """True when ``path`` is a series file (collected, or already judged); False: a radiograph."""
        key = self._key(path)
        if key is not None and self.journal.seen(key):
            return self.watch.read(path) is not None  # judged before: the retention sweep disposes
        return self.watch.offer(path)

    # -- one due series --------------------------------------------------------------------
    def judge(self, due: DueSeries) -> Outcome | None:
        """Judge (or refuse) one due series and send its one message; the outcome, None if
        every file vanished or was judged before."""
        files = [
            f
            for f in due.files
            if (k := self._key(f.path)) is not None and not self.journal.seen(k)
        ]
        if not files:
            return None
        keys = [self._key(f.path) for f in files]
        start = time.perf_counter()
        try:
            if due.short is not None:
                raise due.short
            g = geometry(files, self.config.series.max_voxels)
            if self.pipeline is None:
                raise Rejection(
                    RejectReason.NO_PACK_FOR_BODY_PART,
                    "[series] pack is not set: no volume pack to judge MR series",
                )
            t = time.perf_counter()
            volume = build_volume(g)
            assemble_ms = (time.perf_counter() - t) * 1000.0
            try:
                judgement = self.pipeline.judge_volume(volume.voxels, volume.spacing_mm)
            except Rejection:
                raise
            except Exception as exc:
                log.exception("volume inference failed on series %s", due.series_uid)
                raise Rejection(
                    RejectReason.INFERENCE_FAILED, f"{type(exc).__name__}: {exc}"
                ) from exc
        except Rejection as rejection:
            return self._refuse(due, files, keys, rejection)
        timings = {"assemble": assemble_ms, "total": (time.perf_counter() - start) * 1000.0,
                   "last_file_to_verdict": (time.time() - due.last_seen) * 1000.0}  # fmt: skip
        stage = next((s for s in self.pipeline.pack.stages if s.task == "tiled_volume"), None)
        # The stage's checked options carry its score_range (docs/model-pack.md, `tiled_volume`); 0-10 else.
        low, high = (stage.options.get("score_range") if stage is not None else None) or (0.0, 10.0)
        payload = build_series_verdict(
            site=self.config.site, station=self.config.station, files=files, volume=volume,
            judgement=judgement, pack=self.pipeline.pack, backend=self.pipeline.backend.name,
            seen_at=due.last_seen, timings_ms=timings, score_range=(float(low), float(high)),
        )  # fmt: skip
        outcome = Outcome("verdict", payload)
        if self._deliver(outcome, keys, due.last_seen):
            self._review_copy(outcome, volume.voxels)
            for f in files:
                self._dispose(f.path)
        return outcome

    def _review_copy(self, outcome: Outcome, voxels: Any) -> None:
        """The series' montage as its review copy, after the verdict (skipped, logged, when the
        outbox is more than half full: its room is for verdicts)."""
        p = self.publisher
        if p is None:
            return
        if p.outbox_depth * 2 >= self.config.state.outbox_max_messages:
            log.warning(
                "review copies: outbox more than half full; no montage of series %s", outcome.id
            )
            return
        try:
            copy, _ = series_montage(voxels, self.config.verdict.review_copy_size)
            payload = build_review_copy(
                verdict_id=outcome.id, site=self.config.site, station=self.config.station,
                media_type=copy.media_type, width=copy.width, height=copy.height, scale=copy.scale, data=copy.data,
            )  # fmt: skip
            p.publish("review-copy", payload, key=f"review-copy:{outcome.id}")
        except (EdgeWorkerError, ValueError) as exc:
            log.warning("review copies: no montage of series %s: %s", outcome.id, exc)

    def _refuse(
        self, due: DueSeries, files: list[SliceFile], keys: list[str | None], rejection: Rejection
    ) -> Outcome:
        """Quarantine every file of the series with ``rejection``; one error message for all."""
        log.warning("series %s (%d files) refused: %s", due.series_uid, len(files), rejection)
        names = [self._quarantine(f.path, rejection) for f in files]
        content = hashlib.sha256("|".join(sorted(f.sop_uid for f in files)).encode()).hexdigest()
        payload = build_error(
            site=self.config.site, station=self.config.station, rejection=rejection,
            image_key=f"series:{due.series_uid}|{content}", sop_instance_uid=None,
            seen_at=due.last_seen, made_at=time.time(), quarantined_as=names[0] if names else None,
        )  # fmt: skip
        payload["file_name"] = printable(files[0].path.name)
        payload["series"] = {"series_instance_uid": due.series_uid, "files": len(files),
                             "expected": expected_count(files), "quarantined": [n for n in names if n]}  # fmt: skip
        outcome = Outcome("error", payload, rejection)
        self._deliver(outcome, keys, due.last_seen)
        return outcome

    def _deliver(self, outcome: Outcome, keys: list[str | None], seen_at: float) -> bool:
        """Send through the daemon (the first file's key), then mark every other file done."""
        try:
            self._send(outcome, keys[0])
            for key in keys[1:]:
                if key is not None:
                    self.journal.mark_queued(key, outcome.id, outcome.kind)
        except (EdgeWorkerError, sqlite3.Error) as exc:
            # Not stored (outbox full, disk failing): the files stay and are collected again.
            log.warning(
                "series message %s not stored (%s); the files are collected again", outcome.id, exc
            )
            for key in keys:
                self._retry(key)
            return False
        if self._on_outcome is not None:
            self._on_outcome(outcome, seen_at)
        return True
