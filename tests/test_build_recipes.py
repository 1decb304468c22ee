"""CI smoke runs of the shipped recipes: the one ``edge-export build`` command, ``--preset short``.

Each test runs the command as a person would (a subprocess of ``python -m export.cli build``)
on (a) ankle phantoms, (b) lumbar phantoms with class-index mask files and rules, (c) a small
patient-disjoint subset of the real chest images of ``../shared/data/training`` (skipped
where it is absent), then checks what a site would rely on: the pack loads in the worker
(sha256 and seal verified), it judges a held-out image through ONNX Runtime (``edge-worker
analyze`` for DICOM; the worker's ``Pipeline`` for the chest PNGs, which ``analyze`` does not
read), and the manifest carries the split by patient, the labels' sha256, the licences and the
figures.  ``tests/test_build.py`` covers refusals, the split, resume after a kill and the
label gate; nothing of that is repeated here.  The figures of a short build mean nothing
(tiny networks, a few steps): only the machinery is checked, never an accuracy.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edge_worker.packs.pack import Pack, load_pack
from export.build.labels import sha256_file

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "models" / "recipes"
TRAINING = ROOT.parent / "shared" / "data" / "training"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
#: A short build's wall-clock limit: far above its 1-3 minutes, below a hung run's forever.
LIMIT_S = 600


def _build(recipe: Path, data: Path, labels: Path, out: Path,
           *more: str) -> subprocess.CompletedProcess[str]:  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "export.cli", "build", "--recipe", str(recipe),
                           "--data", str(data), "--labels", str(labels), "--out", str(out),
                           "--preset", "short", *more], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=LIMIT_S, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _held_out(pack: Pack, labels: Path) -> list[dict[str, str]]:
    """The labels rows of the pack's held-out images (``validation.test_set.lines``)."""
    lines = set(pack.validation["test_set"]["lines"])
    with labels.open(newline="") as handle:
        return [row for i, row in enumerate(csv.DictReader(handle)) if i + 2 in lines]


def _check_manifest(pack: Pack, labels: Path, n_images: int, licences: dict[str, int]) -> None:
    training = pack.training_data
    assert training["preset"] == "short" and pack.name.endswith("-smoke")
    manifest = json.loads((pack.root / "manifest.json").read_text())
    assert manifest["description"].startswith("SMOKE BUILD") and manifest["version"].endswith("-smoke")
    assert training["labels"]["sha256"] == sha256_file(labels)
    assert training["licenses"] == licences
    split = training["split"]
    assert split["by"] == "patient" and split["seed"] == 20261203
    assert split["train"]["images"] + split["test"]["images"] == n_images
    assert split["test"]["patients"] >= 1 and split["train"]["patients"] >= 1
    chained = pack.validation["pipeline"]
    assert chained["n"] == split["test"]["images"] == len(pack.validation["test_set"]["lines"])
    assert 0.0 <= chained["view_accuracy"] <= 1.0
    assert sum(map(sum, chained["view_confusion"]["matrix"])) == chained["n"]
    assert set(pack.validation["per_stage"]) <= {s.name for s in pack.networks}
    assert (pack.root / "evaluation.html").is_file() and (pack.root / "evaluation.json").is_file()


def _analyze(pack_dir: Path, files: list[Path]) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "edge_worker.cli", "analyze", "--json", "--pack",
                          str(pack_dir), *map(str, files)], cwd=ROOT, env=ENV, check=True,
                         capture_output=True, text=True, timeout=LIMIT_S).stdout  # fmt: skip
    return [json.loads(line) for line in out.splitlines()]


def test_short_ankle_build_from_the_one_command_is_judged_by_the_worker(tmp_path: Path) -> None:
    from edge_worker.phantoms.ankle import write_dataset

    data = tmp_path / "data"
    labels = write_dataset(data, 24, seed=4242, rotation_range=(0.0, 360.0), size=512)
    out = tmp_path / "pack"
    _build(RECIPES / "ankle.toml", data, labels, out, "--work", str(tmp_path / "work"))

    pack = load_pack(out)
    _check_manifest(pack, labels, 24, {"CC0-1.0": 24})
    # The ankle paper's layout: view, ROI and quality padded (the phantoms are portrait).
    layout = {s.name: s.input.resize for s in pack.networks if s.input is not None}
    assert layout == {"orientation": "stretch", "view": "pad", "roi_ap": "pad", "roi_lat": "pad",
                      "quality_ap": "pad", "quality_lat": "pad"}
    assert [(s.name, s.reads) for s in pack.stages if s.task == "heatmap"] == [
        ("view_cam", {"classifier": "view"})]
    chained = pack.validation["pipeline"]
    assert chained["grade3_decided_ok"] >= 0 and "grade_confusion" in chained
    held = _held_out(pack, labels)
    verdicts = _analyze(out, [data / r["file"] for r in held[:2]])
    for row, verdict in zip(held, verdicts):
        assert verdict["kind"] == "verdict" and verdict["pack"]["name"] == "ankle-demo-smoke"
        assert verdict["view"]["label"] in ("AP", "LAT") and verdict["orientation"] is not None
        # every built view classifier has its heatmap stage; the verdict names the mapped view
        assert list(verdict["heatmaps"]) == [verdict["view"]["label"]]
        assert verdict["decision"] in ("ok", "review", "retake"), row
    # The straightforward torch pipeline (edge-worker bench's comparison) runs the padded
    # stages from the build's checkpoints (tests/test_pad_input.py checks its layout).
    from models.baseline.naive import Naive

    naive = Naive(out, tmp_path / "work" / "checkpoints")
    for row, verdict in zip(held, verdicts):
        theirs = naive.judge(data / row["file"])
        assert theirs["view"] in ("AP", "LAT") and theirs["decision"] in ("ok", "review", "retake")
        assert theirs["times_ms"]["net:view"] > 0


def test_short_lumbar_build_segments_with_named_classes_and_judges_by_its_rules(tmp_path: Path) -> None:
    from models.lumbar.rules import RULES
    from models.recipes.make_lumbar_data import write_lumbar_build_data

    data = tmp_path / "data"
    labels = write_lumbar_build_data(data, 24, seed=7)
    out = tmp_path / "pack"
    proc = _build(RECIPES / "lumbar.toml", data, labels, out)
    assert "rule agreement" in proc.stdout

    pack = load_pack(out)
    _check_manifest(pack, labels, 24, {"CC0-1.0": 24})
    assert [(s.name, s.task) for s in pack.stages] == [
        ("view", "classify"), ("view_cam", "heatmap"), ("seg_ap", "segment"), ("seg_lat", "segment"),
        ("seg_obl", "segment"), ("rules_ap", "rules"), ("rules_lat", "rules"), ("rules_obl", "rules")]
    seg_ap = next(s for s in pack.stages if s.name == "seg_ap")
    assert seg_ap.options["classes"][:2] == ("background", "body") and seg_ap.options["activation"] == "softmax"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["decision"] == {"judged_by": ["rules_ap", "rules_lat", "rules_obl"]}
    declared = {s["name"]: s["rules"] for s in manifest["stages"] if s["task"] == "rules"}
    assert declared == {f"rules_{v.lower()}": RULES[v] for v in RULES}  # the lumbar pack's rules
    v = pack.validation
    rules = v["pipeline"]["rules"]
    # Every held-out image's true-view rules are compared: AP has 4 rules, LAT and OBL 3.
    per_view = {"AP": 4, "LAT": 3, "OBL": 3}
    assert rules["all"]["n"] == sum(per_view[r["view"]] for r in _held_out(pack, labels))
    assert 0.0 <= rules["all"]["agreement"] <= 1.0 and set(rules["per_rule"]) <= {
        r["code"] for rs in RULES.values() for r in rs}
    for name in ("seg_ap", "seg_lat", "seg_obl"):
        stage = v["per_stage"][name]
        assert stage["n"] >= 1 and 0.0 <= stage["dice_mean"] <= 1.0
        assert set(stage["dice_per_class"]) <= set(next(s for s in pack.stages if s.name == name)
                                                   .options["classes"][1:])
    report = json.loads((out / "evaluation.json").read_text())
    assert len(report["figures"]["per_stage"]["seg_ap"]["dice"]) == v["per_stage"]["seg_ap"]["n"]
    page = (out / "evaluation.html").read_text()
    assert "Dice histogram" in page and "agreement" in page

    # The label gate of a rules pack: the bundled lumbar-demo pack against itself passes; this
    # smoke pack (same stages and classes, 30 training steps) as its "copy" agrees far less with
    # the rules on the labelled masks and is refused.
    from export.build.label_gate import label_gate
    from export.build.labels import read_labels
    from export.build.recipe import load_recipe

    accepted = read_labels(labels, data, load_recipe(RECIPES / "lumbar.toml", "short")).rows
    demo = ROOT / "models" / "packs" / "lumbar-demo"
    assert label_gate(demo, demo, accepted)["accepted"]
    gate = label_gate(demo, out, accepted)
    assert not gate["accepted"] and "rule_agreement" in gate["failed"], gate

    held = _held_out(pack, labels)[0]
    (verdict,) = _analyze(out, [data / held["file"]])
    assert verdict["kind"] == "verdict" and verdict["pack"]["name"] == "lumbar-demo-smoke"
    assert verdict["decision"] in ("ok", "review", "retake")
    # Every view has a segmenter: the rules of the view the pack saw were measured (or the
    # verdict says why one could not be), each with its textbook criterion.
    outcomes = verdict["rules"]
    assert len(outcomes) == per_view[verdict["view"]["label"]]
    assert all(r["status"] in ("pass", "fail", "not_measurable") for r in outcomes)
    assert all(r["criterion"].startswith("Bontrager") for r in outcomes)


needs_chest = pytest.mark.skipif(not (TRAINING / "chest-multisite" / "labels.csv").is_file()
                                 or not (TRAINING / "chest-views" / "labels.csv").is_file(),
                                 reason="../shared/data/training (real chest images) is absent")  # fmt: skip


@pytest.mark.shared
@needs_chest
def test_chest_labels_script_keeps_patients_licences_and_sites(tmp_path: Path) -> None:
    from models.chest.multisite import read_records
    from models.recipes.chest_labels import write_labels

    out = tmp_path / "labels.csv"
    facts = write_labels(TRAINING, out)
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    records = read_records(TRAINING)
    dev = {r.path.relative_to(TRAINING).as_posix() for r in records if r.dev}
    assert len(rows) == facts["images"] == len(records) - len(dev)
    assert not {r["file"] for r in rows} & dev  # DEV-set patients never train
    assert {r["view"] for r in rows} == {"AP", "PA", "LATERAL"}
    supine = [r for r in rows if r["raw_view"] == "AP_SUPINE"]
    assert supine and all(r["view"] == "AP" for r in supine)
    assert all(r["patient_key"].startswith(("hannover:", "cohen:")) for r in rows)
    assert {"CC BY 3.0", "unknown"} <= {r["license"] for r in rows}
    assert all((TRAINING / r["file"]).is_file() and r["rotation_deg"] == "0" for r in rows)
    assert any(r["site"] == "Hannover Medical School, Hannover, Germany" for r in rows)


@pytest.mark.shared
@needs_chest
def test_short_chest_build_on_a_real_subset_judges_a_held_out_image(tmp_path: Path) -> None:
    import cv2

    from edge_worker.backends import LoadOptions, select
    from edge_worker.pipeline.runner import Pipeline
    from models.recipes.chest_labels import write_labels

    labels = tmp_path / "labels.csv"
    facts = write_labels(TRAINING, labels, patients_per_view=5, images_per_patient=2)
    with labels.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    out = tmp_path / "pack"
    _build(RECIPES / "chest.toml", TRAINING, labels, out)

    pack = load_pack(out)
    _check_manifest(pack, labels, len(rows), dict(Counter(r["license"] for r in rows)))
    assert facts["licenses"] == pack.training_data["licenses"]
    assert [(s.name, s.task) for s in pack.stages] == [
        ("orientation", "orientation"), ("view", "classify"), ("view_cam", "heatmap"),
        ("lungs_pa", "segment"),
        ("lungs_ap", "segment"), ("coverage_pa", "rules"), ("coverage_ap", "rules"),
        ("finding", "classify"), ("finding_cam", "heatmap"), ("bone_suppression", "derive")]
    assert pack.judged_by == ("coverage_pa", "coverage_ap")  # a lateral is not judged: review
    # Paper 004's extras: research only, on frontal images, figures in the manifest
    extras = {s.name: s for s in pack.stages if s.research_only}
    assert set(extras) == {"finding", "finding_cam", "bone_suppression"}
    assert extras["bone_suppression"].training_data["kind"] == "synthetic-phantom"
    figures = pack.validation["extras"]
    assert figures["finding"]["test"]["images"] + figures["finding"]["train"]["images"] == sum(
        1 for r in rows if r["view"] != "LATERAL" and r["finding"] and r["finding"] != "todo")
    assert set(figures["bone_suppression"]["network"]) == {"mae", "psnr_db", "ssim"}
    # the classifier also scored as the worker runs it: every held-out labelled image, run or not
    worker = figures["finding"]["through_worker"]
    assert worker["images"] + worker["not_run"] == figures["finding"]["test"]["images"]
    view = next(s for s in pack.stages if s.name == "view")
    assert view.labels == ("AP", "PA", "LATERAL")
    assert pack.training_data["labels"]["ignored_columns"] == ["site", "source", "raw_view"]
    assert "grade_accuracy" not in pack.validation["pipeline"]
    # The lung segmenters trained on the rows with a mask (the subset puts those first); the
    # edge rules were measured on held-out masked images, uncut and cut on every side.
    masked = [r for r in rows if r["mask"]]
    assert masked and all(r["view"] in ("PA", "AP") for r in masked)
    cut = pack.validation["pipeline"]["cut_off"]["all"]
    assert cut["cropped"] >= 4 and 0 <= cut["detected"] <= cut["cropped"]
    assert cut["not_ok"] <= cut["cropped"] and 0 <= cut["false_alarms"] <= cut["uncropped"]
    assert set(pack.validation["per_stage"]) >= {"lungs_pa", "lungs_ap"}
    # The orientation probes, on the per-stage figure's turns
    probe = pack.validation["shortcut_check"]["orientation"]
    assert probe["n"] == pack.validation["per_stage"]["orientation"]["n"]
    assert probe["turned"]["mean_deg"] == pytest.approx(
        pack.validation["per_stage"]["orientation"]["mae_deg"], abs=1e-2)
    for key in ("corners_only", "no_corners", "as_stored"):
        assert 0.0 <= probe[key]["mean_deg"] <= 180.0 and 0.0 <= probe[key]["within_10_deg"] <= 1.0
    assert 0.0 <= probe["as_stored"]["quadrant_right"] <= 1.0
    held = _held_out(pack, labels)
    train_patients = {r["patient_key"] for r in rows} - {r["patient_key"] for r in held}
    assert not {r["patient_key"] for r in held} & train_patients

    image = cv2.imread(str(TRAINING / held[0]["file"]), cv2.IMREAD_GRAYSCALE)
    assert image is not None
    pipeline = Pipeline(pack, select(["onnxruntime-cpu"]), LoadOptions())
    judged = pipeline.judge(image.astype("float32") / 255.0)
    assert judged.view.label in view.labels and 0.0 <= judged.view.confidence <= 1.0
    assert judged.orientation is not None and judged.decision in ("ok", "review", "retake")


def _lumbar_labels(tmp_path: Path) -> tuple[Path, list[str], list[dict[str, str]]]:
    from models.recipes.make_lumbar_data import write_lumbar_build_data

    labels = write_lumbar_build_data(tmp_path / "data", 12, seed=11)
    with labels.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return labels, list(reader.fieldnames or []), list(reader)


def test_bad_mask_files_are_all_listed_before_any_training(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    from export.build.labels import LabelsRefused, read_labels
    from export.build.recipe import load_recipe

    labels, columns, rows = _lumbar_labels(tmp_path)
    data = labels.parent
    assert [r["view"] for r in rows[:4]] == ["AP", "LAT", "OBL", "AP"]
    rows[0]["mask"] = ""  # an AP image without its mask
    rows[1]["mask"] = "gone.png"  # a mask file that is not there
    ap = cv2.imread(str(data / rows[3]["mask"]), cv2.IMREAD_UNCHANGED)
    assert ap is not None
    ap[0, 0] = 9  # AP has 7 classes (values 0-6)
    cv2.imwrite(str(data / "nine.png"), ap)
    rows[3]["mask"] = "nine.png"
    cv2.imwrite(str(data / "square.png"), np.zeros((100, 100), np.uint8))
    rows[4]["mask"] = "square.png"  # not the image's shape
    cv2.imwrite(str(data / "colour.png"), np.zeros((50, 40, 3), np.uint8))
    rows[5]["mask"] = "colour.png"
    with labels.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(LabelsRefused) as refused:
        read_labels(labels, data, load_recipe(RECIPES / "lumbar.toml", "short"))
    found = {(p.row, p.kind, p.column) for p in refused.value.problems}
    assert {(2, "missing_image", "mask"), (3, "missing_image", "mask"),
            (5, "unknown_label", "mask"), (6, "bad_value", "mask"),
            (7, "unreadable_image", "mask")} <= found, found


def test_a_recipe_with_rules_the_segmentation_cannot_measure_is_refused(tmp_path: Path) -> None:
    from export.build.recipe import RecipeError, load_recipe

    text = (RECIPES / "lumbar.toml").read_text()
    cases = {
        "no such class": text.replace('segments = ["spinous", "pedicle_left", "pedicle_right"]',
                                      'segments = ["spinous", "pedicle_left", "kidney"]'),
        "no such segment stage": text.replace('segments = "seg_lat"', 'segments = "seg_knee"'),
        "input not a multiple of 8": text.replace('classes = ["background", "body", "disc", "t12", '
                                                  '"sacrum"]', 'classes = ["background", "body", '
                                                  '"disc", "t12", "sacrum"]\ninput = [100, 64]'),
        "roi beside segmentation": text.replace(
            '[[stages]]\nname = "view"', '[[stages]]\nname = "roi_ap"\ntask = "roi"\nview = "AP"'
            '\n\n[[stages]]\nname = "view"'),
    }  # fmt: skip
    messages = {}
    for name, changed in cases.items():
        assert changed != text, name
        path = tmp_path / "lumbar.toml"
        path.write_text(changed)
        with pytest.raises(RecipeError) as refused:
            load_recipe(path, "short")
        messages[name] = str(refused.value)
    assert "kidney" in messages["no such class"]
    assert "seg_knee" in messages["no such segment stage"]
    assert "multiples of 8" in messages["input not a multiple of 8"]
    assert "no roi or quality" in messages["roi beside segmentation"]


def test_the_segmented_evaluation_reproduces_the_bundled_lumbar_packs_figures(tmp_path: Path) -> None:
    """The evaluator checked against known answers: no training, the bundled lumbar-demo pack.

    On new phantoms (DICOM + PNG masks, as a site brings them) the rules measured on the
    labelled masks must fail exactly where the phantom drew its error, and the bundled pack
    (Dice 0.96-0.98 and rule agreement 1.0 on its 300 held-out phantoms) must score about the same
    here; a scale or class-order slip in the evaluator would show as a collapse.
    """
    from edge_worker.phantoms.lumbar import RULE_OF_ERROR
    from export.build.labels import read_labels
    from export.build.recipe import load_recipe
    from export.build.report import figures
    from export.build.segmented import decisions_by_rule_truth, evaluate_segmented, rule_figures

    labels, _, rows = _lumbar_labels(tmp_path)
    accepted = read_labels(labels, labels.parent, load_recipe(RECIPES / "lumbar.toml", "short")).rows
    chain, stages = evaluate_segmented(ROOT / "models" / "packs" / "lumbar-demo", accepted)
    for row, record in zip(rows, chain):
        failing = {r["code"] for r in record["rules"] if r["truth"] != "pass"}
        assert failing == ({RULE_OF_ERROR[(row["view"], row["error"])]} if row["error"] else set())
    rules = rule_figures(chain)["all"]
    assert rules["n"] == sum({"AP": 4, "LAT": 3, "OBL": 3}[r["view"]] for r in rows)
    assert rules["agreement"] >= 0.95 and rules["fail_detected"] == 1.0
    decided = decisions_by_rule_truth(chain)
    assert "ok" not in decided["a_rule_fails"]  # no image with a broken rule passed
    figs = figures(chain, stages, ["AP", "LAT", "OBL"], [1, 2, 3])
    assert figs["chained"]["view_accuracy"] >= 0.9
    for name in ("seg_ap", "seg_lat", "seg_obl"):
        assert figs["per_stage"][name]["dice_mean"] >= 0.9, figs["per_stage"][name]

