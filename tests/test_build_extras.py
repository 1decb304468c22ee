"""Paper 004's extras as recipe stages (``finding``, ``bone_suppression``): what the recipe
refuses, what the labels check refuses before any training, and how the stages join a pack.

Fast: no training here.  The short chest build in ``tests/test_build_recipes.py`` trains both
stages on real images and phantoms and checks the pack it writes; ``tests/test_chest_pack.py``
re-measures the bundled pack's figures.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")

from export.build.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
CHEST = ROOT / "models" / "recipes" / "chest.toml"
TRAINING = ROOT.parent / "shared" / "data" / "training"

_HEAD = """[pack]
name = "x"
version = "1"
body_part = "CHEST"
[labels]
views = ["AP", "PA", "LATERAL"]
[[stages]]
name = "view"
task = "view"
"""


def _recipe(tmp_path: Path, stage: str, head: str = _HEAD) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(head + "[[stages]]\n" + stage)
    return path


def test_the_chest_recipe_declares_both_extras_research_only() -> None:
    full = {s.name: s for s in load_recipe(CHEST).stages if s.extra}
    assert set(full) == {"finding", "bone_suppression"}
    assert full["finding"].views == full["bone_suppression"].views == ("AP", "PA")
    assert (full["finding"].hyper.height, full["finding"].hyper.steps) == (512, 1000)
    assert full["bone_suppression"].phantoms == (300, 100)
    short = {s.name: s for s in load_recipe(CHEST, "short").stages if s.extra}
    assert short["bone_suppression"].phantoms == (8, 4)  # a smoke run draws a handful
    assert short["finding"].hyper.height == 128


@pytest.mark.parametrize(("stage", "message"), [
    ('name = "f"\ntask = "finding"\n', r"stages\[1\]\.views: .*got None"),
    ('name = "f"\ntask = "finding"\nviews = ["OBLIQUE"]\n', r"views: .*got \['OBLIQUE'\]"),
    ('name = "f"\ntask = "finding"\nviews = ["AP"]\ninput = [256, 128]\n', r"input: .* square"),
    ('name = "f"\ntask = "finding"\nviews = ["AP"]\ninput = [200, 200]\n', r"multiple of 128"),
    ('name = "f"\ntask = "finding"\nviews = ["AP"]\nview = "AP"\n', r"names its views in `views`"),
    ('name = "b"\ntask = "bone_suppression"\nviews = ["AP"]\nphantoms = [300]\n',
     r"phantoms: \[train, test\]"),
    ('name = "b"\ntask = "bone_suppression"\nviews = ["AP"]\ninput = [100, 100]\n',
     r"multiple of 16"),
    ('name = "f"\ntask = "finding"\nviews = ["AP"]\nphantoms = [3, 3]\n', r"unknown key.*phantoms"),
])  # fmt: skip
def test_malformed_extra_stages_are_refused_naming_the_key(
    tmp_path: Path, stage: str, message: str
) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe(_recipe(tmp_path, stage))


def test_an_extra_stage_needs_a_view_stage(tmp_path: Path) -> None:
    head = _HEAD.replace('[[stages]]\nname = "view"\ntask = "view"\n',
                         '[[stages]]\nname = "o"\ntask = "orientation"\n')  # fmt: skip
    with pytest.raises(RecipeError, match="needs a view stage"):
        load_recipe(_recipe(tmp_path, 'name = "f"\ntask = "finding"\nviews = ["AP"]\n', head))


@pytest.mark.shared
@pytest.mark.skipif(not (TRAINING / "chest-multisite" / "labels.csv").is_file(),
                    reason="../shared/data/training (real chest images) is absent")  # fmt: skip
def test_labels_without_both_finding_classes_are_refused_before_training(tmp_path: Path) -> None:
    from export.build.labels import LabelsRefused, read_labels
    from models.recipes.chest_labels import write_labels

    labels = tmp_path / "labels.csv"
    write_labels(TRAINING, labels, patients_per_view=3, images_per_patient=1)
    with labels.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames or []), list(reader)
    for row in rows:  # every named finding becomes COVID-19: no "other finding" is left
        if row["finding"] and row["finding"] != "todo":
            row["finding"] = "COVID-19"
    with labels.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(LabelsRefused) as refused:
        read_labels(labels, TRAINING, load_recipe(CHEST, "short"))
    (problem,) = [p for p in refused.value.problems if p.column == "finding"]
    assert problem.kind == "class_too_small"
    assert re.search(r"stage finding: 0 patient\(s\) whose `finding` is other_finding", problem.detail)


def test_extras_join_a_pack_replacing_entries_of_the_same_name(tmp_path: Path) -> None:
    from edge_worker.packs.pack import load_pack
    from export.build.extras import BuiltExtras, add_extras

    pack = tmp_path / "pack"
    shutil.copytree(ROOT / "models" / "packs" / "lumbar-demo", pack)
    before = [s["name"] for s in json.loads((pack / "manifest.json").read_text())["stages"]]
    view = load_pack(pack).view_stage
    source = next(s for s in json.loads((pack / "manifest.json").read_text())["stages"]
                  if s["name"] == view)  # fmt: skip
    copy = {**source, "name": "second_opinion", "file": "second.onnx", "research_only": True}
    onnx = tmp_path / "second.onnx"
    shutil.copyfile(pack / source["file"], onnx)
    built = BuiltExtras(files={"second.onnx": onnx}, stages=[copy])
    add_extras(pack, built)
    add_extras(pack, built)  # a second time: still one entry
    loaded = load_pack(pack)  # the seal and every file's sha256 hold
    names = [s.name for s in loaded.stages]
    assert names[: len(before)] == before and names.count("second_opinion") == 1
    assert next(s for s in loaded.stages if s.name == "second_opinion").research_only
