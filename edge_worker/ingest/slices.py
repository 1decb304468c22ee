"""The header facts of one cross-sectional image file (MR), for collecting it into its series.

Read with ``stop_before_pixels=True``: routing a file to the series collector costs one header
parse, never a decode.  A single-frame file gives one :class:`Frame`; an enhanced multi-frame
file (PS3.3 C.7.6.16, functional groups) gives one per frame, each with the position and
orientation its per-frame or shared groups declare.  Patient attributes are never copied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

#: Geometry is compared to this many mm (positions) and this much (direction cosines).
POSITION_TOLERANCE_MM = 0.01
COSINE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Frame:
    """One 2-D image of a series: where it lies and how it is turned."""

    position: tuple[float, float, float] | None  # Image Position (Patient), mm
    orientation: tuple[float, ...] | None  # Image Orientation (Patient): row then column cosines
    index: int = 0  # frame index in its file (0 for a single-frame file)


@dataclass(frozen=True)
class SliceFile:
    """What the header of one file says about the series it belongs to."""

    path: Path
    series_uid: str
    study_uid: str
    sop_uid: str
    modality: str
    body_part: str
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None  # row, column spacing in mm
    slice_thickness: float | None
    frame_of_reference_uid: str
    #: ImagesInAcquisition (0020,1002) of a single-frame file; None where absent.
    expected: int | None
    frames: tuple[Frame, ...]
    multi_frame: bool
    instance_number: int | None


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    """``n`` finite floats from a multi-valued element, else None."""
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        number = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _group(item: Dataset | None, sequence: str) -> Dataset | None:
    """The first item of a functional group macro's sequence in ``item`` (None if absent)."""
    if item is None:
        return None
    seq = item.get(sequence)
    return seq[0] if seq else None


def _frames_of(ds: Dataset) -> tuple[list[Frame], tuple[float, float] | None, float | None]:
    """Per-frame geometry of an enhanced file (per-frame group, else the shared one)."""
    shared = (
        ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    )
    per_frame: Sequence[Dataset] = ds.get("PerFrameFunctionalGroupsSequence") or []
    frames = []
    spacing: tuple[float, float] | None = None
    thickness: float | None = None
    for i in range(_int(ds.get("NumberOfFrames")) or 0):
        item = per_frame[i] if i < len(per_frame) else None
        position = _group(item, "PlanePositionSequence") or _group(shared, "PlanePositionSequence")
        orient = _group(item, "PlaneOrientationSequence") or _group(
            shared, "PlaneOrientationSequence"
        )
        measures = _group(item, "PixelMeasuresSequence") or _group(shared, "PixelMeasuresSequence")
        if measures is not None and spacing is None:
            pair = _floats(measures.get("PixelSpacing"), 2)
            spacing = (pair[0], pair[1]) if pair else None
            thickness = _float(measures.get("SliceThickness"))
        pos = _floats(position.get("ImagePositionPatient"), 3) if position is not None else None
        frames.append(Frame(
            (pos[0], pos[1], pos[2]) if pos else None,
            _floats(orient.get("ImageOrientationPatient"), 6) if orient is not None else None,
            i,
        ))  # fmt: skip
    return frames, spacing, thickness


def slice_file(path: Path, modalities: Sequence[str]) -> SliceFile | None:
    """The series facts of ``path`` when it is an image of one of ``modalities``, else None.

    None also for a file whose header cannot be parsed: the radiograph path then reads it and
    rejects it with its own typed reason (not DICOM, unreadable...), as for any other file.
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - any parse failure is the radiograph path's to report
        return None
    modality = str(ds.get("Modality", "")).strip().upper()
    if modality not in modalities or not ds.get("SeriesInstanceUID"):
        return None
    frames_count = _int(ds.get("NumberOfFrames")) or 1
    multi = frames_count > 1 or "PerFrameFunctionalGroupsSequence" in ds
    if multi:
        frames, spacing, thickness = _frames_of(ds)
        expected: int | None = frames_count
    else:
        pos = _floats(ds.get("ImagePositionPatient"), 3)
        frames = [Frame((pos[0], pos[1], pos[2]) if pos else None,
                        _floats(ds.get("ImageOrientationPatient"), 6))]  # fmt: skip
        pair = _floats(ds.get("PixelSpacing"), 2)
        spacing = (pair[0], pair[1]) if pair else None
        thickness = _float(ds.get("SliceThickness"))
        expected = _int(ds.get("ImagesInAcquisition"))
    return SliceFile(
        path=path,
        series_uid=str(ds.SeriesInstanceUID),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        modality=modality,
        body_part=str(ds.get("BodyPartExamined", "")).strip().upper(),
        rows=_int(ds.get("Rows")) or 0,
        columns=_int(ds.get("Columns")) or 0,
        pixel_spacing=spacing,
        slice_thickness=thickness,
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        expected=expected if expected and expected > 0 else None,
        frames=tuple(frames),
        multi_frame=multi,
        instance_number=_int(ds.get("InstanceNumber")),
    )
