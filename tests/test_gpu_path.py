"""The GPU path's logic, tested on the CPU: engine cache keys and invalidation, the parity
gate, backend refusals and their messages.  Tests that need CUDA and TensorRT are marked
``gpu`` and skipped where they are absent (TensorRT cannot be installed on the CI machines)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_worker.backends import LoadOptions, ort_cpu, ort_tensorrt, select
from edge_worker.backends import tensorrt as trt_backend
from edge_worker.backends.engine_cache import EngineCache, EngineKey, GpuIdentity
from edge_worker.backends.parity import TOLERANCES, Tolerance, compare, gate
from edge_worker.errors import BackendError
from edge_worker.packs.pack import default_pack_dir, load_pack, sha256_file
from edge_worker.service.config import Config, with_overrides

H100 = GpuIdentity("NVIDIA H100 80GB HBM3", "9.0", "10.13.0.35")
H100_NEWER_TRT = GpuIdentity("NVIDIA H100 80GB HBM3", "9.0", "11.4.0.106")
L4 = GpuIdentity("NVIDIA L4", "8.9", "10.13.0.35")


def _key(gpu: GpuIdentity = H100, precision: str = "fp16", sha: str = "ab" * 32) -> EngineKey:
    return EngineKey(sha, gpu, precision, 8)


def test_engine_key_changes_with_every_part() -> None:
    base = _key()
    variants = [
        _key(gpu=H100_NEWER_TRT), _key(gpu=L4), _key(precision="fp32"), _key(sha="cd" * 32),
        EngineKey(base.onnx_sha256, H100, "fp16", 16),
    ]  # fmt: skip
    digests = {base.digest(), *(v.digest() for v in variants)}
    assert len(digests) == 1 + len(variants)
    assert base.digest() == _key().digest()  # stable
    with pytest.raises(ValueError, match="precision"):
        _key(precision="int4")


def test_cache_hit_after_store(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    assert cache.lookup(_key()).status == "miss"
    path = cache.store(_key(), b"engine-bytes", {"build_seconds": 1.0})
    found = cache.lookup(_key())
    assert found.status == "hit" and found.path == path
    assert path.parent.name == H100.slug()


def test_engine_for_another_trt_version_or_gpu_is_stale_not_loaded(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.store(_key(gpu=H100), b"old", {})
    for other in (H100_NEWER_TRT, L4):
        found = cache.lookup(_key(gpu=other))
        assert found.path is None and found.status == "stale"
        assert H100.slug() in found.detail


def test_tampered_engine_or_sidecar_is_refused(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    path = cache.store(_key(), b"engine", {})
    path.write_bytes(b"engine-modified")
    assert cache.lookup(_key()).status == "corrupt"
    path.with_suffix(".json").write_text("{broken")
    assert cache.lookup(_key()).status == "corrupt"


def test_find_engine_says_how_to_build(tmp_path: Path) -> None:
    spec = load_pack().stages[0]
    options = LoadOptions(cache_dir=tmp_path, precision="fp16", max_batch=4)
    with pytest.raises(BackendError, match=r"edge-export engines --pack .* --precision fp16 --max-batch 4"):
        trt_backend.find_engine(spec.file, options, H100)
    key = trt_backend.engine_key(sha256_file(spec.file), options, H100)
    EngineCache(tmp_path).store(key, b"x", {})
    assert trt_backend.find_engine(spec.file, options, H100).suffix == ".engine"
    with pytest.raises(BackendError, match="stale"):
        trt_backend.find_engine(spec.file, options, H100_NEWER_TRT)


class _Perturbed:
    """Stands in for a GPU engine (none can run here): the real ORT outputs, shifted."""

    def __init__(self, inner: object, shift: float, flip: bool = False) -> None:
        self.inner, self.shift, self.flip = inner, shift, flip

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = self.inner.run(batch)  # type: ignore[attr-defined]
        res = {k: v + np.float32(self.shift) for k, v in out.items()}
        if self.flip:
            res = {k: v[:, ::-1].copy() for k, v in res.items()}
        return res


@pytest.fixture(scope="module")
def view_session() -> tuple[object, list[np.ndarray]]:
    spec = load_pack().stage("view")
    assert spec is not None
    session = ort_cpu.load(spec.file, LoadOptions())
    rng = np.random.default_rng(0)
    i = spec.input
    inputs = [rng.random((2, i.channels, i.height, i.width), dtype=np.float32) for _ in range(3)]
    return session, inputs


def test_gate_passes_identical_outputs(view_session: tuple[object, list[np.ndarray]]) -> None:
    session, inputs = view_session
    report = gate("view", "fp32", session, session, inputs)  # type: ignore[arg-type]
    assert report.passed and report.outputs[0].max_abs_error == 0.0
    assert report.outputs[0].argmax_agreement == 1.0


def test_gate_refuses_and_names_the_output(view_session: tuple[object, list[np.ndarray]]) -> None:
    session, inputs = view_session
    report = gate("view", "fp16", session, _Perturbed(session, 0.5), inputs)  # type: ignore[arg-type]
    assert not report.passed
    assert "REFUSED" in report.describe() and "logits: max abs error 0.5" in report.describe()
    small = gate("view", "fp16", session, _Perturbed(session, 1e-4), inputs)  # type: ignore[arg-type]
    assert small.passed


def test_gate_refuses_a_changed_decision_even_within_tolerance(view_session: tuple[object, list[np.ndarray]]) -> None:
    session, inputs = view_session
    loose = Tolerance(atol=1e3, rtol=0)
    report = gate("view", "int8", session, _Perturbed(session, 0.0, flip=True), inputs, loose)  # type: ignore[arg-type]
    assert not report.passed and report.outputs[0].argmax_agreement is not None
    assert report.outputs[0].argmax_agreement < 1.0


def test_compare_catches_missing_outputs_shapes_and_nan() -> None:
    ref = {"mask": np.zeros((1, 1, 4, 4), np.float32), "score": np.ones((1, 1), np.float32)}
    errs = {e.output: e for e in compare(ref, {"mask": np.full((1, 1, 4, 4), np.nan, np.float32)}, TOLERANCES["fp16"])}
    assert not errs["mask"].passed and not errs["score"].passed
    assert not compare(ref, {"mask": np.zeros((1, 1, 2, 2), np.float32), "score": ref["score"]}, TOLERANCES["fp32"])[0].passed


def test_ort_tensorrt_refuses_int8_and_sets_fp16(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="int8"):
        ort_tensorrt.provider_options(LoadOptions(precision="int8"))
    opts = ort_tensorrt.provider_options(LoadOptions(precision="fp16", cache_dir=tmp_path))
    assert opts["trt_fp16_enable"] is True and opts["trt_engine_cache_enable"] is True
    assert ort_tensorrt.provider_options(LoadOptions(precision="fp32"))["trt_fp16_enable"] is False


def _has_cuda() -> bool:
    return trt_backend.probe() is None


@pytest.mark.skipif(_has_cuda(), reason="this machine has TensorRT and CUDA")
def test_gpu_preference_without_gpu_lists_every_failure() -> None:
    with pytest.raises(BackendError) as err:
        select(["tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda"])
    text = str(err.value)
    assert "tensorrt: the tensorrt Python package is not installed" in text
    assert "onnxruntime-tensorrt: onnxruntime has no TensorrtExecutionProvider" in text
    assert "onnxruntime-cuda: onnxruntime has no CUDAExecutionProvider" in text


@pytest.mark.skipif(_has_cuda(), reason="this machine has TensorRT and CUDA")
@pytest.mark.parametrize("backend", ["tensorrt", "onnxruntime-cuda"])
def test_check_backend_exits_non_zero_naming_what_is_missing(backend: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_worker", "check", "--backend", backend, "--skip-broker"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"FAIL  backend: no usable inference backend among ['{backend}']" in result.stdout
    assert "not installed" in result.stdout or "has no CUDAExecutionProvider" in result.stdout


@pytest.mark.skipif(_has_cuda(), reason="this machine has TensorRT and CUDA")
def test_cpu_fallback_after_a_gpu_preference_is_a_health_failure(tmp_path: Path) -> None:
    from edge_worker.pipeline.runner import Pipeline
    from edge_worker.service.assembly import backend_problem

    config = with_overrides(Config(), inference={"backends": ("onnxruntime-cuda", "onnxruntime-cpu")})
    pipeline = Pipeline(load_pack(), select(list(config.inference.backends)))
    problem = backend_problem(config, pipeline)
    assert problem is not None
    assert "running on the CPU with onnxruntime-cpu although onnxruntime-cuda was preferred" in problem


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="needs TensorRT and a CUDA device")
def test_engines_build_gate_and_run_on_the_gpu(tmp_path: Path) -> None:
    from export.engines import build_pack_engines

    reports = build_pack_engines(default_pack_dir(), tmp_path, "fp16", 4, report=lambda s: None)
    assert reports and all(r.passed for r in reports)
    select(["tensorrt"]).load(load_pack().stages[0].file, LoadOptions(cache_dir=tmp_path, precision="fp16", max_batch=4))


@pytest.mark.skipif(_has_cuda(), reason="this machine has TensorRT and CUDA")
def test_edge_export_engines_refuses_without_tensorrt_and_needs_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys, export.cli as c; rc = c.main(['engines', '--cache', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'engines imported torch'; sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=False)
    assert result.returncode == 1, result.stderr
    assert "cannot build TensorRT engines here: the tensorrt Python package is not installed" in result.stderr
