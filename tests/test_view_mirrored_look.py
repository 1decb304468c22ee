"""A classify stage with ``mirrored_look``: the network also reads each image mirrored
left-right and the two answers are averaged.

Run on the committed chest pack's real view network (ONNX Runtime) and real chest radiographs
of its held-out set: the answer must equal the mean of the two softmax answers computed here
from separate runs of the plain stage, on both of the task's paths (the plain classifier and
the one that keeps feature maps for a heatmap, whose map stays the stored image's); the
recipe's key changes nothing of the training, and a manifest that says anything but true or
false is refused.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edge_worker.errors import PackError
from edge_worker.packs.pack import load_pack
from edge_worker.pipeline.stages import run_view_batch
from tests.pack_copies import with_option

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / "models" / "packs" / "chest"
RECIPE = REPO / "models" / "recipes" / "chest.toml"
SHARED = REPO.parent / "shared" / "data" / "training" / "chest-multisite"
needs_pack = pytest.mark.skipif(not (PACK / "manifest.json").is_file(), reason=f"{PACK} is absent")
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/training is absent")


def _pack_with(tmp_path: Path, value: object) -> Path:
    return with_option(PACK, tmp_path / f"chest-{value}", "view", "mirrored_look", value)


def _held_out_images(n: int) -> list[np.ndarray]:
    from export.build.label_gate import test_rows
    from export.build.stages import upright

    rows = (test_rows(load_pack(PACK)) or [])[:n]
    assert rows, "the chest pack records its held-out set"
    return [upright(r.sample).working.astype(np.float32) for r in rows]


def _softmax(row: np.ndarray) -> np.ndarray:
    e = np.exp(row.astype(np.float64) - row.max())
    return e / e.sum()


@needs_pack
@needs_data
@pytest.mark.parametrize("keep_features", [False, True])
def test_the_two_looks_are_averaged(tmp_path: Path, keep_features: bool) -> None:
    from edge_worker.pipeline.stages import image_batches
    from edge_worker.pipeline.tasks import classify
    from edge_worker.pipeline.tasks.base import Item
    from export.build.chain import worker_pipeline

    plain = worker_pipeline(_pack_with(tmp_path, False))
    both = worker_pipeline(_pack_with(tmp_path, True))
    one = next(s for s in plain.pack.stages if s.name == "view")
    two = next(s for s in both.pack.stages if s.name == "view")
    assert two.options["mirrored_look"] is True and one.options["mirrored_look"] is False
    if not keep_features:  # the plain path drops the feature output
        one = replace(one, outputs={"logits": one.outputs["logits"]})
        two = replace(two, outputs={"logits": two.outputs["logits"]})
    else:
        assert "features" in two.outputs, "the chest view stage exports its features (heatmap)"
    images = _held_out_images(6)
    items = [Item(working=im, upright=im) for im in images]
    averaged = classify.run(both.session("view"), two, items)
    alone = run_view_batch(both.session("view"), two, images)
    flipped = [np.ascontiguousarray(im[:, ::-1]) for im in images]
    stored = image_batches(plain.session("view"), one, images, tuple(one.outputs))
    mirror = image_batches(plain.session("view"), one, flipped, ("logits",))["logits"]
    changed = 0
    for i, result in enumerate(averaged):
        expected = (_softmax(stored["logits"][i]) + _softmax(mirror[i])) / 2.0
        got = np.array([result.probabilities[label] for label in one.labels])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert result.label == one.labels[int(expected.argmax())]
        assert result.confidence == pytest.approx(float(expected.max()), abs=1e-5)
        assert alone[i].label == result.label
        single = _softmax(stored["logits"][i])
        changed += int(np.abs(single - expected).max() > 1e-3)
        if keep_features:  # the heatmap maps the image as stored, not its mirror
            np.testing.assert_allclose(result.features, stored["features"][i], atol=1e-5)
    assert changed > 0, "the mirrored look changed no answer: it was not read"


@needs_pack
def test_mirrored_look_must_be_true_or_false(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="mirrored_look"):
        load_pack(_pack_with(tmp_path, "yes"))


def test_mirrored_look_is_an_inference_key_of_the_view_stage(tmp_path: Path) -> None:
    from export.build.command import worker_options
    from export.build.recipe import RecipeError, load_recipe
    from export.build.stages import stage_key

    recipe = load_recipe(RECIPE, "full")
    view = next(s for s in recipe.stages if s.task == "view")
    assert view.mirrored_look  # the chest recipe reads two looks
    split: Any = SimpleNamespace(train=[])
    # reading a mirror changes nothing of the training: the checkpoint is kept
    assert stage_key(view, recipe, "sha", split) == stage_key(
        replace(view, mirrored_look=False), recipe, "sha", split)
    text = RECIPE.read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("mirrored_look = true", 'mirrored_look = "yes"'))
    with pytest.raises(RecipeError, match="mirrored_look: must be true or false"):
        load_recipe(bad)
    bad.write_text(text.replace("quarter_turns = true", "quarter_turns = true\nmirrored_look = true"))
    with pytest.raises(RecipeError, match=r"unknown key\(s\) \['mirrored_look'\]"):
        load_recipe(bad)  # an orientation stage has no such key: a mirror turns the angle
    if not (PACK / "manifest.json").is_file():
        return
    copy = tmp_path / "pack"
    shutil.copytree(PACK, copy)
    worker_options(copy, recipe)  # writes the key into the manifest and reseals
    entries = {e["name"]: e for e in json.loads((copy / "manifest.json").read_text())["stages"]}
    assert entries["view"]["mirrored_look"] is True
    assert "mirrored_look" not in entries["orientation"]
    assert load_pack(copy).stage("view").options["mirrored_look"] is True  # type: ignore[union-attr]
    assert load_pack(PACK).stage("view").options["mirrored_look"] is True  # type: ignore[union-attr]
