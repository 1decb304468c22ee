"""Write a numpy volume as an MR series: single-frame MR Image files, or one enhanced MR file.

Test and demo data for series collection (:mod:`edge_worker.watching.series`).  The volume is
``(z, y, x)``; slice ``k`` lies at ``origin + k * spacing_z * normal`` where the normal is the
cross product of the row and column direction cosines (PS3.3 C.7.6.2.1.1), so a reader that
sorts by position along the normal rebuilds the volume in order.  No patient attribute is
invented beyond a fixed phantom name.

The faults a collector must refuse are options, each at a known slice: ``drop`` (a slice
missing), ``duplicate`` (one position written twice), ``tilt`` (one slice's orientation turned)
and :func:`write_mixed` (two series' files in one folder, interleaved).

The enhanced multi-frame file is made by highdicom's Legacy Converted Enhanced MR Image
(PS3.3 A.71) from the single-frame datasets, so its functional groups follow the standard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

#: Row direction (x) then column direction (y), axial: the patient's left and posterior.
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class SeriesSpec:
    """Geometry and identity of one written series (all lengths in mm)."""

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)  # z, y, x
    origin_mm: tuple[float, float, float] = (-100.0, -100.0, -60.0)
    orientation: tuple[float, ...] = AXIAL
    series_uid: str = field(default_factory=generate_uid)
    study_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    description: str = "phantom T1 axial"
    #: Write ImagesInAcquisition (0020,1002) = the slice count (a collector then knows the count).
    images_in_acquisition: bool = True


def _normal(orientation: Sequence[float]) -> np.ndarray:
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return np.cross(row, col)


def _tilted(orientation: Sequence[float], degrees: float) -> tuple[float, ...]:
    """``orientation`` turned by ``degrees`` about its column direction (row cosine tilts)."""
    a = np.deg2rad(degrees)
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    turned = row * np.cos(a) + normal * np.sin(a)
    return tuple(float(v) for v in (*turned, *col))


def _stored(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The volume as uint16 stored values with the Rescale Slope and Intercept that undo it."""
    lo, hi = float(np.min(volume)), float(np.max(volume))
    slope = (hi - lo) / 4095.0 if hi > lo else 1.0
    stored = np.clip(np.round((volume - lo) / slope), 0, 4095).astype(np.uint16)
    return stored, slope, lo


def slice_dataset(
    pixels: np.ndarray,
    spec: SeriesSpec,
    index: int,
    count: int,
    *,
    position: Sequence[float] | np.ndarray,
    orientation: Sequence[float],
    slope: float,
    intercept: float,
) -> Dataset:
    """One MR Image Storage dataset (file meta included) for stored ``pixels`` (uint16)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.FrameOfReferenceUID = spec.frame_of_reference_uid
    ds.PatientName = "PHANTOM^MRI"
    ds.PatientID = "PHANTOM"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Modality = "MR"
    ds.Manufacturer = "edge-worker phantom"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.AcquisitionNumber = 1
    ds.BodyPartExamined = "HEAD"
    ds.SeriesDescription = spec.description
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.EchoTime = 4.0
    ds.RepetitionTime = 10.0
    ds.EchoTrainLength = 1
    ds.MagneticFieldStrength = 1.5
    ds.ImagedNucleus = "1H"
    ds.SliceThickness = spec.spacing_mm[0]
    ds.SpacingBetweenSlices = spec.spacing_mm[0]
    ds.PixelSpacing = [spec.spacing_mm[1], spec.spacing_mm[2]]
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.ImageOrientationPatient = [round(float(v), 6) for v in orientation]
    ds.SliceLocation = round(float(np.dot(position, _normal(orientation))), 4)
    ds.PositionReferenceIndicator = ""
    if spec.images_in_acquisition:
        ds.ImagesInAcquisition = count
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{slope:.8g}"
    ds.RescaleIntercept = f"{intercept:.8g}"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{intercept + slope * 2048:.6g}"
    ds.WindowWidth = f"{slope * 4096:.6g}"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


def series_datasets(
    volume: np.ndarray,
    spec: SeriesSpec | None = None,
    *,
    drop: Sequence[int] = (),
    duplicate: int | None = None,
    tilt: tuple[int, float] | None = None,
) -> list[Dataset]:
    """The datasets of a series from ``volume`` (z, y, x), one per slice, in slice order.

    ``drop``: slice indices left out (the count headers still say the full count);
    ``duplicate``: a slice whose position is written a second time (with slice ``k+1``'s
    pixels, so both files differ); ``tilt``: ``(slice, degrees)`` turns one slice's orientation.
    """
    spec = spec or SeriesSpec()
    stored, slope, intercept = _stored(np.asarray(volume, dtype=np.float32))
    normal = _normal(spec.orientation)
    origin = np.asarray(spec.origin_mm, float)
    count = stored.shape[0]
    out = []
    for k in range(count):
        if k in drop:
            continue
        orientation = spec.orientation
        if tilt is not None and tilt[0] == k:
            orientation = _tilted(spec.orientation, tilt[1])
        position = origin + k * spec.spacing_mm[0] * normal
        out.append(slice_dataset(stored[k], spec, k, count, position=position, orientation=orientation,
                                 slope=slope, intercept=intercept))  # fmt: skip
    if duplicate is not None:
        source = min(duplicate + 1, count - 1)
        position = origin + duplicate * spec.spacing_mm[0] * normal
        out.append(slice_dataset(stored[source], spec, count, count, position=position,
                                 orientation=spec.orientation, slope=slope, intercept=intercept))  # fmt: skip
    return out


def write_series(
    volume: np.ndarray,
    folder: Path,
    spec: SeriesSpec | None = None,
    *,
    prefix: str = "mr",
    drop: Sequence[int] = (),
    duplicate: int | None = None,
    tilt: tuple[int, float] | None = None,
) -> list[Path]:
    """Write the series as single-frame files ``<prefix>-0001.dcm``... in ``folder``; the paths.

    The files are written under a hidden name and renamed in, the way a modality's DICOM
    receiver should (the watcher then sees each complete).  Options as :func:`series_datasets`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(
        series_datasets(volume, spec, drop=drop, duplicate=duplicate, tilt=tilt)
    ):
        path = folder / f"{prefix}-{i + 1:04d}.dcm"
        tmp = folder / f".{path.name}.tmp"
        ds.save_as(tmp, enforce_file_format=True)
        tmp.replace(path)
        paths.append(path)
    return paths


def write_mixed(
    volume_a: np.ndarray, volume_b: np.ndarray, folder: Path
) -> tuple[list[Path], list[Path]]:
    """Two series written into one folder, their files interleaved by name; both path lists."""
    a = write_series(volume_a, folder, SeriesSpec(description="phantom A"), prefix="mix-a")
    b = write_series(volume_b, folder, SeriesSpec(description="phantom B"), prefix="mix-b")
    return a, b


def enhanced_dataset(volume: np.ndarray, spec: SeriesSpec | None = None) -> Dataset:
    """One Legacy Converted Enhanced MR Image (multi-frame) dataset of the whole volume."""
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    spec = spec or SeriesSpec()
    singles = series_datasets(volume, spec)
    enhanced = LegacyConvertedEnhancedMRImage(
        singles, series_instance_uid=generate_uid(), series_number=2, sop_instance_uid=generate_uid(),
        instance_number=1,
    )  # fmt: skip
    return enhanced


def write_enhanced(volume: np.ndarray, path: Path, spec: SeriesSpec | None = None) -> Path:
    """Write :func:`enhanced_dataset` to ``path`` (hidden name, renamed in); the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    enhanced_dataset(volume, spec).save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    return path
