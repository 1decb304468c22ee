"""A few steps of the chest recipe on a handful of the real images, through export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.onnx import load_checkpoint
from models.chest.data import LABELS, load_images, read_labels
from models.chest.evaluate import load_stages, softmax
from models.chest.pack import export_chest_stage, write_chest_pack
from models.chest.train import StageConfig, patient_weights, stage_loss, train_stage

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "training" / "chest-views"
pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not (DATA / "labels.csv").is_file(), reason=f"{DATA} is absent"),
]


@pytest.fixture(scope="module")
def handful() -> tuple[list, list[np.ndarray]]:  # type: ignore[type-arg]
    """Three AP and three PA images of different patients."""
    records = read_labels(DATA)
    chosen, seen = [], set()
    for view in LABELS:
        for r in records:
            if r.view == view and r.patient not in seen and sum(c.view == view for c in chosen) < 3:
                chosen.append(r)
                seen.add(r.patient)
    return chosen, load_images(chosen)


def test_balanced_sampling_weights(handful: tuple[list, list[np.ndarray]]) -> None:  # type: ignore[type-arg]
    records, _ = handful
    weights = patient_weights(records + records[:1])  # one AP patient with two images
    labels = np.array([r.label for r in records + records[:1]])
    assert weights[labels == 0].sum() == pytest.approx(0.5)
    assert weights[labels == 1].sum() == pytest.approx(0.5)


def test_outlier_exposure_pushes_towards_uniform() -> None:
    config = StageConfig(task="view", steps=1, batch=2, size=32, width=0.25, outliers=1)
    target = torch.tensor([0.0, 1.0])
    uniform = torch.tensor([[4.0, -4.0], [-4.0, 4.0], [0.0, 0.0]])
    confident = torch.tensor([[4.0, -4.0], [-4.0, 4.0], [6.0, -6.0]])
    assert stage_loss(config, uniform, target) < stage_loss(config, confident, target)


def test_the_recipe_trains_exports_and_packs(
    handful: tuple[list, list[np.ndarray]],  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    """Orientation (self-supervised) first, then the view stage fine-tuned from it, as
    ``make_chest_pack`` does; both through the parity gate into a pack the worker loads."""
    records, images = handful
    common = {"steps": 3, "batch": 4, "size": 64, "width": 0.125, "warmup": 1, "workers": 0}
    orient_cfg = StageConfig(task="orientation", **common)  # type: ignore[arg-type]
    orient = train_stage(orient_cfg, images, records, tmp_path / "ckpt", "orientation")
    view_cfg = StageConfig(task="view", outliers=2, outlier_phantoms=2, backbone="resnet",
                           init=str(orient), **common)  # type: ignore[arg-type]  # fmt: skip
    view = train_stage(view_cfg, images, records, tmp_path / "ckpt", "view")
    for ckpt, task in ((view, "view"), (orient, "orientation")):
        loaded = load_checkpoint(ckpt)
        assert loaded.task == task and loaded.meta["steps"] == 3
        assert np.isfinite(loaded.meta["metrics"]["final_loss"])  # type: ignore[index]

    stages = []
    for ckpt, thresholds in ((view, {"min_confidence": 0.9}), (orient, {"min_norm": 0.5})):
        stage, errors = export_chest_stage(ckpt, tmp_path / "onnx", images, thresholds)
        assert all(e < 1e-3 for e in errors.values())
        stages.append(stage)
    assert stages[0].labels == list(LABELS) and "initialised from" in stages[0].architecture
    pack = tmp_path / "pack"
    write_chest_pack(pack, stages, "0.0.1", {"kind": "real"}, {})
    from edge_worker.packs.pack import load_pack

    loaded_pack = load_pack(pack)
    view_spec = loaded_pack.stage("view")
    assert loaded_pack.body_parts == ("CHEST",) and view_spec is not None
    assert view_spec.labels == LABELS and view_spec.threshold("min_confidence", 0) == 0.9
    stage_files = load_stages(pack)
    probs = softmax(stage_files["view"].run(images))
    assert probs.shape == (len(images), 2) and np.allclose(probs.sum(1), 1.0)
    assert stage_files["orientation"].run(images).shape == (len(images), 2)


def test_the_efficientnet_view_stage_still_trains(
    handful: tuple[list, list[np.ndarray]],  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    records, images = handful
    config = StageConfig(task="view", steps=2, batch=2, size=64, width=0.25, outliers=1,
                         outlier_phantoms=1, warmup=1, workers=0)  # fmt: skip
    assert load_checkpoint(train_stage(config, images, records, tmp_path)).arch.task == "view"
