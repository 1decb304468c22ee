"""The phantom-trained full-size pack: its recipe, its labels, and how the benchmark finds it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_worker.bench import packs
from edge_worker.packs.pack import load_pack


def test_recipe_names_match_the_builders() -> None:
    """The benchmark may not import the builders (torch); their recipe names must agree."""
    from export.seed_pack import RECIPE as SEED
    from models.make_full_pack import RECIPE as TRAINED

    assert packs._SEED_RECIPE == SEED
    assert packs._TRAINED_RECIPE == TRAINED


def test_benchmark_uses_the_trained_pack_only_when_its_recipe_matches(tmp_path: Path) -> None:
    assert packs.trained(tmp_path, build=False) is None
    root = tmp_path / "full-phantom"
    root.mkdir()
    (root / "recipe.json").write_text(json.dumps({"recipe": "full-phantom@0"}))
    assert packs.trained(tmp_path, build=False) is None  # an older recipe is not reused
    (root / "recipe.json").write_text(json.dumps({"recipe": packs._TRAINED_RECIPE}))
    found = packs.trained(tmp_path, build=False)
    assert found is not None
    assert (found.path, found.checkpoints) == (root / "pack", root / "checkpoints")
    assert found.label == "full-phantom (fp32)" and found.accepted


@pytest.mark.slow
def test_quick_recipe_writes_a_pack_labelled_phantom_trained(tmp_path: Path) -> None:
    from models.make_full_pack import main

    assert main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                 "--preset", "quick"]) == 0  # fmt: skip
    pack = load_pack(tmp_path / "out" / "pack")
    # A smoke build never passes for the real pack: its version says what it is.
    assert pack.version.endswith("-quick")
    assert pack.not_for_clinical_use is True
    assert pack.training_data["kind"] == "synthetic-phantom"
    assert [s.name for s in pack.stages] == [
        "orientation", "view", "roi_ap", "roi_lat", "quality_ap", "quality_lat"
    ]
    roi = next(s for s in pack.stages if s.name == "roi_ap")
    assert (roi.input.height, roi.input.width) == (400, 400)
    ckpts = tmp_path / "out" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == sorted(f"{s.name}.pt" for s in pack.stages)
    # Retrain one stage; the others' checkpoints are reused as they are.
    before = {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()}
    assert main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                 "--preset", "quick", "--only", "quality_ap"]) == 0  # fmt: skip
    after = {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()}
    assert [n for n in after if after[n] != before[n]] == ["quality_ap.pt"]
    assert load_pack(tmp_path / "out" / "pack").stage("quality", "AP") is not None
