"""The chest recipe's data side without torch: split, rotation convention, augmentations, probes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.chest.augment import orientation_example, rotate, view_augment
from models.chest.data import LABELS, load_images, patient_split, read_labels
from models.chest.evaluate import angular_error, choose_min_confidence, quarter, view_figures
from models.chest.shortcuts import PROBES, mask_border

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "training" / "chest-views"
needs_shared = pytest.mark.skipif(not (DATA / "labels.csv").is_file(),
                                  reason=f"{DATA} is absent")  # fmt: skip


def _arrow(size: int = 96) -> np.ndarray:
    """A bright bar from the centre to the top edge: 'up' is unambiguous."""
    img = np.zeros((size, size), np.float32)
    img[4 : size // 2, size // 2 - 3 : size // 2 + 3] = 1.0
    return img


def _tip(img: np.ndarray) -> float:
    """Direction (deg, counter-clockwise from up, as displayed) of the bright mass."""
    ys, xs = np.nonzero(img > 0.5)
    cy, cx = (np.array(img.shape) - 1) / 2.0
    # Screen y grows downwards: up is -y, and counter-clockwise from up turns towards -x.
    return float(np.degrees(np.arctan2(-(xs.mean() - cx), -(ys.mean() - cy))) % 360.0)


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 135.0, 270.0, 315.0])
@pytest.mark.parametrize("mode", ["same", "expand"])
def test_rotate_turns_the_anatomy_counter_clockwise(angle: float, mode: str) -> None:
    turned = rotate(_arrow(), angle, mode)
    assert angular_error(np.array([_tip(turned)]), np.array([angle]))[0] < 3.0
    if mode == "same":  # exactly the contract's cv2.getRotationMatrix2D(centre, +angle, 1)
        matrix = cv2.getRotationMatrix2D((47.5, 47.5), angle, 1.0)
        np.testing.assert_allclose(turned, cv2.warpAffine(_arrow(), matrix, (96, 96)), atol=1e-6)


def test_quarter_turns_agree_with_the_warp() -> None:
    img = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    for k in range(4):
        exact = rotate(img, 90.0 * k, "quarter")
        np.testing.assert_allclose(exact[2:-2, 2:-2], rotate(img, 90.0 * k, "same")[2:-2, 2:-2],
                                   atol=1e-5)  # fmt: skip
    with pytest.raises(ValueError):
        rotate(img, 45.0, "quarter")


def test_orientation_example_label_matches_the_picture() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        img, angle = orientation_example(rng, _arrow(128))
        assert 0.0 <= angle < 360.0
        assert img.dtype == np.float32 and img.ndim == 2


def test_view_augment_keeps_range_and_type() -> None:
    rng = np.random.default_rng(1)
    img = np.random.default_rng(2).random((120, 150), dtype=np.float32)
    for _ in range(20):
        out = view_augment(rng, img)
        assert out.dtype == np.float32 and out.ndim == 2
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_figures_and_threshold_rule() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    labels = np.array([0, 0, 1, 1])
    figures = view_figures(probs, labels, 0.65)
    assert figures["accuracy"] == 0.75 and figures["balanced_accuracy"] == 0.75
    assert figures["confusion"] == {"AP": {"AP": 2, "PA": 0}, "PA": {"AP": 1, "PA": 1}}
    assert figures["review_fraction"] == 0.25
    assert 0.6 <= choose_min_confidence(probs, labels) <= 0.97
    assert list(quarter(np.array([44.0, 46.0, 359.0, 200.0]))) == [0, 1, 0, 2]


def test_border_probe_blanks_the_edges_only() -> None:
    img = np.ones((100, 200), np.float32)
    out = mask_border(img, 0.12)
    assert out[:12].max() == 0 and out[:, -24:].max() == 0 and out[50, 100] == 1.0
    assert set(PROBES) >= {"unmasked", "border_12", "border_15", "text_removed"}


@needs_shared
def test_split_is_by_patient_and_keeps_both_views() -> None:
    records = read_labels(DATA)
    split = patient_split(records)
    assert len(split.train) + len(split.val) == len(records) == 190
    assert not {r.patient for r in split.train} & {r.patient for r in split.val}
    for part in (split.train, split.val):
        assert {r.view for r in part} == set(LABELS)
    assert patient_split(records).val == split.val  # seeded: the same every time
    assert 0.2 <= len(split.val) / len(records) <= 0.3


@needs_shared
def test_working_images_are_the_workers() -> None:
    images = load_images(read_labels(DATA)[:3])
    for img in images:
        assert img.dtype == np.float32 and max(img.shape) <= 512
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
