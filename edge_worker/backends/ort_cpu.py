"""ONNX Runtime on the CPU: always available where onnxruntime is installed."""

from __future__ import annotations

from pathlib import Path

from edge_worker.backends import LoadOptions
from edge_worker.backends._ort import OrtSession

NAME = "onnxruntime-cpu"


def probe() -> str | None:
    """``None`` when onnxruntime imports and offers the CPU provider."""
    from edge_worker.backends.ort_install import NONE_FIX

    try:
        import onnxruntime as ort
    except ImportError as exc:
        # The base install carries no ONNX Runtime: the extras choose the CPU or the GPU build.
        return f"onnxruntime is not installed ({exc}); install {NONE_FIX}"
    if "CPUExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime offers no CPUExecutionProvider"
    return None


def load(path: Path, options: LoadOptions) -> OrtSession:
    """A CPU session for the ONNX file at ``path``.

    With ``options.cache_dir`` the optimised graph is cached under ``cache_dir/ort-cpu``, so a
    restart skips the graph optimisation; every CPU session shares one memory arena (see
    :mod:`edge_worker.backends._ort`).
    """
    cache_dir = options.cache_dir / "ort-cpu" if options.cache_dir is not None else None
    return OrtSession(path, ["CPUExecutionProvider"], options.threads, cache_dir, shared=True)
