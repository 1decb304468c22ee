"""ONNX Runtime with the CUDA execution provider (the onnxruntime-gpu wheel)."""

from __future__ import annotations

from pathlib import Path

from edge_worker.backends import LoadOptions
from edge_worker.backends._ort import OrtSession
from edge_worker.errors import BackendError

NAME = "onnxruntime-cuda"


def probe() -> str | None:
    """``None`` when onnxruntime-gpu is installed and the CUDA provider is offered."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return f"onnxruntime-gpu is not installed ({exc})"
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return (
            "onnxruntime has no CUDAExecutionProvider (installed build offers "
            f"{', '.join(providers)}; install onnxruntime-gpu and the CUDA libraries)"
        )
    return None


def load(path: Path, options: LoadOptions) -> OrtSession:
    """A CUDA session; refuses to run if ORT silently placed the model on the CPU only."""
    session = OrtSession(path, [("CUDAExecutionProvider", {"device_id": 0})], options.threads)
    if "CUDAExecutionProvider" not in session.providers:
        # ORT falls back to the CPU when the CUDA libraries fail to load; never accept that.
        raise BackendError(
            f"onnxruntime could not create a CUDA session for {path.name} (got {session.providers})"
        )
    return session
