"""Geometry and tensor preparation shared by training (``models/``) and the worker.

Training imports these functions so that a network sees exactly the pixels at training time
that it will see on the box: one implementation, no train/serve skew.  Everything here is a
pure function of numpy arrays; nothing imports torch.

Coordinates are image pixels, x to the right and y down.  A :class:`RotatedBox` follows
OpenCV's ``minAreaRect`` convention, normalised so that ``width >= height`` (the long side is
the box's horizontal axis once the crop is rotated upright, as in the ankle paper, section 5.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Longest side of the working copy that every stage is fed from.  The networks need at most
#: a few hundred pixels; reducing a 3000x3000 radiograph once keeps every later step cheap.
WORKING_MAX_SIDE = 512


@dataclass(frozen=True)
class RotatedBox:
    """A rotated rectangle: centre, size and angle in degrees (OpenCV convention)."""

    cx: float
    cy: float
    width: float
    height: float
    angle_deg: float

    def corners(self) -> np.ndarray:
        """The four corners as a ``(4, 2)`` float32 array, in OpenCV's ``boxPoints`` order."""
        return cv2.boxPoints(((self.cx, self.cy), (self.width, self.height), self.angle_deg)).astype(
            np.float32
        )

    def bounds(self) -> tuple[float, float, float, float]:
        """The axis-aligned bounding box ``(x0, y0, x1, y1)`` of the rotated box."""
        pts = self.corners()
        return (
            float(pts[:, 0].min()),
            float(pts[:, 1].min()),
            float(pts[:, 0].max()),
            float(pts[:, 1].max()),
        )

    def scaled(self, sx: float, sy: float) -> RotatedBox:
        """The same box in a coordinate frame scaled by ``sx`` along x and ``sy`` along y."""
        return box_from_points(self.corners() * np.array([sx, sy], dtype=np.float32))


def normalise_box(
    cx: float, cy: float, width: float, height: float, angle_deg: float
) -> RotatedBox:
    """Canonical form: ``width >= height`` and the angle folded into ``(-90, 90]``."""
    if height > width:
        width, height = height, width
        angle_deg += 90.0
    angle = (angle_deg + 90.0) % 180.0 - 90.0
    if angle <= -90.0:
        angle += 180.0
    return RotatedBox(float(cx), float(cy), float(width), float(height), float(angle))


def box_from_points(points: np.ndarray) -> RotatedBox:
    """The minimum-area rectangle around a set of ``(N, 2)`` points."""
    (cx, cy), (w, h), angle = cv2.minAreaRect(points.astype(np.float32).reshape(-1, 1, 2))
    return normalise_box(cx, cy, w, h, angle)


def working_image(image: np.ndarray, max_side: int = WORKING_MAX_SIDE) -> tuple[np.ndarray, float]:
    """Reduce a normalised image so that its longest side is at most ``max_side``.

    Returns the reduced float32 image and the factor ``working / original`` (1.0 when the image
    was already small enough).  Area interpolation avoids the aliasing of plain subsampling.
    """
    h, w = image.shape[:2]
    scale = min(1.0, max_side / float(max(h, w)))
    if scale >= 1.0:
        return np.ascontiguousarray(image, dtype=np.float32), 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA), scale


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a 2-D float image to ``height x width`` (area when shrinking, linear otherwise)."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.astype(np.float32, copy=False)
    shrinking = height < h or width < w
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image.astype(np.float32, copy=False), (width, height), interpolation=interp)


# ``place`` and ``to_tensor`` take a parameter named ``resize`` (the manifest key's name).
_resize = resize


#: How an image becomes a network input (manifest ``input.resize``).  ``stretch``: the whole
#: image resized to the input, aspect ratio not kept.  ``pad``: scaled evenly until it fits,
#: centred, zeros (image value 0.0, before normalisation) around it (ankle paper 000, section 5).
RESIZE_MODES = ("stretch", "pad")


@dataclass(frozen=True)
class Placement:
    """Where an image lies inside a network input of ``input_hw`` (input pixels).

    Rows ``y0 .. y0 + height`` and columns ``x0 .. x0 + width`` hold the image; the rest is
    padding.  For ``stretch`` the image fills the input.
    """

    x0: int
    y0: int
    width: int
    height: int
    input_hw: tuple[int, int]

    @property
    def fills(self) -> bool:
        """Whether the image covers the whole input (no padding)."""
        return (self.x0, self.y0, self.height, self.width) == (0, 0, *self.input_hw)

    def cut(self, map_hw: tuple[int, int]) -> tuple[slice, slice]:
        """Row and column slices of a map of ``map_hw`` (any resolution proportional to the
        input, e.g. a segmenter's output or a CAM) that cover the image; at least one pixel."""
        fy, fx = map_hw[0] / self.input_hw[0], map_hw[1] / self.input_hw[1]
        y0, x0 = round(self.y0 * fy), round(self.x0 * fx)
        y1 = max(y0 + 1, round((self.y0 + self.height) * fy))
        x1 = max(x0 + 1, round((self.x0 + self.width) * fx))
        return slice(y0, min(y1, map_hw[0])), slice(x0, min(x1, map_hw[1]))


def resize_mode(value: object) -> str:
    """``value`` if it is one of :data:`RESIZE_MODES`; raises ValueError naming them otherwise."""
    if value not in RESIZE_MODES:
        raise ValueError(f"must be one of {', '.join(map(repr, RESIZE_MODES))}, got {value!r}")
    return str(value)


def placement(
    shape: tuple[float, ...], height: int, width: int, resize: str = "stretch"
) -> Placement:
    """The placement of an image of ``shape`` ``(h, w, ...)`` in a ``height x width`` input.

    ``pad``: scale ``min(height / h, width / w)``, the scaled image centred (a padding of odd
    size puts its extra pixel after the image).  ``stretch``: the whole input.
    """
    resize_mode(resize)
    if resize == "stretch":
        return Placement(0, 0, width, height, (height, width))
    h, w = float(shape[0]), float(shape[1])
    scale = min(height / h, width / w)
    ih = min(height, max(1, round(h * scale)))
    iw = min(width, max(1, round(w * scale)))
    return Placement((width - iw) // 2, (height - ih) // 2, iw, ih, (height, width))


def place(
    image: np.ndarray, height: int, width: int, resize: str = "stretch", nearest: bool = False
) -> np.ndarray:
    """A 2-D image as a ``height x width`` network input laid out by ``resize``.

    ``stretch`` is :func:`resize` (or a nearest-neighbour resize with ``nearest``, for class
    index masks, which keep their dtype); ``pad`` resizes the same way into the
    :func:`placement` and fills the rest with 0.
    """
    where = placement(image.shape, height, width, resize)

    def sized(h: int, w: int) -> np.ndarray:
        if nearest:
            return cv2.resize(image, (w, h), interpolation=cv2.INTER_NEAREST)
        return _resize(image, h, w)

    if where.fills:
        return sized(height, width)
    out = np.zeros((height, width), dtype=image.dtype if nearest else np.float32)
    out[where.y0 : where.y0 + where.height, where.x0 : where.x0 + where.width] = sized(
        where.height, where.width
    )
    return out


def image_part(
    net_map: np.ndarray, shape: tuple[int, ...], height: int, width: int, resize: str = "stretch"
) -> np.ndarray:
    """The part of ``net_map`` (``(..., mh, mw)``, proportional to the ``height x width`` input)
    that covers an image of ``shape``: the map itself for ``stretch``, the image's part without
    the padding for ``pad``.  A view, not a copy."""
    where = placement(shape, height, width, resize)
    if where.fills:
        return net_map
    rows, cols = where.cut(net_map.shape[-2:])
    return net_map[..., rows, cols]


def to_tensor(
    image: np.ndarray, height: int, width: int, channels: int, mean: float, std: float,
    resize: str = "stretch",
) -> np.ndarray:  # fmt: skip
    """A 2-D image in [0, 1] as a ``(1, channels, height, width)`` float32 network input.

    ``resize`` lays it out (:func:`place`); padding is image value 0, normalised like the rest.
    """
    x = (place(image, height, width, resize) - np.float32(mean)) / np.float32(std)
    return np.ascontiguousarray(np.broadcast_to(x, (1, channels, height, width)), dtype=np.float32)


def crop_box(
    image: np.ndarray, box: RotatedBox, height: int, width: int, resize: str = "stretch"
) -> np.ndarray:
    """Cut a rotated box out of ``image`` and return it upright as ``height x width``.

    The box's long side becomes horizontal.  Pixels outside the image read as 0.  ``pad``
    keeps the box's aspect ratio: the crop is made at its :func:`placement` size and padded
    with 0 around, as :func:`place` pads a whole image.
    """
    where = placement((box.height, box.width), height, width, resize)
    if not where.fills:
        out = np.zeros((height, width), np.float32)
        out[where.y0 : where.y0 + where.height, where.x0 : where.x0 + where.width] = crop_box(
            image, box, where.height, where.width
        )
        return out
    corners = box.corners()
    # boxPoints order is bottom-left, top-left, top-right, bottom-right for the box's own
    # frame; map three of them onto the output rectangle.
    src = np.stack([corners[1], corners[2], corners[0]]).astype(np.float32)
    dst = np.array([[0, 0], [width - 1, 0], [0, height - 1]], dtype=np.float32)
    if np.linalg.norm(corners[2] - corners[1]) < np.linalg.norm(corners[0] - corners[1]):
        # The short side came first: rotate the correspondence by a quarter turn.
        src = np.stack([corners[0], corners[1], corners[3]]).astype(np.float32)
    matrix = cv2.getAffineTransform(src, dst)
    return cv2.warpAffine(
        image.astype(np.float32, copy=False),
        matrix,
        (width, height),
        flags=cv2.INTER_AREA if box.width > width else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )


def mask_to_box(
    probability: np.ndarray, threshold: float, min_area_fraction: float
) -> RotatedBox | None:
    """The minimum-area rectangle of the largest region where ``probability > threshold``.

    ``probability`` is a 2-D map in [0, 1] (the segmenter's sigmoid output).  Returns ``None``
    when the largest region covers less than ``min_area_fraction`` of the map: no ROI found.
    The box is in the map's own pixel coordinates; scale it with :meth:`RotatedBox.scaled`.
    """
    binary = (probability > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < min_area_fraction * binary.size:
        return None
    # The rectangle depends only on the region's convex hull, and every hull vertex is a corner
    # of a pixel on the region's outer border: so the border pixels, not all of them, are
    # enough (a 400 px map, 40 % covered: 6,000 points instead of 256,000, 23 -> 1.6 ms).
    region = (labels == largest).astype(np.uint8)
    borders, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = np.concatenate(borders).reshape(-1, 2).astype(np.float32)
    # Each pixel's four corners, so that the rectangle encloses whole pixels.
    corners = np.concatenate(
        [pts + np.array(offset, dtype=np.float32) for offset in ((0, 0), (1, 0), (0, 1), (1, 1))]
    )
    return box_from_points(corners)


def box_mask(shape: tuple[int, int], box: RotatedBox) -> np.ndarray:
    """A ``uint8`` mask of ``shape`` that is 1 inside ``box``: the segmenter's training target."""
    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillConvexPoly(mask, np.round(box.corners()).astype(np.int32), 1)
    return mask


@dataclass(frozen=True)
class Turn:
    """The rotation that brought a working image upright, and its inverse for reporting.

    ``to_upright`` maps working-image points to the upright image; ``to_working`` maps them
    back.  Both are 2x3 affine matrices (a rotation about the image centre, no scaling).
    """

    angle_deg: float
    to_upright: np.ndarray
    to_working: np.ndarray

    def box_to_working(self, box: RotatedBox) -> RotatedBox:
        """A box found on the upright image, in the coordinates of the working image."""
        pts = box.corners()
        back = pts @ self.to_working[:, :2].T + self.to_working[:, 2]
        return box_from_points(back.astype(np.float32))


def turn_upright(image: np.ndarray, angle_deg: float) -> tuple[np.ndarray, Turn]:
    """Rotate ``image`` clockwise by ``angle_deg`` about its centre, in the same frame.

    ``angle_deg`` is the orientation stage's answer: the anatomy's counter-clockwise turn from
    upright.  The frame is kept (the networks were trained on frames of the modality's shape);
    what turns out of it reads as 0 (for a quarter-turned image: the ends of the long axis, far
    from a joint at the centre).  An angle of 0 returns the image itself.
    """
    h, w = image.shape[:2]
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    to_upright = cv2.getRotationMatrix2D(centre, -float(angle_deg), 1.0)
    to_working = cv2.getRotationMatrix2D(centre, float(angle_deg), 1.0)
    turn = Turn(float(angle_deg), to_upright, to_working)
    if float(angle_deg) % 360.0 == 0.0:
        return image, turn
    rotated = cv2.warpAffine(
        image.astype(np.float32, copy=False), to_upright, (w, h),
        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0,
    )  # fmt: skip
    return rotated, turn
