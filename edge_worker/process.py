"""One file in, one outcome out: a verdict payload or a typed rejection.

Shared by ``edge-worker analyze`` (no broker) and the daemon, so both judge a file the same
way.  Nothing here publishes, moves files or raises for bad input: a bad file is a value.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_worker.errors import Rejection, RejectReason
from edge_worker.ingest import read_radiograph
from edge_worker.ingest.reader import SOP_UID_ATTRIBUTE
from edge_worker.ingest.types import IngestPolicy
from edge_worker.pipeline.runner import Judgement, Pipeline
from edge_worker.preprocess import WORKING_MAX_SIDE
from edge_worker.thumbnail import make_thumbnail
from edge_worker.verdict import build_error, build_verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What happened to one file: ``kind`` is ``"verdict"`` or ``"error"``."""

    kind: str
    payload: dict[str, Any]
    rejection: Rejection | None = None

    @property
    def id(self) -> str:
        return str(self.payload["id"])


def file_digest(path: Path) -> str:
    """sha256 of the file's bytes: the image key when the header has no SOP Instance UID."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _image_key(path: Path, sop_instance_uid: str | None) -> str:
    if sop_instance_uid:
        return f"sop:{sop_instance_uid}"
    try:
        return f"sha256:{file_digest(path)}"
    except OSError:
        return f"path:{path.name}"


class Judge:
    """Judges files for one site and station with one loaded pipeline.

    ``thumbnail_size``: when set, each verdict carries an ROI thumbnail of at most that many
    pixels a side (off by default: a radiograph may show burned-in patient details).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        site: str,
        station: str,
        policy: IngestPolicy,
        thumbnail_size: int | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.site = site
        self.station = station
        self.policy = policy
        self.thumbnail_size = thumbnail_size

    def _thumbnail(self, judgement: Judgement, timings: dict[str, float]) -> str | None:
        if self.thumbnail_size is None or judgement.working_image is None:
            return None
        t = time.perf_counter()
        box = judgement.roi.box if judgement.roi is not None else None
        thumbnail = make_thumbnail(judgement.working_image, box, self.thumbnail_size)
        timings["thumbnail"] = (time.perf_counter() - t) * 1000.0
        return thumbnail

    def __call__(self, path: Path, seen_at: float | None = None) -> Outcome:
        """Judge the file at ``path``; ``seen_at`` is when the watcher saw it complete."""
        seen = time.time() if seen_at is None else seen_at
        start = time.perf_counter()
        sop_uid: str | None = None
        try:
            t = time.perf_counter()
            # The pipeline works at WORKING_MAX_SIDE: a codec that can decode at reduced
            # resolution (JPEG 2000, 8-bit JPEG) does so, and image.scale says by how much.
            image = read_radiograph(path, self.policy, max_side=WORKING_MAX_SIDE)
            read_ms = (time.perf_counter() - t) * 1000.0
            sop_uid = image.header.sop_instance_uid or None
            try:
                judgement = self.pipeline.judge(image.pixels)
            except Exception as exc:  # noqa: BLE001 - any runtime failure is a typed rejection
                log.exception("inference failed on %s", path.name)
                raise Rejection(RejectReason.INFERENCE_FAILED, f"{type(exc).__name__}: {exc}") from exc
            timings = {"read_decode": read_ms, **image.timings_ms, **judgement.timings_ms}
            thumbnail = self._thumbnail(judgement, timings)
            timings["total"] = (time.perf_counter() - start) * 1000.0
            payload = build_verdict(
                site=self.site,
                station=self.station,
                header=image.header,
                image_key=_image_key(path, sop_uid),
                judgement=judgement,
                pack=self.pipeline.pack,
                backend=self.pipeline.backend.name,
                seen_at=seen,
                made_at=time.time(),
                stored_scale=image.scale * judgement.working_scale,
                timings_ms=timings,
                thumbnail=thumbnail,
            )
            return Outcome("verdict", payload)
        except Rejection as rejection:
            # read_radiograph keys a rejection with the SOP Instance UID once the header parsed.
            sop_uid = sop_uid or getattr(rejection, SOP_UID_ATTRIBUTE, None)
            payload = build_error(
                site=self.site,
                station=self.station,
                rejection=rejection,
                image_key=_image_key(path, sop_uid),
                sop_instance_uid=sop_uid,
                seen_at=seen,
                made_at=time.time(),
                quarantined_as=None,
            )
            return Outcome("error", payload, rejection)
