"""One file in, one outcome out: a verdict payload or a typed rejection.

Shared by ``edge-worker analyze`` (no broker) and the daemon, so both judge a file the same
way.  Nothing here publishes, moves files or raises for bad input: a bad file is a value.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_worker.errors import Rejection, RejectReason
from edge_worker.ingest import read_radiograph
from edge_worker.ingest.reader import SOP_UID_ATTRIBUTE
from edge_worker.ingest.types import IngestPolicy, Radiograph
from edge_worker.judging.overlay import overlay_data_url
from edge_worker.judging.thumbnail import verdict_thumbnail
from edge_worker.names import printable
from edge_worker.pipeline.preprocess import WORKING_MAX_SIDE
from edge_worker.pipeline.runner import Judgement, Pipeline
from edge_worker.pipeline.tasks.derive import DerivedResult
from edge_worker.pipeline.tasks.heatmap import HeatmapResult
from edge_worker.publish import secondary_capture
from edge_worker.publish.verdict import build_error, build_verdict

log = logging.getLogger(__name__)

#: How a file becomes a radiograph: :func:`read_radiograph` in this process, or the isolated
#: decode process's ``DecodeSandbox.read``; ``(path, policy, max_side=...)``, raises Rejection.
Reader = Callable[..., Radiograph]


@dataclass(frozen=True)
class Outcome:
    """What happened to one file: ``kind`` is ``"verdict"`` or ``"error"``."""

    kind: str
    payload: dict[str, Any]
    rejection: Rejection | None = None

    @property
    def id(self) -> str:
        return str(self.payload["id"])


#: How much of a file identifies it when it has no SOP Instance UID: a bounded read, so a
#: rejected 50 GiB file costs one MiB on the judging thread, not minutes.
PREFIX_BYTES = 1 << 20


def file_digest(path: Path) -> str:
    """sha256 of the file's size (8 bytes, big-endian) and its first :data:`PREFIX_BYTES`.

    The key of a file without a SOP Instance UID.  Reads at most ``PREFIX_BYTES`` whatever
    the file's declared size; raises ``OSError`` when the file cannot be read.
    """
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(PREFIX_BYTES)
    return hashlib.sha256(size.to_bytes(8, "big") + head).hexdigest()


def error_key(path: Path, sop_instance_uid: str | None) -> str:
    """The image key of a rejected file: its SOP Instance UID, else its bounded digest."""
    if sop_instance_uid:
        return f"sop:{sop_instance_uid}"
    try:
        return f"sha256:{file_digest(path)}"
    except OSError:
        return f"path:{printable(path.name)}"


def _inference_failed(exc: Exception) -> Rejection:
    return Rejection(RejectReason.INFERENCE_FAILED, f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class _Read:
    """A file read and decoded, waiting for the networks."""

    path: Path
    seen: float
    start: float
    image: Radiograph
    read_ms: float


class Judge:
    """Judges files for one site and station with one loaded pipeline.

    ``thumbnail_size``: when set, each verdict carries an ROI thumbnail of at most that many
    pixels a side (off by default: a radiograph may show burned-in patient details).
    ``read``: how files are read and decoded (default :func:`read_radiograph`, in process).
    ``heatmap_overlay_size``: when set, each heatmap in a verdict carries its overlay, a PNG
    of at most that many pixels a side (off by default, like the thumbnail).
    ``derived_folder``: where a ``derive`` stage's image is written as a DICOM Secondary
    Capture (``[derived] folder``); ``None`` writes nothing, and the derive stages do not run
    (paper 004's bone suppressor took 16 ms of every frontal chest image on two cores, for an
    image nobody would read: BENCHMARKS.md).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        site: str,
        station: str,
        policy: IngestPolicy,
        thumbnail_size: int | None = None,
        read: Reader | None = None,
        *,
        heatmap_overlay_size: int | None = None,
        derived_folder: Path | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.heatmap_overlay_size = heatmap_overlay_size
        self.derived_folder = derived_folder
        #: Stages whose results nothing here would read.
        self.skip_tasks: frozenset[str] = frozenset() if derived_folder else frozenset({"derive"})
        self.read = read or read_radiograph
        self.site = site
        self.station = station
        self.policy = policy
        self.thumbnail_size = thumbnail_size

    def _thumbnail(self, judgement: Judgement, timings: dict[str, float]) -> str | None:
        if self.thumbnail_size is None or judgement.working_image is None:
            return None
        t = time.perf_counter()
        box = judgement.roi.box if judgement.roi is not None else None
        stored = judgement.stored_image if judgement.stored_image is not None else judgement.working_image
        thumbnail = verdict_thumbnail(judgement.working_image, stored, box, self.thumbnail_size)
        timings["thumbnail"] = (time.perf_counter() - t) * 1000.0
        return thumbnail

    def _overlays(self, judgement: Judgement, timings: dict[str, float]) -> dict[str, str]:
        """Per heatmap label, its overlay data URL (see :mod:`edge_worker.judging.overlay`)."""
        if self.heatmap_overlay_size is None or judgement.working_image is None:
            return {}
        t = time.perf_counter()
        pack = self.pipeline.pack
        specs = {spec.name: spec for spec in pack.stages}
        overlays = {}
        for name, result in judgement.results.items():
            if not isinstance(result, HeatmapResult):
                continue
            source = specs[specs[name].reads["classifier"]]
            upright = source.reads.get("image", "upright") == "upright"
            for label, cam_map in result.maps.items():
                overlays[label] = overlay_data_url(cam_map, judgement.working_image.shape[:2],
                                                   judgement.turn, upright, self.heatmap_overlay_size)  # fmt: skip
        timings["heatmap_overlay"] = (time.perf_counter() - t) * 1000.0
        return overlays

    def _derived(self, path: Path, judgement: Judgement, timings: dict[str, float]) -> list[dict[str, Any]]:
        """Write each derive stage's image as a Secondary Capture; one entry per stage.

        A write that fails (disk full, folder gone) is an entry with ``file`` null and the
        error, never a lost verdict.
        """
        if self.derived_folder is None:
            return []
        t = time.perf_counter()
        pack = self.pipeline.pack
        entries: list[dict[str, Any]] = []
        for name, result in judgement.results.items():
            if not isinstance(result, DerivedResult):
                continue
            entry: dict[str, Any] = {"stage": name, "description": result.description,
                                     "training_data": result.training_data}  # fmt: skip
            try:
                written = secondary_capture.write(
                    path, self.derived_folder, result.image, name, result.description,
                    f"{pack.name} {pack.version}", pack.digest, result.training_data,
                )
                entry.update(file=printable(written.path.name),
                             sop_instance_uid=written.sop_instance_uid,
                             series_instance_uid=written.series_instance_uid, error=None)  # fmt: skip
            except (OSError, ValueError) as exc:
                log.warning("derived image of %s (stage %s) not written: %s",
                            printable(path.name), name, exc)  # fmt: skip
                entry.update(file=None, sop_instance_uid=None, series_instance_uid=None,
                             error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            entries.append(entry)
        timings["derived"] = (time.perf_counter() - t) * 1000.0
        return entries

    def __call__(self, path: Path, seen_at: float | None = None) -> Outcome:
        """Judge the file at ``path``; ``seen_at`` is when the watcher saw it complete."""
        return self.judge_many([(path, seen_at)])[0]

    def judge_many(self, files: Sequence[tuple[Path, float | None]]) -> list[Outcome]:
        """Judge several files: each is read alone, then every network runs once on them all.

        One outcome per file, in order, exactly as :meth:`__call__` would give it for that
        file alone.  If inference fails on the batch, each file is retried alone, so one
        image that breaks a network never costs its neighbours their verdicts.
        """
        reads = [self._read(path, seen_at) for path, seen_at in files]
        ready = [r for r in reads if isinstance(r, _Read)]
        results: dict[int, Judgement | Rejection] = {}
        if ready:
            try:
                judgements = self.pipeline.judge_many(
                    [r.image.pixels for r in ready], [r.image.header for r in ready],
                    self.skip_tasks,
                )
                results = {id(r): j for r, j in zip(ready, judgements)}
            except Exception as exc:
                if len(ready) == 1:
                    log.exception("inference failed on %s", printable(ready[0].path.name))
                    results = {id(ready[0]): _inference_failed(exc)}
                else:
                    log.warning("inference failed on a batch of %d (%s); judging each alone",
                                len(ready), exc)  # fmt: skip
                    results = {id(r): self._judge_alone(r) for r in ready}
        outcomes = []
        for r in reads:
            if isinstance(r, Outcome):
                outcomes.append(r)
                continue
            result = results[id(r)]
            if isinstance(result, Rejection):
                uid = r.image.header.sop_instance_uid or None
                outcomes.append(self._error(r.path, r.seen, result, uid))
            else:
                outcomes.append(self._verdict(r, result))
        return outcomes

    def _read(self, path: Path, seen_at: float | None) -> _Read | Outcome:
        """The decoded radiograph, or the error outcome of a file that cannot be judged."""
        seen = time.time() if seen_at is None else seen_at
        start = time.perf_counter()
        try:
            # The pipeline works at WORKING_MAX_SIDE: a codec that can decode at reduced
            # resolution (JPEG 2000, 8-bit JPEG) does so, and image.scale says by how much.
            image = self.read(path, self.policy, max_side=WORKING_MAX_SIDE)
        except Rejection as rejection:
            # read_radiograph keys a rejection with the SOP Instance UID once the header parsed.
            return self._error(path, seen, rejection, getattr(rejection, SOP_UID_ATTRIBUTE, None))
        return _Read(path, seen, start, image, (time.perf_counter() - start) * 1000.0)

    def _judge_alone(self, r: _Read) -> Judgement | Rejection:
        try:
            return self.pipeline.judge(r.image.pixels, r.image.header, self.skip_tasks)
        except Exception as exc:
            log.exception("inference failed on %s", printable(r.path.name))
            return _inference_failed(exc)

    def _verdict(self, r: _Read, judgement: Judgement) -> Outcome:
        image = r.image
        timings = {"read_decode": r.read_ms, **image.timings_ms, **judgement.timings_ms}
        thumbnail = self._thumbnail(judgement, timings)
        overlays = self._overlays(judgement, timings)
        derived = self._derived(r.path, judgement, timings)
        timings["total"] = (time.perf_counter() - r.start) * 1000.0
        payload = build_verdict(
            site=self.site,
            station=self.station,
            header=image.header,
            pixel_digest=image.pixel_digest,
            judgement=judgement,
            pack=self.pipeline.pack,
            backend=self.pipeline.backend.name,
            seen_at=r.seen,
            made_at=time.time(),
            stored_scale=image.scale * judgement.working_scale,
            timings_ms=timings,
            thumbnail=thumbnail,
            overlays=overlays,
            derived=derived,
        )
        payload["file_name"] = printable(r.path.name)
        return Outcome("verdict", payload)

    def _error(self, path: Path, seen: float, rejection: Rejection, sop_uid: str | None) -> Outcome:
        payload = build_error(
            site=self.site,
            station=self.station,
            rejection=rejection,
            image_key=error_key(path, sop_uid),
            sop_instance_uid=sop_uid,
            seen_at=seen,
            made_at=time.time(),
            quarantined_as=None,
        )
        payload["file_name"] = printable(path.name)
        return Outcome("error", payload, rejection)
