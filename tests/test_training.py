"""A few steps of every training command on a handful of phantoms, through the real CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_worker.phantoms.ankle import write_dataset
from edge_worker.pipeline.preprocess import box_mask
from models import train
from models.data import example, load_samples, read_csv


@pytest.fixture(scope="module")
def csvs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("phantoms")
    train_csv = write_dataset(root / "train", 12, seed=101, rotation_range=(0.0, 360.0),
                              size=1024)  # fmt: skip
    val_csv = write_dataset(root / "val", 6, seed=202, rotation_range=(0.0, 360.0), size=1024)
    return train_csv, val_csv


@pytest.mark.parametrize(
    ("task", "extra", "ckpt", "metric"),
    [
        ("view", [], "view.pt", "accuracy"),
        ("roi", ["--view", "AP", "--width", "0.125"], "roi_ap.pt", "dice"),
        ("quality", ["--view", "LAT", "--size", "48", "--input-width", "80"], "quality_lat.pt",
         "mae"),
        ("orientation", ["--width", "0.125"], "orientation.pt", "mae_deg"),
    ],
)  # fmt: skip
def test_training_command_writes_a_checkpoint(
    csvs: tuple[Path, Path], tmp_path: Path, task: str, extra: list[str], ckpt: str, metric: str
) -> None:
    train_csv, val_csv = csvs
    argv = [task, "--csv", str(train_csv), "--val-csv", str(val_csv), "--out", str(tmp_path),
            "--steps", "3", "--batch", "2", "--size", "64", "--width", "0.25", *extra]  # fmt: skip
    assert train.main(argv) == 0
    saved = torch.load(tmp_path / ckpt, weights_only=False)
    assert saved["task"] == task and saved["steps"] == 3
    assert metric in saved["metrics"] and np.isfinite(saved["metrics"][metric])
    assert set(saved["input"]) == {"height", "width", "channels", "mean", "std", "resize"}
    assert saved["input"]["resize"] == "stretch"  # the default; ``--resize pad`` pads
    assert saved["state_dict"]


def test_roi_and_quality_need_a_view(csvs: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--view"):
        train.main(["roi", "--csv", str(csvs[0]), "--out", str(tmp_path)])


def test_examples_match_the_labels(csvs: tuple[Path, Path]) -> None:
    samples = load_samples(read_csv(csvs[0]))
    sample = samples[0]
    assert max(sample.working.shape) == 512  # the worker's working size
    x, target = example("roi", sample, 64, 64, None)
    assert x.shape == (1, 64, 64) and target.shape == (1, 64, 64)
    # The target is the ROI box, drawn at the working size and reduced to the input size.
    full = box_mask(sample.working.shape, sample.roi)
    assert abs(target.mean() - full.mean()) < 0.02
    rng = np.random.default_rng(0)
    for task in ("view", "quality", "orientation"):
        x, target = example(task, sample, 48, 80, rng)
        assert x.shape == (1, 48, 80) and np.isfinite(x).all()
    _, angle = example("orientation", sample, 64, 64, None)
    assert angle[0] == pytest.approx(sample.record.rotation_deg)
