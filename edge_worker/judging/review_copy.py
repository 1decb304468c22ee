"""The review copy of a judged image: the source as stored, reduced, 8-bit, encoded.

Off by default (``[verdict] review_copy``), like the thumbnail: a radiograph can carry burned-in
patient details, and a copy of it leaves the box.  The copy is the radiograph in display
polarity after the grayscale chain (Modality LUT, VOI, MONOCHROME1 inversion), *not* turned
upright, so a verdict's ROI box (in stored pixels) lands on it at ``box * scale``.  Nothing is
drawn on it: the review pages draw the box, the rule results and any heatmap themselves, and
the export gives the plain image to training.

PNG, not JPEG: measured on the 20 real files of ``../shared/data/radiographs/dicom`` at
1024 pixels (``docs/review-copy.md``), JPEG q90 is about a third of PNG's size and faster, but
it is lossy exactly where review looks (fine trabecular texture, the joint space, the lung
apices' vessels) and it would put JPEG's block artefacts into the images the models retrain on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_worker.ingest.types import Radiograph

MIN_SIZE, MAX_SIZE = 256, 2048
#: OpenCV extension and the payload's media type for each encoding.
ENCODINGS = {"png": ".png", "jpeg": ".jpg"}
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
#: Level 1: measured at 1024 pixels, 3-4 times faster than level 6 for 5-10 % more bytes.
PNG_LEVEL = 1
JPEG_QUALITY = 90


@dataclass(frozen=True)
class EncodedCopy:
    """One encoded copy: ``scale`` is copy pixels per stored pixel (at most 1: never enlarged)."""

    data: bytes
    media_type: str
    extension: str
    width: int
    height: int
    scale: float


def reduce_to(pixels: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """``pixels`` (2-D float in [0, 1]) with its longest side at most ``size``, as uint8, and the
    factor applied (1.0 when it already fits: a copy is never enlarged)."""
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {pixels.shape}")
    height, width = pixels.shape
    factor = min(1.0, size / float(max(height, width)))
    clean: np.ndarray = np.nan_to_num(pixels.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    if factor < 1.0:
        out = (max(1, round(width * factor)), max(1, round(height * factor)))
        clean = cv2.resize(clean, out, interpolation=cv2.INTER_AREA)
        # The factor the rounded size really applied, on the longer side.
        factor = (out[0] / width) if width >= height else (out[1] / height)
    return (np.clip(clean, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), factor


def encode(grey: np.ndarray, encoding: str = "png") -> bytes:
    """``grey`` (2-D uint8) as PNG (level 6) or JPEG (quality 90); ValueError if it cannot."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r} is not one of {sorted(ENCODINGS)}")
    params = [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL] if encoding == "png" else [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    ok, data = cv2.imencode(ENCODINGS[encoding], grey, params)
    if not ok:  # OpenCV reports failure by value
        raise ValueError(f"OpenCV could not encode a {grey.shape} image as {encoding}")
    return data.tobytes()


def make_review_copy(image: Radiograph, size: int, encoding: str = "png") -> EncodedCopy:
    """The copy of ``image`` (read with ``max_side=size`` or larger) at most ``size`` a side.

    Raises ValueError for a size outside 256..2048 or an image that is not 2-D.
    """
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"review copy size {size} is outside {MIN_SIZE}..{MAX_SIZE}")
    grey, factor = reduce_to(image.pixels, size)
    return EncodedCopy(
        data=encode(grey, encoding),
        media_type=MEDIA_TYPES[encoding],
        extension=ENCODINGS[encoding].lstrip("."),
        width=int(grey.shape[1]),
        height=int(grey.shape[0]),
        scale=float(image.scale * factor),
    )
