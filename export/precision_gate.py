"""The precision gate: does a converted pack decide every test image as the FP32 pack does?

The facts compared are what a verdict acts on (:data:`DECISION_FACTS`): the decision, the
view, whether an ROI was found, the quality grade and the suggested rotation.  All must agree
on every test image for the candidate to be accepted.  The continuous figures behind them
(view confidence, quality score, orientation angle, ROI overlap) are reported so that a
refusal says how far the candidate strayed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_worker.backends import LoadOptions, select
from edge_worker.packs.pack import load_pack
from edge_worker.pipeline.runner import Judgement, Pipeline

#: The facts a verdict acts on; all must agree on every test file.
DECISION_FACTS = ("decision", "view", "roi_found", "grade", "rotation")


def facts(judgement: Judgement) -> dict[str, Any]:
    """What a verdict acts on, plus the numbers behind it (for the agreement figures)."""
    q, o, roi = judgement.quality, judgement.orientation, judgement.roi
    return {
        "decision": judgement.decision, "view": judgement.view.label,
        "roi_found": roi is not None and roi.box is not None,
        "grade": q.grade if q else None,
        "rotation": o.suggested_rotation_deg if o else None,
        "view_confidence": judgement.view.confidence,
        "score": q.score if q else None, "angle": o.angle_deg if o else None,
        "box": roi.box.corners() if roi is not None and roi.box is not None else None,
    }  # fmt: skip


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    import cv2

    inter, _ = cv2.intersectConvexConvex(a.astype(np.float32), b.astype(np.float32))
    union = cv2.contourArea(a) + cv2.contourArea(b) - inter
    return float(inter / union) if union > 0 else 1.0


def compare(reference: list[dict[str, Any]], candidate: list[dict[str, Any]],
            names: list[str]) -> dict[str, Any]:  # fmt: skip
    """Agreement figures of two packs' facts on the same files, and the gate's verdict."""
    n = len(reference)
    agree = {k: sum(r[k] == c[k] for r, c in zip(reference, candidate)) / n for k in DECISION_FACTS}
    pairs = list(zip(reference, candidate))
    score = [
        abs(r["score"] - c["score"])
        for r, c in pairs
        if r["score"] is not None and c["score"] is not None
    ]
    angle = [abs((r["angle"] - c["angle"] + 180.0) % 360.0 - 180.0) for r, c in pairs
             if r["angle"] is not None and c["angle"] is not None]  # fmt: skip
    confidence = [abs(r["view_confidence"] - c["view_confidence"]) for r, c in pairs]
    ious = [
        _iou(r["box"], c["box"]) for r, c in pairs if r["box"] is not None and c["box"] is not None
    ]
    changed = [
        {"file": name, **{k: [r[k], c[k]] for k in DECISION_FACTS if r[k] != c[k]}}
        for name, (r, c) in zip(names, pairs) if any(r[k] != c[k] for k in DECISION_FACTS)
    ]  # fmt: skip
    return {
        "files": n,
        "accepted": n > 0 and all(v == 1.0 for v in agree.values()),
        "agreement": {k: round(v, 4) for k, v in agree.items()},
        "view_confidence_max_delta": round(max(confidence, default=0.0), 4),
        "quality_score_max_delta": round(max(score, default=0.0), 4),
        "orientation_max_delta_deg": round(max(angle, default=0.0), 2),
        "roi_iou_mean": round(float(np.mean(ious)), 4) if ious else None,
        "roi_iou_min": round(float(np.min(ious)), 4) if ious else None,
        "changed": changed[:20],
    }


def judge_facts(pack_dir: Path, images: list[np.ndarray]) -> list[dict[str, Any]]:
    """The pack's facts for each image, through the worker's pipeline."""
    pipeline = Pipeline(load_pack(pack_dir), select(["onnxruntime-cpu"]), LoadOptions())
    return [facts(pipeline.judge(pixels)) for pixels in images]


def format_report(report: dict[str, Any]) -> str:
    """The gate's figures as a few lines for a terminal."""
    agree = ", ".join(f"{k} {v:.1%}" for k, v in report["agreement"].items())
    lines = [
        f"{report['precision']} copy of {report['source']} (stages {', '.join(report['stages'])})",
        f"test set: {report['files']} files ({report['test_set']['phantoms']} phantoms, "
        f"{report['test_set']['real']} real); agreement with FP32: {agree}",
        f"largest changes: view confidence {report['view_confidence_max_delta']}, quality score "
        f"{report['quality_score_max_delta']}, orientation {report['orientation_max_delta_deg']} deg; "
        f"ROI IoU mean {report['roi_iou_mean']} min {report['roi_iou_min']}",
    ]
    for change in report["changed"]:
        lines.append(f"  changed: {change}")
    if "label_gate" in report:
        from export.build.label_gate import format_gate

        lines.append(format_gate(report["label_gate"]))
    lines.append(
        "ACCEPTED" if report["accepted"] else "REFUSED: the decisions changed or the accuracy "
        "against the labels fell; nothing written"
    )
    return "\n".join(lines)
