"""Paper 004's extras in a build: a research-only finding classifier with its heatmap, and a
bone suppressor trained on synthetic chest phantoms (recipe tasks ``finding`` and
``bone_suppression``, docs/recipes.md).

* ``finding`` trains :mod:`models.chest.classifier` (DenseNet-121 behind paper 004's extra
  stem, a GAP + linear head for its class activation maps) on the training side of the
  build's own patient split: the frontal rows whose ``finding`` column names one (COVID-19
  against another finding; the module says why that is what the labels support).  Its AUC,
  with a patient-bootstrap interval, is measured on the pack's held-out patients.
* ``bone_suppression`` trains :mod:`models.chest.bone` (a U-Net, L1 + conditional PatchGAN)
  on synthetic chest phantoms whose bone layer is drawn apart (no real dual-energy pairs
  exist here), measured on phantoms of seeds never trained on.

Both are research only: the stage entries say so, the worker publishes them marked and never
decides on them.  Each trains in ``<work>/checkpoints/<stage>/`` (resumable there, every few
steps) and leaves ``<work>/checkpoints/<stage>.pt`` (the torch module, for the straightforward
pipeline of ``edge-worker bench``) when done.  Without ``--resume`` the folder is cleared
first, so a build trains from scratch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.build.labels import Row
from export.build.recipe import Recipe, Stage
from export.build.split import Split

Log = Callable[[str], None]


@dataclass
class BuiltExtras:
    """What the extra stages made: pack files by name, manifest entries and figures."""

    files: dict[str, Path] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


def chest_records(rows: Sequence[Row]) -> list[Any]:
    """The build's rows as :class:`models.chest.multisite.Record` (what the classifier reads:
    image path, view, patient key, licence and finding), in the rows' order."""
    from models.chest.multisite import Record

    return [Record(id=r.record.path.stem, path=r.record.path, view=r.record.view,
                   raw_view=r.record.view, patient=r.patient, site="", license=r.license or "",
                   source="", lung_mask=None, dev=False, finding=r.finding) for r in rows]  # fmt: skip


def data_key(labels_sha256: str, split: Split) -> str:
    """A digest of the labels file and the training side of the split (first 16 hex digits):
    a classifier checkpoint resumes only on the same data."""
    facts = {"labels": labels_sha256, "train": sorted(r.line for r in split.train)}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def _finding(stage: Stage, recipe: Recipe, split: Split, labels_sha256: str, folder: Path,
             view_stage: str, out: BuiltExtras) -> torch.nn.Module:  # fmt: skip
    from export.cam import export_cam_classifier
    from models.chest import classifier
    from models.chest.extras import finding_data, finding_stages

    h = stage.hyper
    config = classifier.ClassifierConfig(
        size=h.height, steps=h.steps, batch=h.batch, lr=h.lr or 1e-3,
        bootstrap=2000 if recipe.preset == "full" else 200,
        train_key=data_key(labels_sha256, split))  # fmt: skip
    train, test = chest_records(split.train), chest_records(split.test)
    net, figures = classifier.train_classifier(train, test, config, folder)
    onnx, head = folder / f"{stage.name}.onnx", folder / f"{stage.name}_head.npz"
    onnx_sha, head_sha = export_cam_classifier(net, (h.height, h.height), onnx, head)
    files = {onnx.name: onnx, head.name: head}
    used = [r for r in split.train if classifier.finding_class(r.finding, r.record.view) is not None]
    licences = dict(Counter(r.license or recipe.license or "unstated" for r in used).most_common())
    data = finding_data(licences, f"{len(used)} frontal training images of the labels file "
                        "whose `finding` names one (COVID-19 against another finding)")
    out.files.update(files)
    out.stages += finding_stages(stage.name, h.height, onnx_sha, head_sha, figures, data,
                                 {view_stage: list(stage.views)})  # fmt: skip
    out.figures[stage.name] = {"task": "finding", **figures}
    return net


def _bone(stage: Stage, folder: Path, view_stage: str, out: BuiltExtras) -> torch.nn.Module:
    from models.chest import bone
    from models.chest.extras import bone_stage, export_bone

    h = stage.hyper
    config = bone.BoneConfig(size=h.height, train_phantoms=stage.phantoms[0],
                             test_phantoms=stage.phantoms[1], steps=h.steps, batch=h.batch,
                             lr=h.lr or 2e-3)  # fmt: skip
    net, figures = bone.train_bone(config, folder)
    path = folder / f"{stage.name}.onnx"
    sha = export_bone(net, config.size, path)
    out.files[path.name] = path
    out.stages.append(bone_stage(stage.name, config, sha, figures, {view_stage: list(stage.views)}))
    out.figures[stage.name] = {"task": "bone_suppression", **figures}
    return net


def train_extras(recipe: Recipe, split: Split, labels_sha256: str, work: Path, resume: bool,
                 log: Log = print) -> BuiltExtras:  # fmt: skip
    """Train, export and describe the recipe's extra stages (none: an empty result)."""
    out = BuiltExtras()
    extras = [s for s in recipe.stages if s.extra]
    if not extras:
        return out
    view_stage = next(s.name for s in recipe.stages if s.task == "view")
    for i, stage in enumerate(extras):
        folder = work / "checkpoints" / stage.name
        if not resume:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        h = stage.hyper
        log(f"[extra {i + 1}/{len(extras)}] {stage.name}: {stage.task}, input {h.height}x{h.width}, "
            f"batch {h.batch}, {h.steps} steps, on {list(stage.views)} (research only)")
        if stage.task == "finding":
            net = _finding(stage, recipe, split, labels_sha256, folder, view_stage, out)
        else:
            net = _bone(stage, folder, view_stage, out)
        # The straightforward pipeline of ``edge-worker bench`` runs this module.
        torch.save({"module": net.eval(), "task": stage.task}, work / "checkpoints" / f"{stage.name}.pt")
        figures = out.figures[stage.name]
        summary = (f"AUC {figures['auc_unseen_patients']} (95 % CI "
                   f"{figures['auc_95ci_patient_bootstrap']}) on held-out patients"
                   if stage.task == "finding" else f"MAE {figures['network']['mae']} against "
                   f"{figures['baseline_output_equals_input']['mae']} unchanged, unseen phantoms")
        log(f"[extra {i + 1}/{len(extras)}] {stage.name}: {summary}")
    return out


def through_worker(built: BuiltExtras, chain: Sequence[dict[str, Any]], split: Split) -> None:
    """Add each finding stage's AUC as the worker computes it (``through_worker``): on the
    held-out images judged by the whole pipeline (turned upright by the orientation stage,
    run only where the view stage said a view of its ``views``), beside the figure of the
    network alone on the stored images.  ``chain``: the build's judged held-out records."""
    from models.chest import classifier

    truth = {r.line: classifier.finding_class(r.finding, r.record.view) for r in split.test}
    findings = {s["name"] for s in built.stages if s["task"] == "classify"}
    for name, figures in built.figures.items():
        if name not in findings:
            continue
        labelled = [r for r in chain if truth.get(r["line"]) is not None]
        scored = [(r["research"][name][classifier.LABELS[1]], truth[r["line"]]) for r in labelled
                  if name in r.get("research", {})]  # fmt: skip
        scores = np.array([s for s, _ in scored], np.float64)
        labels = np.array([y for _, y in scored], np.int64)
        value = classifier.auc(scores, labels) if scored else float("nan")
        figures["through_worker"] = {
            "auc": None if np.isnan(value) else round(value, 4),
            "images": len(scored),
            "not_run": len(labelled) - len(scored),  # the view stage said another view
            "note": "the whole pipeline on ONNX Runtime: upright turn by the orientation stage, "
                    "run where the view stage says AP or PA",
        }  # fmt: skip


def add_extras(pack: Path, built: BuiltExtras) -> None:
    """Copy the extras' files into ``pack`` and append their entries to its manifest (resealed)."""
    from edge_worker.packs.pack import seal_manifest

    if not built.stages:
        return
    for name, path in built.files.items():
        shutil.copyfile(path, pack / name)
    path = pack / "manifest.json"
    manifest = json.loads(path.read_text())
    names = {s["name"] for s in built.stages}
    manifest["stages"] = [s for s in manifest["stages"] if s["name"] not in names] + built.stages
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    seal_manifest(pack)
