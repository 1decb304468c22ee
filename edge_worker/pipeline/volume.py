"""Judge an MR volume in 64^3 tiles: resample, tile with minimal overlap, batch, average.

The MIQA method (paper 002): the volume is resampled to the network's spacing, cut into
cubic tiles that cover it with as little overlap as possible, each tile is judged by a small
3-D network (an overall quality score and one probability per flag), and the volume's result
is the mean over its tiles.  The tiles that drove each flag most are kept so a person can be
shown where to look.

Memory is bounded: the resampled volume is the only volume-sized array made (none when the
spacing already matches and the voxels are float32), the tiles are cut ``batch`` at a time
and the means are running sums, so a 512 x 512 x 256 volume never has all its tiles in memory.
A resampled volume above the stage's ``max_voxels`` is refused (``volume_too_large``) before
anything is allocated.

Numpy and OpenCV only (worker side): in-plane resampling is ``cv2.resize`` per slice
(``INTER_AREA`` when shrinking, ``INTER_LINEAR`` when growing), then linear interpolation
between the two nearest resized slices along z.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge_worker.errors import Rejection, RejectReason

if TYPE_CHECKING:
    from edge_worker.backends import Session
    from edge_worker.packs.pack import StageSpec

#: The ONNX output of a tiled_volume network: ``(N, 1 + flags)``, the score then each flag's
#: probability, in the stage's ``outputs`` order.
ONNX_OUTPUT = "outputs"
#: Tiles kept per flag (the ones with the highest probability).
TOP_TILES = 3
#: Voxels sampled (at most) for the intensity percentile the stage normalises by.
PERCENTILE_SAMPLE = 1 << 20

Spacing = tuple[float, float, float]
Shape = tuple[int, int, int]


@dataclass(frozen=True)
class TileBox:
    """One tile in voxel indices of the INPUT volume (before resampling), half-open."""

    z0: int
    y0: int
    x0: int
    z1: int
    y1: int
    x1: int
    probability: float


@dataclass(frozen=True)
class VolumeJudgement:
    """What the tiled_volume stage says about one volume (docs/mri.md, "The stage and the API")."""

    score: float
    """0-10, higher is better (MIQA overall quality): the mean over the tiles, clipped."""
    flags: dict[str, float]
    """Each flag's mean probability over the tiles."""
    flag_tiles: dict[str, list[TileBox]]
    """Per flag, the (up to 3) tiles with the highest probability, highest first."""
    tiles: int
    thresholds: dict[str, float]
    synthetic: bool
    timings_ms: dict[str, float]
    """``resample``, ``tile`` (cutting and normalising), ``infer`` and ``total``."""


def resampled_shape(shape: Sequence[int], spacing_mm: Sequence[float], target_mm: Sequence[float]) -> Shape:
    """The shape of ``shape`` voxels of ``spacing_mm`` resampled to ``target_mm`` (same extent)."""
    out = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing_mm, target_mm))
    return (out[0], out[1], out[2])


def resample(volume: np.ndarray, spacing_mm: Sequence[float], target_mm: Sequence[float]) -> np.ndarray:
    """``volume`` (z, y, x) resampled to ``target_mm`` voxels, float32.

    Returns ``volume`` itself (no copy) when the shape does not change and it is float32.
    Each input slice is resized at most once, and only two resized slices are held at a time.
    """
    nz, ny, nx = volume.shape
    oz, oy, ox = resampled_shape(volume.shape, spacing_mm, target_mm)
    if (oz, oy, ox) == (nz, ny, nx):
        return volume if volume.dtype == np.float32 else volume.astype(np.float32)
    shrink = oy < ny or ox < nx
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = np.empty((oz, oy, ox), np.float32)
    cache: dict[int, np.ndarray] = {}

    def plane(k: int) -> np.ndarray:
        if k not in cache:
            for old in [i for i in cache if i < k - 1]:
                del cache[old]
            src = np.ascontiguousarray(volume[k], dtype=np.float32)
            cache[k] = src if (oy, ox) == (ny, nx) else cv2.resize(src, (ox, oy), interpolation=interp)
        return cache[k]

    # Output slice centres mapped to input slice coordinates (centre-aligned grids).
    scale = nz / oz
    for k in range(oz):
        pos = min(max((k + 0.5) * scale - 0.5, 0.0), nz - 1.0)
        lo = int(math.floor(pos))
        hi = min(lo + 1, nz - 1)
        w = np.float32(pos - lo)
        if w == 0.0 or hi == lo:
            out[k] = plane(lo)
        else:
            out[k] = plane(lo) * (np.float32(1.0) - w) + plane(hi) * w
    return out


def tile_starts(length: int, tile: int) -> list[int]:
    """Starts of the fewest ``tile``-long windows covering ``length``, overlapping evenly.

    ``ceil(length / tile)`` windows, the first at 0 and the last ending at ``length``; one
    window at 0 (zero-padded) when ``length < tile``.
    """
    if length <= tile:
        return [0]
    n = math.ceil(length / tile)
    return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


def plan_tiles(shape: Sequence[int], tile: int) -> list[tuple[int, int, int]]:
    """Every tile's start (z, y, x) in the resampled volume, z slowest."""
    zs, ys, xs = (tile_starts(int(n), tile) for n in shape)
    return [(z, y, x) for z in zs for y in ys for x in xs]


def cut_tile(volume: np.ndarray, start: tuple[int, int, int], tile: int, out: np.ndarray) -> None:
    """Copy the tile at ``start`` into ``out`` (tile^3), zero beyond the volume's edge."""
    z, y, x = start
    part = volume[z : z + tile, y : y + tile, x : x + tile]
    if part.shape != (tile, tile, tile):
        out[...] = 0.0
    out[: part.shape[0], : part.shape[1], : part.shape[2]] = part


def intensity_scale(volume: np.ndarray, percentile: float) -> float:
    """The volume's ``percentile`` intensity (from at most PERCENTILE_SAMPLE voxels), > 0."""
    step = max(1, int(round((volume.size / PERCENTILE_SAMPLE) ** (1.0 / 3.0))))
    sample = volume[::step, ::step, ::step]
    value = float(np.percentile(sample, percentile)) if sample.size else 0.0
    return value if value > 0.0 else 1.0


def _box(start: tuple[int, int, int], tile: int, ratio: Sequence[float], shape: Sequence[int],
         probability: float) -> TileBox:  # fmt: skip
    """A resampled-volume tile as a box in input voxels (``ratio``: input voxels per resampled)."""
    lo = [int(math.floor(s * r)) for s, r in zip(start, ratio)]
    hi = [min(int(n), int(math.ceil((s + tile) * r))) for s, r, n in zip(start, ratio, shape)]
    return TileBox(lo[0], lo[1], lo[2], hi[0], hi[1], hi[2], float(probability))


def batches(
    volume: np.ndarray, starts: Sequence[tuple[int, int, int]], tile: int, batch: int,
    scale: float, mean: float, std: float,
) -> Iterator[tuple[list[tuple[int, int, int]], np.ndarray]]:  # fmt: skip
    """``(starts, (n, 1, t, t, t) normalised tiles)`` of at most ``batch`` tiles at a time.

    One buffer is reused: a consumer must be done with a batch before asking for the next.
    """
    buffer = np.empty((batch, 1, tile, tile, tile), np.float32)
    gain, offset = np.float32(1.0 / (scale * std)), np.float32(mean / std)
    for i in range(0, len(starts), batch):
        chunk = list(starts[i : i + batch])
        for j, start in enumerate(chunk):
            cut_tile(volume, start, tile, buffer[j, 0])
        view = buffer[: len(chunk)]
        view *= gain
        view -= offset
        yield chunk, view


def judge_volume(
    session: Session, spec: StageSpec, volume: np.ndarray, spacing_mm: Sequence[float],
    synthetic: bool,
) -> VolumeJudgement:  # fmt: skip
    """Run a ``tiled_volume`` stage on ``volume`` (z, y, x) of ``spacing_mm`` (z, y, x).

    Raises :class:`Rejection` (``volume_too_large``) when the resampled volume would exceed
    the stage's ``max_voxels``, and ValueError for a volume that is not 3-D or a bad spacing.
    """
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"a volume is (z, y, x), got shape {volume.shape}")
    if len(spacing_mm) != 3 or not all(float(s) > 0 for s in spacing_mm):
        raise ValueError(f"spacing_mm must be three positive lengths (z, y, x), got {spacing_mm}")
    o = spec.options
    start_all = time.perf_counter()
    target = o["spacing_mm"]
    shape = resampled_shape(volume.shape, spacing_mm, target)
    voxels = shape[0] * shape[1] * shape[2]
    if voxels > o["max_voxels"]:
        raise Rejection(
            RejectReason.VOLUME_TOO_LARGE,
            f"{volume.shape} voxels of {tuple(float(s) for s in spacing_mm)} mm resample to "
            f"{shape} at {tuple(target)} mm = {voxels} voxels, above the stage's max_voxels "
            f"{o['max_voxels']}",
        )
    timings: dict[str, float] = {}
    t = time.perf_counter()
    work = resample(volume, spacing_mm, target)
    timings["resample"] = (time.perf_counter() - t) * 1000.0
    tile, flags = int(o["tile"]), list(o["flags"])
    assert spec.input is not None
    scale = intensity_scale(work, o["intensity_percentile"])
    starts = plan_tiles(work.shape, tile)
    ratio = [n_in / n_out for n_in, n_out in zip(volume.shape, work.shape)]
    score_sum, flag_sum = 0.0, np.zeros(len(flags), np.float64)
    top: list[list[tuple[float, int, tuple[int, int, int]]]] = [[] for _ in flags]
    cut_ms = infer_ms = 0.0
    t = time.perf_counter()
    for index, (chunk, tiles) in enumerate(
        batches(work, starts, tile, int(o["batch"]), scale, spec.input.mean, spec.input.std)
    ):
        t1 = time.perf_counter()
        cut_ms += (t1 - t) * 1000.0
        raw = np.asarray(session.run(tiles)[ONNX_OUTPUT], np.float64).reshape(len(chunk), -1)
        t = time.perf_counter()
        infer_ms += (t - t1) * 1000.0
        if raw.shape[1] != 1 + len(flags):
            raise ValueError(f"network output has {raw.shape[1]} columns, the stage names "
                             f"{1 + len(flags)} outputs")  # fmt: skip
        score_sum += float(raw[:, 0].sum())
        flag_sum += raw[:, 1:].sum(axis=0)
        for j, start in enumerate(chunk):
            order = index * int(o["batch"]) + j
            for f in range(len(flags)):
                entry = (float(raw[j, 1 + f]), -order, start)
                if len(top[f]) < TOP_TILES:
                    heapq.heappush(top[f], entry)
                else:
                    heapq.heappushpop(top[f], entry)
    timings["tile"] = cut_ms
    timings["infer"] = infer_ms
    n = len(starts)
    low, high = o["score_range"]
    flag_tiles = {
        name: [_box(s, tile, ratio, volume.shape, p) for p, _, s in sorted(top[f], reverse=True)]
        for f, name in enumerate(flags)
    }
    timings["total"] = (time.perf_counter() - start_all) * 1000.0
    return VolumeJudgement(
        score=float(min(max(score_sum / n, low), high)),
        flags={name: float(flag_sum[f] / n) for f, name in enumerate(flags)},
        flag_tiles=flag_tiles,
        tiles=n,
        thresholds=dict(o["thresholds"]),
        synthetic=bool(synthetic),
        timings_ms={k: round(v, 3) for k, v in timings.items()},
    )


def describe_options(options: dict[str, Any]) -> str:
    """One line for logs and ``check``: tile, spacing and batch of a tiled_volume stage."""
    return (f"tiles {options['tile']}^3 at {tuple(options['spacing_mm'])} mm, batch "
            f"{options['batch']}, {len(options['flags'])} flags")  # fmt: skip
