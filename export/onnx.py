"""Checkpoint -> ONNX, and the parity gate that refuses an export which does not match torch.

The exporter is torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``) at opset
:data:`OPSET`, with a dynamic batch axis; the legacy TorchScript exporter is deprecated in
torch 2.13.  Every file has one input ``image`` and one output named per the pack contract.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.pack import StageFile
from models.data import VIEW_LABELS
from models.networks import ArchConfig, build

OPSET = 18
OUTPUT_NAMES = {"view": "logits", "roi": "mask", "quality": "score", "orientation": "cossin",
                "tiled_volume": "outputs"}
#: The gate: ``max |onnx - torch| <= ATOL + RTOL * max |torch|`` for every output.
ATOL, RTOL = 1e-4, 1e-4


class ExportError(Exception):
    """An export could not be made or failed its parity gate."""


@dataclass(frozen=True)
class Loaded:
    """A network rebuilt from a checkpoint, in eval mode, with the checkpoint's metadata."""

    net: nn.Module
    task: str
    view: str | None
    arch: ArchConfig
    input: dict[str, float | str]
    meta: dict[str, object]


def load_checkpoint(path: str | Path) -> Loaded:
    """Rebuild the network saved by ``models.train`` at ``path``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    arch_dict = dict(ckpt["arch"])
    for key in ("blocks", "aspp_rates"):
        arch_dict[key] = tuple(arch_dict[key])
    arch = ArchConfig(**arch_dict)
    net = build(arch)
    net.load_state_dict(ckpt["state_dict"])
    net.eval()
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return Loaded(net, ckpt["task"], ckpt["view"], arch, dict(ckpt["input"]), meta)


def export_onnx(
    net: nn.Module, path: str | Path, task: str, channels: int, height: int, width: int,
    depth: int = 0,
) -> Path:
    """Write ``net`` as ONNX at ``path`` (input ``image``, output per task, batch dynamic).

    ``depth`` > 0: a 3-D network, input ``(N, C, depth, height, width)`` (a tiled_volume tile).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net.eval()
    # Batch 2 in the example: torch.export specialises sizes 0 and 1.
    example = torch.zeros(2, channels, *((depth,) if depth else ()), height, width)
    batch = torch.export.Dim("batch", min=1, max=256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net, (example,), dynamo=True, opset_version=OPSET, input_names=["image"],
            output_names=[OUTPUT_NAMES[task]], dynamic_shapes=({0: batch},),
            external_data=False, verbose=False,
        )  # fmt: skip
    if program is None:
        raise ExportError(f"torch.onnx.export returned nothing for {task}")
    program.save(str(path))
    strip_build_metadata(path)
    return path


def strip_build_metadata(path: str | Path) -> None:
    """Drop what the exporter records about the build machine from the ONNX file at ``path``:
    each node's source stack trace, module path and FX node (file paths of the machine that
    exported it).  Nothing the graph computes changes."""
    import onnx

    model = onnx.load(str(path))
    graphs = [model.graph, *(f for f in model.functions)]
    for graph in graphs:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
        for info in getattr(graph, "value_info", []):
            del info.metadata_props[:]
    model.doc_string = ""
    onnx.save(model, str(path))


def parity_errors(
    net: nn.Module, onnx_path: str | Path, batch: np.ndarray
) -> dict[str, tuple[float, float]]:
    """Per output: (largest |ONNX Runtime - torch|, largest |torch|) on ``batch``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    ort_out = session.run(names, {"image": batch.astype(np.float32)})
    net.eval()
    with torch.inference_mode():
        torch_out = net(torch.from_numpy(batch.astype(np.float32)))
    torch_outs = torch_out if isinstance(torch_out, (tuple, list)) else (torch_out,)
    if len(torch_outs) != len(names):
        raise ExportError(f"parity: ONNX has outputs {names}, torch gives {len(torch_outs)}")
    errors = {}
    for name, a, b in zip(names, ort_out, torch_outs):
        if a.shape != tuple(b.shape):
            raise ExportError(f"parity: output {name!r} shape {a.shape} != torch {tuple(b.shape)}")
        ref = b.numpy()
        errors[name] = (float(np.abs(a - ref).max()), float(np.abs(ref).max()))
    return errors


def check_parity(
    net: nn.Module, onnx_path: str | Path, batch: np.ndarray,
    atol: float = ATOL, rtol: float = RTOL,
) -> dict[str, float]:  # fmt: skip
    """The gate: raise :class:`ExportError` naming the output when ONNX and torch differ.

    The bound per output is ``atol + rtol * max |torch output|``.  Returns the errors.
    """
    errors = parity_errors(net, onnx_path, batch)
    for name, (error, ref_max) in errors.items():
        bound = atol + rtol * ref_max
        if not error <= bound:
            raise ExportError(
                f"parity gate failed for {Path(onnx_path).name}: output {name!r} max abs error "
                f"{error:.3g} > tolerance {bound:.3g} (atol {atol}, rtol {rtol})"
            )
    return {name: error for name, (error, _) in errors.items()}


def phantom_batch(task: str, input_spec: Mapping[str, float | str], view: str | None, n: int = 4,
                  seed: int = 987_654) -> np.ndarray:  # fmt: skip
    """``(n, C, H, W)`` network inputs made from phantoms the way the worker makes them
    (``input_spec["resize"]``, default ``stretch``, lays them out)."""
    from edge_worker.phantoms.ankle import render
    from edge_worker.pipeline.preprocess import crop_box, to_tensor, working_image

    h, w, c = int(input_spec["height"]), int(input_spec["width"]), int(input_spec["channels"])
    mean, std = float(input_spec["mean"]), float(input_spec["std"])
    resize = str(input_spec.get("resize", "stretch"))
    rng = np.random.default_rng(seed)
    tensors = []
    for i in range(n):
        phantom_view = view or ("AP", "LAT")[i % 2]
        pixels, truth = render(rng, phantom_view, 1 + i % 3, float(rng.uniform(0, 360)), 1024)
        working, scale = working_image(pixels.astype(np.float32) / 65535.0)
        if task == "quality":
            working = crop_box(working, truth.roi.scaled(scale, scale), h, w, resize)
        tensors.append(to_tensor(working, h, w, c, mean, std, resize)[0])
    return np.stack(tensors)


def export_stage(
    checkpoint: str | Path, out_dir: str | Path, atol: float = ATOL, rtol: float = RTOL
) -> tuple[StageFile, dict[str, float]]:
    """Checkpoint -> ``<out_dir>/<stage>.onnx`` through the parity gate.

    Returns the pack stage (named after the checkpoint: ``view``, ``roi_ap``, ...) and the
    parity errors per output.  Raises :class:`ExportError` when the gate fails.
    """
    loaded = load_checkpoint(checkpoint)
    name = Path(checkpoint).stem
    spec = loaded.input
    onnx_path = export_onnx(loaded.net, Path(out_dir) / f"{name}.onnx", loaded.task,
                            int(spec["channels"]), int(spec["height"]), int(spec["width"]))
    batch = phantom_batch(loaded.task, spec, loaded.view)
    errors = check_parity(loaded.net, onnx_path, batch, atol, rtol)
    stage = StageFile(
        name=name,
        task=loaded.task,
        onnx_path=onnx_path,
        output_name=OUTPUT_NAMES[loaded.task],
        input=spec,
        architecture=loaded.arch.describe(),
        opset=OPSET,
        applies_to_view=loaded.view,
        labels=list(loaded.meta.get("labels") or VIEW_LABELS) if loaded.task == "view" else None,  # type: ignore[call-overload]
    )
    return stage, errors
