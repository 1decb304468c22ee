"""Synthetic ankle radiographs with ground truth, written as real DICOM files.

The phantoms feed the demo, the tests and the demo model pack's training.  They are drawings,
not anatomy: soft tissue, tibia, fibula, talus (and calcaneus and foot bones on the lateral
view) built from polygons and ellipses whose X-ray attenuation adds up, so overlapping bones
look brighter as on a film.

Ground truth per image (:class:`PhantomTruth`):

* ``view``: ``"AP"`` or ``"LAT"``;
* ``score``: continuous quality on the ankle paper's 1-3 scale (1 best) and ``grade``
  (``round(score)``).  The score sets a simulated misalignment: a ghost copy of the talar dome
  and, on AP, the fibula slide over the tibiotalar joint gap.  Grade 1 leaves the gap clear,
  grade 2 covers part of it, grade 3 hides it;
* ``rotation_deg``: the angle in [0, 360) by which the anatomy is rotated counter-clockwise as
  displayed, i.e. ``cv2.getRotationMatrix2D(centre, +angle, 1)`` applied to the upright drawing;
* ``roi``: the rotated box around the joint, in stored-pixel coordinates.

Only numpy, OpenCV and pydicom are used: the worker's demo imports this module.
"""

from __future__ import annotations

import csv
import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from edge_worker.phantoms.ankle_draw import draw_upright
from edge_worker.pipeline.preprocess import RotatedBox, box_from_points

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
VIEWS = ("AP", "LAT")
#: Score bands per grade.  A gap around the class boundaries (1.5, 2.5) keeps the classes
#: learnable while the score stays continuous inside each band.
GRADE_BANDS = {1: (1.0, 1.4), 2: (1.6, 2.4), 3: (2.6, 3.0)}
#: The side of the internal drawing; the worker works at 512 px, finer detail is wasted.
RENDER_SIDE = 512
CSV_COLUMNS = (
    "file", "view", "grade", "score", "rotation_deg",
    "roi_cx", "roi_cy", "roi_w", "roi_h", "roi_angle",
    "modality", "photometric", "laterality", "rows", "columns",
)  # fmt: skip


@dataclass(frozen=True)
class PhantomTruth:
    """What the phantom shows; coordinates are stored pixels (x right, y down)."""

    view: str
    grade: int
    score: float
    rotation_deg: float
    roi: RotatedBox
    joint: tuple[float, float]
    laterality: str
    rows: int
    columns: int


def render(
    rng: np.random.Generator,
    view: str,
    grade: int,
    rotation_deg: float,
    size: int = 1024,
    *,
    score: float | None = None,
    laterality: str = "R",
    marker: bool = True,
) -> tuple[np.ndarray, PhantomTruth]:
    """Draw one phantom.

    ``size`` is the number of rows; columns are 0.8 of it.  Returns display-polarity pixels
    (bone bright) as a ``uint16`` array using the full 16-bit range, and the ground truth.
    ``score`` defaults to a uniform draw inside the grade's band.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    if grade not in GRADE_BANDS:
        raise ValueError(f"grade must be 1, 2 or 3, got {grade!r}")
    lo, hi = GRADE_BANDS[grade]
    score = float(rng.uniform(lo, hi)) if score is None else float(score)
    misalignment = float(np.clip((score - 1.0) / 2.0, 0.0, 1.0))

    rows, cols = int(size), int(round(size * 0.8 / 2) * 2)
    h, w = RENDER_SIDE, int(round(RENDER_SIDE * cols / rows))
    image, roi_corners, joint = draw_upright(rng, view, misalignment, h, w)
    if laterality == "L":
        # A left ankle is the mirror image of a right one; the label angle is unaffected
        # because the mirror is applied before the rotation.
        image = image[:, ::-1].copy()
        roi_corners[:, 0] = w - 1 - roi_corners[:, 0]
        joint = (w - 1 - joint[0], joint[1])

    angle = float(rotation_deg) % 360.0
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
    roi_corners = _apply(matrix, roi_corners)
    joint_pt = _apply(matrix, np.array([joint], dtype=np.float32))[0]

    image = _detector(rng, image, marker, laterality)
    sx, sy = cols / w, rows / h
    pixels: np.ndarray = cv2.resize(image, (cols, rows), interpolation=cv2.INTER_LINEAR)
    # Fine quantum noise at full resolution: invisible after the worker's reduction, but it
    # makes the stored image look like a detector's.
    pixels += rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.01)
    stored = np.clip(pixels, 0.0, 1.0) * 65535.0
    roi = box_from_points(roi_corners * np.array([sx, sy], dtype=np.float32))
    truth = PhantomTruth(
        view=view,
        grade=int(grade),
        score=round(score, 4),
        rotation_deg=round(angle, 4),
        roi=roi,
        joint=(float(joint_pt[0] * sx), float(joint_pt[1] * sy)),
        laterality=laterality,
        rows=rows,
        columns=cols,
    )
    return stored.astype(np.uint16), truth


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to ``(N, 2)`` points."""
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def _detector(
    rng: np.random.Generator, image: np.ndarray, marker: bool, laterality: str
) -> np.ndarray:
    """Exposure, collimation, marker and noise on the rotated drawing (values in [0, 1])."""
    h, w = image.shape
    # Attenuation adds; the film response saturates.  Bone bright, air dark.
    gain = float(rng.uniform(1.1, 1.6))
    out = (1.0 - np.exp(-gain * image)).astype(np.float32) * np.float32(rng.uniform(0.8, 1.0))
    out += np.float32(rng.uniform(0.0, 0.06))
    # Collimation stays aligned with the detector, not with the anatomy: shutters block the
    # beam, so the border is unexposed and displays bright.
    top, bottom = (int(h * rng.uniform(0.0, 0.06)) for _ in range(2))
    left, right = (int(w * rng.uniform(0.0, 0.06)) for _ in range(2))
    level = np.float32(rng.uniform(0.75, 0.95))
    out[:top] = level
    out[h - bottom :] = level
    out[:, :left] = level
    out[:, w - right :] = level
    if marker:
        scale = float(rng.uniform(0.9, 1.4))
        corner_x = left + 8 if rng.random() < 0.5 else w - right - int(32 * scale)
        corner_y = top + int(30 * scale) if rng.random() < 0.5 else h - bottom - 8
        # OpenCV draws text on 8-bit images only; the lead letter blocks the beam.
        letter = np.zeros((h, w), dtype=np.uint8)
        cv2.putText(letter, laterality, (corner_x, corner_y), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    255, thickness=3, lineType=cv2.LINE_AA)  # fmt: skip
        alpha = letter.astype(np.float32) / np.float32(255.0)
        out = out * (1.0 - alpha) + np.float32(0.98) * alpha
    out += rng.standard_normal((h, w), dtype=np.float32) * np.float32(rng.uniform(0.005, 0.02))
    return out


def make_dataset(
    seed: int,
    view: str | None = None,
    grade: int | None = None,
    rotation: float | None = None,
    *,
    modality: str | None = None,
    photometric: str | None = None,
    bits_stored: int | None = None,
    size: int | None = None,
    rotation_range: tuple[float, float] = (-15.0, 15.0),
    laterality: str | None = None,
    index: int = 1,
) -> tuple[Dataset, PhantomTruth]:
    """A complete DICOM dataset (file meta included) for one phantom, and its truth.

    Every argument left ``None`` is drawn from ``seed``: view, grade, rotation (uniform in
    ``rotation_range``, folded into [0, 360)), modality (CR or DX), photometric
    (MONOCHROME1 or MONOCHROME2), bits stored (12-16), size (1024-2048 rows), laterality.
    ``index`` numbers the phantom patient (``PHANTOM^ANKLE^<index>``).
    """
    rng = np.random.default_rng(seed)
    view = view or VIEWS[int(rng.integers(2))]
    grade = grade or int(rng.integers(1, 4))
    if rotation is None:
        rotation = float(rng.uniform(*rotation_range))
    modality = modality or ("CR", "DX")[int(rng.integers(2))]
    photometric = photometric or ("MONOCHROME1", "MONOCHROME2")[int(rng.integers(2))]
    bits = bits_stored or int(rng.integers(12, 17))
    size = size or int(rng.integers(512, 1025)) * 2
    laterality = laterality or ("L", "R")[int(rng.integers(2))]
    if modality not in ("CR", "DX"):
        raise ValueError(f"modality must be CR or DX, got {modality!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if not 12 <= bits <= 16:
        raise ValueError(f"bits_stored must be 12-16, got {bits}")

    display, truth = render(rng, view, grade, rotation, size, laterality=laterality)
    max_value = (1 << bits) - 1
    values = (display.astype(np.float32) * np.float32(max_value / 65535.0)).round()
    stored = values.astype(np.uint16)
    if photometric == "MONOCHROME1":
        # MONOCHROME1: the minimum value displays white (PS3.3 C.7.6.3.1.2), so bone is low.
        stored = (max_value - stored).astype(np.uint16)
    ds = _header(seed, index, truth, modality, photometric, bits, max_value)
    ds.PixelData = stored.tobytes()
    return ds, truth


def _header(
    seed: int, index: int, truth: PhantomTruth, modality: str, photometric: str,
    bits: int, max_value: int,
) -> Dataset:  # fmt: skip
    """The DICOM attributes of a phantom; UIDs derive from ``seed`` so files are reproducible."""
    sop_class = CR_IMAGE_STORAGE if modality == "CR" else DX_FOR_PRESENTATION

    def uid(kind: str) -> UID:
        return UID(generate_uid(entropy_srcs=["edge-worker-phantom", str(seed), kind]))

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    today = _dt.date(2024, 1, 1) + _dt.timedelta(days=seed % 365)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = f"PHA{seed % 10**8:08d}"
    ds.Modality = modality
    ds.Manufacturer = "EdgeWorker Phantom"
    ds.InstitutionName = "Phantom Institute"
    ds.PatientName = f"PHANTOM^ANKLE^{index}"
    ds.PatientID = f"PHANTOM-{seed % 10**8:08d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "ANKLE"
    if truth.view == "AP":
        ds.ViewPosition = "AP"
    else:
        # DX uses the defined term (PS3.3 C.8.11.5.1.1: side nearest the detector); many CR
        # vendors write a plain "LATERAL", which the worker must accept as well.
        ds.ViewPosition = f"{truth.laterality}L" if modality == "DX" else "LATERAL"
    ds.ImageLaterality = truth.laterality
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index
    ds.PatientOrientation = ["L", "F"] if truth.laterality == "R" else ["R", "F"]
    ds.ImageComments = "SYNTHETIC PHANTOM generated by edge_worker.phantoms.ankle; not a patient image"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = truth.rows, truth.columns
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    spacing = [f"{0.1 * 2048 / truth.rows:.4f}"] * 2
    ds.ImagerPixelSpacing = spacing
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelSpacing = spacing
        ds.DetectorType = "SCINTILLATOR"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{max_value / 2:.1f}"
    ds.WindowWidth = f"{max_value:.1f}"
    ds.KVP = "55"
    return ds


def write_phantom(path: str | Path, seed: int, **kwargs: object) -> PhantomTruth:
    """Write one phantom DICOM file to ``path``; ``kwargs`` go to :func:`make_dataset`."""
    ds, truth = make_dataset(seed, **kwargs)  # type: ignore[arg-type]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return truth


def write_dataset(
    folder: str | Path,
    n: int,
    seed: int,
    rotation_range: tuple[float, float] = (-15.0, 15.0),
    **kwargs: object,
) -> Path:
    """Write ``n`` phantoms into ``folder`` plus ``labels.csv`` and return the CSV path.

    Phantom ``i`` uses the seed ``seed * 1_000_003 + i``, so two folders written with
    different ``seed`` share no image.  Views and grades are balanced by cycling through
    them unless ``kwargs`` fixes them.  The CSV columns are :data:`CSV_COLUMNS`; ``file`` is
    relative to the CSV's folder, ROI columns are stored-pixel coordinates.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "labels.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for i in range(n):
            item_seed = seed * 1_000_003 + i
            options = dict(kwargs)
            options.setdefault("view", VIEWS[i % 2])
            options.setdefault("grade", 1 + (i // 2) % 3)
            name = f"phantom_{seed}_{i:05d}.dcm"
            ds, truth = make_dataset(item_seed, rotation_range=rotation_range, index=i + 1,
                                     **options)  # type: ignore[arg-type]  # fmt: skip
            ds.save_as(folder / name, enforce_file_format=True)
            roi = truth.roi
            writer.writerow([
                name, truth.view, truth.grade, truth.score, truth.rotation_deg,
                f"{roi.cx:.2f}", f"{roi.cy:.2f}", f"{roi.width:.2f}", f"{roi.height:.2f}",
                f"{roi.angle_deg:.3f}", ds.Modality, ds.PhotometricInterpretation,
                truth.laterality, truth.rows, truth.columns,
            ])  # fmt: skip
    return csv_path
