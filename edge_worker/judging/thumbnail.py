"""A small picture of the region of interest for the ward dashboard, as a PNG data URL.

Off by default (``[verdict] thumbnail``): a radiograph can carry burned-in patient details, and
a verdict with a picture is no longer free of them.  The picture is cut from the pipeline's
working image (already reduced, display polarity) around the ROI with a margin, so the
radiographer sees the joint and the box the networks judged, drawn on it.  Without an ROI the
whole image is shown as stored (not turned upright): the frame a heatmap overlay covers
(:mod:`edge_worker.judging.overlay`), so the ward tile can stretch one over the other.
"""

from __future__ import annotations

import base64

import cv2
import numpy as np

from edge_worker.pipeline.preprocess import RotatedBox

DATA_URL_PREFIX = "data:image/png;base64,"
MIN_SIZE, MAX_SIZE = 32, 512
#: Context around the ROI, as a fraction of the ROI's longer side on each side.
MARGIN = 0.35
#: BGR; cyan stands apart from the dashboard's decision colours (green, red, amber).
BOX_COLOUR = (255, 220, 0)


def _crop_window(box: RotatedBox, height: int, width: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the ROI's bounds plus the margin, made square, kept inside the image."""
    bx0, by0, bx1, by1 = box.bounds()
    side = max(bx1 - bx0, by1 - by0) * (1.0 + 2.0 * MARGIN)
    side = min(side, float(max(height, width)))
    cx, cy = (bx0 + bx1) / 2.0, (by0 + by1) / 2.0
    x0 = round(min(max(cx - side / 2.0, 0.0), max(width - side, 0.0)))
    y0 = round(min(max(cy - side / 2.0, 0.0), max(height - side, 0.0)))
    x1 = min(width, x0 + max(1, round(side)))
    y1 = min(height, y0 + max(1, round(side)))
    return x0, y0, x1, y1


def make_thumbnail(image: np.ndarray, box: RotatedBox | None, size: int = 192) -> str:
    """A PNG data URL of at most ``size`` x ``size`` pixels.

    ``image``: 2-D float array in [0, 1] (the working image); ``box``: the ROI in that image's
    pixel coordinates, or None, in which case the whole image is reduced and nothing is drawn.
    Raises ValueError for a size outside 32..512 or an image that is not 2-D.
    """
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"thumbnail size {size} is outside {MIN_SIZE}..{MAX_SIZE}")
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {image.shape}")
    height, width = image.shape
    x0, y0, x1, y1 = _crop_window(box, height, width) if box is not None else (0, 0, width, height)
    crop = np.nan_to_num(image[y0:y1, x0:x1].astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    scale = size / float(max(crop.shape))
    out_w, out_h = max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    small = cv2.resize(crop, (out_w, out_h), interpolation=interp)
    grey = (np.clip(small, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    picture = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if box is not None:
        # Drawn after resizing, at the output's resolution, so the line stays crisp.
        corners = (box.corners() - np.array([x0, y0], np.float32)) * np.float32(scale)
        thickness = max(1, size // 96)
        cv2.polylines(picture, [np.round(corners).astype(np.int32)], True, BOX_COLOUR, thickness, cv2.LINE_AA)
    # Level 6: a tenth larger than level 9 and about ten times faster on a radiograph's
    # smooth gradients (a few ms against tens of ms on the judge thread).
    ok, png = cv2.imencode(".png", picture, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:  # OpenCV reports failure by value; a uint8 BGR image should always encode
        raise ValueError("OpenCV could not encode the thumbnail as PNG")
    return DATA_URL_PREFIX + base64.b64encode(png.tobytes()).decode("ascii")


def verdict_thumbnail(upright: np.ndarray, stored: np.ndarray, box: RotatedBox | None, size: int) -> str:
    """The verdict's thumbnail (see :func:`make_thumbnail` for ``size`` and the errors).

    ``upright``: the working image turned upright (``box``, the ROI, is in its coordinates);
    ``stored``: the same image before the turn, the stored image scaled evenly.  With a box the
    picture is cut from ``upright`` around it; without one it is the whole of ``stored``, in the
    frame of the heatmap overlays, so that an overlay stretched over it lies exactly on it
    (turning the thumbnail instead would leave the overlay off by the orientation's angle).
    """
    return make_thumbnail(upright if box is not None else stored, box, size)
