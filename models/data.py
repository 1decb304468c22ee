"""Training data: a CSV of labelled radiographs, read and prepared exactly as the worker does.

CSV layout (one row per image; :func:`edge_worker.phantoms.ankle.write_dataset` writes it):

==============  ==========================================================================
``file``        path of a DICOM (``.dcm`` or no suffix), PNG or JPEG file, relative to the CSV
``view``        ``AP`` or ``LAT``
``grade``       quality class 1-3 (optional; empty when unknown)
``score``       continuous quality 1-3, the regression target (optional; defaults to grade)
``rotation_deg`` angle in [0, 360) by which the anatomy is rotated counter-clockwise
``roi_cx`` ...  ``roi_cx, roi_cy, roi_w, roi_h, roi_angle``: the ROI as a
                :class:`~edge_worker.pipeline.preprocess.RotatedBox` in stored-pixel coordinates
==============  ==========================================================================

Images go through the worker's own path: ``read_radiograph`` (display polarity, [0, 1]), then
``working_image`` and ``to_tensor`` / ``crop_box`` from :mod:`edge_worker.pipeline.preprocess`.  The
augmentations of the ankle paper (section 5) act on the working image.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_worker.ingest import read_radiograph
from edge_worker.pipeline.preprocess import (
    RotatedBox,
    box_mask,
    crop_box,
    place,
    placement,
    to_tensor,
    working_image,
)

MEAN, STD = 0.5, 0.25
VIEW_LABELS = ("AP", "LAT")
#: Files read with OpenCV (grey or colour, 8 or 16 bit); anything else goes through the ingest.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Record:
    """One CSV row."""

    path: Path
    view: str
    grade: int | None
    score: float | None
    rotation_deg: float | None
    roi: RotatedBox | None


@dataclass(frozen=True)
class Sample:
    """A record's working image (float16 to halve the cache) and its ROI in working pixels."""

    record: Record
    working: np.ndarray
    roi: RotatedBox | None


def _optional(row: dict[str, str], key: str) -> str | None:
    value = (row.get(key) or "").strip()
    return value or None


def read_csv(csv_path: str | Path) -> list[Record]:
    """Parse a label CSV (layout in the module docstring) into records."""
    csv_path = Path(csv_path)
    records = []
    with csv_path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            grade, score = _optional(row, "grade"), _optional(row, "score")
            rotation = _optional(row, "rotation_deg")
            roi = None
            if _optional(row, "roi_w"):
                roi = RotatedBox(*(float(row[k]) for k in
                                   ("roi_cx", "roi_cy", "roi_w", "roi_h", "roi_angle")))  # fmt: skip
            view = row["view"].strip().upper()
            if view not in VIEW_LABELS:
                raise ValueError(f"{csv_path}: view must be AP or LAT, got {view!r}")
            records.append(Record(
                path=csv_path.parent / row["file"],
                view=view,
                grade=int(grade) if grade else None,
                score=float(score) if score else (float(grade) if grade else None),
                rotation_deg=float(rotation) if rotation else None,
                roi=roi,
            ))  # fmt: skip
    return records


def read_image(path: Path) -> tuple[np.ndarray, float]:
    """A radiograph as display-polarity float32 in [0, 1] and the stored->pixels scale.

    DICOM goes through the worker's own ingest, so training sees the worker's grayscale
    chain (Modality LUT, VOI, MONOCHROME1 inversion); it raises the ingest's ``Rejection``.
    """
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise ValueError(f"cannot read {path}")
        if raw.ndim == 3:
            raw = cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY)
        return raw.astype(np.float32) / np.float32(np.iinfo(raw.dtype).max), 1.0
    radiograph = read_radiograph(path)
    return radiograph.pixels, float(radiograph.scale)


def load_sample(record: Record) -> Sample:
    """Read one record and reduce it to the worker's working image."""
    pixels, scale = read_image(record.path)
    working, factor = working_image(pixels)
    roi = record.roi.scaled(scale * factor, scale * factor) if record.roi else None
    return Sample(record, working.astype(np.float16), roi)


def load_samples(records: list[Record], desc: str = "loading") -> list[Sample]:
    """Load every record once (the working images are small enough to keep in memory)."""
    return [load_sample(r) for r in tqdm(records, desc=desc, leave=False)]


# --- augmentations (ankle paper, section 5) -------------------------------------------------

#: Share of view and ROI training images given :func:`frame_round_trip` (upright-first flow).
ROUND_TRIP_P = 0.5


def _affine(img: np.ndarray, matrix: np.ndarray, size: tuple[int, int], linear: bool = True
            ) -> np.ndarray:  # fmt: skip
    flags = cv2.INTER_LINEAR if linear else cv2.INTER_NEAREST
    return cv2.warpAffine(img, matrix, size, flags=flags, borderValue=0.0)


def geometric(
    rng: np.random.Generator, img: np.ndarray, mask: np.ndarray | None, max_rotation: float,
    flip: bool = True, min_crop: float = 0.8,
) -> tuple[np.ndarray, np.ndarray | None, bool]:  # fmt: skip
    """Random crop, horizontal flip and rotation, applied alike to image and mask.

    Returns the image, the mask (or ``None``) and whether the result was mirrored.
    """
    h, w = img.shape
    frac = float(rng.uniform(min_crop, 1.0))
    ch, cw = int(h * frac), int(w * float(rng.uniform(min_crop, 1.0)))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = img[y0 : y0 + ch, x0 : x0 + cw]
    mask = mask[y0 : y0 + ch, x0 : x0 + cw] if mask is not None else None
    mirrored = flip and bool(rng.random() < 0.5)
    if mirrored:
        img = img[:, ::-1]
        mask = mask[:, ::-1] if mask is not None else None
    if max_rotation > 0:
        angle = float(rng.uniform(-max_rotation, max_rotation))
        matrix = cv2.getRotationMatrix2D(((cw - 1) / 2, (ch - 1) / 2), angle, 1.0)
        img = _affine(np.ascontiguousarray(img), matrix, (cw, ch))
        if mask is not None:
            mask = _affine(np.ascontiguousarray(mask), matrix, (cw, ch), linear=False)
    return np.ascontiguousarray(img), mask, mirrored


def frame_round_trip(
    rng: np.random.Generator, img: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Black out what a turn by a random angle within the frame, and back, loses.

    The worker turns a rotated image upright inside its own frame (upright first,
    :func:`edge_worker.pipeline.preprocess.turn_upright`); an image the modality stored turned by
    ``a`` inside the same frame has lost its corners, and after the turn back those losses sit
    at the ends of the long axis.  Training the later stages on such frames is what keeps the
    view stage from reading a cut AP as a LAT.
    """
    h, w = img.shape
    angle = float(rng.uniform(0.0, 360.0))
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    ones = np.ones((h, w), np.float32)
    there = cv2.getRotationMatrix2D(centre, angle, 1.0)
    back = cv2.getRotationMatrix2D(centre, -angle, 1.0)
    kept = _affine(_affine(ones, there, (w, h)), back, (w, h)) > 0.5
    img = np.where(kept, img, np.float32(0.0)).astype(np.float32)
    if mask is not None:
        mask = np.where(kept, mask, 0).astype(mask.dtype)
    return img, mask


def photometric(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Histogram normalisation, contrast/gamma, blur and Gaussian noise (each random)."""
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    if rng.random() < 0.25:
        img = cv2.equalizeHist((img * 255).astype(np.uint8)).astype(np.float32) / 255.0
    if rng.random() < 0.5:
        img = img ** np.float32(rng.uniform(0.7, 1.4))
        img = img * np.float32(rng.uniform(0.85, 1.15)) + np.float32(rng.uniform(-0.08, 0.08))
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 1.5)))
    if rng.random() < 0.5:
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(
            rng.uniform(0.0, 0.04))
    return np.clip(img, 0.0, 1.0)


def jitter_box(rng: np.random.Generator, box: RotatedBox, amount: float = 0.06) -> RotatedBox:
    """The ground-truth box moved, resized and turned a little, as the segmenter's would be."""
    return RotatedBox(
        box.cx + float(rng.normal(0, amount)) * box.width,
        box.cy + float(rng.normal(0, amount)) * box.height,
        box.width * float(rng.uniform(1 - amount * 1.5, 1 + amount * 1.5)),
        box.height * float(rng.uniform(1 - amount * 1.5, 1 + amount * 1.5)),
        box.angle_deg + float(rng.normal(0, amount * 60)),
    )


def example(
    task: str, sample: Sample, height: int, width: int, rng: np.random.Generator | None,
    labels: tuple[str, ...] = VIEW_LABELS, resize: str = "stretch",
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(1, H, W)`` input and its target for ``task``; ``rng=None`` means no augmentation.

    ``labels``: the view classifier's vocabulary (its class order), AP and LAT by default.
    ``resize``: how the image is laid out in the input (the manifest's ``input.resize``,
    :func:`edge_worker.pipeline.preprocess.place`); the ROI target mask is laid out alike.

    Targets: view -> class index; roi -> ``(1, H, W)`` binary mask; quality -> ``(1,)`` score;
    orientation -> ``(1,)`` angle in degrees.
    """
    img = sample.working.astype(np.float32)
    record = sample.record
    if task == "quality":
        assert sample.roi is not None, "a quality example needs its ROI (models.train.select)"
        box = sample.roi if rng is None else jitter_box(rng, sample.roi)
        # Cut at the box's own size within the input (all of it for stretch) and augmented
        # before padding, so the padding stays 0 as the worker's does.
        inside = placement((box.height, box.width), height, width, resize)
        crop = crop_box(img, box, inside.height, inside.width)
        if rng is not None:
            crop = photometric(rng, crop[:, ::-1] if rng.random() < 0.5 else crop)
        x = to_tensor(crop, height, width, 1, MEAN, STD, resize)[0]
        return x, np.array([record.score], dtype=np.float32)
    mask = box_mask(img.shape, sample.roi) if task == "roi" else None
    angle = record.rotation_deg or 0.0
    if rng is not None:
        # Rotating would move the orientation label and the detector-aligned collimation
        # apart, so the orientation task gets crops and flips only.
        rotation = 0.0 if task == "orientation" else 15.0
        if task != "orientation" and rng.random() < ROUND_TRIP_P:
            img, mask = frame_round_trip(rng, img, mask)
        img, mask, mirrored = geometric(rng, img, mask, rotation)
        if mirrored:
            angle = (360.0 - angle) % 360.0
        img = photometric(rng, img)
    x = to_tensor(img, height, width, 1, MEAN, STD, resize)[0]
    if task == "view":
        return x, np.array(labels.index(record.view), dtype=np.int64)
    if task == "roi":
        target = place(mask.astype(np.float32), height, width, resize) > 0.5  # type: ignore[union-attr]
        return x, target.astype(np.float32)[None]
    return x, np.array([angle], dtype=np.float32)
