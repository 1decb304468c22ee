"""The MR trainer's parts: artifacts at known strengths, labels, the figures' arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.mri.artifacts import ARTIFACTS, WEIGHTS, apply, labels_of, score_of
from models.mri.data import SHAPE, make_example, tiles_of
from models.mri.network import FLAGS


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return make_example(7, {}, lesion=False, normal_variant=False).volume / 1000.0


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_each_artifact_changes_the_volume_deterministically(clean: np.ndarray, artifact: str) -> None:
    a = apply(clean, {artifact: 0.8}, seed=3)
    b = apply(clean, {artifact: 0.8}, seed=3)
    assert a.shape == clean.shape == SHAPE and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert float(np.abs(a - clean).mean()) > 1e-3, artifact
    weak = apply(clean, {artifact: 0.25}, seed=3)
    assert float(np.abs(weak - clean).mean()) < float(np.abs(a - clean).mean()) * 1.5


def test_labels_follow_the_strengths() -> None:
    assert score_of({}) == 10.0
    assert score_of({"ghosting": 0.5}) == pytest.approx(10.0 - 0.5 * WEIGHTS["ghosting"])
    assert score_of({"ghosting": 1.0, "noise": 1.0}) == 0.0  # clipped
    labels = labels_of({"ghosting": 0.5, "motion": 0.9}, lesion=True, normal_variant=False)
    assert labels.flags["ghosting"] == 1 and labels.flags["lesion"] == 1
    assert sum(labels.flags.values()) == 2  # motion lowers the score but has no flag
    vec = labels.vector()
    assert vec.shape == (1 + len(FLAGS),) and vec[0] == labels.score


def test_tiles_are_the_workers_tiles() -> None:
    e = make_example(8)
    tiles = tiles_of(e.volume)
    assert tiles.shape == (8, 1, 64, 64, 64)  # 80 x 112 x 96 -> 2 x 2 x 2
    jittered = tiles_of(e.volume, np.random.default_rng(0))
    assert jittered.shape == tiles.shape and not np.array_equal(jittered, tiles)


def test_auc_and_r_squared() -> None:
    from models.mri.train import auc, r_squared

    assert auc(np.array([0.1, 0.9, 0.8]), np.array([0, 1, 1])) == 1.0
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert auc(np.array([0.5, 0.5]), np.array([0, 0])) is None
    true = np.array([1.0, 2.0, 3.0])
    assert r_squared(true, true) == 1.0 and r_squared(np.full(3, 2.0), true) == 0.0


@pytest.mark.slow
def test_a_tiny_training_writes_a_pack_with_figures(tmp_path: Path) -> None:
    import json

    from models.mri.train import main

    assert main(["--train", "6", "--val", "2", "--test", "6", "--steps", "4", "--out", str(tmp_path / "p")]) == 0
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert set(manifest["validation"]["flags"]) == set(FLAGS)
    assert manifest["validation"]["parity_max_abs"]["outputs"] < 1e-3
