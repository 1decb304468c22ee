"""The published messages: a verdict per judged image, an error per rejected file.

The payloads are documented as JSON Schemas in ``edge_worker/schema/``.  They never carry a
patient's name, ID or birth date: the ingest header has none to give.

Identity follows content: a verdict's id is a UUID of the SOP Instance UID, the sha256 of the
Pixel Data as stored and the pack's digest (manifest and every file), so a retry or a
redelivery of the same image by the same pack carries the same id, while two images that share
a UID, or one image judged by a rebuilt pack, get two ids.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from edge_worker import __version__
from edge_worker.errors import Rejection
from edge_worker.ingest.types import Header
from edge_worker.packs.pack import Pack
from edge_worker.pipeline.runner import Judgement
from edge_worker.pipeline.stages import ViewResult
from edge_worker.pipeline.tasks.classify import FlagsResult
from edge_worker.pipeline.tasks.heatmap import HeatmapResult
from edge_worker.pipeline.tasks.rules import RulesResult

VERDICT_SCHEMA = "xray-qc/verdict@2"
ERROR_SCHEMA = "xray-qc/error@1"

# A fixed namespace so ids are reproducible on every box.
_NAMESPACE = uuid.UUID("6f1c2a3e-1d57-4c1b-9a8e-5b0e4f7a2c11")


def utc_iso(ts: float) -> str:
    """A POSIX timestamp as ISO 8601 UTC with milliseconds."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds")


def message_id(image_key: str, pack_name: str, pack_version: str) -> str:
    """Stable id of an error message: the file (UID or content) and what went wrong."""
    return str(uuid.uuid5(_NAMESPACE, f"{image_key}|{pack_name}|{pack_version}"))


def verdict_id(sop_instance_uid: str, pixel_digest: str, pack_digest: str) -> str:
    """The verdict's id: one image's content (UID and stored pixels) judged by one pack's content."""
    return str(uuid.uuid5(_NAMESPACE, f"verdict|{sop_instance_uid}|{pixel_digest}|{pack_digest}"))


def _round(value: float, digits: int = 4) -> float:
    return float(round(value, digits))


def build_verdict(
    *,
    site: str,
    station: str,
    header: Header,
    pixel_digest: str,
    judgement: Judgement,
    pack: Pack,
    backend: str,
    seen_at: float,
    made_at: float,
    stored_scale: float,
    timings_ms: dict[str, float],
    thumbnail: str | None = None,
    overlays: dict[str, str] | None = None,
    derived: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The verdict payload for one judged image.

    ``stored_scale`` is the factor from stored pixels to the working image, so the ROI box is
    reported in the coordinates of the image as stored in the DICOM file (the stages found it
    on the image turned upright; it is turned back first).  ``thumbnail``, a PNG data URL (see
    :mod:`edge_worker.judging.thumbnail`), is added only when given; so are ``overlays``
    (per heatmap label, a PNG data URL over the whole stored image: ``heatmaps.<label>.overlay``)
    and ``derived`` (the derived images written, see :mod:`edge_worker.publish.secondary_capture`).
    """
    j = judgement
    roi: dict[str, Any] = {"found": False, "box": None, "rotated": None}
    working_box = j.roi_in_working()
    if working_box is not None:
        stored = working_box.scaled(1.0 / stored_scale, 1.0 / stored_scale)
        x0, y0, x1, y1 = stored.bounds()
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(float(header.columns), x1), min(float(header.rows), y1)
        roi = {
            "found": True,
            "box": [_round(x0, 1), _round(y0, 1), _round(x1, 1), _round(y1, 1)],
            "rotated": {
                "cx": _round(stored.cx, 1),
                "cy": _round(stored.cy, 1),
                "width": _round(stored.width, 1),
                "height": _round(stored.height, 1),
                "angle_deg": _round(stored.angle_deg, 2),
            },
        }
    quality = None
    if j.quality is not None:
        quality = {
            "score": _round(j.quality.score),
            "grade": j.quality.grade,
            "diagnostic": j.quality.diagnostic,
        }
    orientation = None
    if j.orientation is not None:
        orientation = {
            "angle_deg": _round(j.orientation.angle_deg, 2),
            "suggested_rotation_deg": j.orientation.suggested_rotation_deg,
            "confidence": _round(j.orientation.confidence),
            "judged_upright": j.turn is not None,
        }
    verdict = {
        "schema": VERDICT_SCHEMA,
        "id": verdict_id(header.sop_instance_uid, pixel_digest, pack.digest),
        "site": site,
        "station": station,
        "sop_instance_uid": header.sop_instance_uid,
        "study_instance_uid": header.study_instance_uid,
        "series_instance_uid": header.series_instance_uid,
        "modality": header.modality,
        "body_part": header.body_part,
        "header_view_position": header.view_position,
        "header_laterality": header.laterality,
        "pixel_sha256": pixel_digest,
        "times": {"file_seen": utc_iso(seen_at), "verdict_made": utc_iso(made_at)},
        "view": {
            "label": j.view.label,
            "confidence": _round(j.view.confidence),
            "probabilities": {k: _round(v) for k, v in j.view.probabilities.items()},
        },
        "roi": roi,
        "quality": quality,
        "diagnostic": (
            None if j.quality is None or j.decision in ("review", "not_judged")
            else j.quality.diagnostic
        ),
        "decision": j.decision,
        "reasons": [r.as_dict() for r in j.reasons],
        "exposure": _exposure(header),
        "orientation": orientation,
        "timings_ms": {k: _round(v, 2) for k, v in timings_ms.items()},
        "pack": pack.describe(),
        "not_for_clinical_use": pack.not_for_clinical_use,
        "backend": backend,
        "worker_version": __version__,
    }
    found = stage_findings(j, pack)
    for label, url in (overlays or {}).items():
        if label in found.get("heatmaps", {}):
            found["heatmaps"][label]["overlay"] = url
    verdict.update(found)
    if thumbnail is not None:
        verdict["thumbnail"] = thumbnail
    if derived:
        verdict["derived"] = derived
    return verdict


#: What every research stage's entry in a verdict says (manifest ``research_only``).
RESEARCH_NOTICE = "research only: not a diagnosis; never part of the decision"


def stage_findings(j: Judgement, pack: Pack | None = None) -> dict[str, Any]:
    """What the rules, flag, heatmap and research stages found, for the verdict (those that ran).

    ``rules``: every rule of the image's view with its value, threshold, outcome and sentence;
    ``flags``: per multi-label stage, the labels present and every probability; ``heatmaps``:
    per mapped label, where its class activation map peaks, how much of the image it covers,
    its stage and whether that is a research stage; ``research``: per research-only classify
    stage (``pack`` says which), its answer with :data:`RESEARCH_NOTICE`.
    """
    research_stages = {s.name for s in pack.stages if s.research_only} if pack is not None else set()
    rules: list[dict[str, Any]] = []
    flags: dict[str, Any] = {}
    heatmaps: dict[str, Any] = {}
    research: dict[str, Any] = {}
    for name, result in j.results.items():
        if isinstance(result, RulesResult):
            rules += [dict(o.as_dict(), stage=name) for o in result.outcomes]
        elif isinstance(result, FlagsResult):
            entry = {"present": list(result.present),
                     "probabilities": {k: _round(v) for k, v in result.probabilities.items()}}  # fmt: skip
            if name in research_stages:
                research[name] = {**entry, "research_only": True, "notice": RESEARCH_NOTICE}
            else:
                flags[name] = entry
        elif isinstance(result, HeatmapResult):
            for label, summary in result.summaries.items():
                heatmaps[label] = {k: (None if v is None else _round(float(v))) for k, v in summary.items()}
                heatmaps[label].update(stage=name, research_only=name in research_stages)
        elif isinstance(result, ViewResult) and name in research_stages:
            research[name] = {
                "label": result.label, "confidence": _round(result.confidence),
                "probabilities": {k: _round(v) for k, v in result.probabilities.items()},
                "research_only": True, "notice": RESEARCH_NOTICE,
            }  # fmt: skip
    found: dict[str, Any] = {}
    if rules:
        found["rules"] = rules
    if flags:
        found["flags"] = flags
    if heatmaps:
        found["heatmaps"] = heatmaps
    if research:
        found["research"] = research
    return found


def _exposure(header: Header) -> dict[str, float] | None:
    """The header's exposure indices (IEC 62494-1), or ``None`` when it gives none."""
    values = {
        "exposure_index": header.exposure_index,
        "target_exposure_index": header.target_exposure_index,
        "deviation_index": header.deviation_index,
    }
    found = {k: _round(v, 3) for k, v in values.items() if v is not None}
    return found or None


def build_error(
    *,
    site: str,
    station: str,
    rejection: Rejection,
    image_key: str,
    sop_instance_uid: str | None,
    seen_at: float,
    made_at: float,
    quarantined_as: str | None,
) -> dict[str, Any]:
    """The error payload for a file that produced no verdict."""
    return {
        "schema": ERROR_SCHEMA,
        "id": message_id(image_key, "error", rejection.reason.value),
        "site": site,
        "station": station,
        "sop_instance_uid": sop_instance_uid,
        "times": {"file_seen": utc_iso(seen_at), "rejected": utc_iso(made_at)},
        "reason": rejection.reason.value,
        "detail": rejection.detail,
        "quarantined_as": quarantined_as,
        "worker_version": __version__,
    }
