"""Inputs that are not frontal chests, for outlier exposure of the view stage.

A two-class softmax has no "neither" answer: trained on AP and PA alone it calls a knee AP
or PA with whatever confidence its features happen to give.  Outlier exposure (Hendrycks et
al., ICLR 2019) adds a loss that pushes the prediction on known non-chest inputs towards the
uniform distribution, so that "not like the training data" shows up as low confidence and the
pack's ``min_confidence`` sends it to ``review``.

The outliers here are all synthetic or derived from the training images, so the real knees
and chest laterals of the out-of-distribution check stay unseen:

* phantom ankles from :mod:`edge_worker.phantoms.ankle` (seeds disjoint from the OOD check's);
* close-up crops of the training chests (a tenth to a third of the side), which look like
  bone and soft tissue but not like a whole thorax;
* smooth random fields with noise (blank or nonsense exposures).
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_worker.phantoms.ankle import render
from edge_worker.pipeline.preprocess import working_image

#: Phantom seeds for outlier exposure; the OOD check uses :data:`CHECK_PHANTOM_SEED`.
TRAIN_PHANTOM_SEED = 31_337
CHECK_PHANTOM_SEED = 90_210


def phantom_ankles(seed: int, n: int) -> list[np.ndarray]:
    """``n`` phantom ankles (AP and LAT, any grade and rotation) as working images in [0, 1]."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        view = ("AP", "LAT")[i % 2]
        pixels, _ = render(rng, view, 1 + i % 3, float(rng.uniform(0, 360)), 512,
                           laterality=("R", "L")[(i // 2) % 2])  # fmt: skip
        working, _ = working_image(pixels.astype(np.float32) / np.float32(65535.0))
        images.append(working)
    return images


def chest_closeup(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """A crop of a tenth to a third of the chest's side, as if the field were a small joint."""
    h, w = img.shape
    side = float(rng.uniform(0.1, 0.33))
    ch, cw = max(8, int(h * side * rng.uniform(0.8, 1.25))), max(8, int(w * side))
    ch, cw = min(ch, h), min(cw, w)
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return cv2.resize(img[y0 : y0 + ch, x0 : x0 + cw], (256, 256), interpolation=cv2.INTER_LINEAR)


def random_field(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A smooth random field plus noise: an exposure with nothing recognisable on it."""
    cells = int(rng.integers(2, 12))
    coarse = rng.random((cells, cells), dtype=np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    field = field * np.float32(rng.uniform(0.2, 1.0)) + np.float32(rng.uniform(0.0, 0.5))
    field += rng.standard_normal((size, size), dtype=np.float32) * np.float32(rng.uniform(0, 0.08))
    return np.clip(field, 0.0, 1.0)


def outlier(rng: np.random.Generator, phantoms: list[np.ndarray], chests: list[np.ndarray]
            ) -> np.ndarray:  # fmt: skip
    """One outlier drawn from the three kinds (40 % phantom, 40 % close-up, 20 % field)."""
    kind = rng.random()
    if kind < 0.4 and phantoms:
        img = phantoms[int(rng.integers(len(phantoms)))]
        if rng.random() < 0.5:
            img = np.ascontiguousarray(img[:, ::-1])
        return img
    if kind < 0.8 and chests:
        return chest_closeup(rng, chests[int(rng.integers(len(chests)))])
    return random_field(rng)
