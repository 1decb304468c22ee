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
        ("coverage_ap", "rules"), ("finding", "classify"), ("finding_cam", "heatmap"),
        ("bone_suppression", "derive")]
    assert pack.judged_by == ("coverage_pa", "coverage_ap")
    # paper 004's extras: research only (never in the decision), the bone suppressor synthetic
    assert {s.name for s in pack.stages if s.research_only} == {"finding", "finding_cam",
                                                                "bone_suppression"}  # fmt: skip
    bone = next(s for s in pack.stages if s.name == "bone_suppression")
    assert bone is not None and bone.training_data["kind"] == "synthetic-phantom"
    view = pack.stage("view")
    assert view is not None and view.labels == ("AP", "PA", "LATERAL")
    codes = {r.code for s in pack.stages if s.task == "rules" for r in s.options["rules"]}
    assert codes == {"lung_fields_found", "lung_cut_off_top", "lung_cut_off_bottom",
                     "lung_cut_off_left", "lung_cut_off_right"}
    size = sum(p.stat().st_size for p in PACK.iterdir() if p.is_file())
    assert size < 60 * 1024 * 1024  # DenseNet-121 (paper 004) is most of it


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
    from export.build.shortcuts import orientation_figures, shortcut_figures

    pack = load_pack(PACK)
    rows = test_rows(pack)
    assert rows, "the pack records its test set"
    chain, stages = evaluate_segmented(PACK, rows, ORIENTATION_TURNS)
    figs = figures(chain, stages, ["AP", "PA", "LATERAL"], [])
    figs["chained"]["rules"] = rule_figures(chain)
    pipeline = worker_pipeline(PACK)
    figs["chained"]["cut_off"] = cut_off_figures(pipeline, rows)
    figs["shortcut_check"] = shortcut_figures(pipeline, rows)
    figs["orientation_check"] = orientation_figures(pipeline, rows, ORIENTATION_TURNS)
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
    # The orientation probes (README): the turned figure is the per-stage one; on images
    # framed as radiographs arrive (a quarter turn of a patient tilted up to 10 deg in a full
    # frame) the stage finds the quadrant of nearly all.
    probe = remeasured["orientation_check"]
    assert probe == stated["shortcut_check"]["orientation"]
    assert probe["turned"]["mean_deg"] == pytest.approx(stated["per_stage"]["orientation"]["mae_deg"], abs=1e-2)
    assert probe["as_stored"]["quadrant_right"] > 0.95


@pytest.mark.shared
@needs_shared
def test_finding_classifier_auc_reproduces_on_the_held_out_patients() -> None:
    """The research-only classifier's AUC (COVID-19 against another finding), measured again
    with ONNX Runtime on the pack's held-out patients as the build measured it in torch."""
    import numpy as np

    from edge_worker.backends import LoadOptions, select
    from export.build.extras import chest_records
    from export.build.label_gate import test_rows
    from models.chest import classifier

    pack = load_pack(PACK)
    stated = _manifest()["validation"]["extras"]["finding"]
    stage = next(s for s in pack.stages if s.name == "finding")
    assert stage is not None and stage.input is not None and stage.file is not None
    rows = test_rows(pack)
    assert rows, "the pack records its test set"
    held = [(r, y) for r in chest_records(rows)
            if (y := classifier.finding_label(r)) is not None]  # fmt: skip
    assert len(held) == stated["test"]["images"]
    session = select(["onnxruntime-cpu"]).load(PACK / stage.file, LoadOptions())
    size = stage.input.height
    x = np.stack([classifier._tensor(classifier._image(r), size) for r, _ in held])
    logits = np.concatenate([session.run(x[i:i + 8])["logits"] for i in range(0, len(x), 8)])
    p = np.exp(logits - logits.max(1, keepdims=True))
    scores = p[:, 1] / p.sum(1)
    auc = classifier.auc(scores, np.array([y for _, y in held]))
    assert auc == pytest.approx(stated["auc_unseen_patients"], abs=2e-3)
    low, high = stated["auc_95ci_patient_bootstrap"]
    assert low <= auc <= high and stated["better_than_chance"] == (low > 0.5)


def test_bone_suppression_error_reproduces_on_unseen_phantoms() -> None:
    """The bone suppressor's MAE / PSNR / SSIM on the unseen phantoms, again through ONNX
    Runtime, and better than passing the image through unchanged."""
    import numpy as np

    from edge_worker.backends import LoadOptions, select
    from models.chest import bone

    pack = load_pack(PACK)
    stated = _manifest()["validation"]["extras"]["bone_suppression"]
    stage = next(s for s in pack.stages if s.name == "bone_suppression")
    assert stage is not None and stage.input is not None and stage.file is not None
    n, size = stated["recipe"]["test_phantoms"], stage.input.height
    x, y = bone.pairs(range(bone.TEST_SEED_START, bone.TEST_SEED_START + n), size)
    session = select(["onnxruntime-cpu"]).load(PACK / stage.file, LoadOptions())
    inputs = ((x[:, None] - bone.MEAN) / bone.STD).astype("float32")
    out = [session.run(inputs[i:i + 8])["soft_tissue"][:, 0] for i in range(0, n, 8)]
    got = bone.metrics(np.concatenate(out), y)
    for key in ("mae", "psnr_db", "ssim"):
        assert got[key] == pytest.approx(stated["network"][key], rel=1e-3), key
    assert stated["better_than_baseline"] and got["mae"] < stated["baseline_output_equals_input"]["mae"]


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
