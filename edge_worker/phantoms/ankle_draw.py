"""The upright drawing behind :mod:`edge_worker.phantoms.ankle`: attenuation maps of an ankle.

Each bone is a filled shape whose attenuation is added to the map, with a brighter rim for
the cortex.  Lengths are in units of ``u`` (the drawing width times a random scale), so the
anatomy keeps its proportions at any size.  The joint centre ``(cx, cy)`` is the middle of
the tibiotalar joint gap.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Draw = Callable[[np.ndarray], None]


def _points(pts: list[tuple[float, float]]) -> np.ndarray:
    return np.round(np.array(pts, dtype=np.float32)).astype(np.int32)


def _soft(img: np.ndarray, draw: Draw, value: float, blur: float) -> None:
    """Add a soft-tissue shape with blurred edges."""
    mask = np.zeros(img.shape, dtype=np.float32)
    draw(mask)
    img += cv2.GaussianBlur(mask, (0, 0), blur) * np.float32(value)


def _bone(img: np.ndarray, draw: Draw, value: float, rim: int = 3) -> None:
    """Add a bone: uniform attenuation plus a cortical rim ``rim`` pixels thick."""
    mask = np.zeros(img.shape, dtype=np.uint8)
    draw(mask)
    inner = cv2.erode(mask, np.ones((2 * rim + 1, 2 * rim + 1), np.uint8))
    layer = mask.astype(np.float32) * np.float32(value)
    layer += (mask - inner).astype(np.float32) * np.float32(0.45 * value)
    img += cv2.GaussianBlur(layer, (0, 0), 0.8)


def _poly(pts: list[tuple[float, float]]) -> Draw:
    def draw(m: np.ndarray) -> None:
        cv2.fillPoly(m, [_points(pts)], 1)

    return draw


def _ellipse(
    c: tuple[float, float], axes: tuple[float, float], angle: float = 0.0,
    start: float = 0.0, end: float = 360.0,
) -> Draw:  # fmt: skip
    centre = (int(round(c[0])), int(round(c[1])))
    size = (max(1, int(round(axes[0]))), max(1, int(round(axes[1]))))

    def draw(m: np.ndarray) -> None:
        cv2.ellipse(m, centre, size, angle, start, end, 1, -1)

    return draw


def _union(*draws: Draw) -> Draw:
    def draw(m: np.ndarray) -> None:
        for d in draws:
            d(m)

    return draw


def draw_upright(
    rng: np.random.Generator, view: str, misalignment: float, h: int, w: int
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Draw an upright right ankle of ``view`` into an ``h x w`` attenuation map.

    ``misalignment`` in [0, 1] slides a ghost talar dome (and on AP the fibula) over the joint
    gap.  Returns the map (float32, roughly 0-2), the ROI corners ``(4, 2)`` and the joint
    centre, both in the map's pixel coordinates.
    """
    u = w * float(rng.uniform(0.85, 1.05))
    cx = w / 2.0 + float(rng.normal(0.0, 0.025 * w))
    cy = h / 2.0 + float(rng.normal(0.0, 0.025 * h))
    gap = 0.035 * u * float(rng.uniform(0.85, 1.2))
    bone = float(rng.uniform(0.45, 0.6))
    img = np.zeros((h, w), dtype=np.float32)
    # Low-frequency thickness variation of the soft tissue.
    texture = cv2.resize(rng.standard_normal((6, 5)).astype(np.float32), (w, h),
                         interpolation=cv2.INTER_CUBIC)  # fmt: skip
    if view == "AP":
        roi = _draw_ap(rng, img, u, cx, cy, gap, bone, misalignment)
    else:
        roi = _draw_lat(rng, img, u, cx, cy, gap, bone, misalignment)
    img += (img > 0.05) * texture * np.float32(0.03)
    return np.clip(img, 0.0, None), roi, (cx, cy)


def _rect(cx: float, cy: float, width: float, height: float) -> np.ndarray:
    hw, hh = width / 2.0, height / 2.0
    return np.array(
        [[cx - hw, cy + hh], [cx - hw, cy - hh], [cx + hw, cy - hh], [cx + hw, cy + hh]],
        dtype=np.float32,
    )


def _draw_ap(
    rng: np.random.Generator, img: np.ndarray, u: float, cx: float, cy: float,
    gap: float, bone: float, m: float,
) -> np.ndarray:  # fmt: skip
    h = img.shape[0]
    g2 = gap / 2.0
    soft = [(cx - 0.30 * u, -10), (cx + 0.31 * u, -10), (cx + 0.29 * u, cy),
            (cx + 0.34 * u, cy + 0.35 * u), (cx + 0.36 * u, h + 10), (cx - 0.35 * u, h + 10),
            (cx - 0.33 * u, cy + 0.35 * u), (cx - 0.28 * u, cy)]  # fmt: skip
    _soft(img, _poly(soft), float(rng.uniform(0.3, 0.4)), 4.0)
    # Foot bones seen end-on below the talus.
    _bone(img, _ellipse((cx, cy + 0.33 * u), (0.21 * u, 0.12 * u)), 0.5 * bone)
    tibia = [(cx - 0.09 * u, -10), (cx + 0.09 * u, -10), (cx + 0.10 * u, cy - 0.20 * u),
             (cx + 0.15 * u, cy - 0.06 * u), (cx + 0.14 * u, cy - g2), (cx - 0.10 * u, cy - g2),
             (cx - 0.11 * u, cy + 0.08 * u), (cx - 0.15 * u, cy + 0.075 * u),
             (cx - 0.17 * u, cy - 0.06 * u), (cx - 0.11 * u, cy - 0.20 * u)]  # fmt: skip
    _bone(img, _poly(tibia), bone)
    # A rotated leg projects the fibula over the talus and the lateral joint space.
    fx = cx + 0.19 * u - m * 0.07 * u
    fibula = [(fx - 0.03 * u, -10), (fx + 0.03 * u, -10), (fx + 0.035 * u, cy - 0.12 * u),
              (fx + 0.05 * u, cy + 0.04 * u), (fx + 0.01 * u, cy + 0.13 * u),
              (fx - 0.04 * u, cy + 0.05 * u), (fx - 0.035 * u, cy - 0.12 * u)]  # fmt: skip
    _bone(img, _poly(fibula), 0.8 * bone)
    tx, dome_c = cx + 0.02 * u, cy + g2 + 0.06 * u
    talus = _union(
        _ellipse((tx, dome_c), (0.115 * u, 0.06 * u), 0, 180, 360),
        _ellipse((tx, dome_c), (0.115 * u, 0.10 * u), 0, 0, 180),
    )
    _bone(img, talus, bone)
    if m > 0:
        # The second (medial/lateral) talar dome contour, no longer superimposed.
        ghost_c = (tx + m * 0.03 * u, dome_c - m * (gap + 0.035 * u))
        _bone(img, _ellipse(ghost_c, (0.12 * u, 0.065 * u), m * 12.0, 180, 360), 0.8 * bone)
    return _rect(cx + 0.015 * u, cy + 0.015 * u, 0.50 * u, 0.30 * u)


def _draw_lat(
    rng: np.random.Generator, img: np.ndarray, u: float, cx: float, cy: float,
    gap: float, bone: float, m: float,
) -> np.ndarray:  # fmt: skip
    w = img.shape[1]
    radius = 0.12 * u
    tcx, tcy = cx, cy + gap / 2.0 + radius
    soft = [(cx - 0.22 * u, -10), (cx + 0.20 * u, -10), (cx + 0.22 * u, cy + 0.02 * u),
            (cx + 0.45 * u, cy + 0.12 * u), (w + 10, cy + 0.16 * u), (w + 10, cy + 0.42 * u),
            (cx + 0.10 * u, cy + 0.45 * u), (cx - 0.25 * u, cy + 0.42 * u),
            (cx - 0.32 * u, cy + 0.30 * u), (cx - 0.24 * u, cy + 0.05 * u)]  # fmt: skip
    _soft(img, _poly(soft), float(rng.uniform(0.3, 0.4)), 4.0)
    arc = [(tcx + (radius + gap) * np.cos(t), tcy + (radius + gap) * np.sin(t))
           for t in np.deg2rad(np.linspace(325.0, 215.0, 12))]  # fmt: skip
    tibia = [(cx - 0.09 * u, -10), (cx + 0.09 * u, -10), (cx + 0.10 * u, cy - 0.22 * u),
             (cx + 0.14 * u, cy - 0.06 * u), *arc, (cx - 0.15 * u, cy - 0.05 * u),
             (cx - 0.10 * u, cy - 0.22 * u)]  # fmt: skip
    _bone(img, _poly(tibia), bone)
    fx = cx - 0.06 * u
    fibula = [(fx - 0.03 * u, -10), (fx + 0.03 * u, -10), (fx + 0.04 * u, cy - 0.05 * u),
              (fx, cy + 0.09 * u), (fx - 0.04 * u, cy - 0.05 * u)]  # fmt: skip
    _bone(img, _poly(fibula), 0.45 * bone)
    talus = _union(
        _ellipse((tcx, tcy), (radius, radius)),
        _ellipse((tcx + 0.03 * u, tcy + 0.04 * u), (0.15 * u, 0.09 * u)),
        _ellipse((tcx + 0.17 * u, tcy + 0.02 * u), (0.08 * u, 0.05 * u), -10.0),
    )
    _bone(img, talus, bone)
    calcaneus = _ellipse((tcx - 0.10 * u, tcy + 0.17 * u), (0.21 * u, 0.085 * u), -12.0)
    _bone(img, calcaneus, 0.9 * bone)
    for k in range(3):
        centre = (tcx + (0.29 + 0.1 * k) * u, tcy + (0.05 + 0.02 * k) * u)
        _bone(img, _ellipse(centre, (0.045 * u, 0.06 * u), -10.0), 0.8 * bone)
    metatarsals = [(tcx + 0.44 * u, tcy + 0.02 * u), (w + 10, tcy + 0.06 * u),
                   (w + 10, tcy + 0.14 * u), (tcx + 0.44 * u, tcy + 0.13 * u)]  # fmt: skip
    _bone(img, _poly(metatarsals), 0.7 * bone)
    if m > 0:
        ghost_c = (tcx - m * 0.04 * u, tcy - m * (gap + 0.035 * u))
        _bone(img, _ellipse(ghost_c, (radius, radius), m * 10.0, 200, 340), 0.8 * bone)
    return _rect(tcx + 0.02 * u, cy + 0.03 * u, 0.42 * u, 0.27 * u)
