"""Shared geometry: boxes from masks, upright crops, tensors.  Training and serving use these."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_worker.pipeline.preprocess import (
    RotatedBox,
    box_from_points,
    box_mask,
    crop_box,
    mask_to_box,
    normalise_box,
    to_tensor,
    working_image,
)


def test_normalise_box_puts_long_side_horizontal() -> None:
    box = normalise_box(10, 20, 5, 40, 0.0)
    assert (box.width, box.height) == (40, 5)
    assert box.angle_deg == pytest.approx(90.0)
    assert normalise_box(0, 0, 10, 2, 135.0).angle_deg == pytest.approx(-45.0)


def test_mask_to_box_recovers_a_rotated_rectangle() -> None:
    truth = RotatedBox(160.0, 120.0, 120.0, 30.0, 30.0)
    prob = box_mask((240, 320), truth).astype(np.float32) * 0.9
    found = mask_to_box(prob, threshold=0.7, min_area_fraction=0.001)
    assert found is not None
    assert found.cx == pytest.approx(truth.cx, abs=1.5)
    assert found.cy == pytest.approx(truth.cy, abs=1.5)
    assert found.width == pytest.approx(truth.width, abs=3)
    assert found.height == pytest.approx(truth.height, abs=3)
    assert found.angle_deg == pytest.approx(truth.angle_deg, abs=2)


def test_mask_to_box_keeps_largest_region_and_rejects_specks() -> None:
    prob = np.zeros((100, 100), np.float32)
    prob[10:12, 10:12] = 1.0  # a speck
    prob[40:60, 20:80] = 1.0  # the ROI
    box = mask_to_box(prob, 0.7, 0.001)
    assert box is not None and box.width == pytest.approx(60, abs=1)
    assert mask_to_box(prob * 0.5, 0.7, 0.001) is None  # nothing above threshold
    assert mask_to_box(prob, 0.7, 0.5) is None  # region smaller than the minimum


def _box_of_every_pixel(prob: np.ndarray, threshold: float) -> RotatedBox:
    """The definition mask_to_box must keep: the rectangle around all corners of all pixels of
    the largest region (what it computed before it looked at the border only)."""
    binary = (prob > threshold).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    ys, xs = np.nonzero(labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])))
    pts = np.stack([xs, ys], axis=1).astype(np.float32)
    return box_from_points(np.concatenate([pts + np.float32(o) for o in ((0, 0), (1, 0), (0, 1), (1, 1))]))


def test_mask_to_box_from_the_border_equals_the_box_of_every_pixel() -> None:
    """Blobs, holes, diagonal one-pixel chains, noisy maps: the same rectangle either way."""
    rng = np.random.default_rng(7)
    for trial in range(60):
        size = int(rng.integers(20, 400))
        prob = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0),
                                float(rng.uniform(0.5, 12)))  # fmt: skip
        prob = (prob - prob.min()) / (np.ptp(prob) + 1e-6)
        if trial % 5 == 0:  # a diagonal chain, connected only through corners
            prob = np.eye(size, dtype=np.float32)
        threshold = float(rng.uniform(0.3, 0.8))
        found = mask_to_box(prob, threshold, 0.0)
        if found is None:
            continue
        expected = _box_of_every_pixel(prob, threshold)
        np.testing.assert_allclose(np.sort(found.corners(), axis=0),
                                   np.sort(expected.corners(), axis=0), atol=1e-3)  # fmt: skip
        assert found.width * found.height == pytest.approx(expected.width * expected.height, rel=1e-5)


def test_crop_box_returns_the_region_upright() -> None:
    image = np.zeros((200, 300), np.float32)
    image[90:110, 50:250] = 1.0  # a 200x20 horizontal bar
    rotated = cv2.warpAffine(image, cv2.getRotationMatrix2D((150, 100), 60, 1.0), (300, 200))
    box = mask_to_box(rotated, 0.5, 0.001)
    assert box is not None
    crop = crop_box(rotated, box, 20, 100)
    assert crop.shape == (20, 100)
    # Upright means the bar fills the crop: rows and columns are nearly all bright.
    assert crop[2:-2, 5:-5].mean() > 0.9


def test_box_scaled_round_trip() -> None:
    box = RotatedBox(50, 40, 30, 10, 20)
    back = box.scaled(2.0, 2.0).scaled(0.5, 0.5)
    assert back.cx == pytest.approx(50, abs=1e-3) and back.width == pytest.approx(30, abs=1e-3)
    x0, y0, x1, y1 = box.bounds()
    assert x0 < 50 < x1 and y0 < 40 < y1


def test_working_image_and_tensor() -> None:
    big = np.random.default_rng(0).random((3000, 2000), dtype=np.float32)
    work, scale = working_image(big)
    assert max(work.shape) == 512 and scale == pytest.approx(512 / 3000)
    small, s = working_image(np.zeros((100, 80), np.float32))
    assert small.shape == (100, 80) and s == 1.0
    t = to_tensor(np.full((64, 64), 0.75, np.float32), 32, 48, 3, mean=0.5, std=0.25)
    assert t.shape == (1, 3, 32, 48) and t.dtype == np.float32
    assert np.allclose(t, 1.0)
