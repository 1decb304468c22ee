"""From the files of one series to a volume: completeness, geometry checks, then the voxels.

Pure functions over :class:`~edge_worker.ingest.slices.SliceFile` facts, each refusal a typed
:class:`~edge_worker.errors.Rejection`:

* :func:`missing` says whether the series is still short of images (what the collector waits
  for): the count headers (ImagesInAcquisition, NumberOfFrames) against the frames present,
  and a gap in the positions along the slice normal;
* :func:`geometry` checks that the frames make one regular grid (one size, one frame of
  reference, one orientation, no duplicated position, even spacing) and returns their order;
* :func:`build_volume` reads the pixels (after :func:`geometry` passed and the size is within
  the limit) into a ``(z, y, x)`` float32 array in the scanner's units (Rescale Slope and
  Intercept applied, PS3.3 C.7.6.16.2.9 for enhanced files).

Slices are ordered by their position along the normal (the cross product of the row and column
cosines, PS3.3 C.7.6.2.1.1), never by Instance Number, which modalities number freely.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from edge_worker.errors import Rejection, RejectReason
from edge_worker.ingest.slices import COSINE_TOLERANCE, POSITION_TOLERANCE_MM, Frame, SliceFile

#: Neighbour distances may differ from the series' step by this fraction (scanners round
#: positions to a few decimals) and still be a regular grid.
SPACING_TOLERANCE = 0.02


@dataclass(frozen=True)
class Geometry:
    """The checked grid: frames in order along the normal, and the voxel spacing."""

    order: tuple[tuple[SliceFile, Frame], ...]
    spacing_mm: tuple[float, float, float]  # z, y, x
    normal: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        first = self.order[0][0]
        return len(self.order), first.rows, first.columns


@dataclass(frozen=True)
class Volume:
    """A series' voxels and what identifies them."""

    voxels: np.ndarray  # (z, y, x) float32, scanner units
    spacing_mm: tuple[float, float, float]
    #: sha256 over each file's Pixel Data as stored, in slice order: the series' content.
    pixel_digest: str
    geometry: Geometry


def frames_of(files: Sequence[SliceFile]) -> list[tuple[SliceFile, Frame]]:
    """Every (file, frame) pair of the series."""
    return [(f, fr) for f in files for fr in f.frames]


def expected_count(files: Sequence[SliceFile]) -> int | None:
    """The image count the headers give (largest ImagesInAcquisition or NumberOfFrames)."""
    counts = [f.expected for f in files if f.expected is not None]
    return max(counts) if counts else None


def _normal(orientation: Sequence[float] | np.ndarray) -> np.ndarray:
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return np.cross(row, col)


def _distances(frames: Sequence[tuple[SliceFile, Frame]]) -> np.ndarray | None:
    """Positions along the first frame's normal, or None where geometry is missing."""
    if not frames or any(fr.position is None or fr.orientation is None for _, fr in frames):
        return None
    normal = _normal(frames[0][1].orientation or ())
    return np.array([float(np.dot(fr.position or (0.0, 0.0, 0.0), normal)) for _, fr in frames])


def _gaps(sorted_d: np.ndarray) -> list[tuple[float, float, int]]:
    """(from, to, missing count) for each step that is a whole multiple (>= 2) of the smallest."""
    diffs = np.diff(sorted_d)
    positive = diffs[diffs > POSITION_TOLERANCE_MM]
    if positive.size == 0:
        return []
    step = float(np.min(positive))
    out = []
    for i, d in enumerate(diffs):
        k = round(float(d) / step)
        if k >= 2 and abs(float(d) - k * step) <= max(
            POSITION_TOLERANCE_MM, SPACING_TOLERANCE * step
        ):
            out.append((float(sorted_d[i]), float(sorted_d[i + 1]), k - 1))
    return out


def missing(files: Sequence[SliceFile]) -> Rejection | None:
    """Why the series is not complete yet, or None when nothing says more images will come.

    ``slice_missing``: a gap of one or more whole steps between two positions along the normal;
    ``series_incomplete``: fewer frames than ImagesInAcquisition / NumberOfFrames says.
    """
    frames = frames_of(files)
    d = _distances(frames)
    if d is not None and len(d) >= 3:
        gaps = _gaps(np.sort(d))
        if gaps:
            a, b, n = gaps[0]
            return Rejection(RejectReason.SLICE_MISSING, (
                f"{sum(g[2] for g in gaps)} slice(s) missing along the normal, the first "
                f"{n} between {a:.2f} mm and {b:.2f} mm ({len(frames)} present)"
            ))  # fmt: skip
    expected = expected_count(files)
    if expected is not None and len(frames) < expected:
        return Rejection(RejectReason.SERIES_INCOMPLETE,
                         f"{len(frames)} of {expected} images present (ImagesInAcquisition/NumberOfFrames)")  # fmt: skip
    return None


def _mixed(files: Sequence[SliceFile]) -> Rejection | None:
    """Files under one Series Instance UID that cannot be one volume."""
    kinds = {f.multi_frame for f in files}
    if len(kinds) > 1 or sum(f.multi_frame for f in files) > 1:
        return Rejection(RejectReason.SERIES_MIXED, "single-frame and multi-frame files (or several "
                         "multi-frame files) under one Series Instance UID")  # fmt: skip
    for attr, label in (("rows", "Rows"), ("columns", "Columns"), ("frame_of_reference_uid", "Frame of Reference UID"),
                        ("pixel_spacing", "Pixel Spacing"), ("study_uid", "Study Instance UID")):  # fmt: skip
        values = {getattr(f, attr) for f in files}
        if len(values) > 1:
            shown = ", ".join(sorted(str(v) for v in values)[:3])
            return Rejection(RejectReason.SERIES_MIXED, f"the files differ in {label} ({shown})")
    return None


def geometry(files: Sequence[SliceFile], max_voxels: int) -> Geometry:
    """The frames' order and spacing; raises :class:`Rejection` when they are no regular grid.

    Checked in this order: mixed files, size (``max_voxels``, before any pixel is read),
    orientation, duplicated positions, missing slices, irregular spacing, count headers.
    """
    if not files:
        raise Rejection(RejectReason.SERIES_INCOMPLETE, "no image in the series")
    mixed = _mixed(files)
    if mixed is not None:
        raise mixed
    frames = frames_of(files)
    first = files[0]
    voxels = len(frames) * first.rows * first.columns
    if voxels > max_voxels:
        raise Rejection(RejectReason.VOLUME_TOO_LARGE, (
            f"{len(frames)} x {first.rows} x {first.columns} = {voxels:,} voxels exceeds "
            f"[series] max_voxels {max_voxels:,}"
        ))  # fmt: skip
    if any(fr.orientation is None or fr.position is None for _, fr in frames):
        raise Rejection(RejectReason.ORIENTATION_INCONSISTENT,
                        "a frame has no Image Position/Orientation (Patient): no geometry to stack by")  # fmt: skip
    reference = np.asarray(frames[0][1].orientation, float)
    for f, fr in frames:
        if np.max(np.abs(np.asarray(fr.orientation, float) - reference)) > COSINE_TOLERANCE:
            raise Rejection(RejectReason.ORIENTATION_INCONSISTENT, (
                f"{f.path.name} (frame {fr.index + 1}) has orientation {list(fr.orientation or ())}, "
                f"the series {reference.round(6).tolist()}"
            ))  # fmt: skip
    d = _distances(frames)
    assert d is not None  # every frame has its geometry (checked above)
    order = np.argsort(d, kind="stable")
    sorted_d = d[order]
    diffs = np.diff(sorted_d)
    if diffs.size and float(np.min(diffs)) <= POSITION_TOLERANCE_MM:
        i = int(np.argmin(diffs))
        a, b = frames[int(order[i])][0], frames[int(order[i + 1])][0]
        raise Rejection(RejectReason.POSITIONS_DUPLICATED,
                        f"{a.path.name} and {b.path.name} lie at the same position ({sorted_d[i]:.2f} mm along the normal)")  # fmt: skip
    gap = missing(files)
    if gap is not None and gap.reason is RejectReason.SLICE_MISSING:
        raise gap
    step = float(np.median(diffs)) if diffs.size else (first.slice_thickness or 1.0)
    if diffs.size and float(np.max(np.abs(diffs - step))) > max(
        POSITION_TOLERANCE_MM, SPACING_TOLERANCE * step
    ):
        raise Rejection(RejectReason.SPACING_IRREGULAR,
                        f"slice distances from {float(np.min(diffs)):.3f} to {float(np.max(diffs)):.3f} mm (median {step:.3f})")  # fmt: skip
    if gap is not None:
        raise gap
    expected = expected_count(files)
    if expected is not None and len(frames) > expected:
        raise Rejection(
            RejectReason.SERIES_MIXED, f"{len(frames)} images, the headers say {expected}"
        )
    row_mm, col_mm = first.pixel_spacing or (1.0, 1.0)
    normal = _normal(reference)
    return Geometry(tuple(frames[int(i)] for i in order), (step, row_mm, col_mm),
                    (float(normal[0]), float(normal[1]), float(normal[2])))  # fmt: skip


def _rescale(item: Dataset | None) -> tuple[float, float]:
    """(slope, intercept) of a dataset or a Pixel Value Transformation item (1, 0 if absent)."""
    if item is None:
        return 1.0, 0.0
    slope, intercept = item.get("RescaleSlope"), item.get("RescaleIntercept")
    return (
        float(slope) if slope not in (None, "") else 1.0,
        float(intercept) if intercept not in (None, "") else 0.0,
    )


def _frame_rescale(ds: Dataset, index: int) -> tuple[float, float]:
    """An enhanced file's per-frame (else shared) Pixel Value Transformation."""
    for groups in (
        ds.get("PerFrameFunctionalGroupsSequence"),
        ds.get("SharedFunctionalGroupsSequence"),
    ):
        if not groups:
            continue
        item = groups[index] if len(groups) > 1 else groups[0]
        seq = item.get("PixelValueTransformationSequence")
        if seq:
            return _rescale(seq[0])
    return _rescale(ds)


def build_volume(geometry: Geometry) -> Volume:
    """Read the frames in ``geometry``'s order into one float32 volume.

    Raises :class:`Rejection` (``decode_failed``) when a file's pixels cannot be decoded or
    are not the declared size.
    """
    z, rows, cols = geometry.shape
    voxels = np.empty((z, rows, cols), dtype=np.float32)
    digest = hashlib.sha256()
    cache: dict[str, tuple[Dataset, np.ndarray]] = {}
    ds: Dataset
    digested: set[str] = set()
    for k, (f, fr) in enumerate(geometry.order):
        key = str(f.path)
        try:
            if key not in cache:
                ds = pydicom.dcmread(f.path)
                cache.clear() if not f.multi_frame else None  # only a multi-frame file is reused
                cache[key] = (ds, ds.pixel_array)
            ds, arr = cache[key]
        except Exception as exc:
            raise Rejection(
                RejectReason.DECODE_FAILED, f"{f.path.name}: {type(exc).__name__}: {exc}"
            ) from exc
        plane = arr[fr.index] if f.multi_frame else arr
        if plane.shape != (rows, cols):
            raise Rejection(
                RejectReason.DECODE_FAILED,
                f"{f.path.name}: pixels {plane.shape}, header {rows}x{cols}",
            )
        slope, intercept = _frame_rescale(ds, fr.index) if f.multi_frame else _rescale(ds)
        voxels[k] = plane.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        if key not in digested:
            digested.add(key)
            digest.update(hashlib.sha256(ds.PixelData).digest())
    return Volume(voxels, geometry.spacing_mm, digest.hexdigest(), geometry)
