"""The pipeline's stages: view -> ROI -> quality, plus orientation.

Each stage is a small function of (session, spec, image) that prepares the input with the
shared ``edge_worker.preprocess`` functions and turns the raw network output into a typed
result.  The stage order is a plain list in :mod:`edge_worker.pipeline.runner`; there is no
graph framework.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_worker.backends import Session
from edge_worker.pack import StageSpec
from edge_worker.preprocess import RotatedBox, crop_box, mask_to_box, to_tensor


@dataclass(frozen=True)
class ViewResult:
    label: str
    confidence: float
    probabilities: dict[str, float]


@dataclass(frozen=True)
class RoiResult:
    """The ROI in working-image coordinates; ``box`` is ``None`` when none was found."""

    box: RotatedBox | None
    area_fraction: float


@dataclass(frozen=True)
class QualityResult:
    score: float
    grade: int

    @property
    def diagnostic(self) -> bool:
        """Grades 1 and 2 are diagnostic, 3 means retake (ankle paper, section 4.2)."""
        return self.grade <= 2


@dataclass(frozen=True)
class OrientationResult:
    angle_deg: float
    confidence: float

    @property
    def suggested_rotation_deg(self) -> int:
        """The clockwise quarter turn (0, 90, 180, 270) that brings the anatomy nearest upright."""
        return int(round(self.angle_deg / 90.0)) % 4 * 90


def _tensor(spec: StageSpec, image: np.ndarray) -> np.ndarray:
    i = spec.input
    return to_tensor(image, i.height, i.width, i.channels, i.mean, i.std)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    e = np.exp(shifted)
    return e / e.sum()


def run_view(session: Session, spec: StageSpec, image: np.ndarray) -> ViewResult:
    """Classify the projection; ``image`` is the working image in [0, 1]."""
    logits = session.run(_tensor(spec, image))["logits"][0].astype(np.float64)
    probs = _softmax(logits)
    best = int(np.argmax(probs))
    return ViewResult(
        label=spec.labels[best],
        confidence=float(probs[best]),
        probabilities={label: float(p) for label, p in zip(spec.labels, probs)},
    )


def run_roi(session: Session, spec: StageSpec, image: np.ndarray) -> RoiResult:
    """Segment the ROI and fit the minimum-area rectangle (threshold 0.7 in the paper)."""
    prob = session.run(_tensor(spec, image))["mask"][0, 0]
    threshold = spec.threshold("mask", 0.7)
    box = mask_to_box(prob, threshold, spec.threshold("min_area_fraction", 0.002))
    area = float((prob > threshold).mean())
    if box is None:
        return RoiResult(box=None, area_fraction=area)
    h, w = image.shape[:2]
    # The mask is at the network's resolution; bring the box back to the working image.
    return RoiResult(
        box=box.scaled(w / prob.shape[1], h / prob.shape[0]),
        area_fraction=area,
    )


def run_quality(session: Session, spec: StageSpec, image: np.ndarray, box: RotatedBox) -> QualityResult:
    """Regress the 1-3 quality score on the upright ROI crop."""
    crop = crop_box(image, box, spec.input.height, spec.input.width)
    score = float(session.run(_tensor(spec, crop))["score"].reshape(-1)[0])
    grade = int(min(3, max(1, round(min(3.0, max(1.0, score))))))
    return QualityResult(score=score, grade=grade)


def run_orientation(session: Session, spec: StageSpec, image: np.ndarray) -> OrientationResult:
    """Angle of the anatomy from upright, counter-clockwise, from the (cos, sin) head."""
    cos, sin = (float(v) for v in session.run(_tensor(spec, image))["cossin"].reshape(-1)[:2])
    angle = math.degrees(math.atan2(sin, cos)) % 360.0
    # The norm of an untrained-for input drifts away from 1; keep it as a confidence figure.
    return OrientationResult(angle_deg=angle, confidence=float(min(1.0, math.hypot(cos, sin))))
