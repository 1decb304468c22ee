"""The committed chest pack (``models/packs/chest``, built by ``edge-export build`` from
``models/recipes/chest.toml``) loads in the worker and reproduces its stated figures.

The held-out images are the pack's own test set (``validation.test_set``: the committed labels
file ``models/recipes/chest-labels.csv`` and its lines, read from ``../shared``); they are judged
again through the worker's ingest and pipeline on ONNX Runtime, exactly as the build measured
them, and every headline figure must come out equal: view accuracy, balanced accuracy and per
class recall, orientation error on the seeded turns, lung Dice, the rules' agreement, the
cut-off detection and false-alarm counts and the shortcut probes.  Out of distribution: the
DEV set's knee and phantom images never come out ``ok``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_worker.packs.pack import load_pack
from export.build.labels import sha256_file

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / "models" / "packs" / "chest"
LABELS = REPO / "models" / "recipes" / "chest-labels.csv"
SHARED = REPO.parent / "shared" / "data"
needs_pack = pytest.mark.skipif(not (PACK / "manifest.json").is_file(), reason=f"{PACK} is absent")
needs_shared = pytest.mark.skipif(not (SHARED / "training" / "chest-multisite").is_dir(),
                                  reason="../shared/data/training is absent")  # fmt: skip
pytestmark = needs_pack


def _manifest() -> dict[str, Any]:
    return json.loads((PACK / "manifest.json").read_text())


def test_pack_loads_with_its_stages_and_says_what_it_is() -> None:
    pack = load_pack(PACK)  # every sha256 and the seal
    assert pack.name == "chest" and pack.body_parts == ("CHEST",) and pack.not_for_clinical_use
    assert [(s.name, s.task) for s in pack.stages] == [
        ("orientation", "orientation"), ("view", "classify"), ("view_cam", "heatmap"),
        ("lungs_pa", "segment"), ("lungs_ap", "segment"), ("coverage_pa", "rules"),
        ("coverage_ap", "rules")]
    assert pack.judged_by == ("coverage_pa", "coverage_ap")
    view = pack.stage("view")
    assert view is not None and view.labels == ("AP", "PA", "LATERAL")
    codes = {r.code for s in pack.stages if s.task == "rules" for r in s.options["rules"]}
    assert codes == {"lung_fields_found", "lung_cut_off_top", "lung_cut_off_bottom",
                     "lung_cut_off_left", "lung_cut_off_right"}
    size = sum(p.stat().st_size for p in PACK.iterdir() if p.is_file())
    assert size < 20 * 1024 * 1024


def test_manifest_records_data_split_licences_and_figures() -> None:
    manifest = _manifest()
    training, validation = manifest["training_data"], manifest["validation"]
    assert training["preset"] == "full" and training["recipe"]["file"] == "chest.toml"
    assert training["labels"]["sha256"] == sha256_file(LABELS)  # the committed labels file
    split = training["split"]
    assert split["by"] == "patient" and split["train"]["images"] + split["test"]["images"] == 647
    assert {"CC BY 3.0", "unknown", "CC BY-NC-SA"} <= set(training["licenses"])
    assert "NOT FOR CLINICAL USE" in manifest["description"]
    chained = validation["pipeline"]
    for key in ("view_accuracy", "balanced_accuracy", "recall", "cut_off", "rules"):
        assert key in chained, key
    assert set(validation["per_stage"]) >= {"orientation", "view", "lungs_pa", "lungs_ap"}
    assert validation["shortcut_check"]["probes"]["unaltered"]["accuracy"] is not None
    assert (PACK / "evaluation.html").is_file() and (PACK / "evaluation.json").is_file()
    # the test set is found from the pack, wherever the repository and ../shared are
    ref = validation["test_set"]
    assert not Path(ref["labels"]).is_absolute() and not Path(ref["data"]).is_absolute()


@pytest.fixture(scope="module")
def remeasured() -> dict[str, Any]:
    from export.build.chain import ORIENTATION_TURNS, worker_pipeline
    from export.build.cutoff import cut_off_figures
    from export.build.label_gate import test_rows
    from export.build.report import figures
    from export.build.segmented import evaluate_segmented, rule_figures
    from export.build.shortcuts import shortcut_figures

    pack = load_pack(PACK)
    rows = test_rows(pack)
    assert rows, "the pack records its test set"
    chain, stages = evaluate_segmented(PACK, rows, ORIENTATION_TURNS)
    figs = figures(chain, stages, ["AP", "PA", "LATERAL"], [])
    figs["chained"]["rules"] = rule_figures(chain)
    pipeline = worker_pipeline(PACK)
    figs["chained"]["cut_off"] = cut_off_figures(pipeline, rows)
    figs["shortcut_check"] = shortcut_figures(pipeline, rows)
    return figs


@pytest.mark.shared
@needs_shared
def test_held_out_figures_reproduce(remeasured: dict[str, Any]) -> None:
    stated = _manifest()["validation"]
    chained, got = stated["pipeline"], remeasured["chained"]
    for key in ("n", "view_accuracy", "balanced_accuracy", "recall"):
        assert got[key] == chained[key], key
    assert got["rules"]["all"] == chained["rules"]["all"]
    assert got["cut_off"]["all"] == chained["cut_off"]["all"]
    for name in ("orientation", "view", "lungs_pa", "lungs_ap"):
        mine = {k: v for k, v in remeasured["per_stage"][name].items() if not isinstance(v, list)}
        theirs = stated["per_stage"][name]
        for key in ("mae_deg", "median_deg", "accuracy", "balanced_accuracy", "dice_mean"):
            if key in theirs:
                assert mine[key] == pytest.approx(theirs[key], abs=1e-3), (name, key)
    assert remeasured["shortcut_check"]["probes"] == stated["shortcut_check"]["probes"]


@pytest.mark.shared
@needs_shared
def test_images_that_are_no_chest_are_never_ok() -> None:
    """Knees and ankle phantoms sent to the chest pack (a wrong route, a mislabelled study):
    a person looks, the pack never calls them fine."""
    from edge_worker.backends import LoadOptions, select
    from edge_worker.pipeline.runner import Pipeline
    from models.chest.ood import ood_cases

    cases = [c for c in ood_cases(SHARED / "radiographs") if c.kind != "chest lateral"]
    assert {c.kind for c in cases} >= {"knee (frontal)", "phantom ankle AP"}
    pipeline = Pipeline(load_pack(PACK), select(["onnxruntime-cpu"]), LoadOptions())
    decisions = {c.file: pipeline.judge(c.image).decision for c in cases}
    assert "ok" not in decisions.values(), decisions


@pytest.mark.shared
@needs_shared
def test_a_lateral_is_never_judged_by_the_frontal_rules() -> None:
    """The DEV set's chest laterals: no lung-field rule is made for them, so never ``ok``."""
    from edge_worker.backends import LoadOptions, select
    from edge_worker.pipeline.runner import Pipeline
    from models.chest.ood import ood_cases

    laterals = [c for c in ood_cases(SHARED / "radiographs", n_phantoms=0) if c.kind == "chest lateral"]
    assert laterals
    pipeline = Pipeline(load_pack(PACK), select(["onnxruntime-cpu"]), LoadOptions())
    for case in laterals:
        judged = pipeline.judge(case.image)
        assert judged.decision != "ok", case.file
        if judged.view.label == "LATERAL":
            assert not {"coverage_pa", "coverage_ap"} & set(judged.results), case.file


def test_an_image_without_lungs_goes_to_a_person() -> None:
    """No lung field found (a blank exposure): the lung rules cannot be checked, so review."""
    import numpy as np

    from edge_worker.backends import LoadOptions, select
    from edge_worker.pipeline.runner import Pipeline

    pipeline = Pipeline(load_pack(PACK), select(["onnxruntime-cpu"]), LoadOptions())
    for image in (np.full((512, 512), 0.5, np.float32), np.zeros((400, 500), np.float32)):
        judged = pipeline.judge(image)
        assert judged.decision == "review", judged.reason_codes
        assert "rules_passed" not in judged.reason_codes
