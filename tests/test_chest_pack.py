"""The committed chest pack loads in the worker and reproduces its stated figures.

The figures are re-measured with ONNX Runtime on the held-out patients' images through the
worker's preprocessing (``models.chest.evaluate``, no torch), and compared with the manifest
and ``evaluation.json`` within a small tolerance (one image of the 48 for the view).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_worker.packs.pack import load_pack
from models.chest.data import LABELS, load_images, patient_split, read_labels
from models.chest.evaluate import load_stages, orientation_figures, softmax, view_figures

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / "models" / "packs" / "chest-views"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = SHARED / "training" / "chest-views"
RADIOGRAPHS = SHARED / "radiographs"
needs_shared = pytest.mark.skipif(not (DATA / "labels.csv").is_file(),
                                  reason=f"{DATA} is absent")  # fmt: skip
ONE_IMAGE = 1.0 / 48 + 1e-9


def _manifest() -> dict:  # type: ignore[type-arg]
    return json.loads((PACK / "manifest.json").read_text())


def _evaluation() -> dict:  # type: ignore[type-arg]
    return json.loads((PACK / "evaluation.json").read_text())


def test_pack_loads_in_the_worker() -> None:
    pack = load_pack(PACK)  # checks every sha256
    assert pack.name == "chest-views" and pack.body_parts == ("CHEST",)
    assert pack.not_for_clinical_use and pack.training_data["kind"] == "real"
    assert [(s.task, s.role) for s in pack.stages] == [("orientation", "orientation"), ("classify", "view")]
    view, orientation = pack.stage("view"), pack.stage("orientation")
    assert view is not None and orientation is not None
    assert view.labels == LABELS and "logits" in view.outputs
    assert "cossin" in orientation.outputs
    assert 0.5 < view.threshold("min_confidence", 0.0) < 1.0
    assert pack.stage("roi", "AP") is None and pack.stage("quality", "PA") is None
    size = sum(p.stat().st_size for p in PACK.iterdir() if p.is_file())
    assert size < 25 * 1024 * 1024


def test_manifest_states_the_figures_and_the_licences() -> None:
    manifest = _manifest()
    validation, training = manifest["validation"], manifest["training_data"]
    for key in (
        "view_accuracy",
        "view_balanced_accuracy",
        "view_confusion",
        "orientation_mae_deg",
        "orientation_median_deg",
        "orientation_four_way_accuracy",
        "shortcut_check",
        "out_of_distribution",
    ):
        assert key in validation, key  # fmt: skip
    assert set(training["licenses"]) == {"CC BY 3.0", "CC BY 4.0"}
    assert "10.6084/m9.figshare.12275009" in training["attribution"]
    split = training["split"]
    assert split["train"]["images"] + split["validation"]["images"] == 190


@pytest.fixture(scope="module")
def validation_set() -> tuple[list[np.ndarray], np.ndarray, list]:  # type: ignore[type-arg]
    split = patient_split(read_labels(DATA), seed=_manifest()["training_data"]["split"]["seed"])
    return load_images(split.val), np.array([r.label for r in split.val]), list(split.val)


@needs_shared
def test_validation_patients_are_the_stated_ones(validation_set: tuple) -> None:  # type: ignore[type-arg]
    _, _, records = validation_set
    stated = _manifest()["training_data"]["split"]["validation_patients"]
    assert sorted({r.patient for r in records}) == stated
    train_patients = {r.patient for r in read_labels(DATA)} - set(stated)
    assert not train_patients & set(stated)


@needs_shared
def test_view_figures_reproduce(validation_set: tuple) -> None:  # type: ignore[type-arg]
    images, labels, _ = validation_set
    stated = _manifest()["validation"]
    probs = softmax(load_stages(PACK)["view"].run(images))
    figures = view_figures(probs, labels)
    assert abs(figures["accuracy"] - stated["view_accuracy"]) <= ONE_IMAGE
    assert abs(figures["balanced_accuracy"] - stated["view_balanced_accuracy"]) <= 0.1 + 1e-9
    diff = sum(abs(figures["confusion"][t][p] - stated["view_confusion"][t][p])
               for t in LABELS for p in LABELS)  # fmt: skip
    assert diff <= 2  # one image moved from one cell to another


@needs_shared
def test_orientation_figures_reproduce(validation_set: tuple) -> None:  # type: ignore[type-arg]
    images, _, _ = validation_set
    stated = _manifest()["validation"]
    figures = orientation_figures(load_stages(PACK)["orientation"], images)
    assert figures["mae_deg"] == pytest.approx(stated["orientation_mae_deg"], abs=0.5)
    assert figures["median_deg"] == pytest.approx(stated["orientation_median_deg"], abs=0.5)
    assert figures["four_way_accuracy"] == pytest.approx(
        stated["orientation_four_way_accuracy"], abs=0.02
    )


@needs_shared
def test_out_of_distribution_table_reproduces() -> None:
    from models.chest.ood import judge, ood_cases

    stated = {row["file"]: row for row in _evaluation()["out_of_distribution"]}
    rows = judge(load_stages(PACK), ood_cases(RADIOGRAPHS if RADIOGRAPHS.is_dir() else None))
    assert rows
    for row in rows:
        expected = stated[str(row["file"])]
        assert row["confidence"] == pytest.approx(expected["confidence"], abs=0.02)
        if abs(float(expected["confidence"]) - _min_confidence()) > 0.02:
            assert row["decision"] == expected["decision"]


def _min_confidence() -> float:
    view = next(s for s in _manifest()["stages"] if s["name"] == "view")
    return float(view["thresholds"]["min_confidence"])
