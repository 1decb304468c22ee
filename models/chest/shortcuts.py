"""Does the view stage read the anatomy, or the text, borders, frame and detector look?

Each probe removes one cue from EVERY validation image (both classes alike) and the view
stage is scored again.  If accuracy collapses when a cue is gone, the model was leaning on it:

* ``border_12`` / ``border_15``: the outer 12 % / 15 % of each side blanked (black), where
  the burned-in words, side markers and cassette edges sit;
* ``text_removed``: small bright high-contrast blobs (text, markers, lead buttons) found by a
  white top-hat and painted over from their surroundings (``cv2.inpaint``);
* ``centre_square``: the central square only, so every image has the same aspect ratio (all
  AP images of this set are 419 x 512; the square resize keeps that as a distortion);
* ``equalised``: histogram equalisation of every image, which flattens the difference between
  the CR bedside look and the DX look;
* ``look_as_AP`` / ``look_as_PA``: every image remapped to the grey-level distribution of the
  TRAINING images of one class (:func:`class_looks`).  A model that reads the anatomy keeps
  its answers; one that reads the histogram calls everything AP, then everything PA.

Nothing here imports torch; the probes run on the pack's ONNX view stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import cv2
import numpy as np

from models.chest.augment import cdf, match_histogram
from models.chest.data import LABELS
from models.chest.evaluate import OnnxStage, softmax, view_figures


def mask_border(img: np.ndarray, frac: float) -> np.ndarray:
    """Blank the outer ``frac`` of each side to black."""
    out = img.copy()
    h, w = img.shape
    dy, dx = round(frac * h), round(frac * w)
    out[:dy] = 0.0
    out[h - dy :] = 0.0
    out[:, :dx] = 0.0
    out[:, w - dx :] = 0.0
    return out


def remove_text(img: np.ndarray, max_area_frac: float = 0.004) -> np.ndarray:
    """Paint over small bright blobs that stand out from their neighbourhood.

    A white top-hat (image minus its opening with a 15 px square at the 512 px working scale)
    keeps thin bright strokes; components smaller than ``max_area_frac`` of the image are
    text-sized.  Ribs and the spine are larger and survive; wires partly go too.
    """
    u8 = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    k = max(5, round(15 * max(img.shape) / 512))
    tophat = cv2.morphologyEx(
        u8, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    )
    binary = (tophat > 60).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    limit = max_area_frac * img.size
    small = np.zeros(count, dtype=bool)
    small[1:] = stats[1:, cv2.CC_STAT_AREA] <= limit
    mask = cv2.dilate(small[labels].astype(np.uint8) * 255, np.ones((3, 3), np.uint8))
    painted = cv2.inpaint(u8, mask, 3, cv2.INPAINT_TELEA)
    return painted.astype(np.float32) / np.float32(255.0)


def centre_square(img: np.ndarray) -> np.ndarray:
    """The central square of the image (side = the shorter side)."""
    h, w = img.shape
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return np.ascontiguousarray(img[y0 : y0 + s, x0 : x0 + s])


def equalise(img: np.ndarray) -> np.ndarray:
    """Histogram equalisation (8-bit), back to float [0, 1]."""
    u8 = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return cv2.equalizeHist(u8).astype(np.float32) / np.float32(255.0)


def _as_look(img: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return match_histogram(img, reference)


PROBES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "unmasked": lambda img: img,
    "border_12": lambda img: mask_border(img, 0.12),
    "border_15": lambda img: mask_border(img, 0.15),
    "text_removed": remove_text,
    "centre_square": centre_square,
    "equalised": equalise,
}


def class_looks(images: Sequence[np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
    """The pooled grey-level CDF of each class's images (pass the training images)."""
    looks = {}
    for k, label in enumerate(LABELS):
        chosen = [img for img, y in zip(images, labels) if y == k]
        looks[label] = np.mean([cdf(img) for img in chosen], axis=0)
    return looks


def shortcut_check(
    view: OnnxStage,
    images: Sequence[np.ndarray],
    labels: np.ndarray,
    looks: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, object]]:
    """View figures under every probe, with the change from the unmasked images.

    ``looks`` (from :func:`class_looks` on the training images) adds the ``look_as_*``
    probes.  Returns ``{probe: {accuracy, balanced_accuracy, confusion, mean_confidence,
    accuracy_change, balanced_accuracy_change}}``.
    """
    probes = dict(PROBES)
    for label, reference in (looks or {}).items():
        probes[f"look_as_{label}"] = partial(_as_look, reference=reference)
    results: dict[str, dict[str, object]] = {}
    for name, probe in probes.items():
        probs = softmax(view.run([probe(img) for img in images]))
        figures = view_figures(probs, labels)
        figures["mean_confidence"] = round(float(probs.max(axis=1).mean()), 4)
        results[name] = figures
    base = results["unmasked"]
    for figures in results.values():
        for key in ("accuracy", "balanced_accuracy"):
            figures[f"{key}_change"] = round(float(figures[key]) - float(base[key]), 4)  # type: ignore[arg-type]
    return results
