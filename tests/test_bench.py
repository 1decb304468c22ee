"""The speed work, functionally: the benchmark runs and reports sane figures, batching and the
optimised-model cache change nothing a verdict says, and the precision gate refuses a pack whose
decisions change.  No test here asserts a speed: timings on a shared machine prove nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_worker.backends import LoadOptions, select
from edge_worker.backends._ort import CACHE_SUFFIX, OrtSession
from edge_worker.cli import main
from edge_worker.errors import ConfigError
from edge_worker.ingest.types import IngestPolicy
from edge_worker.judging.process import Judge
from edge_worker.packs.pack import default_pack_dir, load_pack
from edge_worker.phantoms.ankle import render, write_phantom
from edge_worker.pipeline.runner import Pipeline
from edge_worker.service.config import Config, with_overrides


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(load_pack(None), select(["onnxruntime-cpu"]), LoadOptions())


def _phantoms(n: int, seed: int = 77) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        render(rng, ("AP", "LAT")[i % 2], 1 + i % 3, float(rng.uniform(0, 360)), 768)[0].astype(
            np.float32
        )
        / 65535.0
        for i in range(n)
    ]


def test_bench_quick_json_reports_sane_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["bench", "--quick", "--json", "--skip-naive", "--cache", str(tmp_path / "cache")])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert {"machine", "inputs", "packs", "broker", "targets", "command"} <= set(report)
    assert report["machine"]["nproc"] >= 1 and report["machine"]["cpu"]
    assert report["full_size_skipped"] == "--quick"
    (demo,) = report["packs"]
    for encoding in ("uncompressed", "jpeg2000"):
        run = demo[encoding]
        stages = run["stages_ms"]
        for key in ("read", "decode", "normalise", "resize", "net:view", "pre_post", "total"):
            assert stages[key]["p50"] >= 0.0, key
        assert stages["total"]["p50"] > 0 and stages["total"]["p99"] >= stages["total"]["p50"]
        assert (
            sum(v["n"] for k, v in stages.items() if k.startswith("net:roi"))
            == stages["total"]["n"]
        )
        assert 0 < run["e2e_ms"]["p50"] <= run["e2e_ms"]["p99"] < 60_000
        assert run["e2e_ms"]["n"] == 3
        for part in ("watch_ms", "judge_ms", "deliver_ms"):
            assert run[part]["n"] == 3
        backlog = run["backlog_batch4"]
        assert backlog["files"] == 6 and backlog["errors"] == 0 and backlog["files_per_s"] > 0
        assert 0 < run["peak_rss_mb"] < 8192
    assert report["inputs"]["jpeg2000"]["transfer_syntax"].startswith("JPEG 2000")
    assert {t["target"].split(",")[0] for t in report["targets"]} >= {"worker peak memory (VmHWM)"}


@pytest.mark.parametrize("pixels_per_run", [4 * 224 * 224, 128 * 128 * 2])
def test_batched_pipeline_matches_single_images(
    pipeline: Pipeline, pixels_per_run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_worker.pipeline import stages

    monkeypatch.setattr(stages, "MAX_BATCH_PIXELS", pixels_per_run)  # one run, or runs of two
    images = _phantoms(6)
    single = [pipeline.judge(x) for x in images]
    batched = pipeline.judge_many(images)
    assert [j.timings_ms["batch"] for j in batched] == [6.0] * 6
    for a, b in zip(single, batched):
        assert (a.decision, a.view.label, a.reasons) == (b.decision, b.view.label, b.reasons)
        assert a.view.confidence == pytest.approx(b.view.confidence, abs=1e-5)
        assert (a.quality is None) == (b.quality is None)
        if a.quality is not None and b.quality is not None:
            assert (a.quality.grade, a.quality.score) == (
                b.quality.grade,
                pytest.approx(b.quality.score, abs=1e-4),
            )
        assert a.orientation is not None and b.orientation is not None
        assert a.orientation.angle_deg == pytest.approx(b.orientation.angle_deg, abs=1e-3)
        assert (a.roi is None or a.roi.box is None) == (b.roi is None or b.roi.box is None)
        if (
            a.roi is not None
            and b.roi is not None
            and a.roi.box is not None
            and b.roi.box is not None
        ):
            assert np.allclose(a.roi.box.corners(), b.roi.box.corners(), atol=1e-2)


def test_judge_many_keeps_order_and_rejects_only_the_bad_file(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    good = [tmp_path / f"p{i}.dcm" for i in range(3)]
    for i, path in enumerate(good):
        write_phantom(path, 900 + i, size=1024)
    bad = tmp_path / "not-dicom.dcm"
    bad.write_bytes(b"not a DICOM file" * 64)
    judge = Judge(pipeline, "st", "xr", IngestPolicy())
    files = [good[0], bad, good[1], good[2]]
    outcomes = judge.judge_many([(p, None) for p in files])
    assert [o.kind for o in outcomes] == ["verdict", "error", "verdict", "verdict"]
    alone = [judge(p) for p in files]
    for together, single in zip(outcomes, alone):
        assert together.id == single.id
        if together.kind == "verdict":
            assert together.payload["decision"] == single.payload["decision"]
            assert together.payload["timings_ms"]["batch"] == 3.0
            assert "batch" not in single.payload["timings_ms"]


def test_optimised_model_cache_is_written_then_used(tmp_path: Path) -> None:
    model = default_pack_dir() / "view.onnx"
    x = np.random.default_rng(1).random((2, 1, 128, 128), dtype=np.float32)
    plain = OrtSession(model, ["CPUExecutionProvider"], 2).run(x)["logits"]
    first = OrtSession(model, ["CPUExecutionProvider"], 2, tmp_path)
    assert not first.cached and len(list(tmp_path.glob(f"*{CACHE_SUFFIX}"))) == 1
    second = OrtSession(model, ["CPUExecutionProvider"], 2, tmp_path)
    assert second.cached
    assert np.allclose(second.run(x)["logits"], plain, atol=1e-5)
    assert not list(tmp_path.glob(".*.tmp"))  # no partial file left behind
    entry = next(tmp_path.glob(f"*{CACHE_SUFFIX}"))
    entry.write_bytes(b"damaged")
    third = OrtSession(model, ["CPUExecutionProvider"], 2, tmp_path)
    assert not third.cached and np.allclose(third.run(x)["logits"], plain, atol=1e-5)


def test_batch_files_is_bounded_by_max_batch() -> None:
    assert with_overrides(Config(), inference={"batch_files": 8}).inference.batch_files == 8
    for bad in (0, 9):
        with pytest.raises(ConfigError, match="batch_files"):
            with_overrides(Config(), inference={"batch_files": bad})


def _swap_view_logits(src: Path, dst: Path) -> None:
    """A 'conversion' that reverses the view classifier's two logits: every view flips."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    model = onnx.load(str(src))
    graph = model.graph
    out = graph.output[0].name
    for node in graph.node:
        node.output[:] = [f"{o}_raw" if o == out else o for o in node.output]
    graph.node.append(helper.make_node("Constant", [], ["swap_idx"], value=helper.make_tensor(
        "swap_idx", onnx.TensorProto.INT64, [2], [1, 0])))  # fmt: skip
    graph.node.append(helper.make_node("Gather", [f"{out}_raw", "swap_idx"], [out], axis=1))
    onnx.save(model, str(dst))


def _pack_copy(tmp_path: Path) -> Path:
    """A pack without a recorded labelled test set (the ankle pack 1.1): the gate is agreement
    with FP32 alone (a built pack's label gate: tests/test_build.py)."""
    pack = tmp_path / "pack"
    shutil.copytree(Path(__file__).parent / "data" / "packs" / "ankle-demo-1.1", pack)
    return pack


def test_quantize_gate_refuses_changed_decisions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnx")
    from export import quantize

    monkeypatch.setattr(quantize, "convert_fp16", _swap_view_logits)
    out = tmp_path / "fp16"
    report = quantize.quantize_pack(_pack_copy(tmp_path), out, "fp16", stages=["view"], phantoms=4,
                                    log=lambda _: None)  # fmt: skip
    assert not report["accepted"] and report["agreement"]["view"] == 0.0
    assert report["files"] == 4 and report["changed"]
    assert not out.exists()
    assert "REFUSED" in quantize.format_report(report)


def test_quantize_gate_accepts_unchanged_decisions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnx")
    from export import quantize

    monkeypatch.setattr(quantize, "convert_fp16", lambda src, dst: shutil.copyfile(src, dst))
    out = tmp_path / "fp16"
    report = quantize.quantize_pack(_pack_copy(tmp_path), out, "fp16", stages=["view"], phantoms=4,
                                    log=lambda _: None)  # fmt: skip
    assert report["accepted"] and set(report["agreement"].values()) == {1.0}
    pack = load_pack(out)  # every sha256 checks out
    assert pack.version.endswith("+fp16")
    assert pack.validation["precision_gate"]["accepted"] is True
    assert "FP16" in pack.stage("view").architecture  # type: ignore[union-attr]
