"""Self-supervised orientation, class-balanced view draws, sites' own mask files, the edge
(cut-off) check and leave-site-out labels of the build.

The chest recipe's orientation stage learns from upright images turned by random angles
(``turn_any``, paper 003) and is measured on seeded turns of the held-out images; its view
stage draws PA, AP and LATERAL equally often (``balance_classes``: 41 laterals among 647
images).  Real images only where ``../shared`` is there (the site-fold test).
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_worker.pipeline.preprocess import turn_upright
from export.build.recipe import RecipeError, load_recipe
from export.build.report import class_recall

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
CHEST = ROOT / "models" / "recipes" / "chest.toml"
TRAINING = ROOT.parent / "shared" / "data" / "training"


def _arrow() -> np.ndarray:
    """An image whose content says which way is up: a bright bar above the centre, a dimmer
    dot at lower left, both inside the inscribed circle (no turn cuts them off)."""
    img = np.zeros((96, 96), np.float32)
    img[24:31, 30:66] = 1.0
    img[60:67, 28:35] = 0.6
    return img


def test_a_turned_sample_carries_the_angle_that_turns_it_back() -> None:
    from models.chest.augment import rotate
    from models.turns import turned

    upright = _arrow()
    rng = np.random.default_rng(3)
    for _ in range(12):
        image, angle = turned(rng, upright)
        assert 0.0 <= angle < 360.0
        # The worker turns an image upright by the orientation answer: the bar comes back up.
        back, _ = turn_upright(image, angle)
        rows = np.nonzero(back > 0.8)[0]  # the bar (the dot is 0.6)
        assert rows.size and rows.mean() < back.shape[0] / 2, angle
    # the label convention is rotate()'s: a counter-clockwise quarter turn puts the top left
    left = rotate(upright, 90.0, "quarter")
    assert np.nonzero(left > 0.5)[1].mean() < left.shape[1] / 2


def test_balanced_draws_give_a_rare_view_its_share() -> None:
    import torch

    from models.data import Record, Sample
    from models.train import BatchStream, TrainConfig, default_arch

    def sample(view: str, i: int) -> Sample:
        rec = Record(path=Path(f"{view}{i}.png"), view=view, grade=None, score=None,
                     rotation_deg=0.0, roi=None)  # fmt: skip
        return Sample(rec, np.full((32, 32), 0.5, np.float16), None)

    samples = [sample("PA", i) for i in range(90)] + [sample("LATERAL", i) for i in range(10)]
    labels = ("PA", "LATERAL")
    counts: dict[bool, Counter[int]] = {}
    for balanced in (False, True):
        config = TrainConfig(task="view", batch=50, height=32, width=32, labels=labels,
                             arch=default_arch("view", 0.125, 1.0, 32, 32),
                             balance_classes=balanced)  # fmt: skip
        stream = iter(BatchStream(config, samples))
        ys = torch.cat([next(stream)[1] for _ in range(8)])
        counts[balanced] = Counter(int(y) for y in ys)
    assert counts[False][1] < 0.2 * 400  # about 10 % laterals when drawn uniformly
    assert 0.4 * 400 < counts[True][1] < 0.6 * 400  # about half when balanced


def test_recipe_task_keys_are_checked(tmp_path: Path) -> None:
    full = load_recipe(CHEST, "full")
    orientation, view = full.stages[:2]
    assert orientation.turn_any and not view.turn_any and view.balance_classes
    assert (orientation.hyper.height, orientation.hyper.net_width) == (128, 0.25)
    short = load_recipe(CHEST, "short")
    assert short.stages[0].turn_any and short.stages[0].hyper.steps == 12  # smoke run stays small
    text = CHEST.read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("balance_classes = true", "balance_classes = true\nturn_any = true"))
    with pytest.raises(RecipeError, match=r"unknown key\(s\) \['turn_any'\]"):
        load_recipe(bad)
    bad.write_text(text.replace("turn_any = true", 'turn_any = "yes"'))
    with pytest.raises(RecipeError, match="turn_any: must be true or false"):
        load_recipe(bad)


def test_class_recall_is_the_mean_of_the_present_classes() -> None:
    facts = class_recall(["PA", "PA", "AP", "LATERAL"], ["PA", "AP", "AP", "PA"],
                         ["AP", "PA", "LATERAL", "AP_SUPINE"])  # fmt: skip
    assert facts["recall"] == {"AP": 1.0, "PA": 0.5, "LATERAL": 0.0}
    assert facts["balanced_accuracy"] == 0.5


def test_self_supervised_orientation_is_measured_on_seeded_turns() -> None:
    from export.build.chain import _orientation_cases
    from export.build.labels import Row
    from models.data import Record, Sample

    rec = Record(path=Path("x.png"), view="PA", grade=None, score=None, rotation_deg=30.0, roi=None)
    row = Row(record=rec, sample=Sample(rec, _arrow().astype(np.float16), None), patient="p",
              license=None, flags=(), fixed_split=None, line=5)  # fmt: skip
    assert [t for _, t in _orientation_cases(row, 0)] == [30.0]
    cases = _orientation_cases(row, 8)
    again = _orientation_cases(row, 8)
    assert len(cases) == 8 and [t for _, t in cases] == [t for _, t in again]
    assert all(0.0 <= t < 360.0 for _, t in cases) and len({round(t) for _, t in cases}) == 8


def test_a_sites_mask_values_become_classes_and_unknown_values_are_refused() -> None:
    from export.build.labels import class_indices

    mask = np.array([[0, 255], [255, 0]], np.uint8)
    assert class_indices(mask, (0, 255)).tolist() == [[0, 1], [1, 0]]
    with pytest.raises(ValueError, match=r"mask values \[7\] are no class's"):
        class_indices(np.array([[0, 7]], np.uint8), (0, 255))
    assert class_indices(np.array([[0, 2]], np.uint8), (0, 1, 2)).tolist() == [[0, 2]]
    with pytest.raises(ValueError, match="class value 3 is no class's"):
        class_indices(np.array([[0, 3]], np.uint8), (0, 1, 2))


def test_a_mask_is_turned_upright_with_its_image(tmp_path: Path) -> None:
    import cv2

    from export.build.labels import Row
    from export.build.stages import upright, upright_mask
    from models.data import Record, Sample

    image = _arrow()  # upright
    turned = np.ascontiguousarray(np.rot90(image, 1))  # stored turned 90 deg counter-clockwise
    mask_file = tmp_path / "m.png"
    cv2.imwrite(str(mask_file), (turned > 0.8).astype(np.uint8) * 255)  # the bar, as stored
    rec = Record(path=Path("x.png"), view="PA", grade=None, score=None, rotation_deg=90.0, roi=None)
    row = Row(record=rec, sample=Sample(rec, turned.astype(np.float16), None), patient="p",
              license=None, flags=(), fixed_split=None, line=2, mask=mask_file,
              mask_values=(0, 255))  # fmt: skip
    mask = upright_mask(row)
    back = upright(row.sample).working.astype(np.float32)
    assert mask.shape == back.shape and set(np.unique(mask)) == {0, 1}
    # the mask lands on the bar of the upright image, which is back at the top
    assert back[mask == 1].mean() > 0.8 and np.nonzero(mask)[0].mean() < mask.shape[0] / 2


def test_frame_crops_bring_a_structure_to_the_edge() -> None:
    import torch

    from models.segment import frame_crop

    x = torch.zeros(64, 1, 40, 40)
    y = torch.zeros(64, 1, 40, 40, dtype=torch.int64)
    y[:, :, 6:34, 6:34] = 1  # a structure clear of every edge by 6 px (15 %)
    x[y == 1] = 1.0
    xs, ys = frame_crop(x, y, np.random.default_rng(1))
    assert xs.shape == x.shape and ys.dtype == y.dtype and set(ys.unique().tolist()) <= {0, 1}
    at_edge = [bool(m[0, 0].any() or m[0, -1].any() or m[0, :, 0].any() or m[0, :, -1].any())
               for m in ys]  # fmt: skip
    kept = sum(torch.equal(a, b) for a, b in zip(ys, y))
    assert 16 < kept < 48  # about half the draws are kept whole ...
    assert sum(at_edge) >= 8  # ... and many of the others now reach an edge


def test_a_new_recipe_key_at_its_default_keeps_the_stage_key() -> None:
    from dataclasses import replace
    from types import SimpleNamespace

    from export.build.stages import stage_key

    recipe = load_recipe(CHEST, "full")
    split: Any = SimpleNamespace(train=[])
    orientation = recipe.stages[0]
    key = stage_key(orientation, recipe, "sha", split)
    assert stage_key(replace(orientation, frame_crops=False), recipe, "sha", split) == key
    assert stage_key(replace(orientation, turn_any=False), recipe, "sha", split) != key
    assert stage_key(orientation, recipe, "other labels", split) != key


def test_segment_recipe_keys_and_chains(tmp_path: Path) -> None:
    stages = {s.name: s for s in load_recipe(CHEST, "full").stages}
    lungs = stages["lungs_pa"]
    assert lungs.mask_values == (0, 255) and lungs.mask_optional
    assert [r["measure"] for r in stages["coverage_pa"].rules] == [
        "component_count", "margin_top", "margin_bottom", "margin_left", "margin_right"]
    text = CHEST.read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("mask_values = [0, 255]", "mask_values = [0, 0]", 1))
    with pytest.raises(RecipeError, match="mask_values: one distinct pixel value"):
        load_recipe(bad)
    roi = '[[stages]]\nname = "roi_pa"\ntask = "roi"\nview = "PA"\n\n[[stages]]\nname = "lungs_pa"'
    bad.write_text(text.replace('[[stages]]\nname = "lungs_pa"', roi, 1))
    with pytest.raises(RecipeError, match="orientation, view and rules stages only"):
        load_recipe(bad)


def test_a_cut_removes_the_share_of_the_structure_at_that_edge() -> None:
    from export.build.cutoff import CUT_FRACTION, _crop

    image = np.arange(100 * 80, dtype=np.float32).reshape(100, 80)
    region = np.zeros((100, 80), bool)
    region[20:81, 10:71] = True  # rows 20..80, columns 10..70: 60 px extents
    cut = round(CUT_FRACTION * 60)
    top = _crop(image, region, "top")
    assert top is not None and top.shape == (100 - 20 - cut, 80) and top[0, 0] == image[20 + cut, 0]
    right = _crop(image, region, "right")
    assert right is not None and right.shape == (100, 71 - cut)
    # the cropped structure now reaches the cut edge: known truth "cut off"
    assert region[20 + cut:][0].any() and region[:, : 71 - cut][:, -1].any()
    assert _crop(image, np.zeros_like(region), "top") is None


needs_chest = pytest.mark.skipif(not (TRAINING / "chest-multisite" / "labels.csv").is_file(),
                                 reason="../shared/data/training (real chest images) is absent")


@pytest.mark.shared
@needs_chest
def test_a_site_fold_holds_out_whole_sites(tmp_path: Path) -> None:
    from export.build.labels import read_labels
    from export.build.split import split_by_patient
    from models.recipes.chest_labels import write_labels

    out = tmp_path / "fold.csv"
    facts = write_labels(TRAINING, out, site_fold=(2, 5))
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    test_sites = {r["site"] for r in rows if r["split"] == "test"}
    train_sites = {r["site"] for r in rows if r["split"] == "train"}
    assert test_sites and not test_sites & train_sites
    assert facts["held_out_sites"] == len(test_sites)
    assert facts["test_images"] == sum(r["split"] == "test" for r in rows)
    recipe = load_recipe(CHEST, "short")
    split = split_by_patient(read_labels(out, TRAINING, recipe), recipe)
    assert {r.line for r in split.test} == {i + 2 for i, r in enumerate(rows) if r["split"] == "test"}


def test_shortcut_breakers_take_the_grey_levels_away_from_the_class() -> None:
    import torch

    from models.data import Record, Sample
    from models.train import BatchStream, TrainConfig, default_arch

    def sample(view: str, i: int, low: float) -> Sample:
        rec = Record(path=Path(f"{view}{i}.png"), view=view, grade=None, score=None,
                     rotation_deg=0.0, roi=None)  # fmt: skip
        ramp = np.linspace(low, low + 0.4, 48 * 48, dtype=np.float32).reshape(48, 48)
        return Sample(rec, ramp.astype(np.float16), None)

    # PA dark, LATERAL bright: the grey level alone tells the class
    samples = [sample("PA", i, 0.05) for i in range(20)] + [sample("LATERAL", i, 0.55)
                                                          for i in range(20)]  # fmt: skip
    separation = {}
    for breakers in (False, True):
        config = TrainConfig(task="view", batch=40, height=32, width=32, labels=("PA", "LATERAL"),
                             arch=default_arch("view", 0.125, 1.0, 32, 32), seed=4,
                             break_shortcuts=breakers)  # fmt: skip
        stream = iter(BatchStream(config, samples))
        xs, ys = zip(*(next(stream) for _ in range(5)))
        x, y = torch.cat(xs), torch.cat(ys)
        assert torch.isfinite(x).all() and x.shape == (200, 1, 32, 32)
        means = x.mean(dim=(1, 2, 3))
        pa, lat = means[y == 0], means[y == 1]
        # share of (PA, LATERAL) pairs a mean-grey threshold orders right (the AUC)
        separation[breakers] = float((pa[:, None] < lat[None, :]).float().mean())
    assert separation[False] > 0.95, separation  # the usual jitter leaves the cue
    assert separation[True] < 0.8, separation


def test_quarter_turns_is_an_inference_key_of_the_orientation_stage(tmp_path: Path) -> None:
    import json
    import shutil
    from dataclasses import replace
    from types import SimpleNamespace

    from edge_worker.packs.pack import load_pack
    from export.build.command import worker_options
    from export.build.stages import stage_key

    text = CHEST.read_text()
    recipe = load_recipe(CHEST, "full")  # the chest recipe reads four turns
    orientation = recipe.stages[0]
    assert orientation.quarter_turns
    split: Any = SimpleNamespace(train=[])
    # reading four turns changes nothing of the training: the checkpoint is kept
    assert stage_key(orientation, recipe, "sha", split) == stage_key(
        replace(orientation, quarter_turns=False), recipe, "sha", split)
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("quarter_turns = true", 'quarter_turns = "yes"'))
    with pytest.raises(RecipeError, match="quarter_turns: must be true or false"):
        load_recipe(bad)
    bad.write_text(CHEST.read_text().replace("balance_classes = true",
                                             "balance_classes = true\nquarter_turns = true"))
    with pytest.raises(RecipeError, match=r"unknown key\(s\) \['quarter_turns'\]"):
        load_recipe(bad)  # a view stage has no such key
    pack = ROOT / "models" / "packs" / "chest"
    if not (pack / "manifest.json").is_file():
        return
    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    worker_options(copy, recipe)  # writes the key into the manifest and reseals
    entries = {e["name"]: e for e in json.loads((copy / "manifest.json").read_text())["stages"]}
    assert entries["orientation"]["quarter_turns"] is True and "quarter_turns" not in entries["view"]
    assert load_pack(copy).stage("orientation").options["quarter_turns"] is True  # type: ignore[union-attr]
