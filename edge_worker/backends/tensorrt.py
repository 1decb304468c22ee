"""Native TensorRT: engines built on this box by ``edge-export engines``, loaded from the cache.

The backend never builds and never guesses: it looks the engine up in the cache under the key
of this GPU, its compute capability, the installed TensorRT version, the ONNX file's sha256,
the precision and the batch profile (:mod:`edge_worker.backends.engine_cache`).  A missing or
foreign engine raises :class:`BackendError` that says how to build the right one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_worker.backends import LoadOptions
from edge_worker.backends.engine_cache import EngineCache, EngineKey, GpuIdentity
from edge_worker.errors import BackendError

NAME = "tensorrt"


def probe() -> str | None:
    """``None`` when TensorRT, cuda-python and a CUDA device are all present."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"the tensorrt Python package is not installed ({exc})"
    try:
        from edge_worker.backends import _cuda

        count = _cuda.device_count()
    except ImportError as exc:
        return f"cuda-python is not installed ({exc})"
    if count < 1:
        return "no CUDA device is visible (driver missing, or the device is not allowed to the service)"
    return None


def gpu_identity() -> GpuIdentity:
    """This box's GPU 0 and TensorRT version."""
    import tensorrt as trt

    from edge_worker.backends import _cuda

    name, capability = _cuda.device_name_and_capability(0)
    return GpuIdentity(name=name, compute_capability=capability, tensorrt_version=trt.__version__)


def engine_key(onnx_sha256: str, options: LoadOptions, gpu: GpuIdentity) -> EngineKey:
    """The cache key of the engine for one ONNX file under ``options`` on ``gpu``."""
    return EngineKey(onnx_sha256, gpu, options.precision, options.max_batch)


def in_chunks(run: Callable[[np.ndarray], dict[str, np.ndarray]], batch: np.ndarray,
              largest: int) -> dict[str, np.ndarray]:  # fmt: skip
    """``run`` on ``batch`` in slices of at most ``largest`` images, each output concatenated
    back in order.  An engine's optimisation profile ends at its ``max_batch``, while a stage
    may send more in one call: four quarter turns, or an image and its mirror, of each file of
    a batch (4 files x 4 looks at 128 px is a chunk of 12 under ``MAX_BATCH_PIXELS``)."""
    if largest < 1:
        raise ValueError(f"largest must be >= 1, got {largest}")
    if batch.shape[0] <= largest:
        return run(batch)
    parts = [run(batch[start : start + largest]) for start in range(0, batch.shape[0], largest)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


class TrtSession:
    """One deserialised engine with its execution context and device buffers; a batch larger
    than the engine's profile (``max_batch``) is run in slices (:func:`in_chunks`)."""

    def __init__(self, engine_path: Path, max_batch: int) -> None:
        import tensorrt as trt

        from edge_worker.backends import _cuda

        self._trt = trt
        self._cuda = _cuda.runtime()
        self._check = _cuda.check
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        self._engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise BackendError(
                f"TensorRT refused {engine_path.name} (built by another TensorRT version or GPU?); "
                "rebuild it with `edge-export engines`"
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        if len(self._inputs) != 1:
            raise BackendError(f"{engine_path.name}: expected one input, found {self._inputs}")
        self._stream = self._check(self._cuda.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.max_batch = max_batch

    def _device(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._check(self._cuda.cudaFree(ptr), "cudaFree")
            ptr = int(self._check(self._cuda.cudaMalloc(nbytes), "cudaMalloc"))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Copy ``batch`` to the GPU, execute, copy every output back (in slices of at most
        ``max_batch`` images)."""
        return in_chunks(self._run, batch, self.max_batch)

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        cudart, trt = self._cuda, self._trt
        host = np.ascontiguousarray(batch, dtype=np.float32)
        name = self._inputs[0]
        if not self._context.set_input_shape(name, host.shape):
            raise BackendError(f"batch shape {host.shape} is outside the engine's profile")
        ptr = self._device(name, host.nbytes)
        to_dev = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, to_dev, self._stream), "H2D copy")
        self._context.set_tensor_address(name, ptr)
        results: dict[str, np.ndarray] = {}
        for out in self._outputs:
            shape = tuple(self._context.get_tensor_shape(out))
            results[out] = np.empty(shape, dtype=trt.nptype(self._engine.get_tensor_dtype(out)))
            self._context.set_tensor_address(out, self._device(out, results[out].nbytes))
        if not self._context.execute_async_v3(self._stream):
            raise BackendError("TensorRT execute_async_v3 failed")
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for out, arr in results.items():
            ptr = self._buffers[out][0]
            self._check(cudart.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes, to_host, self._stream), "D2H copy")
        self._check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {k: v.astype(np.float32, copy=False) for k, v in results.items()}

    def __del__(self) -> None:
        for ptr, _ in getattr(self, "_buffers", {}).values():
            self._cuda.cudaFree(ptr)


def find_engine(path: Path, options: LoadOptions, gpu: GpuIdentity) -> Path:
    """The cached engine for the ONNX file at ``path`` on ``gpu``; refuses a missing or foreign one."""
    from edge_worker.packs.pack import sha256_file

    if options.cache_dir is None:
        raise BackendError("the tensorrt backend needs an engine cache folder (state folder)")
    key = engine_key(sha256_file(path), options, gpu)
    found = EngineCache(options.cache_dir).lookup(key)
    if found.path is None:
        raise BackendError(
            f"no usable TensorRT engine for {path.name} ({found.status}: {found.detail}); build it on "
            f"this box with `edge-export engines --pack {path.parent} --cache {options.cache_dir} "
            f"--precision {options.precision} --max-batch {options.max_batch}`"
        )
    return found.path


def load(path: Path, options: LoadOptions) -> Any:
    """A session on the engine built on this box for the ONNX file at ``path``."""
    return TrtSession(find_engine(path, options, gpu_identity()), options.max_batch)
