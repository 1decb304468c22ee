"""Running one network on a batch of images, and the typed results of the network tasks.

Each function of (session, spec, images) prepares the inputs with the shared
``edge_worker.pipeline.preprocess`` functions and turns the raw network output into a typed result.
The task modules (:mod:`edge_worker.pipeline.tasks`) call them; the order of stages is the
pack's list, run by :mod:`edge_worker.pipeline.runner`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edge_worker.pipeline.preprocess import RotatedBox, crop_box, image_part, mask_to_box, to_tensor

if TYPE_CHECKING:
    from edge_worker.backends import Session
    from edge_worker.packs.pack import StageSpec

#: Most input pixels per network run when images are batched: 4 images at 224 px, 12 at
#: 128 px, one at a time at 400 px.
MAX_BATCH_PIXELS = 4 * 224 * 224


@dataclass(frozen=True)
class ViewResult:
    label: str
    confidence: float
    probabilities: dict[str, float]
    #: The classifier's last feature map (C, h, w), kept only when a heatmap stage reads it.
    features: np.ndarray | None = field(default=None, repr=False, compare=False)


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
    #: The (cos, sin) answer's norm, capped at 1.
    confidence: float
    #: The norm itself (an untrained-for input drifts away from 1 either way): for evaluation.
    norm: float | None = field(default=None, compare=False)

    @property
    def suggested_rotation_deg(self) -> int:
        """The clockwise quarter turn (0, 90, 180, 270) that brings the anatomy nearest upright."""
        return int(round(self.angle_deg / 90.0)) % 4 * 90


def _tensor(spec: StageSpec, image: np.ndarray) -> np.ndarray:
    i = spec.input
    assert i is not None, f"stage {spec.name} runs no network"
    return to_tensor(image, i.height, i.width, i.channels, i.mean, i.std, i.resize)


def cut_to_image(spec: StageSpec, net_map: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The part of ``net_map`` (``(..., h, w)``, a network output proportional to the stage's
    input) that covers the image of ``shape`` it read: the map itself unless the stage pads."""
    i = spec.input
    assert i is not None, f"stage {spec.name} runs no network"
    return image_part(net_map, shape, i.height, i.width, i.resize)


def image_batches(
    session: Session, spec: StageSpec, images: Sequence[np.ndarray], outputs: Sequence[str]
) -> dict[str, np.ndarray]:
    """The network's ``outputs`` for every image, run in chunks of at most MAX_BATCH_PIXELS.

    Each image's input is prepared exactly as it would be alone.  Chunking bounds the
    activation memory: a batch of four DeepLabV3 inputs at 400 px adds about 250 MB and runs
    no faster than one at a time (compute-bound), while small networks gain from batching.
    """
    i = spec.input
    assert i is not None, f"stage {spec.name} runs no network"
    per_run = max(1, MAX_BATCH_PIXELS // (i.height * i.width))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for start in range(0, len(images), per_run):
        chunk = [_tensor(spec, image) for image in images[start : start + per_run]]
        ran = session.run(np.concatenate(chunk))
        for name in outputs:
            parts[name].append(ran[name])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def _run(
    session: Session, spec: StageSpec, images: Sequence[np.ndarray], output: str
) -> np.ndarray:
    return image_batches(session, spec, images, (output,))[output]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    e = np.exp(shifted)
    return e / e.sum()


# Every stage has one implementation, on a batch: the single-image functions below call it
# with a batch of one, so batching changes how often a network runs, never what it computes.


def mirrored(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each image mirrored left-right (a classify stage's ``mirrored_look``)."""
    return [np.ascontiguousarray(image[:, ::-1]) for image in images]


def with_mirrored_look(
    session: Session, spec: StageSpec, images: Sequence[np.ndarray], outputs: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The network's ``outputs`` for every image and, with the stage's ``mirrored_look``
    option, the ``logits`` of every image mirrored left-right (``None`` without it).

    Both looks go through the network in the same batches.  A projection (PA, AP, lateral)
    is the same projection mirrored, so the mean of the two answers is the stage's answer:
    on the chest pack's held-out patients and the unseen sites of four leave-site-out folds it
    lifted the view network's balanced accuracy by 0.2 to 2.9 points, never lowering it
    (README).  A feature map for a heatmap comes from the image as stored, never the mirror.
    """
    if not spec.options.get("mirrored_look"):
        return image_batches(session, spec, images, outputs), None
    both = image_batches(session, spec, [*images, *mirrored(images)], outputs)
    n = len(images)
    return {name: value[:n] for name, value in both.items()}, both["logits"][n:]


def mean_softmax(row: np.ndarray, mirror: np.ndarray | None) -> np.ndarray:
    """Softmax of one row of class scores, averaged with the mirrored look's when there is one."""
    probs = _softmax(row.astype(np.float64))
    return probs if mirror is None else (probs + _softmax(mirror.astype(np.float64))) / 2.0


def view_from_logits(
    spec: StageSpec, row: np.ndarray, features: np.ndarray | None = None,
    mirror: np.ndarray | None = None,
) -> ViewResult:  # fmt: skip
    """A single-label answer from one row of raw class scores: softmax (averaged with the
    mirrored look's ``mirror`` row when given), top label."""
    probs = mean_softmax(row, mirror)
    best = int(np.argmax(probs))
    return ViewResult(
        label=spec.labels[best],
        confidence=float(probs[best]),
        probabilities={label: float(p) for label, p in zip(spec.labels, probs)},
        features=features,
    )


def run_view_batch(
    session: Session, spec: StageSpec, images: Sequence[np.ndarray]
) -> list[ViewResult]:
    """Classify the projection of each working image (in [0, 1]); with the stage's
    ``mirrored_look`` option the answers to each image and its mirror are averaged."""
    outputs, mirror = with_mirrored_look(session, spec, images, ("logits",))
    return [view_from_logits(spec, row, mirror=None if mirror is None else mirror[i])
            for i, row in enumerate(outputs["logits"])]  # fmt: skip


def box_result(
    prob: np.ndarray, threshold: float, min_area_fraction: float, shape: tuple[int, ...]
) -> RoiResult:
    """The box of ``prob`` in the coordinates of an image of ``shape``, and the share of the map
    above ``threshold``.  ``prob`` is the network's map of that image alone (cut to the image
    with :func:`cut_to_image` where the input was padded), at the network's resolution."""
    box = mask_to_box(prob, threshold, min_area_fraction)
    area = float((prob > threshold).mean())
    if box is None:
        return RoiResult(box=None, area_fraction=area)
    h, w = shape[:2]
    # The mask is at the network's resolution; bring the box back to the working image.
    return RoiResult(box=box.scaled(w / prob.shape[1], h / prob.shape[0]), area_fraction=area)


def _roi_result(spec: StageSpec, prob: np.ndarray, shape: tuple[int, ...]) -> RoiResult:
    return box_result(prob, spec.threshold("mask", 0.7), spec.threshold("min_area_fraction", 0.002), shape)


def run_roi_batch(
    session: Session, spec: StageSpec, images: Sequence[np.ndarray]
) -> list[RoiResult]:
    """Segment the ROI of each image and fit the minimum-area rectangle (threshold 0.7, paper)."""
    masks = _run(session, spec, images, "mask")
    return [_roi_result(spec, cut_to_image(spec, mask[0], image.shape), image.shape)
            for mask, image in zip(masks, images)]  # fmt: skip


def grade(score: float, low: float = 1.0, high: float = 3.0) -> int:
    """The grade of a score: rounded after clipping to [low, high] (the 1-3 scale by default)."""
    return int(min(high, max(low, round(min(high, max(low, score))))))


def run_quality_batch(
    session: Session, spec: StageSpec, images: Sequence[np.ndarray], boxes: Sequence[RotatedBox]
) -> list[QualityResult]:
    """Regress the 1-3 quality score on each image's upright ROI crop."""
    assert spec.input is not None, f"stage {spec.name} runs no network"
    i = spec.input
    crops = [crop_box(image, box, i.height, i.width, i.resize) for image, box in zip(images, boxes)]
    scores = _run(session, spec, crops, "score").reshape(len(crops), -1)[:, 0]
    return [QualityResult(score=float(s), grade=grade(float(s))) for s in scores]


def run_orientation_batch(
    session: Session, spec: StageSpec, images: Sequence[np.ndarray]
) -> list[OrientationResult]:
    """Angle of the anatomy from upright, counter-clockwise, from the (cos, sin) head.

    With the stage's ``quarter_turns`` option each image is also read turned by 90, 180 and
    270 degrees and the answers, turned back, are averaged (:mod:`edge_worker.pipeline.tasks.orientation`).
    """
    results = []
    turns = 4 if spec.options.get("quarter_turns") else 1
    looks = [np.ascontiguousarray(np.rot90(image, k)) for image in images for k in range(turns)]
    answers = _run(session, spec, looks, "cossin").reshape(len(looks), -1)[:, :2]
    if turns > 1:
        # np.rot90 by k turns the anatomy by 90k degrees counter-clockwise (the stage's sense):
        # the answer to look k, turned back by -90k, estimates the stored image's angle.
        back = np.radians(-90.0 * np.arange(turns, dtype=np.float64))
        c, s = answers[:, 0].reshape(-1, turns), answers[:, 1].reshape(-1, turns)
        cos_b, sin_b = np.cos(back), np.sin(back)
        mean_c = (c * cos_b - s * sin_b).mean(axis=1)
        mean_s = (c * sin_b + s * cos_b).mean(axis=1)
        answers = np.stack([mean_c, mean_s], axis=1)
    for cos, sin in answers:
        angle = math.degrees(math.atan2(float(sin), float(cos))) % 360.0
        # The norm of an untrained-for input drifts away from 1; keep it as a confidence figure.
        norm = float(math.hypot(cos, sin))
        results.append(OrientationResult(angle_deg=angle, confidence=min(1.0, norm), norm=norm))
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
