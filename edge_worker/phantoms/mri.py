"""A head-like T1-weighted MR phantom: scalp, skull, CSF, grey and white matter, ventricles.

Numpy only (worker side: tests, the bench and the demo write DICOM series from it through
:mod:`edge_worker.phantoms.mri_dicom`; the trainer in ``models/mri`` adds the artifacts).  Every
tissue is a smooth random shape per seed: nested ellipsoids whose radii wobble with low-order
spherical harmonics of the direction, so no two heads are alike but each is anatomically
ordered (scalp outside skull outside CSF outside cortex outside white matter; ventricles and
deep grey nuclei inside).  Intensities follow T1 contrast (white matter brighter than grey,
CSF dark, fat-rich scalp bright, cortical bone dark) in arbitrary scanner units around 0-1000.

Options put in what the quality network must *not* call an artifact: a ``lesion`` (a small
hyperintense or hypointense blob in white matter) and a ``normal variant`` (enlarged or
asymmetric ventricles, a cavum septum pellucidum).  Both are labels of the MIQA network
(paper 002), as things a reviewer sees that are not technical faults.

Coordinates: the volume is ``(z, y, x)`` with ``spacing_mm`` per axis; the head is centred,
about 150 x 180 x 140 mm (x, y, z) scaled by a random factor, so it fits a typical field of
view of 200-256 mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: T1-like mean intensities (scanner units) per tissue.
T1 = {
    "background": 0.0,
    "scalp": 700.0,
    "skull": 120.0,
    "csf": 180.0,
    "grey": 520.0,
    "white": 760.0,
    "deep_grey": 580.0,
}


@dataclass(frozen=True)
class HeadTruth:
    """What was put in a phantom: the options and where the lesion is (voxel centre, or None)."""

    lesion: bool
    normal_variant: bool
    lesion_centre: tuple[int, int, int] | None
    scale: float


def _rng(rng_or_seed: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(int(rng_or_seed))


def _grid(
    shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Millimetre coordinates from the volume's centre, broadcastable ``(z,1,1)``, ``(1,y,1)``, ..."""
    axes = [
        ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * np.float32(s))
        for n, s in zip(shape, spacing_mm)
    ]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


class _Shape:
    """A wobbly ellipsoid: radius(direction) = base radii * (1 + sum of low-order harmonics)."""

    def __init__(self, rng: np.random.Generator, wobble: float) -> None:
        # Coefficients of products of direction cosines up to degree 2 (a cheap harmonic basis).
        self.coef = rng.normal(0.0, wobble, size=9).astype(np.float32)

    def level(
        self, z: np.ndarray, y: np.ndarray, x: np.ndarray, radii: tuple[float, float, float]
    ) -> np.ndarray:
        """``< 1`` inside the shape (a normalised radial distance)."""
        rz, ry, rx = radii
        nz, ny, nx = z / rz, y / ry, x / rx
        r = np.sqrt(nz * nz + ny * ny + nx * nx) + np.float32(1e-6)
        uz, uy, ux = nz / r, ny / r, nx / r
        c = self.coef
        wobble = (c[0] * uz + c[1] * uy + c[2] * ux + c[3] * uz * uy + c[4] * uz * ux
                  + c[5] * uy * ux + c[6] * (uz * uz - uy * uy) + c[7] * (ux * ux - uz * uz)
                  + c[8] * uz * uy * ux)  # fmt: skip
        return r / (np.float32(1.0) + wobble)


def make_head_with_truth(
    rng_or_seed: np.random.Generator | int,
    shape: tuple[int, int, int] = (128, 128, 128),
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5),
    lesion: bool | None = None,
    normal_variant: bool | None = None,
) -> tuple[np.ndarray, HeadTruth]:
    """A T1-like head volume ``(z, y, x)`` float32 and what was put in it.

    ``lesion`` / ``normal_variant``: ``None`` draws each with probability 0.25 from the seed.
    The same seed, shape and spacing always give the same volume (bit for bit).
    """
    rng = _rng(rng_or_seed)
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    if min(shape) < 8:
        raise ValueError(f"shape {shape}: every axis needs at least 8 voxels")
    spacing = (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))
    scale = float(rng.uniform(0.85, 1.1))
    want_lesion = bool(rng.random() < 0.25) if lesion is None else bool(lesion)
    want_variant = bool(rng.random() < 0.25) if normal_variant is None else bool(normal_variant)
    z, y, x = _grid(shape, spacing)
    shift = rng.normal(0.0, 4.0, size=3).astype(np.float32)
    z, y, x = z - shift[0], y - shift[1], x - shift[2]
    # Head radii (mm, z y x): about 70 x 90 x 75, scaled.
    head = tuple(float(r * scale) for r in (70.0, 90.0, 75.0))
    outer = _Shape(rng, 0.04).level(z, y, x, head)  # type: ignore[arg-type]
    brain_shape = _Shape(rng, 0.05)

    def inside(factor: float, level: np.ndarray) -> np.ndarray:
        return level < np.float32(factor)

    vol = np.zeros(shape, np.float32)
    vol[inside(1.0, outer)] = T1["scalp"]
    vol[inside(0.93, outer)] = T1["skull"]
    vol[inside(0.88, outer)] = T1["csf"]
    brain = brain_shape.level(z, y, x, tuple(r * 0.85 for r in head))  # type: ignore[arg-type]
    vol[inside(0.97, brain)] = T1["grey"]
    # White matter: a smaller, differently wobbling core; sulci as a cosine ripple of the cortex.
    ripple = np.float32(0.04) * np.cos(x * np.float32(rng.uniform(0.25, 0.4))) * np.cos(
        y * np.float32(rng.uniform(0.25, 0.4))
    )
    white = _Shape(rng, 0.06).level(z, y, x, tuple(r * 0.72 for r in head))  # type: ignore[arg-type]
    vol[(white + ripple) < np.float32(0.95)] = T1["white"]
    # Deep grey nuclei: two blobs either side of the midline.
    for side in (-1.0, 1.0):
        cx, cy, cz = side * 14.0 * scale, rng.uniform(-4, 4) * scale, rng.uniform(-4, 4) * scale
        d = ((x - cx) / (9 * scale)) ** 2 + ((y - cy) / (12 * scale)) ** 2 + ((z - cz) / (9 * scale)) ** 2
        vol[d < 1.0] = T1["deep_grey"]
    # Ventricles: two lateral horns; a normal variant enlarges or makes them asymmetric.
    grow = (1.0, 1.0)
    if want_variant:
        grow = (float(rng.uniform(1.5, 2.0)), float(rng.uniform(1.5, 2.0))) if rng.random() < 0.5 \
            else (1.0, float(rng.uniform(1.8, 2.4)))  # fmt: skip
    for side, g in zip((-1.0, 1.0), grow):
        cx, cy, cz = side * 6.0 * scale, -4.0 * scale, 8.0 * scale
        d = ((x - cx) / (4.0 * g * scale)) ** 2 + ((y - cy) / (22.0 * scale)) ** 2 \
            + ((z - cz) / (7.0 * g * scale)) ** 2  # fmt: skip
        vol[d < 1.0] = T1["csf"]
    centre = None
    if want_lesion:
        # A white-matter blob (8-14 mm), hyper- or hypointense.
        idx = np.argwhere(vol == T1["white"])
        if len(idx):
            c = idx[int(rng.integers(len(idx)))]
            centre = (int(c[0]), int(c[1]), int(c[2]))
            pz, py, px = z.ravel()[c[0]], y.ravel()[c[1]], x.ravel()[c[2]]
            radius = float(rng.uniform(4.0, 7.0))
            d = ((z - pz) ** 2 + (y - py) ** 2 + (x - px) ** 2) / radius**2
            vol[(d < 1.0) & (vol > T1["csf"])] = float(rng.choice([300.0, 1000.0]))
    # Texture: smooth tissue inhomogeneity of a few percent, then a small thermal noise floor
    # (the trainer adds the noise *artifact* on top of this).
    tex = np.zeros(shape, np.float32)
    for _ in range(4):  # a few random plane waves of 20-60 mm wavelength
        k = rng.normal(size=3).astype(np.float32)
        k *= np.float32(2 * np.pi / rng.uniform(20.0, 60.0)) / np.float32(np.linalg.norm(k))
        tex += np.cos(k[0] * z + k[1] * y + k[2] * x + np.float32(rng.uniform(0, 2 * np.pi)))
    vol *= np.float32(1.0) + np.float32(0.015) * tex
    vol += rng.normal(0.0, 6.0, size=shape).astype(np.float32)
    np.maximum(vol, 0.0, out=vol)
    truth = HeadTruth(want_lesion, want_variant, centre, scale)
    return vol.astype(np.float32, copy=False), truth


def make_head(
    rng_or_seed: np.random.Generator | int,
    shape: tuple[int, int, int] = (128, 128, 128),
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5),
) -> np.ndarray:
    """A T1-like head volume ``(z, y, x)`` float32 (see :func:`make_head_with_truth`)."""
    return make_head_with_truth(rng_or_seed, shape, spacing_mm)[0]
