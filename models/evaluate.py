"""Validation figures per task, computed the way the papers report them.

* view: accuracy of the arg-max class;
* roi: mean Dice of the mask thresholded at 0.7 (ankle paper 5.2) against the box mask;
* quality: accuracy of ``round(clip(score, 1, 3))`` against the grade, and the MAE (5.3),
  on crops of the ground-truth box (the stage measured alone, as in the paper);
* orientation: mean absolute angular error in degrees (paper 003).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.data import VIEW_LABELS, Sample, example
from models.networks import angle_of

ROI_THRESHOLD = 0.7


def predict(net: nn.Module, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    """Run ``net`` in eval mode over ``(N, C, H, W)`` inputs, in batches."""
    net.eval()
    outputs = []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch):
            outputs.append(net(torch.from_numpy(inputs[i : i + batch])).numpy())
    return np.concatenate(outputs)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def angular_error(pred_deg: np.ndarray, true_deg: np.ndarray) -> np.ndarray:
    """Absolute angle differences in degrees, in [0, 180]."""
    diff = np.abs(pred_deg - true_deg) % 360.0
    return np.minimum(diff, 360.0 - diff)


def evaluate(
    task: str, net: nn.Module, samples: list[Sample], height: int, width: int,
    labels: tuple[str, ...] = VIEW_LABELS, resize: str = "stretch",
) -> dict[str, float]:
    """Figures for ``task`` on ``samples`` (no augmentation); keys depend on the task.

    ``labels``: the view classifier's vocabulary (AP, LAT by default); ``resize``: the input
    layout (:func:`models.data.example`)."""
    pairs = [example(task, s, height, width, None, labels, resize) for s in samples]
    inputs = np.stack([p[0] for p in pairs])
    targets = np.stack([p[1] for p in pairs])
    out = predict(net, inputs)
    n = {"n": float(len(samples))}
    if task == "view":
        return {"accuracy": round(float((out.argmax(1) == targets).mean()), 4), **n}
    if task == "roi":
        scores = [dice(o[0] > ROI_THRESHOLD, t[0] > 0.5) for o, t in zip(out, targets)]
        return {"dice": round(float(np.mean(scores)), 4), **n}
    if task == "quality":
        grades = np.array([s.record.grade for s in samples])
        pred = np.rint(np.clip(out[:, 0], 1.0, 3.0))
        return {
            "accuracy": round(float((pred == grades).mean()), 4),
            "mae": round(float(np.abs(out[:, 0] - targets[:, 0]).mean()), 4),
            **n,
        }
    predicted = angle_of(torch.from_numpy(out)).numpy()
    errors = angular_error(predicted, targets[:, 0])
    return {
        "mae_deg": round(float(errors.mean()), 2),
        "within_10_deg": round(float((errors <= 10).mean()), 4),
        **n,
    }


__all__ = ["ROI_THRESHOLD", "VIEW_LABELS", "angular_error", "dice", "evaluate", "predict"]
