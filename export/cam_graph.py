"""Give an already exported classifier a ``features`` output, so any pack's classifier can have
a heatmap stage without retraining or re-exporting from torch.

A classifier whose head is global average pooling and one linear layer ends, in ONNX, in
``GlobalAveragePool`` (or ``ReduceMean`` over H and W) -> ``Flatten``/``Reshape`` -> ``Gemm``.
:func:`expose_features` finds that chain above the ``logits`` output, adds the pooled tensor
``(N, C, h, w)`` as a second output ``features`` (the graph computes nothing new) and writes
the ``Gemm``'s weight and bias as the ``.npz`` a ``heatmap`` stage reads.  One gate, as in
:mod:`export.cam`: in ONNX Runtime, the new model's logits equal the old one's, and the pooled
features through the ``.npz`` head give them back.  A graph of another shape is refused
with the node that broke the pattern; nothing is guessed.

Usage: ``python3 -m export.cam_graph view.onnx view_cam.onnx view_head.npz``.  onnx, ONNX
Runtime and numpy only.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from export.onnx import ATOL, RTOL, ExportError
from export.pack import sha256_of

#: Nodes between the pooling and the head that only change the shape.
_RESHAPES = ("Flatten", "Reshape", "Squeeze")


def _initializer(graph: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return np.asarray(numpy_helper.to_array(init))
    for node in graph.node:  # opset 18 passes ReduceMean's axes as an input, often a Constant
        if node.op_type == "Constant" and node.output[0] == name:
            return np.asarray(numpy_helper.to_array(node.attribute[0].t))
    return None


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _pool_input(graph: Any, start: str) -> str:
    """The tensor the global average pooling above ``start`` reads (after shape-only nodes)."""
    producers = {out: node for node in graph.node for out in node.output}
    name = start
    while True:
        node = producers.get(name)
        if node is None:
            raise ExportError(f"'{name}' is a graph input: no pooling before the head")
        if node.op_type in _RESHAPES:
            name = node.input[0]
            continue
        if node.op_type == "GlobalAveragePool":
            return str(node.input[0])
        if node.op_type == "ReduceMean":
            axes = _attr(node, "axes", None)
            if axes is None and len(node.input) > 1:
                found = _initializer(graph, node.input[1])
                axes = None if found is None else found.tolist()
            if axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3]:
                return str(node.input[0])
            raise ExportError(f"node {node.name or node.op_type}: ReduceMean over axes {axes}, "
                              "not the spatial axes (2, 3)")  # fmt: skip
        raise ExportError(f"node {node.name or node.op_type} ({node.op_type}) sits between the "
                          "head and the pooling: the head is not GAP + one linear layer")  # fmt: skip


def _head(graph: Any, logits: str) -> tuple[Any, np.ndarray, np.ndarray]:
    producers = {out: node for node in graph.node for out in node.output}
    gemm = producers.get(logits)
    if gemm is None or gemm.op_type != "Gemm":
        found = "a graph input" if gemm is None else gemm.op_type
        raise ExportError(f"output '{logits}' comes from {found}, not a Gemm (linear layer)")
    if _attr(gemm, "transA", 0) or _attr(gemm, "alpha", 1.0) != 1.0 or _attr(gemm, "beta", 1.0) != 1.0:
        raise ExportError("the head Gemm has transA, alpha or beta set: not a plain linear layer")
    weight = _initializer(graph, gemm.input[1])
    if weight is None:
        raise ExportError(f"the head Gemm's weight '{gemm.input[1]}' is not a constant")
    weight = weight if _attr(gemm, "transB", 0) else weight.T
    bias = _initializer(graph, gemm.input[2]) if len(gemm.input) > 2 else None
    bias = np.zeros(weight.shape[0], np.float32) if bias is None else bias.reshape(-1)
    if weight.dtype != np.float32 or bias.dtype != np.float32:
        raise ExportError(f"the head is {weight.dtype}/{bias.dtype}, not float32 (never converted)")
    return gemm, weight, np.broadcast_to(bias, (weight.shape[0],)).astype(np.float32)


def _input_shape(graph: Any) -> tuple[str, tuple[int, ...]]:
    tensor = graph.input[0]
    dims = [d.dim_value for d in tensor.type.tensor_type.shape.dim]
    if len(dims) != 4 or min(dims[1:]) < 1:
        raise ExportError(f"input '{tensor.name}' is {dims}: expected (N, C, H, W) with fixed C, H, W")
    return str(tensor.name), (3, *dims[1:])


def expose_features(onnx_in: str | Path, onnx_out: str | Path, head_out: str | Path,
                    logits: str = "logits", seed: int = 2016) -> tuple[str, str]:  # fmt: skip
    """Write ``onnx_in`` with an added output ``features`` to ``onnx_out`` and its head to
    ``head_out`` (``.npz`` with ``weight`` (K, C), ``bias`` (K,)); return both sha256.

    Raises :class:`export.onnx.ExportError` when the head is not GAP + one linear layer, the
    output already exists, or the gate fails (see the module docstring).
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    onnx_out, head_out = Path(onnx_out), Path(head_out)
    if head_out.suffix != ".npz":
        raise ExportError(f"the head file must end in .npz, got {head_out.name}")
    model = onnx.load(str(onnx_in))
    graph = model.graph
    if any(o.name == "features" for o in graph.output):
        raise ExportError(f"{Path(onnx_in).name} already outputs 'features'")
    gemm, weight, bias = _head(graph, logits)
    pooled = _pool_input(graph, gemm.input[0])
    graph.node.append(helper.make_node("Identity", [pooled], ["features"], name="expose_features"))
    graph.output.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", weight.shape[1], "h", "w"]))
    onnx.checker.check_model(model)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(onnx_out))
    np.savez(head_out, weight=weight, bias=bias)
    name, shape = _input_shape(graph)
    batch = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    providers = ["CPUExecutionProvider"]
    (before,) = ort.InferenceSession(str(onnx_in), providers=providers).run([logits], {name: batch})
    after, features = ort.InferenceSession(str(onnx_out), providers=providers).run([logits, "features"], {name: batch})
    bound = ATOL + RTOL * float(np.abs(before).max())
    if features.ndim != 4 or features.shape[1] != weight.shape[1]:
        raise ExportError(f"features {features.shape} do not fit the head {weight.shape}")
    rebuilt = features.astype(np.float64).mean(axis=(2, 3)) @ weight.T.astype(np.float64) + bias
    for what, error in (("logits changed", np.abs(after - before).max()),
                        ("head does not give the logits back", np.abs(rebuilt - before).max())):  # fmt: skip
        if not float(error) <= bound:
            raise ExportError(f"{onnx_out.name}: {what}: max abs error {float(error):.3g} > {bound:.3g}")
    return sha256_of(onnx_out), sha256_of(head_out)


def add_heatmap_stage(pack_dir: str | Path, classifier: str = "view") -> str:
    """Give the pack at ``pack_dir`` a ``heatmap`` stage on its ``classifier`` stage, in place.

    The classifier's ONNX file gains the ``features`` output (:func:`expose_features`, its
    gate included), its head is written beside it as ``<classifier>_head.npz``, the heatmap
    stage ``<classifier>_cam`` goes right after it in the manifest, and the manifest is
    resealed.  Returns the heatmap stage's name.  Raises :class:`ExportError` when the
    classifier is not GAP + one linear layer or already has ``features``.
    """
    import json
    import shutil
    import tempfile

    from edge_worker.packs.pack import seal_manifest

    root = Path(pack_dir)
    manifest = json.loads((root / "manifest.json").read_text())
    stages = manifest["stages"]
    index = next((i for i, s in enumerate(stages) if s["name"] == classifier), None)
    if index is None or stages[index].get("task") != "classify":
        raise ExportError(f"{root.name}: no classify stage named {classifier!r}")
    entry = stages[index]
    onnx_path, head = root / str(entry["file"]), root / f"{classifier}_head.npz"
    with tempfile.TemporaryDirectory() as tmp:
        original = Path(tmp) / onnx_path.name  # the gate compares against the untouched file
        shutil.copyfile(onnx_path, original)
        onnx_sha, head_sha = expose_features(original, onnx_path, head)
    entry["sha256"] = onnx_sha
    entry.setdefault("outputs", {})["features"] = (
        "(N, C, h, w) the feature map the head pools (export.cam_graph)")
    name = f"{classifier}_cam"
    stages.insert(index + 1, {"name": name, "task": "heatmap", "reads": {"classifier": classifier},
                              "file": head.name, "sha256": head_sha})  # fmt: skip
    tmp_manifest = root / "manifest.json.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp_manifest.replace(root / "manifest.json")
    seal_manifest(root)
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m export.cam_graph", description=__doc__.split("\n\n")[0])
    parser.add_argument("onnx_in", type=Path)
    parser.add_argument("onnx_out", type=Path)
    parser.add_argument("head_out", type=Path, help="the .npz a heatmap stage reads")
    parser.add_argument("--logits", default="logits", help="the classifier's logits output")
    args = parser.parse_args(argv)
    onnx_sha, head_sha = expose_features(args.onnx_in, args.onnx_out, args.head_out, args.logits)
    print(f"{args.onnx_out}: sha256 {onnx_sha}\n{args.head_out}: sha256 {head_sha}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
