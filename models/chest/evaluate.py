"""Figures of a written chest pack, measured through ONNX Runtime as the worker runs it.

Every figure in the pack's manifest comes from here, computed on the pack's own ONNX files
with ``edge_worker.pipeline.preprocess.to_tensor``, so ``tests/test_chest_pack.py`` can reproduce
them from the committed pack.  Nothing here imports torch.

* view: accuracy, balanced accuracy (mean of per-class recall: with 38 AP and 10 PA,
  always answering AP scores 79 % accuracy but 50 % balanced), the confusion matrix, and
  what ``min_confidence`` sends to review;
* orientation (paper 003's figures): mean and median absolute angular error over seeded
  random angles on the full circle (rendered like ``cv2.getRotationMatrix2D(centre, +angle,
  1)`` on the same canvas), four-way accuracy (nearest quarter turn of the prediction equals
  that of the truth), and the accuracy on exact quarter turns (``np.rot90``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_worker.pipeline.preprocess import to_tensor
from models.chest.augment import rotate
from models.chest.data import LABELS

#: Seed of the validation rotations; fixed so that the figures are reproducible.
ROTATION_SEED = 7
ANGLES_PER_IMAGE = 8


class OnnxStage:
    """One stage of a pack on ONNX Runtime (CPU, one thread), fed like the worker feeds it."""

    def __init__(self, root: Path, entry: dict[str, object]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.entry = entry
        self.spec: dict[str, float] = entry["input"]  # type: ignore[assignment]
        self.thresholds: dict[str, float] = entry.get("thresholds", {})  # type: ignore[assignment]
        self.session = ort.InferenceSession(str(root / str(entry["file"])), options,
                                            providers=["CPUExecutionProvider"])  # fmt: skip

    def run(self, images: Sequence[np.ndarray], batch: int = 32) -> np.ndarray:
        """The first output for each working image, stacked: ``(N, ...)``."""
        s = self.spec
        outputs = []
        for i in range(0, len(images), batch):
            x = np.concatenate([
                to_tensor(img, int(s["height"]), int(s["width"]), int(s["channels"]),
                          float(s["mean"]), float(s["std"]))
                for img in images[i : i + batch]
            ])  # fmt: skip
            outputs.append(self.session.run(None, {"image": x})[0])
        return np.concatenate(outputs)


def load_stages(root: Path) -> dict[str, OnnxStage]:
    """The pack's network stages by name (``view``, ``orientation``), read from its manifest."""
    manifest = json.loads((Path(root) / "manifest.json").read_text())
    return {str(e["name"]): OnnxStage(Path(root), e) for e in manifest["stages"] if "file" in e}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` logits, as ``edge_worker.pipeline`` computes it."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def view_figures(probs: np.ndarray, labels: np.ndarray, min_confidence: float | None = None
                 ) -> dict[str, object]:  # fmt: skip
    """Accuracy, balanced accuracy, confusion matrix ``{true: {predicted: n}}``, recalls."""
    pred = probs.argmax(axis=1)
    recalls = {
        LABELS[k]: round(float((pred[labels == k] == k).mean()), 4)
        for k in range(len(LABELS)) if (labels == k).any()
    }  # fmt: skip
    figures: dict[str, object] = {
        "n": len(labels),
        "accuracy": round(float((pred == labels).mean()), 4),
        "balanced_accuracy": round(float(np.mean(list(recalls.values()))), 4),
        "recall": recalls,
        "confusion": {LABELS[t]: {LABELS[p]: int(((labels == t) & (pred == p)).sum())
                                  for p in range(len(LABELS))} for t in range(len(LABELS))},
    }  # fmt: skip
    if min_confidence is not None:
        accepted = probs.max(axis=1) >= min_confidence
        figures["min_confidence"] = min_confidence
        figures["review_fraction"] = round(float(1.0 - accepted.mean()), 4)
        figures["accuracy_of_accepted"] = (
            round(float((pred[accepted] == labels[accepted]).mean()), 4) if accepted.any() else None
        )
    return figures


def angular_error(pred_deg: np.ndarray, true_deg: np.ndarray) -> np.ndarray:
    """Absolute angle differences in degrees, in [0, 180]."""
    diff = np.abs(pred_deg - true_deg) % 360.0
    return np.minimum(diff, 360.0 - diff)


def quarter(angle_deg: np.ndarray) -> np.ndarray:
    """The nearest quarter turn (0..3) of each angle."""
    return np.rint(np.asarray(angle_deg) / 90.0).astype(int) % 4


def rotation_cases(n_images: int, seed: int = ROTATION_SEED, per_image: int = ANGLES_PER_IMAGE
                   ) -> list[tuple[int, float]]:  # fmt: skip
    """``(image index, angle)`` pairs: ``per_image`` seeded uniform angles for each image."""
    rng = np.random.default_rng(seed)
    return [(i, float(a)) for i in range(n_images) for a in rng.uniform(0, 360, per_image)]


def predicted_angles(
    stage: OnnxStage, images: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Angles in [0, 360) and output norms from the ``cossin`` head."""
    out = stage.run(images)[:, :2]
    return np.degrees(np.arctan2(out[:, 1], out[:, 0])) % 360.0, np.hypot(out[:, 0], out[:, 1])


def orientation_figures(stage: OnnxStage, images: Sequence[np.ndarray], seed: int = ROTATION_SEED
                        ) -> dict[str, object]:  # fmt: skip
    """Paper 003's figures on the upright ``images`` turned by seeded angles."""
    cases = rotation_cases(len(images), seed)
    truth = np.array([a for _, a in cases])
    pred, norm = predicted_angles(stage, [rotate(images[i], a, "same") for i, a in cases])
    errors = angular_error(pred, truth)
    expand_pred, _ = predicted_angles(stage, [rotate(images[i], a, "expand") for i, a in cases])
    turns = [(i, 90.0 * k) for i in range(len(images)) for k in range(4)]
    turn_pred, _ = predicted_angles(stage, [rotate(images[i], a, "quarter") for i, a in turns])
    turn_truth = np.array([a for _, a in turns])
    return {
        "n_images": len(images),
        "n_rotations": len(cases),
        "rotation_seed": seed,
        "mae_deg": round(float(errors.mean()), 2),
        "median_deg": round(float(np.median(errors)), 2),
        "p90_deg": round(float(np.percentile(errors, 90)), 2),
        "within_10_deg": round(float((errors <= 10).mean()), 4),
        "four_way_accuracy": round(float((quarter(pred) == quarter(truth)).mean()), 4),
        "quarter_turn_accuracy": round(
            float((quarter(turn_pred) == quarter(turn_truth)).mean()), 4
        ),
        "quarter_turn_mae_deg": round(float(angular_error(turn_pred, turn_truth).mean()), 2),
        "expanded_canvas_mae_deg": round(float(angular_error(expand_pred, truth).mean()), 2),
        "norm_min": round(float(norm.min()), 3),
        "norm_median": round(float(np.median(norm)), 3),
    }


def choose_min_confidence(probs: np.ndarray, labels: np.ndarray, coverage: float = 0.9,
                          floor: float = 0.6, ceiling: float = 0.97) -> float:  # fmt: skip
    """The confidence that ``coverage`` of the correct validation calls reach, clipped.

    A rule on in-distribution data alone, so that the out-of-distribution images remain a
    test of it rather than something it was fitted to.
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    if not correct.any():
        return ceiling
    value = float(np.quantile(confidence[correct], 1.0 - coverage))
    return round(min(ceiling, max(floor, np.floor(value * 100) / 100)), 2)


def choose_with_ood(
    probs: np.ndarray, labels: np.ndarray, ood_confidence: np.ndarray, min_kept: float = 0.75
) -> tuple[float, str]:
    """``min_confidence`` that sends every out-of-distribution image to review, if affordable.

    The lowest threshold on a 0.01 grid above every OOD image's view confidence, provided at
    least ``min_kept`` of the validation images stay above it; otherwise the validation-only
    rule (:func:`choose_min_confidence`).  Returns the threshold and which rule chose it.
    Being fitted to the OOD images, it makes the OOD table optimistic: the table says so.
    """
    base = choose_min_confidence(probs, labels)
    if not len(ood_confidence):
        return base, "validation"
    above_ood = float(np.ceil((float(ood_confidence.max()) + 1e-6) * 100) / 100)
    candidate = round(max(base, above_ood), 2)
    if candidate < 1.0 and (probs.max(axis=1) >= candidate).mean() >= min_kept:
        return candidate, "above every OOD image" if candidate > base else "validation"
    return base, "validation (the OOD images would need more than the validation can give)"


def threshold_sweep(val_conf: np.ndarray, val_correct: np.ndarray, ood_conf: np.ndarray,
                    grid: Sequence[float] = (0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)
                    ) -> list[dict[str, float]]:  # fmt: skip
    """For each threshold: validation images kept and their accuracy, OOD images sent to review."""
    rows = []
    for t in grid:
        kept = val_conf >= t
        rows.append({
            "min_confidence": t,
            "validation_kept": round(float(kept.mean()), 4),
            "validation_accuracy_of_kept": round(float(val_correct[kept].mean()), 4) if kept.any() else 0.0,
            "ood_to_review": round(float((ood_conf < t).mean()), 4) if len(ood_conf) else 0.0,
        })  # fmt: skip
    return rows
