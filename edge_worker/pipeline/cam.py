"""Class activation maps (Zhou et al. 2016, "Learning Deep Features for Discriminative
Localization") from a classifier's exported last feature map and its linear head.

A classifier whose head is global average pooling followed by one linear layer has
``logit_k = b_k + sum_c W[k, c] * mean_xy f_c(x, y)``, so the map
``M_k(x, y) = b_k + sum_c W[k, c] * f_c(x, y)`` says where the evidence for class ``k`` lies
(its spatial mean is the logit).  The worker reads ``f`` from the ONNX output ``features``
and ``W``, ``b`` from the pack's ``.npz`` (written by ``export.cam``); numpy and OpenCV only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

MIN_PNG_SIZE, MAX_PNG_SIZE = 8, 512


def load_head(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(weight (K, C), bias (K,))`` float32 from the ``.npz`` that ``export.cam`` writes.

    Raises ValueError when the file lacks ``weight`` or ``bias`` or their shapes disagree.
    """
    with np.load(path, allow_pickle=False) as npz:
        missing = {"weight", "bias"} - set(npz.files)
        if missing:
            raise ValueError(f"{path}: CAM head file lacks {sorted(missing)} (has {npz.files})")
        weight, bias = npz["weight"].astype(np.float32), npz["bias"].astype(np.float32)
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise ValueError(f"{path}: weight {weight.shape} and bias {bias.shape} do not form a "
                         "(K, C) head with a (K,) bias")  # fmt: skip
    return weight, bias


def class_activation_maps(
    features: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    classes: Sequence[int],
    out_hw: tuple[int, int],
) -> np.ndarray:
    """CAMs of ``classes`` for every image, ``(N, len(classes), H, W)`` float32 in [0, 1].

    ``features``: ``(N, C, h, w)``, the feature map the head pools; ``weight``: ``(K, C)``;
    ``bias``: ``(K,)``, added so each raw map's mean is the logit, or None for Zhou et al.'s
    bias-free map (the two differ only where the ReLU cuts); ``out_hw``: ``(H, W)``.
    Each map is weighted at the feature resolution, upsampled bilinearly (half-pixel
    centres, as torch's ``align_corners=False``), passed through a ReLU and divided by its
    maximum, so its peak is 1; a map with no positive value stays all zero.
    Raises ValueError naming the shapes when they do not fit together, for a class outside
    ``0..K-1``, or for non-finite features.
    """
    features = np.asarray(features)
    weight = np.asarray(weight)
    if features.ndim != 4:
        raise ValueError(f"features must be (N, C, h, w), got shape {features.shape}")
    if weight.ndim != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(f"weight must be (K, C) with C = {features.shape[1]} (features "
                         f"{features.shape}), got shape {weight.shape}")  # fmt: skip
    k = weight.shape[0]
    if bias is not None and np.shape(bias) != (k,):
        raise ValueError(f"bias must be ({k},) for weight {weight.shape}, got {np.shape(bias)}")
    if len(out_hw) != 2 or min(int(v) for v in out_hw) < 1:
        raise ValueError(f"out_hw must be two positive sizes (H, W), got {out_hw}")
    index = [int(c) for c in classes]
    if not index or any(not 0 <= c < k for c in index):
        raise ValueError(f"classes must be a non-empty list in 0..{k - 1}, got {list(classes)}")
    if not np.isfinite(features).all():
        raise ValueError(f"features {features.shape} hold non-finite values")
    n = features.shape[0]
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    chosen = weight[index].astype(np.float32)
    raw = np.einsum("kc,nchw->nkhw", chosen, features.astype(np.float32))
    if bias is not None:
        raw += np.asarray(bias, np.float32)[index][None, :, None, None]
    # Bilinear interpolation is linear, so weighting before upsampling gives the same map as
    # upsampling every channel first, at a fraction of the cost.
    maps = np.empty((n, len(index), out_h, out_w), np.float32)
    for i in range(n):
        for j in range(len(index)):
            maps[i, j] = cv2.resize(raw[i, j], (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    np.maximum(maps, 0.0, out=maps)
    peaks = maps.max(axis=(2, 3), keepdims=True)
    np.divide(maps, peaks, out=maps, where=peaks > 0)
    return maps


def _check_map(cam: np.ndarray) -> np.ndarray:
    cam = np.asarray(cam)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"expected one non-empty 2-D map (H, W), got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise ValueError(f"map {cam.shape} holds non-finite values")
    return cam


def peak(cam: np.ndarray) -> tuple[int, int, float]:
    """``(x, y, value)`` of a 2-D map's maximum: column, row (pixels) and the value there.

    The first maximum in row-major order wins; an all-zero map gives ``(0, 0, 0.0)``, so a
    value of 0 means there is no peak.
    """
    cam = _check_map(cam)
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(x), int(y), float(cam[y, x])


def to_uint8_png(cam: np.ndarray, size: int = 64) -> bytes:
    """A greyscale 8-bit PNG of a map in [0, 1] (0 black, 1 white), longer side ``size`` px.

    The aspect ratio is kept.  Grey rather than a colour map so that whoever draws the overlay
    (dashboard, review) picks the colours and the transparency.  Raises ValueError for a size
    outside 8..512 or a map that is not 2-D.
    """
    cam = _check_map(cam)
    if not MIN_PNG_SIZE <= size <= MAX_PNG_SIZE:
        raise ValueError(f"PNG size {size} is outside {MIN_PNG_SIZE}..{MAX_PNG_SIZE}")
    scale = size / float(max(cam.shape))
    out_w, out_h = max(1, round(cam.shape[1] * scale)), max(1, round(cam.shape[0] * scale))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    small = cv2.resize(cam.astype(np.float32), (out_w, out_h), interpolation=interp)
    grey = (np.clip(small, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    ok, png = cv2.imencode(".png", grey, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:  # OpenCV reports failure by value; a uint8 grey image should always encode
        raise ValueError("OpenCV could not encode the map as PNG")
    return png.tobytes()


def summary(cam: np.ndarray, threshold: float = 0.5) -> dict[str, float | None]:
    """What a verdict says about one map in [0, 1].

    Returns ``peak_x``, ``peak_y`` (the peak pixel's centre as fractions of the width and
    height, so they do not depend on the map's resolution; None for an all-zero map),
    ``peak_value``, and ``area_fraction``: the share of pixels ``>= threshold``.
    ``threshold`` must lie in (0, 1], so a non-zero normalised map always has some area.
    """
    cam = _check_map(cam)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is outside (0, 1]")
    x, y, value = peak(cam)
    h, w = cam.shape
    found = value > 0.0
    return {
        "peak_x": (x + 0.5) / w if found else None,
        "peak_y": (y + 0.5) / h if found else None,
        "peak_value": value,
        "area_fraction": float(np.count_nonzero(cam >= threshold)) / cam.size,
    }
