"""ONNX Runtime with the CUDA execution provider (the onnxruntime-gpu wheel)."""

from __future__ import annotations

from pathlib import Path

from edge_worker.backends import LoadOptions
from edge_worker.backends._ort import OrtSession, missing_provider, preload_cuda_libraries
from edge_worker.errors import BackendError

NAME = "onnxruntime-cuda"


def probe() -> str | None:
    """``None`` when onnxruntime-gpu alone provides onnxruntime and offers the CUDA provider;
    else what is wrong, naming the distribution found and the fix."""
    return missing_provider("CUDAExecutionProvider", "onnxruntime-gpu and the CUDA libraries")


def load(path: Path, options: LoadOptions) -> OrtSession:
    """A CUDA session; refuses to run if ORT silently placed the model on the CPU only."""
    preload_cuda_libraries()
    session = OrtSession(path, [("CUDAExecutionProvider", {"device_id": 0})], options.threads)
    if "CUDAExecutionProvider" not in session.providers:
        # ORT falls back to the CPU when the CUDA libraries fail to load; never accept that.
        raise BackendError(
            f"onnxruntime could not create a CUDA session for {path.name} (got {session.providers})"
        )
    return session
