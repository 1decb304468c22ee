"""ONNX Runtime with the TensorRT execution provider (onnxruntime-gpu built with TensorRT).

ORT builds the engines itself; they are cached under ``options.cache_dir/ort-trt`` keyed by
ORT, so an upgrade rebuilds instead of loading a foreign engine.  FP16 is used only when asked
for; INT8 through this provider is refused (use the native ``tensorrt`` backend, whose
calibration and parity gate we control).
"""

from __future__ import annotations

from pathlib import Path

from edge_worker.backends import LoadOptions
from edge_worker.backends._ort import OrtSession, missing_provider, preload_cuda_libraries
from edge_worker.errors import BackendError

NAME = "onnxruntime-tensorrt"


def probe() -> str | None:
    """``None`` when onnxruntime offers the TensorRT provider."""
    return missing_provider("TensorrtExecutionProvider", "onnxruntime-gpu and TensorRT")


def provider_options(options: LoadOptions) -> dict[str, object]:
    """The TensorRT provider's options for ``options``; refuses what it cannot honour."""
    if options.precision == "int8":
        raise BackendError(
            "onnxruntime-tensorrt: int8 needs calibration that this backend does not run; "
            "use the tensorrt backend with engines from `edge-export engines --precision int8`"
        )
    settings: dict[str, object] = {
        "device_id": 0,
        "trt_fp16_enable": options.precision == "fp16",
        "trt_max_workspace_size": 2 << 30,
    }
    if options.cache_dir is not None:
        cache = options.cache_dir / "ort-trt"
        cache.mkdir(parents=True, exist_ok=True)
        settings.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=str(cache),
            trt_timing_cache_enable=True,
            trt_timing_cache_path=str(cache),
        )
    return settings


def load(path: Path, options: LoadOptions) -> OrtSession:
    """A session whose every node runs in TensorRT; a CPU-only placement is refused."""
    preload_cuda_libraries()
    session = OrtSession(
        path,
        [("TensorrtExecutionProvider", provider_options(options)), ("CUDAExecutionProvider", {"device_id": 0})],
        options.threads,
    )
    if "TensorrtExecutionProvider" not in session.providers:
        raise BackendError(
            f"onnxruntime could not create a TensorRT session for {path.name} (got {session.providers})"
        )
    return session
