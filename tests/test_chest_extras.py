"""The chest extras end to end (slow: a real training run): ``train_extras`` with the ``short``
preset on the real chest sets, its stages added to the committed chest pack, and one
chest phantom judged by that pack with the derived image and the overlay switched on.

The short preset's figures say nothing about the method (seconds of training); the test
checks what the pack builder relies on: files, stage entries, labels and that the worker
loads and runs them.  Resumes from ``workdir`` checkpoints when run twice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ROOT.parent / "shared" / "data" / "training"
needs_shared = pytest.mark.skipif(not (TRAINING / "chest-multisite" / "labels.csv").is_file(),
                                  reason="../shared/data/training/chest-multisite is absent")  # fmt: skip


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
def test_short_extras_join_a_chest_pack_and_run_in_the_worker(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("monai")
    from pydicom import dcmread

    from edge_worker.backends import select
    from edge_worker.ingest.types import IngestPolicy
    from edge_worker.judging.process import Judge
    from edge_worker.packs.pack import load_pack, seal_manifest
    from edge_worker.phantoms.chest import make_dataset
    from edge_worker.pipeline.runner import Pipeline
    from models.chest.extras import BONE, FINDING, FINDING_CAM, train_extras
    from models.chest.multisite import patient_split, read_records

    records = read_records(TRAINING)
    extras = train_extras(records, patient_split(records), tmp_path / "work", "short")
    assert [s["name"] for s in extras.stages] == [FINDING, FINDING_CAM, BONE]
    assert all(s["research_only"] for s in extras.stages)
    assert extras.stages[2]["training_data"]["kind"].startswith("synthetic")
    assert extras.training_data[FINDING]["licences"]
    bone = extras.figures["bone_suppression"]
    assert set(bone["network"]) == {"mae", "psnr_db", "ssim"} == set(bone["baseline_output_equals_input"])
    auc = extras.figures["finding_classifier"]["auc_unseen_patients"]
    low, high = extras.figures["finding_classifier"]["auc_95ci_patient_bootstrap"]
    assert 0.0 <= low <= auc <= high <= 1.0

    pack = tmp_path / "pack"
    shutil.copytree(ROOT / "models" / "packs" / "chest", pack)
    for name, path in extras.files.items():
        shutil.copy(path, pack / name)
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest["stages"] += extras.stages
    (pack / "manifest.json").write_text(json.dumps(manifest, indent=1))
    seal_manifest(pack)
    loaded = load_pack(pack)
    assert {s.name for s in loaded.stages if s.research_only} == {FINDING, FINDING_CAM, BONE}

    ds, _ = make_dataset(5, size=384)
    source = tmp_path / "chest.dcm"
    ds.save_as(source, enforce_file_format=True)
    judge = Judge(Pipeline(loaded, select(["onnxruntime-cpu"])), "s", "x", IngestPolicy(),
                  heatmap_overlay_size=64, derived_folder=tmp_path / "derived")  # fmt: skip
    payload = judge(source).payload
    view = payload["view"]["label"]
    if view in ("AP", "PA"):  # both extras run on frontal images only
        assert payload["research"][FINDING]["notice"].startswith("research only")
        assert next(iter(payload["heatmaps"].values()))["overlay"].startswith("data:image/png")
        (entry,) = payload["derived"]
        sc = dcmread(tmp_path / "derived" / entry["file"])
        assert sc.StudyInstanceUID == ds.StudyInstanceUID
        assert "synthetic-trained" in sc.ImageComments.lower()
        assert sc.pixel_array.shape == (384, 384)
