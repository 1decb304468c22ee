"""Backend selection: one table, honest probes, one error listing every failure."""

from __future__ import annotations

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
