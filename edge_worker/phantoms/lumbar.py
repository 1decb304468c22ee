"""Synthetic lumbar spine radiographs (AP, lateral, oblique) with exact labels, as DICOM files.

The phantoms feed the lumbar-demo pack (paper 001: segment the spine with a U-Net, then check
textbook positioning rules on the segmentation).  They are drawings, not anatomy: T12 with
its ribs, L1-L5 bodies with cortical endplates, pedicles, spinous and transverse processes,
discs, the sacrum and the pelvis, whose X-ray attenuations add up.

Each phantom has at most one positioning error (:data:`ERRORS`), drawn with a geometric model
whose effect on the rule measures is known:

* ``rotation`` (AP): the trunk turned about the spine by 9-16 deg.  Posterior elements project
  sideways by ``depth * sin(angle)``: the spinous processes leave the midpoint between the
  pedicles (well positioned: within 2 deg).
* ``column_tilt`` (AP): the spine at 14-22 deg to the detector's long axis (good: within 3).
* ``tilt`` (LAT): the spine not parallel to the detector (10-18 deg; good: within 2): each
  endplate projects as an ellipse ``width * sin(angle)`` tall, a double contour that closes
  the disc spaces.
* ``obliquity`` (OBL): 16-28 deg away from 45 deg (good: within 4).  The pedicle (the
  "Scottie dog's eye") leaves the centre of the vertebral body by ``0.57 * sin(error)`` body
  widths.
* ``t12_out`` / ``sacrum_out`` (every view): the field shifted so that T12 or the sacrum is
  cut by (or outside) the image border.

:data:`RULE_OF_ERROR` names the rule each error breaks (the codes of the pack's rules tables);
:meth:`LumbarTruth.rule_truth` gives every rule's true outcome.  Labels are one class per
pixel (a softmax segmentation's view): later structures cover earlier ones (pedicles and
spinous processes cover the body they project on).

Only numpy, OpenCV and pydicom: the worker's demo may import this module.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydicom.dataset import Dataset

from edge_worker.phantoms.ankle import _header
from edge_worker.phantoms.ankle_draw import Draw, _bone, _ellipse, _points, _poly, _soft, _union

VIEWS = ("AP", "LAT", "OBL")
BODY_PART = "LSPINE"
CLASSES: dict[str, tuple[str, ...]] = {
    "AP": ("background", "body", "pedicle_left", "pedicle_right", "spinous", "t12", "sacrum"),
    "LAT": ("background", "body", "disc", "t12", "sacrum"),
    "OBL": ("background", "body", "pedicle", "t12", "sacrum"),
}
ERRORS: dict[str, tuple[str, ...]] = {
    "AP": ("rotation", "column_tilt", "t12_out", "sacrum_out"),
    "LAT": ("tilt", "t12_out", "sacrum_out"),
    "OBL": ("obliquity", "t12_out", "sacrum_out"),
}
#: The rule codes of each view, and which of them each error breaks.
RULE_CODES: dict[str, tuple[str, ...]] = {
    "AP": ("ap_spinous_midline", "ap_column_aligned", "ap_t12_in_field", "ap_sacrum_in_field"),
    "LAT": ("lat_disc_spaces_open", "lat_t12_in_field", "lat_sacrum_in_field"),
    "OBL": ("obl_eye_centred", "obl_t12_in_field", "obl_sacrum_in_field"),
}
RULE_OF_ERROR: dict[tuple[str, str], str] = {
    ("AP", "rotation"): "ap_spinous_midline",
    ("AP", "column_tilt"): "ap_column_aligned",
    ("AP", "t12_out"): "ap_t12_in_field",
    ("AP", "sacrum_out"): "ap_sacrum_in_field",
    ("LAT", "tilt"): "lat_disc_spaces_open",
    ("LAT", "t12_out"): "lat_t12_in_field",
    ("LAT", "sacrum_out"): "lat_sacrum_in_field",
    ("OBL", "obliquity"): "obl_eye_centred",
    ("OBL", "t12_out"): "obl_t12_in_field",
    ("OBL", "sacrum_out"): "obl_sacrum_in_field",
}
#: Rows of the internal drawing (columns are 0.8 of it, a 35 x 43 cm cassette).
RENDER_ROWS = 512
CSV_COLUMNS = (
    "file", "labels", "view", "view_position", "error", "rotation_deg", "tilt_deg",
    "obliquity_deg", "inplane_deg", "modality", "photometric", "rows", "columns",
)  # fmt: skip


@dataclass(frozen=True, eq=False)
class LumbarTruth:
    """What a phantom shows.  ``labels`` is ``(rows, columns)`` uint8, indices into ``classes``.

    Angles: ``rotation_deg`` trunk rotation (AP), ``tilt_deg`` spine to detector (LAT),
    ``obliquity_deg`` body plane to detector (OBL, 45 ideal), ``inplane_deg`` the spine's angle
    to the image vertical.
    """

    view: str
    view_position: str
    error: str | None
    classes: tuple[str, ...]
    labels: np.ndarray = field(repr=False)
    rotation_deg: float = 0.0
    tilt_deg: float = 0.0
    obliquity_deg: float = 0.0
    inplane_deg: float = 0.0
    # ``phantom._header`` reads these: spine views are unpaired.
    laterality: str = "U"

    @property
    def rows(self) -> int:
        return int(self.labels.shape[0])

    @property
    def columns(self) -> int:
        return int(self.labels.shape[1])

    def masks(self) -> dict[str, np.ndarray]:
        """Class name -> bool mask, for every structure (``background`` left out)."""
        return {c: self.labels == k for k, c in enumerate(self.classes) if c != "background"}

    def rule_truth(self) -> dict[str, str]:
        """Every rule code of this view -> ``"fail"`` (the error's rule) or ``"pass"``."""
        broken = RULE_OF_ERROR.get((self.view, self.error or ""))
        return {code: "fail" if code == broken else "pass" for code in RULE_CODES[self.view]}


class _Canvas:
    """An attenuation map and its label map, drawn together."""

    def __init__(self, h: int, w: int, classes: tuple[str, ...]) -> None:
        self.img = np.zeros((h, w), dtype=np.float32)
        self.labels = np.zeros((h, w), dtype=np.uint8)
        self.classes = classes

    def bone(self, draw: Draw, value: float, label: str | None = None, rim: int = 3) -> None:
        _bone(self.img, draw, value, rim)
        if label is not None:
            mask = np.zeros(self.labels.shape, dtype=np.uint8)
            draw(mask)
            self.labels[mask > 0] = self.classes.index(label)

    def label(self, draw: Draw, label: str) -> None:
        mask = np.zeros(self.labels.shape, dtype=np.uint8)
        draw(mask)
        self.labels[mask > 0] = self.classes.index(label)


def _rect(cx: float, cy: float, w: float, h: float, angle: float = 0.0) -> Draw:
    box = cv2.boxPoints(((cx, cy), (max(1.0, w), max(1.0, h)), angle))
    return _poly([tuple(p) for p in box])


def _line(pts: list[tuple[float, float]], thickness: int) -> Draw:
    def draw(m: np.ndarray) -> None:
        cv2.polylines(m, [_points(pts)], False, 1, thickness)

    return draw


@dataclass(frozen=True)
class _Geometry:
    """Vertical layout: T12 centre ``y0``; level k (0 = T12, 5 = L5) at ``y0 + k * pitch``."""

    y0: float
    bh: float  # body height
    dh: float  # disc height

    @property
    def pitch(self) -> float:
        return self.bh + self.dh

    def y(self, k: int) -> float:
        return self.y0 + k * self.pitch

    @property
    def sacrum_top(self) -> float:
        return self.y(5) + self.bh / 2 + self.dh


def _layout(rng: np.random.Generator, h: int, error: str | None) -> _Geometry:
    bh = h * 0.068 * float(rng.uniform(0.95, 1.05))
    dh = h * 0.026 * float(rng.uniform(0.95, 1.05))
    sacrum_h = h * 0.16
    span_top = bh / 2  # above T12's centre
    span = span_top + 5 * (bh + dh) + bh / 2 + dh + sacrum_h
    if error == "t12_out":
        y0 = bh * float(rng.uniform(-0.6, 0.3))  # T12 cut by the top border, or gone
    elif error == "sacrum_out":
        y0 = h * float(rng.uniform(1.02, 1.12)) - span + span_top
    else:
        y0 = (h - span) / 2 + span_top + h * float(rng.normal(0.0, 0.015))
    return _Geometry(y0, bh, dh)


def _draw_ap(rng: np.random.Generator, c: _Canvas, g: _Geometry, rotation: float) -> None:
    h, w = c.img.shape
    cx = w / 2 + float(rng.normal(0.0, 0.02 * w))
    bw = w * 0.17 * float(rng.uniform(0.95, 1.05))
    bone = float(rng.uniform(0.45, 0.6))
    r = math.radians(rotation)
    a, zp, zs, zt = 0.3 * bw, 0.45 * bw, 1.1 * bw, 0.35 * bw
    _soft(c.img, _poly([(0.08 * w, -10), (0.92 * w, -10), (0.95 * w, h + 10), (0.05 * w, h + 10)]),
          float(rng.uniform(0.3, 0.4)), 6.0)  # fmt: skip
    for _ in range(int(rng.integers(2, 6))):  # bowel gas
        centre = (float(rng.uniform(0.2, 0.8) * w), float(rng.uniform(0.3, 0.8) * h))
        _soft(c.img, _ellipse(centre, (float(rng.uniform(10, 30)), float(rng.uniform(8, 20)))),
              -0.12, 3.0)  # fmt: skip
    top = g.sacrum_top
    for side in (-1, 1):  # iliac wings and the sacroiliac joints
        wing = _ellipse((cx + side * 1.45 * bw, top + 0.9 * g.bh), (0.95 * bw, 1.5 * g.bh))
        c.bone(wing, 0.45 * bone)
    for k in range(6):
        y = g.y(k)
        name = "t12" if k == 0 else "body"
        c.bone(_rect(cx, y, bw * (0.94 if k == 0 else 1.0), g.bh), bone, name)
        tp_len = bw * (0.3 if k == 0 else (0.45 + 0.1 * (k == 3)))
        for side in (-1, 1):
            x0 = cx + side * 0.5 * bw * math.cos(r) + zt * math.sin(r)
            tp = _rect(x0 + side * tp_len / 2, y - 0.05 * g.bh, tp_len, 0.22 * g.bh)
            c.bone(tp, 0.6 * bone)
        if k == 0:
            for side in (-1, 1):  # the twelfth ribs
                x0 = cx + side * 0.55 * bw
                rib = [(x0, y - 0.1 * g.bh), (x0 + side * 0.6 * bw, y + 0.3 * g.bh),
                       (x0 + side * 1.1 * bw, y + 1.1 * g.bh)]  # fmt: skip
                c.bone(_line(rib, max(3, int(0.12 * g.bh))), 0.5 * bone, rim=1)
            continue
        for side, label in ((-1, "pedicle_left"), (1, "pedicle_right")):
            px = cx + side * a * math.cos(r) + zp * math.sin(r)
            c.bone(_ellipse((px, y - 0.15 * g.bh), (0.11 * bw, 0.25 * g.bh)), 0.5 * bone, label)
        sx = cx + zs * math.sin(r) + float(rng.normal(0.0, 0.01 * bw))
        c.bone(_ellipse((sx, y + 0.18 * g.bh), (0.075 * bw, 0.32 * g.bh)), 0.4 * bone, "spinous")
    sacrum = [(cx - 0.75 * bw, top), (cx + 0.75 * bw, top), (cx + 0.2 * bw, top + 0.16 * h),
              (cx - 0.2 * bw, top + 0.16 * h)]  # fmt: skip
    c.bone(_poly(sacrum), 0.85 * bone, "sacrum")


def _draw_lat(rng: np.random.Generator, c: _Canvas, g: _Geometry, tilt: float) -> None:
    h, w = c.img.shape
    cx = w / 2 - 0.05 * w + float(rng.normal(0.0, 0.02 * w))
    bd = w * 0.22 * float(rng.uniform(0.95, 1.05))  # body depth (anterior-posterior)
    width = w * 0.2  # body width (left-right): what a tilted beam sees of an endplate
    e = width * math.sin(math.radians(abs(tilt)))
    bone = float(rng.uniform(0.45, 0.6))
    lordosis = 0.035 * w * float(rng.uniform(0.6, 1.2))
    _soft(c.img, _poly([(0.02 * w, -10), (0.98 * w, -10), (0.98 * w, h + 10), (0.02 * w, h + 10)]),
          float(rng.uniform(0.45, 0.55)), 6.0)  # fmt: skip

    def x_at(k: float) -> float:  # anterior is image-left; lordosis peaks at L3
        return cx - lordosis * (1.0 - ((k - 3.0) / 3.0) ** 2)

    for k in range(6):
        x, y = x_at(k), g.y(k)
        name = "t12" if k == 0 else "body"
        c.bone(_rect(x, y, bd, g.bh + e), bone, name)
        for end in (-1, 1):  # the far rim of each endplate: the double contour
            ring = np.zeros(c.img.shape, dtype=np.float32)
            centre = (round(x), round(y + end * g.bh / 2))
            cv2.ellipse(ring, centre, (int(bd / 2), max(1, round(e / 2))), 0, 0, 360, 1.0, 2)
            c.img += cv2.GaussianBlur(ring, (0, 0), 0.8) * np.float32(0.35 * bone)
        px = x + bd / 2
        c.bone(_rect(px + 0.15 * bd, y - 0.1 * g.bh, 0.35 * bd, 0.35 * g.bh), 0.5 * bone)
        c.bone(_rect(px + 0.7 * bd, y + 0.15 * g.bh, 0.6 * bd, 0.3 * g.bh, -12.0), 0.45 * bone)
        if k == 0:
            rib = [(px, y - 0.3 * g.bh), (px + 0.5 * bd, y + 0.6 * g.bh), (px + 0.7 * bd, y + 1.4 * g.bh)]
            c.bone(_line(rib, max(3, int(0.1 * g.bh))), 0.4 * bone, rim=1)
    top = g.sacrum_top
    sx = x_at(5) + 0.1 * bd
    sacrum = [(sx - bd / 2, top - e / 2), (sx + bd / 2, top - e / 2 - 0.05 * g.bh),
              (sx + 0.9 * bd, top + 0.16 * h), (sx + 0.3 * bd, top + 0.16 * h)]  # fmt: skip
    c.bone(_poly(sacrum), 0.85 * bone, "sacrum")
    for k in range(6):  # the disc spaces still open between the (widened) contours
        upper = g.y(k) + (g.bh + e) / 2
        lower = (g.y(k + 1) - (g.bh + e) / 2) if k < 5 else top - e / 2
        if lower - upper >= 1.0:
            x = (x_at(k) + (x_at(k + 1) if k < 5 else sx)) / 2
            c.label(_rect(x, (upper + lower) / 2, bd * 0.9, lower - upper), "disc")


def _draw_obl(rng: np.random.Generator, c: _Canvas, g: _Geometry, obliquity: float) -> None:
    h, w = c.img.shape
    cx = w / 2 - 0.03 * w + float(rng.normal(0.0, 0.02 * w))
    bo = w * 0.19 * float(rng.uniform(0.95, 1.05))
    bone = float(rng.uniform(0.45, 0.6))
    # Pedicle at (x, z) = (-a, a) from the body's axis, a = 0.4 body widths: projected at
    # a * (sin t - cos t) = a * sqrt(2) * sin(t - 45) from the centre.
    shift = 0.4 * bo * math.sqrt(2.0) * math.sin(math.radians(obliquity - 45.0))
    _soft(c.img, _poly([(0.05 * w, -10), (0.95 * w, -10), (0.97 * w, h + 10), (0.03 * w, h + 10)]),
          float(rng.uniform(0.38, 0.48)), 6.0)  # fmt: skip
    for k in range(6):
        y = g.y(k)
        c.bone(_rect(cx, y, bo, g.bh), bone, "t12" if k == 0 else "body")
        ex, ey = cx + shift, y - 0.1 * g.bh
        # The rest of the "Scottie dog": nose (transverse process), ear (superior articular
        # process), neck (pars), front leg (inferior articular process), body (lamina).
        dog = _union(
            _ellipse((ex - 0.3 * bo, ey), (0.22 * bo, 0.12 * g.bh)),
            _rect(ex + 0.35 * bo, ey - 0.45 * g.bh, 0.14 * bo, 0.5 * g.bh, 15.0),
            _rect(ex + 0.3 * bo, ey + 0.3 * g.bh, 0.16 * bo, 0.45 * g.bh),
            _rect(ex + 0.4 * bo, ey + 0.75 * g.bh, 0.14 * bo, 0.45 * g.bh, -15.0),
            _rect(ex + 0.75 * bo, ey + 0.25 * g.bh, 0.45 * bo, 0.5 * g.bh),
        )
        c.bone(dog, 0.45 * bone)
        if k > 0:
            c.bone(_ellipse((ex, ey), (0.14 * bo, 0.22 * g.bh)), 0.5 * bone, "pedicle")
    top = g.sacrum_top
    sacrum = [(cx - 0.6 * bo, top), (cx + 0.6 * bo, top), (cx + 0.35 * bo, top + 0.16 * h),
              (cx - 0.15 * bo, top + 0.16 * h)]  # fmt: skip
    c.bone(_poly(sacrum), 0.85 * bone, "sacrum")


def _angles(rng: np.random.Generator, view: str, error: str | None) -> dict[str, float]:
    """The positioning angles: small for a good image, in the error's band otherwise."""

    def band(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi)) * (1.0 if rng.random() < 0.5 else -1.0)

    out = {"rotation_deg": 0.0, "tilt_deg": 0.0, "obliquity_deg": 0.0,
           "inplane_deg": band(0.0, 3.0) if error != "column_tilt" else band(14.0, 22.0)}  # fmt: skip
    if view == "AP":
        out["rotation_deg"] = band(9.0, 16.0) if error == "rotation" else band(0.0, 2.0)
    elif view == "LAT":
        out["tilt_deg"] = band(10.0, 18.0) if error == "tilt" else band(0.0, 2.0)
    else:
        out["obliquity_deg"] = 45.0 + (band(16.0, 28.0) if error == "obliquity" else band(0.0, 4.0))
    return out


def render(
    rng: np.random.Generator,
    view: str,
    error: str | None = None,
    size: int = RENDER_ROWS,
    *,
    side: str = "L",
    angles: dict[str, float] | None = None,
) -> tuple[np.ndarray, LumbarTruth]:
    """Draw one phantom with ``size`` rows (columns 0.8 of it) and at most one ``error``.

    Returns display-polarity pixels (bone bright) as ``uint16`` using the full range, and the
    truth with labels at the same resolution.  ``side`` picks LPO or RPO for an oblique
    (RPO is the mirror image).  ``angles`` overrides drawn angles (keys as
    :class:`LumbarTruth`'s, e.g. ``{"rotation_deg": 6.0}``) for sets that sweep an error
    across its rule's threshold; ``error`` is then not checked against them, so take the
    rules evaluated on the true masks as the truth of such a phantom.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    if error is not None and error not in ERRORS[view]:
        raise ValueError(f"error for {view} must be one of {ERRORS[view]} or None, got {error!r}")
    rows, cols = int(size), int(round(size * 0.8 / 2) * 2)
    h, w = RENDER_ROWS, int(round(RENDER_ROWS * 0.8 / 2) * 2)
    drawn = _angles(rng, view, error)
    unknown = set(angles or {}) - set(drawn)
    if unknown:
        raise ValueError(f"unknown angles {sorted(unknown)}; known: {sorted(drawn)}")
    chosen = {**drawn, **(angles or {})}
    geometry = _layout(rng, h, error)
    canvas = _Canvas(h, w, CLASSES[view])
    if view == "AP":
        _draw_ap(rng, canvas, geometry, chosen["rotation_deg"])
    elif view == "LAT":
        _draw_lat(rng, canvas, geometry, chosen["tilt_deg"])
    else:
        _draw_obl(rng, canvas, geometry, chosen["obliquity_deg"])
    img: np.ndarray = canvas.img
    labels: np.ndarray = canvas.labels
    if view == "OBL" and side == "R":
        img, labels = img[:, ::-1].copy(), labels[:, ::-1].copy()
    # In-plane angle about the spine's middle (L3), so that the ends stay in the field.
    matrix = cv2.getRotationMatrix2D((w / 2.0, geometry.y(3)), chosen["inplane_deg"], 1.0)
    img = cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    labels = cv2.warpAffine(labels, matrix, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    img = _expose(rng, img)
    pixels: np.ndarray = cv2.resize(img, (cols, rows), interpolation=cv2.INTER_LINEAR)
    pixels += rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.008)
    labels = cv2.resize(labels, (cols, rows), interpolation=cv2.INTER_NEAREST)
    position = {"AP": "AP", "LAT": "LL", "OBL": f"{side}PO"}[view]
    a = {k: round(v, 3) for k, v in chosen.items()}
    truth = LumbarTruth(view, position, error, CLASSES[view], labels, a["rotation_deg"],
                        a["tilt_deg"], a["obliquity_deg"], a["inplane_deg"])  # fmt: skip
    stored = (np.clip(pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)
    return stored, truth


def _expose(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Film response and noise: attenuation adds, the response saturates (values in [0, 1])."""
    gain = float(rng.uniform(1.0, 1.5))
    out = (1.0 - np.exp(-gain * np.clip(image, 0.0, None))).astype(np.float32)
    out *= np.float32(rng.uniform(0.8, 1.0))
    out += np.float32(rng.uniform(0.0, 0.06))
    out += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(0.005, 0.02))
    return out


def make_dataset(
    seed: int,
    view: str | None = None,
    error: str | None = None,
    *,
    size: int | None = None,
    modality: str | None = None,
    photometric: str | None = None,
    bits_stored: int | None = None,
    index: int = 1,
) -> tuple[Dataset, LumbarTruth]:
    """A complete DICOM dataset for one phantom and its truth; ``None`` arguments are drawn
    from ``seed`` (``error`` stays ``None``: a well-positioned image)."""
    rng = np.random.default_rng(seed)
    view = view or VIEWS[int(rng.integers(3))]
    modality = modality or ("CR", "DX")[int(rng.integers(2))]
    photometric = photometric or ("MONOCHROME1", "MONOCHROME2")[int(rng.integers(2))]
    bits = bits_stored or int(rng.integers(12, 17))
    size = size or int(rng.integers(512, 1025)) * 2
    side = ("L", "R")[int(rng.integers(2))]
    display, truth = render(rng, view, error, size, side=side)
    max_value = (1 << bits) - 1
    stored = (display.astype(np.float32) * np.float32(max_value / 65535.0)).round().astype(np.uint16)
    if photometric == "MONOCHROME1":
        # MONOCHROME1: the minimum value displays white (PS3.3 C.7.6.3.1.2), so bone is low.
        stored = (max_value - stored).astype(np.uint16)
    ds = _header(seed, index, truth, modality, photometric, bits, max_value)  # type: ignore[arg-type]
    ds.PatientName = f"PHANTOM^LSPINE^{index}"
    ds.BodyPartExamined = BODY_PART
    ds.ViewPosition = truth.view_position
    del ds.ImageLaterality  # the spine is unpaired
    ds.PatientOrientation = {"AP": ["L", "F"], "LAT": ["P", "F"]}.get(view, ["L", "F"])
    ds.KVP = "85"
    ds.ImageComments = ("SYNTHETIC PHANTOM generated by edge_worker.phantoms.lumbar; not a "
                        f"patient image; error={truth.error or 'none'}")  # fmt: skip
    ds.PixelData = stored.tobytes()
    return ds, truth


def balanced(i: int, view: str | None = None) -> tuple[str, str | None]:
    """The (view, error) of phantom ``i`` in a balanced set: views cycle, half are good."""
    if view is None:
        view, j = VIEWS[i % 3], i // 3
    else:
        j = i
    errors = ERRORS[view]
    return view, None if j % 2 == 0 else errors[(j // 2) % len(errors)]


def write_lumbar_dataset(folder: str | Path, n: int, seed: int, **kwargs: Any) -> Path:
    """Write ``n`` phantoms into ``folder`` plus ``labels.csv``; returns the CSV path.

    Phantom ``i`` uses the seed ``seed * 1_000_003 + i`` (a new patient each), so folders
    written with different ``seed`` share no image.  Views and errors are balanced by
    :func:`balanced` unless ``kwargs`` fixes them.  Each image's label map is stored beside
    it as ``<name>.labels.npz`` (``labels`` uint8 and ``classes``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "labels.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for i in range(n):
            options = dict(kwargs)
            view, error = balanced(i, options.pop("view", None))
            error = options.pop("error", error)
            name = f"lumbar_{seed}_{i:05d}.dcm"
            ds, truth = make_dataset(seed * 1_000_003 + i, view, error, index=i + 1, **options)
            ds.save_as(folder / name, enforce_file_format=True)
            labels_name = f"{name}.labels.npz"
            np.savez_compressed(folder / labels_name, labels=truth.labels,
                                classes=np.array(truth.classes))  # fmt: skip
            writer.writerow([
                name, labels_name, truth.view, truth.view_position, truth.error or "",
                truth.rotation_deg, truth.tilt_deg, truth.obliquity_deg, truth.inplane_deg,
                ds.Modality, ds.PhotometricInterpretation, truth.rows, truth.columns,
            ])  # fmt: skip
    return csv_path
