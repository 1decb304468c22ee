"""Export a tiny model to ONNX, hold it to the parity gate, and write a pack."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from export.cli import main as export_main
from export.onnx import (
    OPSET,
    ExportError,
    check_parity,
    export_onnx,
    export_stage,
    phantom_batch,
)
from export.pack import SCHEMA, write_pack
from models.data import MEAN, STD
from models.networks import ArchConfig, build

SPEC = {"height": 64, "width": 64, "channels": 1, "mean": MEAN, "std": STD}


def _checkpoint(tmp: Path, task: str, view: str | None, arch: ArchConfig,
                spec: dict[str, float] = SPEC) -> Path:  # fmt: skip
    torch.manual_seed(0)
    net = build(arch)
    name = f"{task}_{view.lower()}.pt" if view else f"{task}.pt"
    path = tmp / name
    torch.save({"task": task, "view": view, "arch": arch.as_dict(), "input": spec,
                "metrics": {}, "state_dict": net.state_dict()}, path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    tmp = tmp_path_factory.mktemp("onnx")
    net = build(ArchConfig("orientation", width=0.125)).eval()
    path = export_onnx(net, tmp / "orientation.onnx", "orientation", 1, 64, 64)
    return net, path


def test_onnx_file_follows_the_contract(exported: tuple[torch.nn.Module, Path]) -> None:
    _, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["cossin"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].dim_value and dims[0].dim_param  # the batch axis is symbolic
    assert [d.dim_value for d in dims[1:]] == [1, 64, 64]
    assert any(op.domain in ("", "ai.onnx") and op.version == OPSET for op in model.opset_import)


def test_parity_gate_passes_on_a_phantom_batch(exported: tuple[torch.nn.Module, Path]) -> None:
    net, path = exported
    batch = phantom_batch("orientation", SPEC, None, n=3)
    assert batch.shape == (3, 1, 64, 64)
    errors = check_parity(net, path, batch)
    assert set(errors) == {"cossin"} and errors["cossin"] < 1e-4


def test_parity_gate_fails_on_a_perturbed_model(
    exported: tuple[torch.nn.Module, Path], tmp_path: Path
) -> None:
    net, path = exported
    model = onnx.load(str(path))
    # Perturb the largest initializer (a weight) in the saved graph.
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights = onnx.numpy_helper.to_array(init).copy()
    weights += 0.05
    init.CopyFrom(onnx.numpy_helper.from_array(weights, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    batch = phantom_batch("orientation", SPEC, None, n=2)
    with pytest.raises(ExportError, match="'cossin'"):
        check_parity(net, bad, batch)


def test_parity_gate_fails_with_an_impossible_tolerance(
    exported: tuple[torch.nn.Module, Path],
) -> None:
    net, path = exported
    batch = phantom_batch("orientation", SPEC, None, n=2) + 3.0  # larger outputs, larger error
    with pytest.raises(ExportError, match="output 'cossin' max abs error"):
        check_parity(net, path, batch, atol=0.0, rtol=0.0)


def test_pack_manifest_follows_the_contract(tmp_path: Path) -> None:
    view_ckpt = _checkpoint(tmp_path, "view", None,
                            ArchConfig("view", width=0.25, depth=0.5, image_size=64))  # fmt: skip
    q_spec = {**SPEC, "height": 48, "width": 80}
    q_ckpt = _checkpoint(tmp_path, "quality", "AP",
                         ArchConfig("quality", width=0.25, depth=0.5, image_size=80), q_spec)
    stages = [export_stage(c, tmp_path / "onnx")[0] for c in (view_ckpt, q_ckpt)]
    pack = tmp_path / "pack"
    manifest_path = write_pack(
        pack, stages, name="tiny", version="0.0.1", description="test",
        training_data={"kind": "synthetic-phantom", "description": "t", "n_train": 1,
                       "n_validation": 1},
        validation={"data": "none"},
    )  # fmt: skip
    manifest = json.loads(manifest_path.read_text())
    assert manifest["schema"] == SCHEMA == "edge-worker/model-pack@2"
    assert manifest["not_for_clinical_use"] is True
    assert manifest["training_data"]["kind"] == "synthetic-phantom"
    assert [s["name"] for s in manifest["stages"]] == ["view", "quality_ap"]
    view, quality = manifest["stages"]
    assert view["task"] == "classify" and view["labels"] == ["AP", "LAT"] and "when" not in view
    assert list(view["outputs"]) == ["logits"] and "min_confidence" in view["thresholds"]
    assert manifest["view_stage"] == "view"
    # A quality network is a regress stage, due for its view only, and what judges the image.
    assert quality["task"] == "regress" and quality["when"] == {"view": ["AP"]}
    assert list(quality["outputs"]) == ["score"] and manifest["decision"]["judged_by"] == ["quality_ap"]
    assert quality["input"] == {"name": "image", "height": 48, "width": 80, "channels": 1,
                                "mean": MEAN, "std": STD}  # fmt: skip
    assert "labels" not in quality and quality["opset"] == OPSET
    for stage in manifest["stages"]:
        data = (pack / stage["file"]).read_bytes()
        assert stage["sha256"] == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in pack.iterdir()) == [
        "manifest.json", "manifest.sha256", "quality_ap.onnx", "view.onnx"]  # fmt: skip


def test_cli_pack_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _checkpoint(tmp_path, "roi", "LAT", ArchConfig("roi", width=0.125,
                                                          aspp_rates=(1, 2, 3)))  # fmt: skip
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"kind": "synthetic-phantom", "description": "t"}))
    out = tmp_path / "pack"
    assert export_main(["pack", str(ckpt), "--out", str(out), "--training-data", str(data)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"][0]["outputs"].keys() == {"mask"}
    assert manifest["stages"][0]["thresholds"]["mask"] == 0.7
    assert export_main(["pack", str(ckpt), "--out", str(out), "--training-data", str(data),
                        "--clinical"]) == 1  # fmt: skip
    assert "never for clinical use" in capsys.readouterr().err
    single = tmp_path / "single" / "roi.onnx"
    single.parent.mkdir()
    assert export_main(["onnx", str(ckpt), "--out", str(single)]) == 0
    assert single.exists() and "parity max abs error" in capsys.readouterr().out
