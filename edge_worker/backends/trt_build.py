"""Build a TensorRT engine from an ONNX file, on the box that will run it.

Written against TensorRT 10's Python API (explicit batch, ``build_serialized_network``,
``IProgressMonitor``).  Precision is never changed behind the caller's back: FP16 or INT8 on a
GPU without fast FP16/INT8 is refused, and INT8 needs calibration batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_worker.errors import BackendError

log = logging.getLogger(__name__)


def _progress_monitor(trt: Any, report: Callable[[str], None]) -> Any:
    class Monitor(trt.IProgressMonitor):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            report(f"{phase_name}: {num_steps} steps")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            report(f"{phase_name}: done")

    return Monitor()


def _calibrator(trt: Any, batches: list[np.ndarray], cache_file: Path | None) -> Any:
    from edge_worker.backends import _cuda

    cudart = _cuda.runtime()

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        """Feeds real, preprocessed radiographs; caches the scales so rebuilds are repeatable."""

        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches: Iterator[np.ndarray] = iter(batches)
            self._size = max(b.nbytes for b in batches)
            self._ptr = int(_cuda.check(cudart.cudaMalloc(self._size), "cudaMalloc"))

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None
            host = np.ascontiguousarray(batch, dtype=np.float32)
            kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            _cuda.check(cudart.cudaMemcpy(self._ptr, host.ctypes.data, host.nbytes, kind), "cudaMemcpy")
            return [self._ptr]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file and cache_file.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            if cache_file is not None:
                cache_file.write_bytes(bytes(cache))

    return Calibrator()


def build_engine(
    onnx_path: Path,
    precision: str,
    max_batch: int,
    calibration: list[np.ndarray] | None = None,
    calibration_cache: Path | None = None,
    report: Callable[[str], None] = log.info,
    workspace_bytes: int = 2 << 30,
) -> tuple[bytes, dict[str, object]]:
    """Serialise an engine for ``onnx_path``; returns its bytes and a build report.

    The optimisation profile covers batch 1..``max_batch`` at the ONNX file's own image size.
    Raises :class:`BackendError` for a precision the GPU cannot do, or a parse or build failure.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if precision == "fp16" and not builder.platform_has_fast_fp16:
        raise BackendError("this GPU has no fast FP16: refusing to build an FP16 engine (ask for fp32)")
    if precision == "int8":
        if not builder.platform_has_fast_int8:
            raise BackendError("this GPU has no fast INT8: refusing to build an INT8 engine")
        if not calibration:
            raise BackendError("an INT8 engine needs calibration images (--calibration DIR)")
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.progress_monitor = _progress_monitor(trt, report)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers fall back to FP16, not FP32
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(trt, calibration or [], calibration_cache)
    profile = builder.create_optimization_profile()
    tensor = network.get_input(0)
    _, c, h, w = tensor.shape
    opt = max(1, min(4, max_batch))
    profile.set_shape(tensor.name, (1, c, h, w), (opt, c, h, w), (max_batch, c, h, w))
    config.add_optimization_profile(profile)
    start = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine for {onnx_path.name} ({precision})")
    return bytes(serialized), {
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - start, 1),
        "precision": precision,
        "profile": {"min": 1, "opt": opt, "max": max_batch, "input": [int(c), int(h), int(w)]},
    }
