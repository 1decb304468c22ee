"""Write a volume pack (one ``tiled_volume`` stage) through the export tool's parity gate.

The network is exported by :func:`export.onnx.export_onnx` (3-D input) and checked by
:func:`export.onnx.check_parity` on tiles cut from head phantoms exactly the way the worker cuts
them (:func:`edge_worker.pipeline.volume.batches`); the manifest is written last and sealed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edge_worker.packs.pack import SCHEMA, seal_manifest, sha256_file
from edge_worker.phantoms.mri import make_head
from edge_worker.pipeline.volume import batches, intensity_scale, plan_tiles
from export.onnx import OPSET, check_parity, export_onnx
from models.mri.network import FLAGS, Exported

STAGE = "mri_quality"
THRESHOLDS = {"score_review_below": 6.0, "score_retake_below": 3.0, "flag_review_above": 0.5}
MEAN, STD = 0.3, 0.3


def parity_tiles(tile: int, spacing_mm: tuple[float, float, float], n: int = 4) -> np.ndarray:
    """``(n, 1, t, t, t)`` tiles of a head phantom, normalised as the worker does."""
    shape = tuple(max(tile, int(round(200.0 / s))) for s in spacing_mm)
    vol = make_head(987_654, shape=shape, spacing_mm=spacing_mm)  # type: ignore[arg-type]
    starts = plan_tiles(vol.shape, tile)
    picks = [starts[i] for i in np.linspace(0, len(starts) - 1, n).astype(int)]
    _, out = next(batches(vol, picks, tile, n, intensity_scale(vol, 99.5), MEAN, STD))
    return out.copy()


def stage_entry(onnx_name: str, sha256: str, tile: int, spacing_mm: tuple[float, float, float],
                architecture: str, batch: int = 4) -> dict[str, Any]:  # fmt: skip
    """The manifest entry of the tiled_volume stage (docs/model-pack.md, `tiled_volume`)."""
    return {
        "name": STAGE, "task": "tiled_volume", "file": onnx_name, "sha256": sha256,
        "input": {"name": "image", "depth": tile, "height": tile, "width": tile, "channels": 1,
                  "mean": MEAN, "std": STD},
        "tile": tile, "overlap": "minimal", "spacing_mm": list(spacing_mm), "batch": batch,
        "outputs": ["quality", *FLAGS], "score_range": [0, 10], "thresholds": dict(THRESHOLDS),
        "synthetic": True, "architecture": architecture, "opset": OPSET,
    }  # fmt: skip


def write_volume_pack(
    folder: str | Path, net: nn.Module, *, tile: int, spacing_mm: tuple[float, float, float],
    name: str, version: str, description: str, training_data: dict[str, Any],
    validation: dict[str, Any], architecture: str,
) -> tuple[Path, dict[str, float]]:  # fmt: skip
    """Export ``net`` (raw MIQA outputs) into ``folder`` as a sealed volume pack.

    Returns the manifest's path and the parity errors; raises ``export.onnx.ExportError``
    when the parity gate fails (nothing is sealed then).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)
    wrapped = Exported(net).eval()
    onnx_path = export_onnx(wrapped, folder / f"{STAGE}.onnx", "tiled_volume", 1, tile, tile, depth=tile)
    errors = check_parity(wrapped, onnx_path, parity_tiles(tile, spacing_mm))
    manifest = {
        "schema": SCHEMA, "name": name, "version": version, "description": description,
        "body_parts": ["HEAD", "BRAIN"], "not_for_clinical_use": True,
        "training_data": training_data, "validation": {**validation, "parity_max_abs": errors},
        "stages": [stage_entry(onnx_path.name, sha256_file(onnx_path), tile, spacing_mm, architecture)],
    }  # fmt: skip
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(folder / "manifest.json")
    seal_manifest(folder)
    return folder / "manifest.json", errors
