"""The review copy of an MR series: a montage of a few slices, for tier-one review.

A reviewer needs to see that the series is the anatomy it claims and whether an artifact is
visible, not every slice: ``count`` slices evenly spaced through the volume (the outer fifths
left out: their slices are mostly outside the anatomy) in a grid, each windowed to the
volume's 1st-99th percentile (MR intensities have no fixed scale), encoded as the radiograph
copies are (:mod:`edge_worker.judging.review_copy`: PNG, never enlarged).
"""

from __future__ import annotations

import math

import numpy as np

from edge_worker.judging.review_copy import (
    ENCODINGS,
    MAX_SIZE,
    MEDIA_TYPES,
    MIN_SIZE,
    EncodedCopy,
    encode,
    reduce_to,
)


def montage_slices(depth: int, count: int = 4) -> list[int]:
    """The slice indices shown: ``count`` evenly spaced between 20 % and 80 % of ``depth``."""
    if depth <= count:
        return list(range(depth))
    return sorted({round(float(f) * (depth - 1)) for f in np.linspace(0.2, 0.8, count)})


def series_montage(volume: np.ndarray, size: int, count: int = 4) -> tuple[EncodedCopy, list[int]]:
    """The montage of ``volume`` (z, y, x) at most ``size`` a side, and the slices it shows.

    Raises ValueError for a size outside 256..2048 or a volume that is not 3-D.
    """
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"review copy size {size} is outside {MIN_SIZE}..{MAX_SIZE}")
    if volume.ndim != 3 or volume.size == 0:
        raise ValueError(f"expected a non-empty 3-D volume, got shape {volume.shape}")
    picked = montage_slices(volume.shape[0], count)
    lo, hi = (float(v) for v in np.percentile(volume[picked], (1.0, 99.0)))
    scale = 1.0 / (hi - lo) if hi > lo else 1.0
    columns = math.ceil(math.sqrt(len(picked)))
    rows = math.ceil(len(picked) / columns)
    _, h, w = volume.shape
    sheet = np.zeros((rows * h, columns * w), dtype=np.float32)
    for i, k in enumerate(picked):
        r, c = divmod(i, columns)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = np.clip(
            (volume[k] - lo) * scale, 0.0, 1.0
        )
    grey, factor = reduce_to(sheet, size)
    copy = EncodedCopy(encode(grey), MEDIA_TYPES["png"], ENCODINGS["png"].lstrip("."),
                       int(grey.shape[1]), int(grey.shape[0]), float(factor))  # fmt: skip
    return copy, picked
