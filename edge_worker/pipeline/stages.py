"""The pipeline's stages: view -> ROI -> quality, plus orientation.

Each stage is a small function of (session, spec, image) that prepares the input with the
shared ``edge_worker.preprocess`` functions and turns the raw network output into a typed
result.  The stage order is a plain list in :mod:`edge_worker.pipeline.runner`; there is no
graph framework.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_worker.backends import Session
from edge_worker.pack import StageSpec
from edge_worker.preprocess import RotatedBox, crop_box, mask_to_box, to_tensor


#: Most input pixels per network run when images are batched: 4 images at 224 px, 12 at
#: 128 px, one at a time at 400 px.
MAX_BATCH_PIXELS = 4 * 224 * 224


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


def _run(
    session: Session, spec: StageSpec, images: Sequence[np.ndarray], output: str
) -> np.ndarray:
    """``output`` of the network for every image, run in chunks of at most MAX_BATCH_PIXELS.

    Each image's input is prepared exactly as it would be alone.  Chunking bounds the
    activation memory: a batch of four DeepLabV3 inputs at 400 px adds about 250 MB and runs
    no faster than one at a time (compute-bound), while small networks gain from batching.
    """
    i = spec.input
    per_run = max(1, MAX_BATCH_PIXELS // (i.height * i.width))
    parts = []
    for start in range(0, len(images), per_run):
        chunk = [_tensor(spec, image) for image in images[start : start + per_run]]
        parts.append(session.run(np.concatenate(chunk))[output])
    return np.concatenate(parts)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    e = np.exp(shifted)
    return e / e.sum()


# Every stage has one implementation, on a batch: the single-image functions below call it
# with a batch of one, so batching changes how often a network runs, never what it computes.


def run_view_batch(
    session: Session, spec: StageSpec, images: Sequence[np.ndarray]
) -> list[ViewResult]:
    """Classify the projection of each working image (in [0, 1])."""
    results = []
    for row in _run(session, spec, images, "logits"):
        probs = _softmax(row.astype(np.float64))
        best = int(np.argmax(probs))
        results.append(ViewResult(
            label=spec.labels[best],
            confidence=float(probs[best]),
            probabilities={label: float(p) for label, p in zip(spec.labels, probs)},
        ))  # fmt: skip
    return results


def _roi_result(spec: StageSpec, prob: np.ndarray, shape: tuple[int, ...]) -> RoiResult:
    threshold = spec.threshold("mask", 0.7)
    box = mask_to_box(prob, threshold, spec.threshold("min_area_fraction", 0.002))
    area = float((prob > threshold).mean())
    if box is None:
        return RoiResult(box=None, area_fraction=area)
    h, w = shape[:2]
    # The mask is at the network's resolution; bring the box back to the working image.
    return RoiResult(box=box.scaled(w / prob.shape[1], h / prob.shape[0]), area_fraction=area)


def run_roi_batch(
    session: Session, spec: StageSpec, images: Sequence[np.ndarray]
) -> list[RoiResult]:
    """Segment the ROI of each image and fit the minimum-area rectangle (threshold 0.7, paper)."""
    masks = _run(session, spec, images, "mask")
    return [_roi_result(spec, mask[0], image.shape) for mask, image in zip(masks, images)]


def _grade(score: float) -> int:
    return int(min(3, max(1, round(min(3.0, max(1.0, score))))))


def run_quality_batch(
    session: Session, spec: StageSpec, images: Sequence[np.ndarray], boxes: Sequence[RotatedBox]
) -> list[QualityResult]:
    """Regress the 1-3 quality score on each image's upright ROI crop."""
    h, w = spec.input.height, spec.input.width
    crops = [crop_box(image, box, h, w) for image, box in zip(images, boxes)]
    scores = _run(session, spec, crops, "score").reshape(len(crops), -1)[:, 0]
    return [QualityResult(score=float(s), grade=_grade(float(s))) for s in scores]


def run_orientation_batch(
    session: Session, spec: StageSpec, images: Sequence[np.ndarray]
) -> list[OrientationResult]:
    """Angle of the anatomy from upright, counter-clockwise, from the (cos, sin) head."""
    results = []
    for cos, sin in _run(session, spec, images, "cossin").reshape(len(images), -1)[:, :2]:
        angle = math.degrees(math.atan2(float(sin), float(cos))) % 360.0
        # The norm of an untrained-for input drifts away from 1; keep it as a confidence figure.
        confidence = float(min(1.0, math.hypot(cos, sin)))
        results.append(OrientationResult(angle_deg=angle, confidence=confidence))
    return results


def run_view(session: Session, spec: StageSpec, image: np.ndarray) -> ViewResult:
    """Classify the projection; ``image`` is the working image in [0, 1]."""
    return run_view_batch(session, spec, [image])[0]


def run_roi(session: Session, spec: StageSpec, image: np.ndarray) -> RoiResult:
    """Segment the ROI and fit the minimum-area rectangle (threshold 0.7 in the paper)."""
    return run_roi_batch(session, spec, [image])[0]


def run_quality(
    session: Session, spec: StageSpec, image: np.ndarray, box: RotatedBox
) -> QualityResult:
    """Regress the 1-3 quality score on the upright ROI crop."""
    return run_quality_batch(session, spec, [image], [box])[0]


def run_orientation(session: Session, spec: StageSpec, image: np.ndarray) -> OrientationResult:
    """Angle of the anatomy from upright, counter-clockwise, from the (cos, sin) head."""
    return run_orientation_batch(session, spec, [image])[0]
