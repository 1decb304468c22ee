"""Synthetic PA chest radiographs whose bone layer is drawn apart: pairs for bone subtraction.

Paper 004 suppresses bones with a network trained on dual-energy pairs (radiograph, soft-tissue
image).  There are no real dual-energy pairs in this project, so this module draws them: a
chest is two attenuation layers, ``soft`` (body outline, lungs, heart and mediastinum,
diaphragm domes, breast shadows, a few nodules and vessel-like streaks) and ``bone`` (the
thoracic spine, twelve pairs of posterior ribs, ten pairs of fainter anterior ribs, both
clavicles, the scapular edges).  Attenuations add along the ray, so

* the radiograph is ``expose(soft + bone)``,
* the soft-tissue image is ``expose(soft)``,

with the same exposure and the same detector noise in both: the pair differs by the bones
alone, which is what a bone-suppression network must learn to remove.  Everything is drawn
from one seed, so a phantom is reproducible; they are drawings, not anatomy.

Only numpy, OpenCV and pydicom: the worker's tests and demo may import this module.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

#: Rows of a phantom unless asked otherwise (columns are the same: chest detectors are square).
DEFAULT_SIZE = 256
BODY_PART = "CHEST"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
#: The layers that make up :attr:`ChestPhantom.bone_layers`.
BONES = ("spine", "ribs", "clavicles", "scapulae")


@dataclass(frozen=True)
class ChestPhantom:
    """One chest phantom: the radiograph, its soft-tissue-only twin and the layers behind them.

    ``radiograph`` and ``soft_tissue`` are display-polarity float32 images in [0, 1] (bone and
    soft tissue bright, air dark) of the same size; ``soft`` and ``bone`` are the attenuation
    layers (line integrals, >= 0) they were exposed from; ``bone_layers`` splits ``bone`` by
    :data:`BONES` (they add up to it).  ``exposure`` is the film response's parameters.
    """

    seed: int
    radiograph: np.ndarray = field(repr=False)
    soft_tissue: np.ndarray = field(repr=False)
    soft: np.ndarray = field(repr=False)
    bone: np.ndarray = field(repr=False)
    bone_layers: dict[str, np.ndarray] = field(repr=False)
    exposure: dict[str, float]

    @property
    def pair(self) -> tuple[np.ndarray, np.ndarray]:
        """``(radiograph, soft_tissue)``: the network's input and its target."""
        return self.radiograph, self.soft_tissue


def _ellipse(shape: tuple[int, int], cx: float, cy: float, ax: float, ay: float,
             angle: float = 0.0) -> np.ndarray:  # fmt: skip
    """A smooth-edged filled ellipse (1 inside, 0 outside) in a float32 map of ``shape``."""
    mask = np.zeros(shape, np.float32)
    cv2.ellipse(mask, ((cx, cy), (2 * ax, 2 * ay), angle), 1.0, -1, cv2.LINE_AA)
    return mask


def _thickness(mask: np.ndarray, depth: float) -> np.ndarray:
    """A rounded profile inside ``mask``: path length through an elliptic cross-section."""
    dist = cv2.distanceTransform((mask > 0.5).astype(np.uint8), cv2.DIST_L2, 5)
    top = float(dist.max()) or 1.0
    return (depth * np.sqrt(np.clip(dist / top, 0.0, 1.0) * (2.0 - dist / top))).astype(np.float32)


def _curve(mask: np.ndarray, pts: np.ndarray, width: int) -> None:
    """Draw a polyline ``pts`` (N, 2) of ``width`` px into ``mask`` with value 1."""
    cv2.polylines(mask, [np.round(pts * 16).astype(np.int32)], False, 1.0,
                  max(1, width), cv2.LINE_AA, shift=4)  # fmt: skip


def _tube(shape: tuple[int, int], pts: np.ndarray, width: float, density: float,
          cortex: float) -> np.ndarray:  # fmt: skip
    """A bone along ``pts``: a band of ``width`` px whose cortex (edges) is denser than its core.

    A rib seen on a radiograph is a hollow tube: the path through its cortical shell is longest
    at the edges, so its borders are brighter than its middle.
    """
    outer: np.ndarray = np.zeros(shape, np.float32)
    _curve(outer, pts, int(round(width)))
    outer = cv2.GaussianBlur(outer, (0, 0), 0.7)
    inner: np.ndarray = np.zeros(shape, np.float32)
    _curve(inner, pts, max(1, int(round(width * 0.5))))
    inner = cv2.GaussianBlur(inner, (0, 0), 0.7)
    return (density * outer + cortex * (outer - inner).clip(0.0, None)).astype(np.float32)


def _soft_layer(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, float]]:
    """The soft-tissue attenuation of a PA chest, and the geometry the bones follow."""
    shape = (n, n)
    g = {
        "cx": n * (0.5 + rng.uniform(-0.03, 0.03)),
        "top": n * rng.uniform(0.08, 0.14),
        "width": n * rng.uniform(0.36, 0.44),
        "lung_w": n * rng.uniform(0.15, 0.18),
        "lung_h": n * rng.uniform(0.27, 0.33),
        "lung_cy": n * rng.uniform(0.44, 0.50),
        "gap": n * rng.uniform(0.06, 0.09),
        "tilt": float(rng.uniform(-3.0, 3.0)),
    }
    cx = g["cx"]
    body = _ellipse(shape, cx, n * 0.58, g["width"], n * 0.62, g["tilt"])
    neck = _ellipse(shape, cx, g["top"] * 0.3, n * 0.09, n * 0.16)
    soft = _thickness(np.maximum(body, neck), float(rng.uniform(0.9, 1.2)))
    lungs: np.ndarray = np.zeros(shape, np.float32)
    for side in (-1.0, 1.0):
        lx = cx + side * (g["gap"] + g["lung_w"] * 0.95)
        lung = _ellipse(shape, lx, g["lung_cy"], g["lung_w"], g["lung_h"], side * 6.0 + g["tilt"])
        # The diaphragm dome cuts each lung from below; the costophrenic angle stays sharp.
        dome_y = g["lung_cy"] + g["lung_h"] * rng.uniform(0.75, 0.9)
        dome = _ellipse(shape, lx + side * g["lung_w"] * 0.1, dome_y + g["lung_h"] * 0.55,
                        g["lung_w"] * 1.05, g["lung_h"] * 0.6)  # fmt: skip
        lungs = np.maximum(lungs, np.clip(lung - dome, 0.0, 1.0))
    lungs = cv2.GaussianBlur(lungs, (0, 0), 1.5)
    soft -= lungs * np.float32(rng.uniform(0.45, 0.6)) * (soft > 0.05)
    heart = _ellipse(shape, cx + n * rng.uniform(0.02, 0.06), g["lung_cy"] + n * 0.1,
                     n * rng.uniform(0.11, 0.15), n * rng.uniform(0.1, 0.13), -20.0)  # fmt: skip
    mediastinum = _ellipse(shape, cx, g["lung_cy"] - n * 0.08, g["gap"] * 1.1, g["lung_h"] * 0.9)
    soft += cv2.GaussianBlur(np.maximum(heart, mediastinum), (0, 0), 2.0) * np.float32(0.35)
    for side in (-1.0, 1.0):  # breast shadows, over the lower lung fields
        if rng.random() < 0.6:
            bx = cx + side * (g["gap"] + g["lung_w"] * 1.1)
            breast = _ellipse(shape, bx, g["lung_cy"] + g["lung_h"] * 0.6, g["lung_w"] * 0.9,
                              g["lung_h"] * 0.35)  # fmt: skip
            soft += cv2.GaussianBlur(breast, (0, 0), 6.0) * np.float32(rng.uniform(0.05, 0.15))
    for _ in range(int(rng.integers(0, 4))):  # nodules: what bone suppression must keep
        nx = cx + rng.choice([-1.0, 1.0]) * (g["gap"] + g["lung_w"] * rng.uniform(0.3, 1.6))
        ny = g["lung_cy"] + g["lung_h"] * rng.uniform(-0.6, 0.5)
        r = n * rng.uniform(0.01, 0.03)
        soft += cv2.GaussianBlur(_ellipse(shape, nx, ny, r, r), (0, 0), 1.0) * np.float32(
            rng.uniform(0.08, 0.2))  # fmt: skip
    streaks = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(10, 20))):  # vessels fanning out of the hila
        side = rng.choice([-1.0, 1.0])
        start = np.array([cx + side * g["gap"] * 1.3, g["lung_cy"] - n * 0.02])
        angle = rng.uniform(-1.2, 1.2) + (0.0 if side > 0 else math.pi)
        length = n * rng.uniform(0.08, 0.2)
        end = start + length * np.array([math.cos(angle), math.sin(angle)])
        _curve(streaks, np.stack([start, end]), 1)
    soft += cv2.GaussianBlur(streaks, (0, 0), 0.8) * np.float32(0.05) * (lungs > 0.2)
    return np.clip(soft, 0.0, None).astype(np.float32), g


def _bone_layers(rng: np.random.Generator, n: int, g: dict[str, float]) -> dict[str, np.ndarray]:
    """The bones' attenuations, one layer per :data:`BONES` entry (same size as the image)."""
    shape = (n, n)
    cx, top = g["cx"], g["top"]
    density = float(rng.uniform(0.25, 0.4))
    spine = np.zeros(shape, np.float32)
    step = n * 0.055
    vertebra_w = n * 0.06
    for i in range(16):  # C7 to L2 behind the mediastinum: bodies with denser endplates
        y = top + i * step
        block = np.zeros(shape, np.float32)
        cv2.rectangle(block, (int(cx - vertebra_w / 2), int(y)),
                      (int(cx + vertebra_w / 2), int(y + step * 0.78)), 1.0, -1)  # fmt: skip
        spine += cv2.GaussianBlur(block, (0, 0), 0.8) * np.float32(density * 0.8)
        for side in (-1.0, 1.0):  # pedicles
            ped = _ellipse(shape, cx + side * vertebra_w * 0.32, y + step * 0.35, n * 0.008, n * 0.012)
            spine += ped * np.float32(density * 0.6)
    ribs = np.zeros(shape, np.float32)
    rib_w = n * rng.uniform(0.018, 0.024)
    for i in range(12):
        y0 = top + step * (0.8 + i * 1.0)
        span = g["lung_w"] * (1.0 + 0.6 * math.sin(math.pi * min(i, 8) / 9.0)) + g["gap"]
        for side in (-1.0, 1.0):
            t = np.linspace(0.0, 1.0, 24)
            # Posterior rib: out from the spine, arching up, then down along the chest wall.
            px = cx + side * (vertebra_w * 0.5 + span * 1.15 * np.sin(t * math.pi * 0.62))
            py = y0 - n * 0.03 * np.sin(t * math.pi) + n * 0.09 * t**2
            ribs += _tube(shape, np.stack([px, py], 1), rib_w, density * 0.55, density * 0.5)
            if i < 10:  # anterior rib: fainter, from the chest wall down towards the sternum
                xa = cx + side * (span * 1.05 - span * 0.75 * t)
                ya = y0 + n * 0.12 + n * 0.1 * t
                ribs += _tube(shape, np.stack([xa, ya], 1), rib_w * 0.8, density * 0.25, density * 0.15)
    clavicles = np.zeros(shape, np.float32)
    for side in (-1.0, 1.0):
        t = np.linspace(0.0, 1.0, 20)
        cx_ = cx + side * (g["gap"] * 0.6 + g["lung_w"] * 2.0 * t)
        cy_ = top + n * 0.05 + n * 0.04 * np.sin(t * math.pi * 1.2) - n * 0.03 * t
        clavicles += _tube(shape, np.stack([cx_, cy_], 1), n * 0.028, density * 0.8, density * 0.5)
    scapulae = np.zeros(shape, np.float32)
    for side in (-1.0, 1.0):  # the medial border of each scapula, over the upper lateral lung
        x0 = cx + side * (g["gap"] + g["lung_w"] * 1.6)
        pts = np.stack([np.linspace(x0, x0 - side * n * 0.04, 12),
                        np.linspace(top + n * 0.08, top + n * 0.32, 12)], 1)  # fmt: skip
        scapulae += _tube(shape, pts, n * 0.012, density * 0.35, density * 0.2)
    return {"spine": spine, "ribs": ribs, "clavicles": clavicles, "scapulae": scapulae}


def _expose(image: np.ndarray, gain: float, scale: float, offset: float) -> np.ndarray:
    """Film response: attenuation adds along the ray, the response saturates (display polarity)."""
    return ((1.0 - np.exp(-gain * np.clip(image, 0.0, None))) * scale + offset).astype(np.float32)


def render(seed: int, size: int = DEFAULT_SIZE, noise: bool = True) -> ChestPhantom:
    """Draw the chest phantom of ``seed`` at ``size`` x ``size`` pixels (64 to 2048).

    The same ``seed`` and ``size`` give the same phantom.  ``noise`` adds one detector-noise
    field to both images of the pair (so they differ by the bones alone).  Raises ValueError
    for a size outside 64..2048.
    """
    if not 64 <= int(size) <= 2048:
        raise ValueError(f"size must be 64..2048 pixels, got {size}")
    n = int(size)
    rng = np.random.default_rng(seed)
    soft, geometry = _soft_layer(rng, n)
    layers = _bone_layers(rng, n, geometry)
    # Bones end where the body does (the phantom has no bone in the air around it).
    inside = (soft > 0.02).astype(np.float32)
    layers = {k: (v * inside).astype(np.float32) for k, v in layers.items()}
    bone = np.sum(list(layers.values()), axis=0).astype(np.float32)
    exposure = {"gain": float(rng.uniform(1.1, 1.5)), "scale": float(rng.uniform(0.8, 0.95)),
                "offset": float(rng.uniform(0.0, 0.05))}  # fmt: skip
    radiograph = _expose(soft + bone, **exposure)
    soft_tissue = _expose(soft, **exposure)
    if noise:
        grain = rng.standard_normal((n, n), dtype=np.float32) * np.float32(rng.uniform(0.003, 0.01))
        radiograph, soft_tissue = radiograph + grain, soft_tissue + grain
    return ChestPhantom(seed, np.clip(radiograph, 0.0, 1.0), np.clip(soft_tissue, 0.0, 1.0),
                        soft, bone, layers, exposure)  # fmt: skip


def pairs(seeds: list[int] | range, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``(radiographs, soft_tissue)`` as ``(N, size, size)`` float32 stacks, one per seed."""
    phantoms = [render(s, size) for s in seeds]
    return (np.stack([p.radiograph for p in phantoms]), np.stack([p.soft_tissue for p in phantoms]))


def make_dataset(seed: int, size: int = DEFAULT_SIZE, index: int = 1) -> tuple[Dataset, ChestPhantom]:
    """A DX For Presentation PA chest DICOM of the phantom of ``seed`` (16-bit, MONOCHROME2).

    UIDs derive from ``seed``, so the file is reproducible; Image Comments say it is synthetic.
    """
    phantom = render(seed, size)

    def uid(kind: str) -> UID:
        return UID(generate_uid(entropy_srcs=["edge-worker-chest-phantom", str(seed), kind]))

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(DX_FOR_PRESENTATION)
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    day = (_dt.date(2024, 1, 1) + _dt.timedelta(days=seed % 365)).strftime("%Y%m%d")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = day
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = f"PHC{seed % 10**8:08d}"
    ds.Modality = "DX"
    ds.Manufacturer = "EdgeWorker Phantom"
    ds.PatientName = f"PHANTOM^CHEST^{index}"
    ds.PatientID = f"PHANTOM-C{seed % 10**8:08d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = BODY_PART
    ds.ViewPosition = "PA"
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index
    ds.PatientOrientation = ["R", "F"]
    ds.ImageComments = "SYNTHETIC PHANTOM generated by edge_worker.phantoms.chest; not a patient image"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    spacing = [f"{430.0 / size:.4f}"] * 2  # a 43 cm detector
    ds.ImagerPixelSpacing = ds.PixelSpacing = spacing
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.DetectorType = "SCINTILLATOR"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.WindowCenter, ds.WindowWidth = "32767.5", "65535.0"
    ds.KVP = "120"
    ds.PixelData = (np.round(phantom.radiograph * 65535.0).astype(np.uint16)).tobytes()
    return ds, phantom
