"""Phantom sets for the lumbar pack, made the way the worker sees images.

A set is drawn from one split seed; phantom ``i`` is a new patient with the seed
``split_seed * 1_000_003 + i`` (as :func:`edge_worker.phantoms.lumbar.write_lumbar_dataset`
numbers its files), views cycle AP, LAT, OBL and half of each view's images carry one
positioning error.  Each image goes through the worker's own reduction
(:func:`edge_worker.pipeline.preprocess.working_image`) and its network resizing
(:func:`edge_worker.pipeline.preprocess.to_tensor`); labels are resized with nearest neighbour to the
segmentation network's input, the resolution Dice and the rules are measured at.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_worker.phantoms.lumbar import VIEWS, LumbarTruth, balanced, render
from edge_worker.pipeline.preprocess import to_tensor, working_image

#: Seeds of the three disjoint splits (a split's phantoms share no patient with another's).
SPLIT_SEEDS = {"train": 101, "validation": 202, "test": 303}
#: Network inputs (height, width): the view classifier, and every segmenter.
VIEW_INPUT = (128, 128)
SEG_INPUT = (160, 128)
MEAN, STD = 0.5, 0.25
#: Rows of the rendered phantoms: the worker's working size
#: (:data:`edge_worker.pipeline.preprocess.WORKING_MAX_SIDE`), so the working image is the phantom
#: itself; a DICOM phantom of 1024-2048 rows reduces to the same size.
RENDER_SIZE = 512


@dataclass(frozen=True, eq=False)
class Example:
    """One phantom: the working image, network-resolution labels and the truth."""

    seed: int
    working: np.ndarray
    labels: np.ndarray
    truth: LumbarTruth

    @property
    def scale(self) -> tuple[float, float]:
        """One segmentation pixel's size in working-image pixels, ``(sx, sy)``."""
        h, w = self.working.shape
        return (w / SEG_INPUT[1], h / SEG_INPUT[0])


def item_seed(split_seed: int, i: int) -> int:
    return split_seed * 1_000_003 + i


def make_example(seed: int, index: int) -> Example:
    """Phantom ``index`` of a balanced set, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    view, error = balanced(index)
    pixels, truth = render(rng, view, error, RENDER_SIZE, side="LR"[int(rng.integers(2))])
    working, _ = working_image(pixels.astype(np.float32) / np.float32(65535.0))
    labels = cv2.resize(truth.labels, (SEG_INPUT[1], SEG_INPUT[0]), interpolation=cv2.INTER_NEAREST)
    return Example(seed, working, labels, truth)


def make_set(split: str, n: int, offset: int = 0) -> list[Example]:
    """``n`` phantoms of ``split`` (``n`` a multiple of 3 keeps the views balanced)."""
    base = SPLIT_SEEDS[split]
    return [make_example(item_seed(base, i), i) for i in range(offset, offset + n)]


def tensor(working: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(1, H, W)`` float32 network input of a working image, exactly as the worker makes it."""
    return to_tensor(working, size[0], size[1], 1, MEAN, STD)[0]


def view_index(example: Example) -> int:
    return VIEWS.index(example.truth.view)


#: The sweep: per view, the angle of its own positioning error drawn uniformly from 0 to the
#: top of the error band, so that images fall on both sides of (and close to) the rule's
#: threshold.  (view, angle key, largest magnitude in degrees, offset added).
SWEEPS = (
    ("AP", "rotation_deg", 16.0, 0.0),
    ("AP", "inplane_deg", 22.0, 0.0),
    ("LAT", "tilt_deg", 18.0, 0.0),
    ("OBL", "obliquity_deg", 28.0, 45.0),
)


def make_sweep(split: str, n: int) -> list[Example]:
    """``n`` phantoms cycling through :data:`SWEEPS`, from ``split``'s seed plus 50_000.

    Their truth is the rules on their TRUE masks (``LumbarTruth.error`` is ``None``).
    """
    base = SPLIT_SEEDS[split]
    examples = []
    for i in range(n):
        seed = item_seed(base, 50_000 + i)
        rng = np.random.default_rng(seed)
        view, key, top, offset = SWEEPS[i % len(SWEEPS)]
        angle = offset + float(rng.uniform(0.0, top)) * (1.0 if rng.random() < 0.5 else -1.0)
        pixels, truth = render(rng, view, None, RENDER_SIZE, side="LR"[int(rng.integers(2))],
                               angles={key: angle})  # fmt: skip
        working, _ = working_image(pixels.astype(np.float32) / np.float32(65535.0))
        labels = cv2.resize(truth.labels, (SEG_INPUT[1], SEG_INPUT[0]),
                            interpolation=cv2.INTER_NEAREST)  # fmt: skip
        examples.append(Example(seed, working, labels, truth))
    return examples
