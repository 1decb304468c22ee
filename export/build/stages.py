"""Train the recipe's stages one after another, each saved as soon as it is done.

Each stage trains with :func:`models.train.train` (the papers' losses and optimisers,
augmentations of the ankle paper section 5, progress bar with the running loss and the time
left) on the training side of the split, and is measured alone on the held-out side.
The checkpoint (``<work>/checkpoints/<stage>.pt``) is written to a temporary name and moved in
place, so a killed run leaves either a whole checkpoint or none.  It carries a key of what it
was trained from (recipe stage, preset, labels sha256, split); ``--resume`` reuses a checkpoint
whose key matches and retrains any other.

The view, ROI and quality stages read the image turned upright (the worker runs them after
the orientation stage), so their training images are turned upright by their labelled
rotation the way the worker turns them (:func:`edge_worker.pipeline.preprocess.turn_upright`).
The orientation stage also sees each image turned by 90, 180 and 270 degrees with its label
moved (paper 003's rotation augmentation) and learns with the circular loss.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_worker.pipeline.preprocess import box_from_points, turn_upright
from export.build.recipe import Recipe, Stage
from export.build.split import Split
from models.data import Sample
from models.train import TrainConfig, default_arch, train

Log = Callable[[str], None]


def upright(sample: Sample) -> Sample:
    """The sample turned upright by its labelled rotation (box turned with it)."""
    angle = sample.record.rotation_deg
    if not angle:
        return sample
    image, turn = turn_upright(sample.working.astype(np.float32), angle)
    roi = sample.roi
    if roi is not None:
        pts = roi.corners() @ turn.to_upright[:, :2].T + turn.to_upright[:, 2]
        roi = box_from_points(pts.astype(np.float32))
    return Sample(replace(sample.record, rotation_deg=0.0), image.astype(np.float16), roi)


def upright_mask(row: Any) -> np.ndarray:
    """The row's class-index mask in its working frame, turned upright with the image (the
    worker segments the image after the orientation stage has turned it)."""
    import cv2

    h, w = row.sample.working.shape
    mask = cv2.resize(row.class_mask(), (w, h), interpolation=cv2.INTER_NEAREST)
    angle = row.record.rotation_deg
    if not angle:
        return mask
    _, turn = turn_upright(np.zeros((h, w), np.float32), angle)
    return cv2.warpAffine(mask, turn.to_upright, (w, h), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)  # fmt: skip


def quarter_turns(sample: Sample) -> list[Sample]:
    """The sample and its copies turned 90, 180 and 270 degrees counter-clockwise (labels moved).

    ``np.rot90`` turns counter-clockwise as displayed, the phantoms' and the orientation
    stage's sense of ``rotation_deg``, and loses no pixel (no corner cut off).
    """
    angle = sample.record.rotation_deg or 0.0
    out = [sample]
    for k in (1, 2, 3):
        record = replace(sample.record, rotation_deg=(angle + 90.0 * k) % 360.0)
        out.append(Sample(record, np.ascontiguousarray(np.rot90(sample.working, k)), None))
    return out


def samples_for(stage: Stage, rows: list[Sample]) -> list[Sample]:
    """What ``stage`` trains or is measured on: upright images, or all turns for orientation."""
    if stage.task == "orientation":
        if stage.turn_any or not stage.rotate_quarters:
            return rows  # turn_any: every draw is turned at random (models.turns)
        return [turned for s in rows for turned in quarter_turns(s)]
    return [upright(s) for s in rows]


#: Stage keys about how the worker runs the network, not how it is trained: a change keeps
#: the checkpoint.
INFERENCE_ONLY = frozenset({"quarter_turns", "mirrored_look"})


def stage_key(stage: Stage, recipe: Recipe, labels_sha256: str, split: Split,
              upstream: str = "") -> str:  # fmt: skip
    """sha256 of everything a stage's weights depend on (``upstream``: the key of the stage
    it starts from, so that retraining that one retrains this one)."""
    # Only the fields away from their defaults: a build that learns a new recipe key keeps
    # reusing the checkpoints of stages that do not use it.
    defaults = {f.name: f.default for f in fields(Stage)}
    own = {k: v for k, v in asdict(stage).items() if k not in INFERENCE_ONLY
           and (k not in defaults or v != defaults[k] or k in ("name", "task"))}  # fmt: skip
    facts = {
        "stage": own, "preset": recipe.preset, "views": recipe.views,
        "labels_sha256": labels_sha256, "seed": recipe.seed,
        "train": sorted(r.record.path.name for r in split.train),
        **({"upstream": upstream} if upstream else {}),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def _config(stage: Stage, recipe: Recipe, index: int, init: Path | None = None) -> TrainConfig:
    h = stage.hyper
    arch = default_arch(stage.task, h.net_width, 1.0, h.height, h.width)
    if stage.task == "view":
        classes = float(len(recipe.views))
        arch = replace(arch, extra={"classes": classes})
        if stage.backbone == "resnet":  # the orientation network's layout, one output per class
            arch = default_arch("orientation", h.net_width, 1.0, h.height, h.width)
            arch = replace(arch, extra={"classes": classes, "outputs": classes})
    return TrainConfig(task=stage.task, view=stage.view, steps=h.steps, batch=h.batch,
                       height=h.height, width=h.width, lr=h.lr, seed=recipe.seed + 100 + index,
                       arch=arch, labels=recipe.views, resize=h.resize, turn_any=stage.turn_any,
                       balance_classes=stage.balance_classes,
                       break_shortcuts=stage.break_shortcuts, init=init)  # fmt: skip


def train_segment(stage: Stage, recipe: Recipe, split: Split, path: Path, key: str,
                  index: int) -> dict[str, Any]:  # fmt: skip
    """Train ``stage``'s U-Net on its view's training images and masks, measure it on the
    held-out ones, and save the checkpoint (with ``key``) at ``path``; returns its facts."""
    from models.segment import SegmentSpec, dice_per_class, inputs, save, targets, train_segmenter

    h = stage.hyper
    spec = SegmentSpec(stage.classes, h.height, h.width, h.net_width, h.resize)
    train_rows = [r for r in split.train if r.record.view == stage.view and r.mask]
    net, facts = train_segmenter(
        spec, [upright(r.sample).working for r in train_rows], [upright_mask(r) for r in train_rows],
        h.steps, h.batch, h.lr or 3e-3, recipe.seed + 100 + index, stage.name,
        stage.frame_crops)  # fmt: skip
    held = [r for r in split.test if r.record.view == stage.view and r.mask is not None]
    if held:
        with torch.inference_mode():
            probs = net(torch.from_numpy(inputs([upright(r.sample).working for r in held],
                                                spec))).numpy()  # fmt: skip
        truth = targets([upright_mask(r) for r in held], spec)
        per_image = [dice_per_class(p.argmax(0), t, spec.classes) for p, t in zip(probs, truth)]
        facts["dice_mean"] = round(float(np.mean([np.mean(list(d.values())) for d in per_image
                                                  if d])), 4)  # fmt: skip
    facts["n_val"] = len(held)
    save(path, net, spec, stage.view, facts, {"build_key": key})
    return facts


def reusable(path: Path, key: str) -> bool:
    """Whether the checkpoint at ``path`` exists, loads and was trained from ``key``."""
    if not path.is_file():
        return False
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError):
        return False  # a truncated or foreign file: retrain
    return isinstance(saved, dict) and saved.get("build_key") == key


def train_stages(recipe: Recipe, split: Split, labels_sha256: str, work: Path, resume: bool,
                 log: Log = print) -> dict[str, Path]:  # fmt: skip
    """Train (or, with ``resume``, reuse) every stage; returns checkpoint paths by stage name."""
    ckpt_dir = work / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    train_rows = [r.sample for r in split.train]
    test_rows = [r.sample for r in split.test]
    done: dict[str, Path] = {}
    keys: dict[str, str] = {}
    started = time.monotonic()
    # A rules stage is data in the manifest: nothing to train, not counted in the time left;
    # paper 004's extras train by their own recipes (export.build.extras).
    networks = [s for s in recipe.stages if s.network and not s.extra]
    for i, stage in enumerate(networks):
        path = ckpt_dir / f"{stage.name}.pt"
        key = stage_key(stage, recipe, labels_sha256, split,
                        keys.get(stage.init_from, "") if stage.init_from else "")  # fmt: skip
        keys[stage.name] = key
        head = f"[{i + 1}/{len(networks)}] {stage.name}"
        if resume and reusable(path, key):
            log(f"{head}: checkpoint of this recipe, labels and split found: skipped (--resume)")
            done[stage.name] = path
            continue
        h = stage.hyper
        log(f"{head}: {stage.task}{f' {stage.view}' if stage.view else ''}, input "
            f"{h.height}x{h.width}, batch {h.batch}, {h.steps} steps, lr "
            f"{h.lr or 'paper'}, width {h.net_width}, {h.resize}")  # fmt: skip
        if stage.task == "segment":
            facts = train_segment(stage, recipe, split, path, key, i)
            log(f"{head}: held-out Dice (torch) {facts.get('dice_mean')} on {facts['n_val']} images")
        else:
            scratch = ckpt_dir / f".{stage.name}.partial"
            shutil.rmtree(scratch, ignore_errors=True)
            init = done[stage.init_from] if stage.init_from else None
            written = train(_config(stage, recipe, i, init), samples_for(stage, train_rows),
                            samples_for(stage, test_rows), scratch)  # fmt: skip
            saved = torch.load(written, map_location="cpu", weights_only=False)
            saved["build_key"] = key
            tmp = ckpt_dir / f".{stage.name}.pt.tmp"
            torch.save(saved, tmp)
            os.replace(tmp, path)
            shutil.rmtree(scratch, ignore_errors=True)
        done[stage.name] = path
        spent = time.monotonic() - started
        left = spent / (i + 1) * (len(networks) - i - 1)
        log(f"{head}: saved {path.name}; {spent:.0f} s so far, about {left:.0f} s of training left")
    return done
