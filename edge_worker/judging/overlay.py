"""A heatmap's overlay for the verdict: a small grey PNG covering the whole image as stored.

A ``heatmap`` stage's map is at its classifier's input size (already cut to the image's part
where the classifier pads its input), stretched over the image the classifier read: the working image, or the working image turned upright by the orientation
stage.  The overlay undoes both: it is resized back to the working image's shape and, when
the classifier read the upright image, turned back by the inverse rotation, so it lies over the
stored image as it is (not rotated, same aspect ratio; the working image is the stored one
scaled evenly).  The dashboard stretches it over its own copy.  Off by default
(``[verdict] heatmap_overlay``), like the thumbnail.
"""

from __future__ import annotations

import base64

import cv2
import numpy as np

from edge_worker.pipeline import cam
from edge_worker.pipeline.preprocess import Turn

PREFIX = "data:image/png;base64,"


def stored_frame_map(cam_map: np.ndarray, working_hw: tuple[int, int], turn: Turn | None,
                     read_upright: bool) -> np.ndarray:  # fmt: skip
    """``cam_map`` (over the image the classifier read) in the working image's frame, ``working_hw``.

    ``turn`` is the orientation stage's rotation (None without one); ``read_upright`` whether
    the classifier read the upright image.  What turns in from outside the frame reads 0.
    """
    h, w = int(working_hw[0]), int(working_hw[1])
    full = cv2.resize(np.asarray(cam_map, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    if read_upright and turn is not None and float(turn.angle_deg) % 360.0 != 0.0:
        full = cv2.warpAffine(full, turn.to_working, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)  # fmt: skip
    return np.clip(full, 0.0, 1.0)


def overlay_data_url(cam_map: np.ndarray, working_hw: tuple[int, int], turn: Turn | None,
                     read_upright: bool, size: int) -> str:  # fmt: skip
    """The overlay as a PNG data URL, longer side ``size`` px (8-512; see :func:`cam.to_uint8_png`)."""
    png = cam.to_uint8_png(stored_frame_map(cam_map, working_hw, turn, read_upright), size)
    return PREFIX + base64.b64encode(png).decode("ascii")
