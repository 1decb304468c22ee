"""Training data: head phantoms with artifacts, split by phantom, cut into the worker's tiles.

Each example is one phantom (its own seed) at the stage's spacing with its artifacts and
labels; the splits use disjoint seed ranges, so no phantom (and no tile of one) is in two
splits.  Tiles are cut and normalised by the worker's own functions
(:func:`edge_worker.pipeline.volume.batches`), so training sees exactly what the pack will.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_worker.phantoms.mri import make_head_with_truth
from edge_worker.pipeline.volume import batches, intensity_scale, plan_tiles
from models.mri.artifacts import Labels, apply, draw_strengths, labels_of
from models.mri.pack import MEAN, STD

#: First phantom seed of each split (disjoint ranges of 100 000).
SPLIT_SEEDS = {"train": 0, "val": 100_000, "test": 200_000, "fresh": 300_000}
SPACING_MM = (2.0, 2.0, 2.0)
SHAPE = (80, 112, 96)  # 160 x 224 x 192 mm: a head's field of view at 2 mm
TILE = 64
SCANNER_UNITS = 1000.0


@dataclass(frozen=True)
class Example:
    seed: int
    volume: np.ndarray  # (z, y, x) float32, scanner units, at SPACING_MM
    labels: Labels


def make_example(seed: int, strengths: dict[str, float] | None = None,
                 lesion: bool | None = None, normal_variant: bool | None = None) -> Example:  # fmt: skip
    """Phantom ``seed`` with artifacts drawn from the seed (or ``strengths`` as given)."""
    rng = np.random.default_rng(seed)
    head, truth = make_head_with_truth(rng, SHAPE, SPACING_MM, lesion=lesion, normal_variant=normal_variant)
    chosen = draw_strengths(rng) if strengths is None else dict(strengths)
    vol = apply(head / SCANNER_UNITS, chosen, seed) * SCANNER_UNITS
    return Example(seed, vol.astype(np.float32), labels_of(chosen, truth.lesion, truth.normal_variant))


def split_seeds(split: str, n: int) -> list[int]:
    return [SPLIT_SEEDS[split] + i for i in range(n)]


def tiles_of(volume: np.ndarray, jitter: np.random.Generator | None = None) -> np.ndarray:
    """Every tile of ``volume`` ``(n, 1, 64, 64, 64)`` float16, normalised like the worker;
    ``jitter`` shifts the grid by up to 8 voxels per axis (training only)."""
    starts = plan_tiles(volume.shape, TILE)
    if jitter is not None:
        limit = [max(0, n - TILE) for n in volume.shape]
        moved = [[int(min(max(s + jitter.integers(-8, 9), 0), m)) for s, m in zip(st, limit)]
                 for st in starts]  # fmt: skip
        starts = [(z, y, x) for z, y, x in moved]
    _, out = next(batches(volume, starts, TILE, len(starts), intensity_scale(volume, 99.5), MEAN, STD))  # type: ignore[arg-type]
    return out.astype(np.float16)
