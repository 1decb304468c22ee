"""The committed mri-demo pack, run as the worker runs it: ONNX Runtime through
``Pipeline.judge_volume`` (no torch), on phantoms whose seeds (``fresh``) were never used to
train, validate or measure the pack."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edge_worker.backends import select
from edge_worker.packs.pack import load_pack
from edge_worker.pipeline.runner import Pipeline
from edge_worker.pipeline.volume import VolumeJudgement

PACK = Path(__file__).resolve().parents[1] / "models" / "packs" / "mri-demo"
pytestmark = pytest.mark.skipif(not (PACK / "manifest.json").is_file(), reason="models/packs/mri-demo not built")


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    p = Pipeline(load_pack(PACK), select(["onnxruntime-cpu"]))
    p.warm_up()
    return p


def _judge(pipeline: Pipeline, seed: int, strengths: dict[str, float]) -> VolumeJudgement:
    from models.mri.data import SPACING_MM, SPLIT_SEEDS, make_example

    e = make_example(SPLIT_SEEDS["fresh"] + seed, strengths, lesion=False, normal_variant=False)
    return pipeline.judge_volume(e.volume, SPACING_MM)


def test_manifest_is_synthetic_sealed_small_and_carries_its_figures() -> None:
    manifest = json.loads((PACK / "manifest.json").read_text())
    assert manifest["not_for_clinical_use"] is True
    assert manifest["training_data"]["kind"] == "synthetic-phantom"
    (stage,) = manifest["stages"]
    assert stage["task"] == "tiled_volume" and stage["synthetic"] is True and stage["tile"] == 64
    assert stage["outputs"][0] == "quality" and len(stage["outputs"]) == 11
    assert hashlib.sha256((PACK / stage["file"]).read_bytes()).hexdigest() == stage["sha256"]
    v = manifest["validation"]
    assert -1.0 <= v["score_r2"] <= 1.0 and set(v["flags"]) == set(stage["outputs"][1:])
    assert sum(p.stat().st_size for p in PACK.iterdir()) < 2 * 1024 * 1024


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_strong_ghosting_raises_the_ghosting_probability_and_lowers_the_score(
    pipeline: Pipeline, seed: int
) -> None:
    clean = _judge(pipeline, seed, {})
    ghosted = _judge(pipeline, seed, {"ghosting": 1.0})
    assert ghosted.flags["ghosting"] > clean.flags["ghosting"]
    assert ghosted.score < clean.score
    assert clean.synthetic and ghosted.tiles == clean.tiles == 8
    assert ghosted.flag_tiles["ghosting"][0].probability >= ghosted.flags["ghosting"]
