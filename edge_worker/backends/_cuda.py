"""The few CUDA runtime calls the native TensorRT backend needs, through cuda-python.

cuda-python moved its runtime module (``cuda.cudart`` up to 12.x, ``cuda.bindings.runtime``
from 12.6 on); both are tried.  Every call returns ``(error, value...)``; :func:`check` turns
a non-zero error into :class:`BackendError` naming the call.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from edge_worker.errors import BackendError


def runtime() -> ModuleType:
    """The cuda-python runtime module; ImportError when cuda-python is absent."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
    return cudart


def check(result: Any, call: str) -> Any:
    """Unpack a cuda-python result tuple, raising on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA {call} failed: {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_count() -> int:
    """Number of CUDA devices; 0 when the driver has none."""
    cudart = runtime()
    err, count = cudart.cudaGetDeviceCount()
    return int(count) if int(err) == 0 else 0


def device_name_and_capability(device: int = 0) -> tuple[str, str]:
    """``("NVIDIA H100 80GB HBM3", "9.0")`` for ``device``."""
    props = check(runtime().cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00"), f"{props.major}.{props.minor}"
