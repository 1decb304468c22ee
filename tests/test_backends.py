"""Backend selection: one table, honest probes, one error listing every failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_worker.backends import BACKENDS, probe_all, select
from edge_worker.errors import BackendError


def test_cpu_backend_is_available_here() -> None:
    chosen = select(["onnxruntime-cpu"])
    assert chosen.name == "onnxruntime-cpu" and chosen.on_cpu


def test_probe_names_what_is_missing() -> None:
    probes = probe_all()
    assert set(probes) == set(BACKENDS)
    assert probes["onnxruntime-cpu"] is None
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "CUDAExecutionProvider" in str(probes["onnxruntime-cuda"])


def test_selection_error_lists_every_failure() -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendError) as err:
        select(["onnxruntime-cuda", "no-such-backend"])
    message = str(err.value)
    assert "onnxruntime-cuda: onnxruntime has no CUDAExecutionProvider" in message
    assert "no-such-backend: unknown backend" in message


def test_preference_order_is_kept_and_failures_reported() -> None:
    chosen = select(["no-such-backend", "onnxruntime-cpu"])
    assert chosen.name == "onnxruntime-cpu"
    assert "no-such-backend" in chosen.failures
    with pytest.raises(BackendError, match="no backend preference"):
        select([])


def test_a_batch_larger_than_an_engines_profile_runs_in_slices(tmp_path: Path) -> None:
    """TensorRT cannot run here; its session's slicing (``in_chunks``) is the part that decides
    what a stage gets back, and is checked on a real ONNX Runtime session: every slice at most
    ``largest`` images, the outputs the same as one run on the whole batch, in order."""
    import numpy as np

    from edge_worker.backends import LoadOptions, ort_cpu
    from edge_worker.backends.tensorrt import in_chunks
    from tests.tiny_packs import derive_model

    path = tmp_path / "derive.onnx"  # image in, image out: each answer is its own image's
    path.write_bytes(derive_model())
    session = ort_cpu.load(path, LoadOptions(threads=1))
    seen: list[int] = []

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(batch.shape[0])
        return session.run(batch)

    batch = np.random.default_rng(3).uniform(-1, 1, (12, 1, 32, 32)).astype(np.float32)
    whole = session.run(batch)
    for largest, slices in ((8, [8, 4]), (5, [5, 5, 2]), (12, [12]), (20, [12])):
        seen.clear()
        got = in_chunks(run, batch, largest)
        assert seen == slices
        assert set(got) == set(whole)
        assert not np.allclose(whole[next(iter(whole))][0], whole[next(iter(whole))][1])
        for name in whole:
            np.testing.assert_allclose(got[name], whole[name], atol=1e-6)
    with pytest.raises(ValueError, match="largest"):
        in_chunks(run, batch, 0)
