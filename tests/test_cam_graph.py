"""A heatmap on a classifier of any pack: the view classifier of the ankle demo pack 1.1 (kept
as a test pack; the built 2.x has its heatmap stage from the build) exports no ``features``;
:func:`export.cam_graph.expose_features` adds them to its ONNX file (no torch, no retraining),
and the worker then maps the view label's evidence, overlay included.

Real parts: the committed ankle demo pack 1.1, ONNX Runtime sessions, an ankle phantom DICOM file
through the ingest, the verdict against its schema.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_worker.backends import select
from edge_worker.ingest.types import IngestPolicy
from edge_worker.judging.process import Judge
from edge_worker.packs.pack import load_pack
from edge_worker.phantoms.ankle import write_phantom
from edge_worker.pipeline.runner import Pipeline
from export.onnx import ExportError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
# A pack whose view classifier exports no features: the ankle demo pack of version 1.1.
DEMO = ROOT / "tests" / "data" / "packs" / "ankle-demo-1.1"


def _with_view_heatmap(dest: Path) -> Path:
    from export.cam_graph import add_heatmap_stage

    shutil.copytree(DEMO, dest)
    assert add_heatmap_stage(dest, "view") == "view_cam"
    return dest


def test_the_demo_view_classifier_gets_a_heatmap_without_retraining(tmp_path: Path) -> None:
    schema = json.loads((ROOT / "edge_worker" / "schema" / "verdict.schema.json").read_text())
    pack = _with_view_heatmap(tmp_path / "pack")
    path = tmp_path / "ankle.dcm"
    write_phantom(path, seed=12, view="AP", grade=1, size=512)
    backend = select(["onnxruntime-cpu"])
    before = Judge(Pipeline(load_pack(DEMO), backend), "s", "x", IngestPolicy())(path).payload
    after = Judge(Pipeline(load_pack(pack), backend), "s", "x", IngestPolicy(), heatmap_overlay_size=64)(path).payload
    jsonschema.validate(after, schema)
    # The added output changes nothing the classifier said.
    assert after["view"] == before["view"] and after["decision"] == before["decision"]
    label = after["view"]["label"]
    heat = after["heatmaps"][label]
    assert heat["stage"] == "view_cam" and heat["peak_value"] == pytest.approx(1.0)
    assert 0.0 < heat["area_fraction"] < 1.0
    png = base64.b64decode(heat["overlay"].split(",", 1)[1])
    overlay = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    # The whole stored image, its aspect ratio kept (the shrink averages the peak a little).
    from pydicom import dcmread

    stored = dcmread(path, stop_before_pixels=True)
    scale = 64 / max(stored.Rows, stored.Columns)
    assert overlay.shape == (round(stored.Rows * scale), round(stored.Columns * scale))
    assert overlay.max() >= 200 and overlay.min() == 0


def test_a_head_that_is_not_pooling_plus_linear_is_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    from export.cam_graph import expose_features

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])
    w = numpy_helper.from_array(np.ones((2, 64), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(2, np.float32), "b")
    nodes = [helper.make_node("Flatten", ["image"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)]  # fmt: skip
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w, b]),
                              opset_imports=[helper.make_opsetid("", 18)])  # fmt: skip
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "flat.onnx"))
    with pytest.raises(ExportError, match="graph input: no pooling"):
        expose_features(tmp_path / "flat.onnx", tmp_path / "out.onnx", tmp_path / "head.npz")
    with pytest.raises(ExportError, match="must end in .npz"):
        expose_features(DEMO / "view.onnx", tmp_path / "out.onnx", tmp_path / "head.bin")
