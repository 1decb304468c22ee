"""The chest pack's paper-004 extras: a research-only finding classifier with its CAM heatmap,
and a synthetic-trained bone-suppression stage, as files and manifest-v2 stage entries.

:func:`train_extras` trains both (each resumable from its checkpoint in ``workdir``, with a
progress bar and the time left), exports them (ONNX Runtime parity gates included) and
returns what the chest pack builder puts in its pack: the files, the stage entries, the
figures and the training-data facts.  Presets: ``short`` (a smoke run, under 3 minutes on
two cores; its figures say nothing) and ``full`` (the recipe the figures are quoted from).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.cam import export_cam_classifier
from export.onnx import OPSET, ExportError, check_parity, strip_build_metadata
from export.pack import sha256_of
from models.chest import bone, classifier
from models.chest.bone import BoneConfig, BoneSuppressor
from models.chest.classifier import ClassifierConfig
from models.chest.multisite import Record, Split

PRESETS: dict[str, tuple[ClassifierConfig, BoneConfig]] = {
    "short": (ClassifierConfig(size=256, steps=30, batch=8, bootstrap=500),
              BoneConfig(size=128, train_phantoms=32, test_phantoms=12, steps=60, batch=6)),
    # Sized for two CPU cores shared with other trainings (about 30 min each): the classifier
    # at 256 px, not the paper's 512 (a 512 px step took 40 s there); more steps help both.
    "full": (ClassifierConfig(size=256, steps=200, batch=8),
             BoneConfig(size=256, train_phantoms=300, test_phantoms=100, steps=120, batch=6)),
}  # fmt: skip
#: The stage names the entries use.
FINDING, FINDING_CAM, BONE = "finding", "finding_cam", "bone_suppression"
RESEARCH_NOTICE = "research only: not a diagnosis"
#: The derived image's DICOM Series Description (an LO: at most 64 characters).
BONE_DESCRIPTION = "bone-suppressed (synthetic-trained, not for diagnosis)"


@dataclass
class Extras:
    """What :func:`train_extras` made: files by pack file name, stage entries and figures."""

    files: dict[str, Path] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)


def _input(size: int, mean: float, std: float) -> dict[str, Any]:
    return {"name": "image", "height": size, "width": size, "channels": 1, "mean": mean, "std": std}


def export_bone(net: BoneSuppressor, size: int, path: Path) -> str:
    """Write the bone suppressor as ONNX (input ``image``, output ``soft_tissue``), gate it
    against torch on phantom radiographs, and return its sha256."""
    net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 1, size, size)
    batch = torch.export.Dim("batch", min=1, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net, (example,), dynamo=True, opset_version=OPSET, input_names=["image"],
            output_names=["soft_tissue"], dynamic_shapes=({0: batch},), external_data=False,
            verbose=False,
        )  # fmt: skip
    if program is None:
        raise ExportError("torch.onnx.export returned nothing for the bone suppressor")
    program.save(str(path))
    strip_build_metadata(path)  # no file paths of the exporting machine in a pack
    radiographs, _ = bone.pairs(range(bone.TEST_SEED_START, bone.TEST_SEED_START + 2), size)
    check_parity(net, path, ((radiographs[:, None] - bone.MEAN) / bone.STD).astype(np.float32))
    return sha256_of(path)


def _licences(records: Sequence[Record]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        if classifier.finding_label(r) is not None:
            counts[r.license] = counts.get(r.license, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def finding_data(licences: dict[str, int], description: str) -> dict[str, Any]:
    """The finding stage's ``training_data``: real images, their licences, research only."""
    return {"kind": "real", "description": description, "licences": licences,
            "research_only": True}  # fmt: skip


def finding_stages(name: str, size: int, onnx_sha: str, head_sha: str, figures: dict[str, Any],
                   data: dict[str, Any], when: dict[str, list[str]]) -> list[dict[str, Any]]:  # fmt: skip
    """The manifest entries of a finding classifier ``name`` (files ``<name>.onnx`` and
    ``<name>_head.npz``) and of its heatmap stage ``<name>_cam``, both research only."""
    feature_hw = size // 128
    return [
        {"name": name, "task": "classify", "file": f"{name}.onnx", "sha256": onnx_sha,
         "input": _input(size, classifier.MEAN, classifier.STD),
         "labels": list(classifier.LABELS),
         "outputs": {"logits": f"(N, {len(classifier.LABELS)})",
                     "features": f"(N, {classifier.FEATURES}, {feature_hw}, {feature_hw})"},
         "reads": {"image": "upright"}, "when": when,
         "architecture": figures["architecture"], "opset": OPSET, "thresholds": {},
         "research_only": True, "training_data": data},
        {"name": f"{name}_cam", "task": "heatmap", "reads": {"classifier": name},
         "file": f"{name}_head.npz", "sha256": head_sha, "research_only": True},
    ]  # fmt: skip


def bone_stage(name: str, config: BoneConfig, onnx_sha: str, figures: dict[str, Any],
               when: dict[str, list[str]]) -> dict[str, Any]:  # fmt: skip
    """The manifest entry of a bone suppressor ``name`` (file ``<name>.onnx``): a ``derive``
    stage on the working image, research only, its training data synthetic."""
    return {
        "name": name, "task": "derive", "file": f"{name}.onnx", "sha256": onnx_sha,
        "input": _input(config.size, bone.MEAN, bone.STD),
        "outputs": {"soft_tissue": f"(N, 1, {config.size}, {config.size})"},
        "reads": {"image": "working"}, "when": when, "description": BONE_DESCRIPTION,
        "architecture": "MONAI 2-D U-Net (residual units) predicting the bone layer, "
                        f"{config.size} px; {figures['loss']}",
        "opset": OPSET, "research_only": True,
        "training_data": {"kind": "synthetic-phantom", "description": figures["data"],
                          "n_train": config.train_phantoms},
    }  # fmt: skip


def train_extras(records: Sequence[Record], split: Split, workdir: Path, preset: str,
                 view_stage: str = "view") -> Extras:  # fmt: skip
    """Train, export and describe the finding classifier (+ heatmap) and the bone suppressor.

    ``records``: every real chest record (for the counts); ``split``: the patient split
    (``split.train`` trains the classifier, ``split.test`` measures it); ``workdir``: where
    checkpoints and exported files go (a rerun resumes); ``preset``: a key of
    :data:`PRESETS`; ``view_stage``: the pack's view stage (the classifier runs on frontal
    images only).  Raises ValueError for an unknown preset, ExportError when a gate fails.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    torch.set_num_threads(1)
    cls_config, bone_config = PRESETS[preset]
    workdir = Path(workdir) / preset
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bone_net, bone_figures = bone.train_bone(bone_config, workdir)
    cls_net, cls_figures = classifier.train_classifier(split.train, split.test, cls_config, workdir)
    files = {f"{FINDING}.onnx": workdir / f"{FINDING}.onnx",
             f"{FINDING}_head.npz": workdir / f"{FINDING}_head.npz",
             f"{BONE}.onnx": workdir / f"{BONE}.onnx"}  # fmt: skip
    cls_sha, head_sha = export_cam_classifier(
        cls_net, (cls_config.size, cls_config.size), files[f"{FINDING}.onnx"],
        files[f"{FINDING}_head.npz"],
    )
    bone_sha = export_bone(bone_net, bone_config.size, files[f"{BONE}.onnx"])
    licences = _licences(records)
    data = finding_data(licences, "chest-multisite (COVID-19 image data collection, Cohen et al., "
                        "arXiv:2003.11597), frontal images with a named finding, train patients")
    stages = [*finding_stages(FINDING, cls_config.size, cls_sha, head_sha, cls_figures, data,
                              {view_stage: ["AP", "PA"]}),
              bone_stage(BONE, bone_config, bone_sha, bone_figures, {view_stage: ["AP", "PA"]})]
    figures = {"preset": preset, "finding_classifier": cls_figures, "bone_suppression": bone_figures,
               "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    training_data = {
        FINDING: data,
        BONE: stages[2]["training_data"],
        "attribution": "J. P. Cohen, P. Morrison, L. Dao et al., COVID-19 Image Data "
                       "Collection, arXiv:2003.11597 (2020)",
    }
    return Extras(files=files, stages=stages, figures=figures, training_data=training_data)
