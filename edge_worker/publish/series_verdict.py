"""The verdict on one MR series: its volume's quality score and flags, and the decision.

One message per series (schema ``xray-qc/verdict@2`` with a ``series`` object instead of the
radiograph fields).  Identity follows content, as for a radiograph: the id is a UUID of the
Series Instance UID, the sha256 over every file's Pixel Data in slice order, and the pack's
digest, so a series re-collected after a restart gives the same id and the same message.

The decision (:func:`series_reasons`), "never a confident wrong answer":

* a flag above ``flag_review_above`` is ``mri_flagged`` (review);
* a score below ``score_retake_below`` is ``mri_quality_not_diagnostic`` (retake), below
  ``score_review_below`` ``mri_quality_low`` (review), else ``mri_quality_ok`` (info);
* a pack trained on synthetic phantoms only adds ``mri_synthetic_pack`` (review): its score
  is shown, and a person decides; it never asks for a retake on its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

from edge_worker import __version__
from edge_worker.ingest.slices import SliceFile
from edge_worker.ingest.volume import Volume
from edge_worker.judging.decision import Reason, decision_of
from edge_worker.packs.pack import Pack
from edge_worker.pipeline.volume import TileBox, VolumeJudgement
from edge_worker.publish.verdict import VERDICT_SCHEMA, utc_iso

_NAMESPACE = uuid.UUID("6f1c2a3e-1d57-4c1b-9a8e-5b0e4f7a2c11")  # the one of publish.verdict
#: The stage's thresholds when the pack names none (the interface's defaults).
DEFAULT_THRESHOLDS = {
    "score_review_below": 6.0,
    "score_retake_below": 3.0,
    "flag_review_above": 0.5,
}


def series_verdict_id(series_uid: str, pixel_digest: str, pack_digest: str) -> str:
    """The series verdict's id: the series' content judged by one pack's content."""
    return str(uuid.uuid5(_NAMESPACE, f"series|{series_uid}|{pixel_digest}|{pack_digest}"))


def _r(value: float, digits: int = 4) -> float:
    return float(round(float(value), digits))


def _flag_text(name: str, probability: float, threshold: float) -> str:
    label = name.replace("_", " ")
    return f"{label}: probability {probability:.2f} above {threshold:.2f}; see the tiles that drove it."


def _tile(b: TileBox) -> dict[str, Any]:
    return {"z0": int(b.z0), "y0": int(b.y0), "x0": int(b.x0), "z1": int(b.z1), "y1": int(b.y1),
            "x1": int(b.x1), "probability": _r(b.probability)}  # fmt: skip


#: A flag whose AUC on the pack's unseen test volumes is below this is not judged by the pack.
MIN_FLAG_AUC = 0.7


def unjudged_flags(validation: dict[str, Any], flags: Iterable[str]) -> list[str]:
    """The flags the pack cannot be trusted on: no measured AUC in its manifest's
    ``validation.flags``, or one below :data:`MIN_FLAG_AUC` (near 0.5 is a coin toss).  Their
    probabilities are still shown, but they never raise, and never clear, a series."""
    measured = validation.get("flags") if isinstance(validation, dict) else None
    measured = measured if isinstance(measured, dict) else {}

    def auc(name: str) -> float | None:
        value = measured.get(name, {}).get("auc") if isinstance(measured.get(name), dict) else None
        return float(value) if isinstance(value, (int, float)) else None

    return sorted(n for n in flags if (a := auc(n)) is None or a < MIN_FLAG_AUC)


def series_reasons(j: VolumeJudgement, not_judged: Iterable[str] = ()) -> list[Reason]:
    """The findings on a judged volume, in order: flags, score, then the pack's provenance.
    ``not_judged``: flags the pack cannot be trusted on (:func:`unjudged_flags`)."""
    t = {**DEFAULT_THRESHOLDS, **(j.thresholds or {})}
    skip = sorted(set(not_judged))
    reasons = [
        Reason("mri_flagged", _flag_text(name, p, t["flag_review_above"]), rule=name)
        for name, p in sorted(j.flags.items(), key=lambda kv: -kv[1])
        if p > t["flag_review_above"] and name not in skip
    ]
    if skip:
        reasons.append(Reason("mri_flags_not_judged", (
            f"Not judged by this pack (AUC on unseen volumes below {MIN_FLAG_AUC:.2f} or not measured): "
            f"{', '.join(n.replace('_', ' ') for n in skip)}; a person looks for them."
        )))  # fmt: skip
    score = float(j.score)
    if score < t["score_retake_below"]:
        reasons.append(Reason("mri_quality_not_diagnostic",
                              f"Quality {score:.1f} below {t['score_retake_below']:.1f}: repeat the series."))  # fmt: skip
    elif score < t["score_review_below"]:
        reasons.append(Reason("mri_quality_low",
                              f"Quality {score:.1f} below {t['score_review_below']:.1f}: a person looks at the series."))  # fmt: skip
    else:
        reasons.append(
            Reason(
                "mri_quality_ok",
                f"Quality {score:.1f} (review below {t['score_review_below']:.1f}).",
            )
        )
    if j.synthetic:
        reasons.append(Reason("mri_synthetic_pack", (
            "The volume pack was trained on synthetic phantoms only: its score and flags are shown, "
            "a person decides."
        )))  # fmt: skip
    return reasons


def build_series_verdict(
    *,
    site: str,
    station: str,
    files: list[SliceFile],
    volume: Volume,
    judgement: VolumeJudgement,
    pack: Pack,
    backend: str,
    seen_at: float,
    timings_ms: dict[str, float],
    score_range: tuple[float, float] = (0.0, 10.0),
) -> dict[str, Any]:
    """The verdict payload of one judged series (``seen_at``: when its last file came)."""
    j = judgement
    first = files[0]
    not_judged = unjudged_flags(pack.validation, j.flags)
    reasons = series_reasons(j, not_judged)
    decision = decision_of(r.severity for r in reasons)
    thresholds = {**DEFAULT_THRESHOLDS, **(j.thresholds or {})}
    flagged = sorted(n for n, p in j.flags.items() if p > thresholds["flag_review_above"] and n not in not_judged)
    series = {
        "series_instance_uid": first.series_uid,
        "slices": int(volume.voxels.shape[0]),
        "files": len(files),
        "multi_frame": first.multi_frame,
        "spacing_mm": [_r(v) for v in volume.spacing_mm],
        "shape": [int(v) for v in volume.voxels.shape],
        "pixel_sha256": volume.pixel_digest,
        "score": _r(j.score),
        "score_range": [float(score_range[0]), float(score_range[1])],
        "flags": {k: _r(v) for k, v in j.flags.items()},
        "flagged": flagged,
        "not_judged": not_judged,
        "flag_tiles": {name: [_tile(b) for b in boxes] for name, boxes in j.flag_tiles.items()},
        "thresholds": {k: float(v) for k, v in thresholds.items()},
        "tiles": int(j.tiles),
        "synthetic": bool(j.synthetic),
    }
    return {
        "schema": VERDICT_SCHEMA,
        "id": series_verdict_id(first.series_uid, volume.pixel_digest, pack.digest),
        "site": site,
        "station": station,
        "study_instance_uid": first.study_uid,
        "series_instance_uid": first.series_uid,
        "modality": first.modality,
        "body_part": first.body_part,
        "times": {"file_seen": utc_iso(seen_at), "verdict_made": utc_iso(time.time())},
        "diagnostic": {"ok": True, "retake": False}.get(decision),
        "decision": decision,
        "reasons": [r.as_dict() for r in reasons],
        "timings_ms": {k: _r(v, 2) for k, v in {**j.timings_ms, **timings_ms}.items()},
        "pack": pack.describe(),
        "not_for_clinical_use": pack.not_for_clinical_use,
        "backend": backend,
        "worker_version": __version__,
        "series": series,
    }
