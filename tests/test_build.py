"""``edge-export build``: labels refused with every problem at once, the split by patient, resume
after a kill, the short ankle recipe end to end, and the label gate of a precision change.

Real parts throughout: phantom DICOM files read by the worker's ingest, real training (a few
steps), the real ONNX export and parity gate, the worker's pipeline on ONNX Runtime sessions.
The end-to-end build (about 3 minutes on 2 cores) is marked ``slow``; the rest is fast.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edge_worker.packs.pack import load_pack, seal_manifest
from edge_worker.phantoms.ankle import write_dataset
from export.build.labels import read_labels
from export.build.recipe import RecipeError, load_recipe
from export.build.split import split_by_patient
from export.cli import main as export_main

ROOT = Path(__file__).resolve().parents[1]
ANKLE = ROOT / "models" / "recipes" / "ankle.toml"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 phantom DICOM files at any rotation (views and grades balanced) and labels.csv."""
    folder = tmp_path_factory.mktemp("phantoms")
    return write_dataset(folder, 30, seed=4242, rotation_range=(0.0, 360.0), size=1024)


def _rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _write(path: Path, columns: list[str], rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_every_refusal_is_listed_at_once_before_any_training(
    phantoms: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    columns, rows = _rows(phantoms)
    data = phantoms.parent
    (data / "broken.dcm").write_bytes(b"DICM" + b"\x00" * 64)  # not a DICOM file at all
    for i, row in enumerate(rows):
        row["comment"] = ""
        row["patient_key"] = f"P{i}"
        row["split"] = "test" if i % 5 == 0 else "train"
    rows[1]["file"] = "gone.dcm"  # missing image
    rows[2]["file"] = "broken.dcm"  # unreadable DICOM
    rows[3]["view"] = "OBLIQUE"  # not in the recipe's vocabulary
    rows[6]["patient_key"] = rows[5]["patient_key"] = "SAME"
    rows[5]["split"], rows[6]["split"] = "train", "test"  # one patient on both sides
    # Grade 3 LAT: keep one row only (too few patients to split).
    lat3 = [r for r in rows if r["view"] == "LAT" and r["grade"] == "3"]
    kept = [r for r in rows if r not in lat3[1:]]
    labels = _write(tmp_path / "labels.csv", [*columns, "comment", "patient_key", "split"], kept)
    out = tmp_path / "pack"
    code = export_main(["build", "--recipe", str(ANKLE), "--data", str(data), "--labels",
                        str(labels), "--out", str(out), "--preset", "short"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    kinds = set(re.findall(r"^  ([a-z_]+): ", err, re.MULTILINE))
    assert kinds == {"unknown_column", "missing_image", "unreadable_image", "unknown_label",
                     "class_too_small", "patient_on_both_sides"}  # fmt: skip
    assert "[comment]" in err and "gone.dcm" in err and "'OBLIQUE'" in err and "'SAME'" in err
    assert "grade=3@LAT: 1 patient(s)" in err
    # Refused before training: no pack, no checkpoint folder.
    assert not out.exists() and not (tmp_path / ".pack.build").exists()


def test_review_export_columns_are_accepted(phantoms: Path, tmp_path: Path) -> None:
    """The review export's labels CSV (read_csv layout + its bookkeeping) is read as it is."""
    columns, rows = _rows(phantoms)
    extra = ["patient_key", "final", "flags", "reviewer_tier", "reviewed_at"]
    for i, row in enumerate(rows):
        row.update(patient_key=f"P{i // 2}", final="1", flags="motion;grid",
                   reviewer_tier="senior", reviewed_at="2026-12-01T10:00:00Z")  # fmt: skip
    labels = _write(tmp_path / "review.csv", [*columns, *extra], rows)
    recipe = load_recipe(ANKLE, "short")
    accepted = read_labels(labels, phantoms.parent, recipe)
    assert len(accepted.rows) == 30 and accepted.patient_source == "column patient_key"
    assert {"final", "flags", "reviewer_tier", "reviewed_at"} <= set(accepted.ignored_columns)


def test_split_is_by_patient_with_the_seed_recorded(phantoms: Path, tmp_path: Path) -> None:
    columns, rows = _rows(phantoms)
    for i, row in enumerate(rows):
        row["patient_key"] = f"P{i // 2}"  # two images per patient (an AP and a LAT)
    labels = _write(tmp_path / "labels.csv", [*columns, "patient_key"], rows)
    recipe = load_recipe(ANKLE, "short")
    accepted = read_labels(labels, phantoms.parent, recipe)
    split = split_by_patient(accepted, recipe)
    train, test = {r.patient for r in split.train}, {r.patient for r in split.test}
    assert train and test and not train & test
    assert len(split.train) + len(split.test) == 30
    facts = split.describe()
    assert facts["seed"] == recipe.seed == 20261203 and facts["by"] == "patient"
    assert facts["train"]["patients"] + facts["test"]["patients"] == 15
    assert facts["test"]["images"] == len(split.test)
    again = split_by_patient(accepted, recipe)
    assert [r.line for r in again.test] == [r.line for r in split.test]  # the seed fixes it
    # Without a patient column the DICOM PatientID is used, hashed (never the raw ID).
    plain = read_labels(phantoms, phantoms.parent, recipe)
    assert plain.patient_source == "DICOM PatientID, sha256-hashed"
    assert all(len(r.patient) == 16 and "PHANTOM" not in r.patient for r in plain.rows)


def test_recipe_refuses_unknown_keys(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(ANKLE.read_text().replace("test_fraction = 0.2", "test_fraction = 0.2\nfoo = 1"))
    with pytest.raises(RecipeError, match=r"split: unknown key\(s\) \['foo'\]"):
        load_recipe(bad)
    full, short = load_recipe(ANKLE, "full"), load_recipe(ANKLE, "short")
    roi = next(s for s in full.stages if s.task == "roi")
    assert (roi.hyper.height, roi.hyper.batch, roi.hyper.resize) == (128, 8, "pad")  # CPU-sized
    # Without the recipe's own sizes a stage takes the paper's (ankle paper, section 5.2).
    paper = tmp_path / "paper.toml"
    paper.write_text(re.sub(r"\[stages\.presets\.full\]\n(.+\n)*", "", ANKLE.read_text()))
    roi = next(s for s in load_recipe(paper, "full").stages if s.task == "roi")
    assert (roi.hyper.height, roi.hyper.batch, roi.hyper.resize) == (400, 4, "pad")
    assert short.pack_name == "ankle-demo-smoke" and short.pack_version.endswith("-smoke")


def test_recipe_resize_per_stage_and_preset(tmp_path: Path) -> None:
    full, short = load_recipe(ANKLE, "full"), load_recipe(ANKLE, "short")
    # The ankle paper pads view, ROI and quality inputs; orientation keeps the plain resize.
    for recipe in (full, short):
        layout = {s.task: s.hyper.resize for s in recipe.stages}
        assert layout == {"orientation": "stretch", "view": "pad", "roi": "pad", "quality": "pad"}
    text = ANKLE.read_text().replace('name = "view"\ntask = "view"\n',
                                     'name = "view"\ntask = "view"\nresize = "stretch"\n'
                                     '[stages.presets.short]\nresize = "pad"\n')  # fmt: skip
    mixed = tmp_path / "mixed.toml"
    mixed.write_text(text)
    view = {p: next(s for s in load_recipe(mixed, p).stages if s.name == "view") for p in ("full", "short")}
    assert (view["full"].hyper.resize, view["short"].hyper.resize) == ("stretch", "pad")
    bad = tmp_path / "bad.toml"
    bad.write_text(ANKLE.read_text().replace('name = "view"\ntask = "view"\n',
                                             'name = "view"\ntask = "view"\nresize = "fit"\n'))
    with pytest.raises(RecipeError, match=r"stages\[1\]\.resize: must be \"pad\".*got 'fit'"):
        load_recipe(bad)


def _build_argv(phantoms: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "--recipe", str(ANKLE), "--data", str(phantoms.parent), "--labels",
            str(phantoms), "--out", str(out), "--preset", "short", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def built(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The short ankle build, killed after its first stage and finished with ``--resume``."""
    out = tmp_path_factory.mktemp("build") / "pack"
    first = out.parent / ".pack.build" / "checkpoints" / "orientation.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "export.cli", *_build_argv(phantoms, out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the DataLoader worker too
    proc.wait()
    assert first.exists() and not (out / "manifest.json").exists()
    stamp = first.stat().st_mtime_ns
    log: list[str] = []
    from export.build.command import build as run_build
    from export.cli import _parser

    run_build(_parser().parse_args(_build_argv(phantoms, out, "--resume")), log=log.append)
    assert first.stat().st_mtime_ns == stamp  # reused, not retrained
    assert any("orientation" in line and "skipped (--resume)" in line for line in log)
    assert not any("view" in line and "skipped" in line for line in log)
    return out


@pytest.mark.slow
def test_short_ankle_build_writes_an_evaluated_pack(built: Path, phantoms: Path) -> None:
    pack = load_pack(built)  # verifies every sha256 and the seal
    assert pack.name == "ankle-demo-smoke" and pack.version == "2.0.0-smoke"
    assert [s.name for s in pack.networks] == [
        "orientation", "view", "roi_ap", "roi_lat", "quality_ap", "quality_lat"]
    training = pack.training_data
    assert training["preset"] == "short" and training["kind"] == "synthetic-phantom"
    from export.build.labels import sha256_file

    assert training["labels"]["sha256"] == sha256_file(phantoms)
    assert training["licenses"] == {"CC0-1.0": 30}
    assert training["split"]["seed"] == 20261203
    assert training["split"]["train"]["images"] + training["split"]["test"]["images"] == 30
    chained = pack.validation["pipeline"]
    assert chained["n"] == training["split"]["test"]["images"]
    assert 0.0 <= chained["view_accuracy"] <= 1.0 and "view_confusion" in chained
    assert set(pack.validation["per_stage"]) == {s.name for s in pack.networks}
    report = json.loads((built / "evaluation.json").read_text())
    assert report["labels_sha256"] == training["labels"]["sha256"]
    assert len(report["figures"]["worst"]) == chained["n"]
    page = (built / "evaluation.html").read_text()
    assert page.count("<svg") >= 4 and "data:image/png;base64," in page
    checked = subprocess.run([sys.executable, "-m", "edge_worker.cli", "check", "--pack", str(built),
                              "--skip-broker"], check=False, cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)  # fmt: skip
    assert "ankle-demo-smoke 2.0.0-smoke" in checked.stdout and checked.returncode == 0, checked.stdout


def _copy_with_roi_bias(pack_dir: Path, out: Path, bias: float | None) -> Path:
    """A copy of the pack; with ``bias`` both ROI networks' last bias is set to it (+50: the
    whole image is the ROI, a box is always found; -50: never), manifest resealed."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from export.pack import sha256_of

    shutil.copytree(pack_dir, out)
    if bias is None:
        return out
    manifest = json.loads((out / "manifest.json").read_text())
    for stage in manifest["stages"]:
        if stage["name"] in ("roi_ap", "roi_lat"):
            path = out / stage["file"]
            model = onnx.load(str(path))
            last = next(t for t in model.graph.initializer if t.name == "head.4.bias")
            last.CopyFrom(numpy_helper.from_array(np.array([bias], np.float32), last.name))
            onnx.save(model, str(path))
            stage["sha256"] = sha256_of(path)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    seal_manifest(out)
    return out


@pytest.mark.slow
def test_label_gate_refuses_a_less_accurate_copy_and_accepts_a_faithful_one(
    built: Path, tmp_path: Path
) -> None:
    """Two real packs that differ in one network: the copy whose ROI networks no longer find
    the box loses ``roi_found`` against the labels and is refused; an exact copy passes."""
    from export.build.label_gate import label_gate, test_rows

    rows = test_rows(load_pack(built))
    assert rows is not None and len(rows) == load_pack(built).validation["pipeline"]["n"]
    reference = _copy_with_roi_bias(built, tmp_path / "finds", 50.0)
    faithful = label_gate(reference, _copy_with_roi_bias(reference, tmp_path / "same", None),
                          rows, 0.0)  # fmt: skip
    assert faithful["accepted"] and faithful["failed"] == []
    assert faithful["reference"]["roi_found"] == 1.0 == faithful["candidate"]["roi_found"]
    broken = label_gate(reference, _copy_with_roi_bias(built, tmp_path / "blind", -50.0), rows)
    assert broken["candidate"]["roi_found"] == 0.0 and broken["drop"]["roi_found"] == 1.0
    assert not broken["accepted"] and "roi_found" in broken["failed"]


@pytest.mark.slow
def test_quantize_applies_the_label_gate_of_the_packs_test_set(built: Path, tmp_path: Path) -> None:
    from export.quantize import QuantizeError, quantize_pack

    report = quantize_pack(built, tmp_path / "fp16", "fp16", phantoms=4, log=lambda _: None)
    gate = report["label_gate"]
    assert gate["images"] == load_pack(built).validation["pipeline"]["n"]
    agreed = all(v == 1.0 for v in report["agreement"].values())
    assert report["accepted"] == (agreed and gate["accepted"])
    assert (tmp_path / "fp16" / "manifest.json").exists() == report["accepted"]
    # A pack whose labelled test set has gone is refused, not gated on agreement alone.
    moved = _copy_with_roi_bias(built, tmp_path / "moved", None)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["validation"]["test_set"]["labels"] = str(tmp_path / "gone.csv")
    (moved / "manifest.json").write_text(json.dumps(manifest, indent=2))
    seal_manifest(moved)
    with pytest.raises(QuantizeError, match="is not here; pass --labels"):
        quantize_pack(moved, tmp_path / "never", "fp16", phantoms=4, log=lambda _: None)


def test_roi_as_a_mask_file_gives_the_same_box(phantoms: Path, tmp_path: Path) -> None:
    """An ROI given as a mask file (non-zero pixels) is read as the box around it."""
    import cv2

    from edge_worker.pipeline.preprocess import RotatedBox, box_mask

    columns, rows = _rows(phantoms)
    data = phantoms.parent
    truth = RotatedBox(*(float(rows[0][k]) for k in ("roi_cx", "roi_cy", "roi_w", "roi_h",
                                                     "roi_angle")))  # fmt: skip
    mask = box_mask((int(rows[0]["rows"]), int(rows[0]["columns"])), truth)
    cv2.imwrite(str(data / "roi0.png"), (mask > 0).astype("uint8") * 255)
    rows[0]["roi_mask"] = "roi0.png"
    for key in ("roi_cx", "roi_cy", "roi_w", "roi_h", "roi_angle"):
        rows[0][key] = ""
    labels = _write(tmp_path / "labels.csv", [*columns, "roi_mask"], rows)
    got = read_labels(labels, data, load_recipe(ANKLE, "short")).rows[0].record.roi
    assert got is not None
    assert abs(got.cx - truth.cx) < 2 and abs(got.cy - truth.cy) < 2
    assert sorted([got.width, got.height]) == pytest.approx(sorted([truth.width, truth.height]),
                                                            abs=3)  # fmt: skip


def test_a_view_vocabulary_of_three_labels_trains_three_logits() -> None:
    import torch

    from models.networks import ArchConfig, build

    net = build(ArchConfig("view", width=0.125, image_size=64, extra={"classes": 3.0})).eval()
    with torch.inference_mode():
        assert net(torch.zeros(1, 1, 64, 64)).shape == (1, 3)
