"""MR artifacts at known strengths, and the labels they imply (overall quality 0-10, ten flags).

TorchIO simulates the k-space and field artifacts (paper 002 trains MIQA on real scans; we
have none, so every label here comes from a strength we chose):

==================== ============================================ ====================
artifact             how                                          flag
==================== ============================================ ====================
ghosting             ``tio.RandomGhosting`` (phase axis y)         ghosting
motion               ``tio.RandomMotion``                         (score only)
bias field           ``tio.RandomBiasField``                      inhomogeneity
spike                ``tio.Spike`` (one spike, random position)   (score only)
noise                ``tio.RandomNoise``                          (score only)
misalignment         ``tio.RandomAffine`` (a large head tilt)      misalignment
wraparound           fold the parts outside a smaller phase FOV   wraparound
truncation (Gibbs)   keep the centre of k-space along one axis    truncation
incomplete coverage  blank slabs at the top or bottom of the head incomplete_coverage
susceptibility       a signal void with a bright, shifted rim     susceptibility
                     near the skull base (simple, not physical)
flow                 a bright vessel and its ghosts along y       flow
==================== ============================================ ====================

``lesion`` and ``normal_variant`` come from the phantom (:mod:`edge_worker.phantoms.mri`):
flags a reviewer wants, which do not lower the technical quality.

The score is ``10 - sum(weight * strength)`` over the artifacts present, clipped to [0, 10];
each strength is in [0, 1] (0: absent) and maps to each transform's parameters linearly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torchio as tio

from models.mri.network import FLAGS, SCORE_MAX

#: Penalty on the 0-10 score of each artifact at strength 1.
WEIGHTS = {
    "ghosting": 6.0, "motion": 6.0, "inhomogeneity": 4.0, "spike": 5.0, "noise": 6.0,
    "misalignment": 4.0, "wraparound": 5.0, "truncation": 5.0, "incomplete_coverage": 6.0,
    "susceptibility": 5.0, "flow": 4.0,
}  # fmt: skip
ARTIFACTS = tuple(WEIGHTS)
#: The phase-encoding axis of the (z, y, x) volume (ghosts, wraparound and flow go along it).
PHASE_AXIS = 1


@dataclass(frozen=True)
class Labels:
    """A volume's targets: the score and each flag (0 or 1), plus the strengths behind them."""

    score: float
    flags: dict[str, int]
    strengths: dict[str, float] = field(default_factory=dict)

    def vector(self) -> np.ndarray:
        """``(1 + flags)`` float32: the score then the flags in :data:`FLAGS` order."""
        return np.array([self.score, *(self.flags[f] for f in FLAGS)], np.float32)


def score_of(strengths: dict[str, float]) -> float:
    """``10 - sum(weight * strength)``, clipped to [0, 10]."""
    penalty = sum(WEIGHTS[a] * float(s) for a, s in strengths.items())
    return float(min(max(SCORE_MAX - penalty, 0.0), SCORE_MAX))


def _tio(transform: tio.Transform, vol: np.ndarray) -> np.ndarray:
    image = tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(vol))[None])
    return transform(image).data[0].numpy().astype(np.float32)


def _wraparound(vol: np.ndarray, s: float) -> np.ndarray:
    """Shrink the phase FOV by 10-30 % of the head's extent; what falls outside folds back in."""
    n = vol.shape[PHASE_AXIS]
    cut = max(2, int(round(n * (0.08 + 0.2 * s))))
    moved = np.moveaxis(vol, PHASE_AXIS, 0)
    inner = moved[cut // 2 : n - (cut - cut // 2)].copy()
    lo, hi = moved[: cut // 2], moved[n - (cut - cut // 2) :]
    inner[-len(lo) :] += lo if len(lo) else 0.0  # the top beyond the FOV appears at the bottom
    inner[: len(hi)] += hi if len(hi) else 0.0
    out = np.zeros_like(moved)
    out[cut // 2 : cut // 2 + len(inner)] = inner  # keep the shape: the rest is outside the FOV
    # The folded volume is what the scanner shows over its (smaller) FOV: stretch it back.
    idx = np.linspace(cut // 2, cut // 2 + len(inner) - 1, n).round().astype(int)
    return np.moveaxis(out[idx], 0, PHASE_AXIS).copy()


def _truncation(vol: np.ndarray, s: float, axis: int) -> np.ndarray:
    """Keep only the central 25-50 % of k-space along ``axis``: ringing at edges (Gibbs)."""
    k = np.fft.fftshift(np.fft.fftn(vol), axes=axis)
    n = vol.shape[axis]
    keep = max(4, int(round(n * (0.6 - 0.35 * s))))
    mask_shape = [1, 1, 1]
    mask_shape[axis] = n
    mask = np.zeros(n, np.float32)
    mask[n // 2 - keep // 2 : n // 2 - keep // 2 + keep] = 1.0
    k *= mask.reshape(mask_shape)
    return np.abs(np.fft.ifftn(np.fft.ifftshift(k, axes=axis))).astype(np.float32)


def _incomplete(vol: np.ndarray, s: float, top: bool) -> np.ndarray:
    """Blank the slabs holding 15-45 % of the head's z extent, at its top or bottom."""
    rows = np.nonzero(vol.reshape(vol.shape[0], -1).max(axis=1) > 0.05)[0]
    if len(rows) < 4:
        return vol
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    width = int(round((hi - lo) * (0.15 + 0.3 * s)))
    out = vol.copy()
    if top:
        out[hi - width : hi] = 0.0
    else:
        out[lo : lo + width] = 0.0
    return out


def _susceptibility(vol: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """A signal void near the skull base/frontal sinus with a bright pile-up rim beside it."""
    nz, ny, nx = vol.shape
    z, y, x = np.ogrid[:nz, :ny, :nx]
    cz, cy, cx = nz * rng.uniform(0.25, 0.4), ny * rng.uniform(0.15, 0.3), nx * rng.uniform(0.35, 0.65)
    r = 3.0 + 7.0 * s
    d = ((z - cz) / r) ** 2 + ((y - cy) / (1.4 * r)) ** 2 + ((x - cx) / r) ** 2
    void = np.exp(-d * 2.0).astype(np.float32)
    rim = np.exp(-((z - cz) / r) ** 2 - ((y - cy - 1.6 * r) / (0.5 * r)) ** 2 - ((x - cx) / r) ** 2)
    return (vol * (1.0 - 0.95 * void) + (0.6 + 0.8 * s) * rim.astype(np.float32) * (vol > 0.05)).astype(np.float32)


def _flow(vol: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """A bright vessel (along z) and its periodic ghosts along the phase axis (pulsatile flow)."""
    nz, ny, nx = vol.shape
    _, y, x = np.ogrid[:nz, :ny, :nx]
    cy, cx = ny * rng.uniform(0.55, 0.7), nx * rng.uniform(0.4, 0.6)
    vessel = np.exp(-(((y - cy) / 1.5) ** 2) - ((x - cx) / 1.5) ** 2).astype(np.float32)
    out = vol + 1.2 * np.broadcast_to(vessel, vol.shape)
    ghosts = int(rng.integers(3, 6))
    for g in range(1, ghosts + 1):
        shift = int(round(g * ny / (ghosts + 1)))
        out += (0.25 + 0.5 * s) * np.roll(np.broadcast_to(vessel, vol.shape), shift, axis=1) / g**0.5
    return out.astype(np.float32)


def apply(vol: np.ndarray, strengths: dict[str, float], seed: int) -> np.ndarray:
    """``vol`` (z, y, x, about 0-1) with each artifact of ``strengths`` (> 0) applied, in a fixed
    order (geometry first, then the field, then k-space, then noise)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    s = {a: float(strengths.get(a, 0.0)) for a in ARTIFACTS}
    out = vol.astype(np.float32, copy=True)
    if s["misalignment"]:
        d = 12.0 + 23.0 * s["misalignment"]
        sign = float(rng.choice([-1.0, 1.0]))
        axes = [0.0, 0.0, 0.0]
        axes[int(rng.integers(3))] = sign * d
        out = _tio(tio.RandomAffine(scales=0, degrees=(axes[0], axes[0], axes[1], axes[1], axes[2], axes[2]),
                                    default_pad_value=0.0), out)  # fmt: skip
    if s["incomplete_coverage"]:
        out = _incomplete(out, s["incomplete_coverage"], bool(rng.random() < 0.5))
    if s["flow"]:
        out = _flow(out, s["flow"], rng)
    if s["susceptibility"]:
        out = _susceptibility(out, s["susceptibility"], rng)
    if s["inhomogeneity"]:
        c = 0.25 + 0.6 * s["inhomogeneity"]
        out = _tio(tio.RandomBiasField(coefficients=(-c, c), order=3), out)
    if s["wraparound"]:
        out = _wraparound(out, s["wraparound"])
    if s["motion"]:
        m = s["motion"]
        out = _tio(tio.RandomMotion(degrees=(2.0 + 8.0 * m), translation=(2.0 + 8.0 * m), num_transforms=2), out)
    if s["ghosting"]:
        g = s["ghosting"]
        out = _tio(tio.RandomGhosting(num_ghosts=(2, 6), axes=(PHASE_AXIS,), intensity=(0.3 + 0.7 * g, 0.3 + 0.7 * g)), out)
    if s["spike"]:
        # tio.Spike with our own position: tio.RandomSpike (1.2.1) left some volumes unchanged.
        out = _tio(tio.Spike(rng.random((1, 3)), 0.1 + 0.4 * s["spike"]), out)
    if s["truncation"]:
        out = _truncation(out, s["truncation"], int(rng.integers(1, 3)))
    if s["noise"]:
        out = _tio(tio.RandomNoise(std=(0.02 + 0.1 * s["noise"],) * 2), out)
        out = np.abs(out)  # magnitude images: Rician-like, never negative
    return out.astype(np.float32)


def draw_strengths(rng: np.random.Generator, clean_fraction: float = 0.25) -> dict[str, float]:
    """None (``clean_fraction`` of volumes) or one to two artifacts at strengths in [0.25, 1]."""
    if rng.random() < clean_fraction:
        return {}
    picks = rng.choice(len(ARTIFACTS), size=int(rng.integers(1, 3)), replace=False)
    return {ARTIFACTS[int(i)]: float(rng.uniform(0.25, 1.0)) for i in picks}


def labels_of(strengths: dict[str, float], lesion: bool, normal_variant: bool) -> Labels:
    """The score and the ten flags for a volume with these artifacts and phantom options."""
    flags = {f: int(strengths.get(f, 0.0) > 0.0) for f in FLAGS}
    flags["lesion"], flags["normal_variant"] = int(lesion), int(normal_variant)
    return Labels(score_of(strengths), flags, dict(strengths))
