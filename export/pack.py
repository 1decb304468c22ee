"""Model pack writer: ONNX files + ``manifest.json`` exactly per ``docs/model-pack.md``.

A pack is assembled from :class:`StageFile` entries (an ONNX file plus what the manifest says
about it); the writer copies the files, computes their sha256 and writes the manifest last, so
a half-written folder never carries a manifest.  A :class:`StageFile` names its network by
the role it plays in the ankle-style chain (``view``, ``roi``, ``quality``, ``orientation``);
the manifest is written in format version 2, with the tasks, reads and ``when`` that role
implies (:func:`edge_worker.packs.pack_v1.upgrade_manifest`, the adapter the worker reads version-1
packs through, so both say the same).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from edge_worker.packs.pack import SCHEMA, seal_manifest
from edge_worker.packs.pack_v1 import SCHEMA_V1, upgrade_manifest

#: The roles a StageFile may play (the version-1 task names).
TASKS = ("view", "roi", "quality", "orientation")

#: Default thresholds per task (ankle paper: ROI mask threshold 0.7).
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "view": {"min_confidence": 0.8},
    "roi": {"mask": 0.7, "min_area_fraction": 0.01},
    "quality": {"review_margin": 0.15},
    "orientation": {"min_norm": 0.5},
}
OUTPUT_TEXT = {
    "view": "(N, {n}) raw class scores in `labels` order; softmax gives probabilities",
    "roi": "(N, 1, {h}, {w}) ROI probability after sigmoid",
    "quality": "(N, 1) continuous quality on the 1-3 scale (1 best); class = round(clip(score, 1, 3))",
    "orientation": "(N, 2) raw (cos a, sin a), NOT L2-normalised: a = atan2(sin, cos) is the "
    "counter-clockwise rotation of the anatomy from upright; the norm is the confidence "
    "(compare with min_norm)",
}


@dataclass(frozen=True)
class StageFile:
    """One stage of a pack: the ONNX file on disk and its manifest entry's facts."""

    name: str
    task: str
    onnx_path: Path
    output_name: str
    #: height, width, channels, mean, std; ``resize`` (``stretch`` when absent).
    input: dict[str, float | str]
    architecture: str
    opset: int
    applies_to_view: str | None = None
    labels: list[str] | None = None
    thresholds: dict[str, float] = field(default_factory=dict)


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stage_entry(stage: StageFile, sha256: str) -> dict[str, object]:
    """The version-1 entry for one stage; :func:`write_pack` writes it as version 2."""
    if stage.task not in TASKS:
        raise ValueError(f"stage {stage.name}: task must be one of {TASKS}, got {stage.task!r}")
    h, w = int(stage.input["height"]), int(stage.input["width"])
    text = OUTPUT_TEXT[stage.task].format(n=len(stage.labels or []), h=h, w=w)
    entry: dict[str, object] = {
        "name": stage.name,
        "task": stage.task,
        "applies_to_view": stage.applies_to_view,
        "file": f"{stage.name}.onnx",
        "sha256": sha256,
        "input": {
            "name": "image",
            "height": h,
            "width": w,
            "channels": int(stage.input["channels"]),
            "mean": float(stage.input["mean"]),
            "std": float(stage.input["std"]),
        },
        "outputs": {stage.output_name: text},
        "thresholds": {**DEFAULT_THRESHOLDS[stage.task], **stage.thresholds},
        "architecture": stage.architecture,
        "opset": stage.opset,
    }
    resize = str(stage.input.get("resize", "stretch"))
    if resize != "stretch":  # stretch is the default: a stretched stage's entry stays as it was
        entry["input"] = {**entry["input"], "resize": resize}  # type: ignore[dict-item]
    if stage.task == "view":
        entry["labels"] = list(stage.labels or [])
    return entry


def write_pack(
    folder: str | Path,
    stages: list[StageFile],
    *,
    name: str,
    version: str,
    description: str,
    training_data: dict[str, object],
    validation: dict[str, object],
    body_parts: tuple[str, ...] = ("ANKLE",),
    not_for_clinical_use: bool = True,
) -> Path:
    """Write the pack folder and return the manifest's path.

    Stale ``*.onnx`` files in ``folder`` are removed so that the folder holds exactly what the
    manifest lists.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique: {names}")
    manifest_path = folder / "manifest.json"
    manifest_path.unlink(missing_ok=True)
    keep = {f"{n}.onnx" for n in names}
    for old in folder.glob("*.onnx"):
        if old.name not in keep:
            old.unlink()
    entries = []
    for stage in stages:
        target = folder / f"{stage.name}.onnx"
        if stage.onnx_path.resolve() != target.resolve():
            shutil.copyfile(stage.onnx_path, target)
        entries.append(stage_entry(stage, sha256_of(target)))
    manifest = {
        "schema": SCHEMA_V1,
        "name": name,
        "version": version,
        "description": description,
        "body_parts": list(body_parts),
        "not_for_clinical_use": bool(not_for_clinical_use),
        "training_data": training_data,
        "validation": validation,
        "stages": entries,
    }
    manifest = upgrade_manifest(manifest)
    assert manifest["schema"] == SCHEMA
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    seal_manifest(folder)
    return manifest_path
