"""Tiny version-2 packs whose networks are written by hand with ``onnx.helper``, for the tasks.

Each network is a few 1x1 convolutions, pooling and a linear layer with chosen weights, so its
answer on a drawn image is known exactly: the tests check what every task makes of it, run
through real ONNX Runtime sessions and the worker's pack loader, with no training.  Inputs are
32 x 32, one channel, normalised as ``(pixel - 0.5) / 0.25`` (so a pixel of 1.0 reads 2.0).

* ``view``: single-label, labels ``A``/``B``; logits ``[5, 0]`` whatever the image.
* ``flags``: multi-label, labels ``bright_spot``/``dark_field``; features ``relu(x)`` and
  ``relu(-x)``, global average pooling and a linear head: a CAM classifier.
* ``seg``: softmax over ``background`` (1.0), ``bright`` (x), ``dark`` (-x): a pixel above 0.75
  is bright, below 0.25 dark.
* ``roi``: sigmoid(4 x), class ``roi`` with a box: pixels above about 0.55.
* ``score``: ``1 + 0.5 * mean(x)`` of what it reads (the ROI crop: 2.0 for a white crop).
* ``derive``: an image-to-image network, ``soft_tissue = 0.5 * pixel`` (a 1x1 convolution
  undoing the input normalisation, halved).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_worker.packs.pack import seal_manifest

SIZE = 32
INPUT = {"name": "image", "height": SIZE, "width": SIZE, "channels": 1, "mean": 0.5, "std": 0.25}
FLAG_WEIGHT = np.array([[4.0, 0.0], [0.0, 4.0]], dtype=np.float32)
FLAG_BIAS = np.array([-1.0, -1.0], dtype=np.float32)


def _model(nodes: list[Any], outputs: list[Any], inits: list[Any]) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])
    graph = helper.make_graph(nodes, "tiny", [image], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _init(name: str, array: np.ndarray) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _out(name: str, shape: list[Any]) -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _head(source: str, weight: np.ndarray, bias: np.ndarray, out: str) -> tuple[list[Any], list[Any]]:
    """Global average pooling of ``source``, then ``out = pooled @ weight.T + bias``."""
    from onnx import helper

    nodes = [
        helper.make_node("GlobalAveragePool", [source], [f"{out}_pool"]),
        helper.make_node("Flatten", [f"{out}_pool"], [f"{out}_flat"]),
        helper.make_node("Gemm", [f"{out}_flat", f"{out}_w", f"{out}_b"], [out], transB=1),
    ]
    return nodes, [_init(f"{out}_w", weight), _init(f"{out}_b", bias)]


def view_model() -> bytes:
    nodes, inits = _head("image", np.zeros((2, 1)), np.array([5.0, 0.0]), "logits")
    return _model(nodes, [_out("logits", ["N", 2])], inits)


def flags_model() -> bytes:
    from onnx import helper

    conv = [helper.make_node("Conv", ["image", "fw", "fb"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["features"])]  # fmt: skip
    nodes, inits = _head("features", FLAG_WEIGHT, FLAG_BIAS, "logits")
    inits += [_init("fw", np.array([1.0, -1.0]).reshape(2, 1, 1, 1)), _init("fb", np.zeros(2))]
    return _model(conv + nodes, [_out("logits", ["N", 2]), _out("features", ["N", 2, SIZE, SIZE])], inits)


def seg_model() -> bytes:
    from onnx import helper

    node = helper.make_node("Conv", ["image", "sw", "sb"], ["mask"])
    inits = [_init("sw", np.array([0.0, 1.0, -1.0]).reshape(3, 1, 1, 1)),
             _init("sb", np.array([1.0, 0.0, 0.0]))]  # fmt: skip
    return _model([node], [_out("mask", ["N", 3, SIZE, SIZE])], inits)


def roi_model() -> bytes:
    from onnx import helper

    nodes = [helper.make_node("Conv", ["image", "rw", "rb"], ["pre"]),
             helper.make_node("Sigmoid", ["pre"], ["mask"])]  # fmt: skip
    inits = [_init("rw", np.full((1, 1, 1, 1), 4.0)), _init("rb", np.zeros(1))]
    return _model(nodes, [_out("mask", ["N", 1, SIZE, SIZE])], inits)


def score_model() -> bytes:
    nodes, inits = _head("image", np.array([[0.5]]), np.array([1.0]), "score")
    return _model(nodes, [_out("score", ["N", 1])], inits)


def derive_model() -> bytes:
    from onnx import helper

    # (pixel - 0.5) / 0.25 in: 0.125 * x + 0.25 = 0.5 * pixel out.
    node = helper.make_node("Conv", ["image", "dw", "db"], ["soft_tissue"])
    inits = [_init("dw", np.full((1, 1, 1, 1), 0.125)), _init("db", np.array([0.25]))]
    return _model([node], [_out("soft_tissue", ["N", 1, SIZE, SIZE])], inits)


MODELS = {"derive": derive_model, "view": view_model, "flags": flags_model, "seg": seg_model, "roi": roi_model,
          "score": score_model}  # fmt: skip


def network(name: str, task: str, **fields: Any) -> dict[str, Any]:
    """A network stage entry for the model ``name`` of :data:`MODELS` (file written later)."""
    return {"name": name, "task": task, "file": f"{name}.onnx", "input": dict(INPUT),
            "thresholds": {}, "architecture": "hand-written ONNX", "opset": 18, **fields}  # fmt: skip


VIEW = network("view", "classify", labels=["A", "B"], outputs={"logits": "(N, 2)"})
FLAGS = network("flags", "classify", labels=["bright_spot", "dark_field"], multi_label=True,
                outputs={"logits": "(N, 2)", "features": "(N, 2, 32, 32)"})  # fmt: skip
SEG = network("seg", "segment", classes=["background", "bright", "dark"], activation="softmax",
              outputs={"mask": "(N, 3, 32, 32)"})  # fmt: skip
ROI = network("roi", "segment", classes=["roi"], activation="sigmoid", box="roi",
              thresholds={"mask": 0.7, "min_area_fraction": 0.01}, outputs={"mask": "(N, 1, 32, 32)"})  # fmt: skip
SCORE = network("score", "regress", reads={"image": "upright", "crop": "roi"},
                outputs={"score": "(N, 1)"}, thresholds={"review_margin": 0.15})  # fmt: skip
DERIVE = network("derive", "derive", reads={"image": "working"},
                 description="half brightness (test)", outputs={"soft_tissue": "(N, 1, 32, 32)"},
                 training_data={"kind": "synthetic-test"})  # fmt: skip
CAM = {"name": "cam", "task": "heatmap", "reads": {"classifier": "flags"}, "file": "cam.npz"}


def write_tiny_pack(dest: Path, stages: list[dict[str, Any]], judged_by: list[str] | None = None,
                    **manifest: Any) -> Path:  # fmt: skip
    """Write a sealed version-2 pack of ``stages`` into ``dest``; returns ``dest``.

    Network stages get their model of :data:`MODELS` by name (a stage named ``seg_b`` gets
    ``seg``); a heatmap stage gets the flags head as its ``.npz``.  The sha256 of every file is
    filled in unless the entry already has one.
    """
    dest.mkdir(parents=True, exist_ok=True)
    entries = []
    for stage in stages:
        entry = json.loads(json.dumps(stage))
        if "file" in entry and "sha256" not in entry:
            path = dest / entry["file"]
            if entry["task"] == "heatmap":
                np.savez(path, weight=FLAG_WEIGHT, bias=FLAG_BIAS)
            else:
                path.write_bytes(MODELS[entry["name"].split("_")[0]]())
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        entries.append(entry)
    body = {
        "schema": "edge-worker/model-pack@2", "name": "tiny", "version": "0.0.1",
        "description": "hand-written networks for the task tests", "body_parts": ["PHANTOM"],
        "not_for_clinical_use": True, "training_data": {"kind": "synthetic-none"},
        "validation": {}, "view_stage": "view", "stages": entries,
        "decision": {"judged_by": list(judged_by or [])}, **manifest,
    }  # fmt: skip
    (dest / "manifest.json").write_text(json.dumps(body, indent=1))
    seal_manifest(dest)
    return dest


def square(x0: int, y0: int, x1: int, y1: int, value: float = 1.0, back: float = 0.5,
           size: int = 256) -> np.ndarray:  # fmt: skip
    """A ``size`` px working image of grey ``back`` with a square of ``value`` (in 32 px units)."""
    image = np.full((SIZE, SIZE), back, dtype=np.float32)
    image[y0:y1, x0:x1] = value
    return np.kron(image, np.ones((size // SIZE, size // SIZE), dtype=np.float32))
