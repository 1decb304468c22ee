"""Inference backends: small modules behind one small Protocol, in one explicit table.

Each backend module exposes ``NAME``, ``probe() -> str | None`` (``None`` when usable,
otherwise what is missing) and ``load(path, options) -> Session``.  Modules are imported
lazily, so a missing GPU library costs nothing until that backend is asked for.  Selection
tries the configured preference list in order and raises one :class:`BackendError` that lists
every failure; it never falls back to a backend that was not asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np

from edge_worker.errors import BackendError

#: The explicit table: backend name -> module.  No scanning, no plugin discovery.
BACKENDS: dict[str, str] = {
    "tensorrt": "edge_worker.backends.tensorrt",
    "onnxruntime-tensorrt": "edge_worker.backends.ort_tensorrt",
    "onnxruntime-cuda": "edge_worker.backends.ort_cuda",
    "onnxruntime-cpu": "edge_worker.backends.ort_cpu",
}

#: Backends that run on the CPU.  Selecting one of these when a GPU backend was preferred
#: first is reported as a health failure by the caller.
CPU_BACKENDS = frozenset({"onnxruntime-cpu"})


@dataclass(frozen=True)
class LoadOptions:
    """How to create sessions: shared by every backend, each uses what applies to it."""

    threads: int = 2
    """Intra-op CPU threads (ONNX Runtime)."""
    cache_dir: Path | None = None
    """Where engines (TensorRT) and optimised graphs (ONNX Runtime CPU) are cached; ``None``:
    no cache."""
    precision: str = "fp16"
    """TensorRT precision: fp32, fp16 or int8.  Never silently lowered or raised."""
    max_batch: int = 8
    """Largest batch of the TensorRT optimisation profile (1..max_batch)."""


class Session(Protocol):
    """One loaded network: a batch in, named outputs out."""

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run ``batch`` (float32, NCHW) and return the outputs by name."""
        ...


class BackendModule(Protocol):
    NAME: str

    def probe(self) -> str | None: ...

    def load(self, path: Path, options: LoadOptions) -> Session: ...


@dataclass(frozen=True)
class Selected:
    """The backend chosen and what the others said."""

    name: str
    module: BackendModule
    failures: dict[str, str]

    @property
    def on_cpu(self) -> bool:
        return self.name in CPU_BACKENDS

    def load(self, path: Path, options: LoadOptions) -> Session:
        return self.module.load(path, options)


def _import(name: str) -> BackendModule:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend '{name}' (known: {', '.join(BACKENDS)})")
    module: ModuleType = importlib.import_module(BACKENDS[name])
    return module  # type: ignore[return-value]


def probe_all() -> dict[str, str | None]:
    """Every known backend and what it lacks (``None`` when it is usable)."""
    return {name: _probe(name) for name in BACKENDS}


def _probe(name: str) -> str | None:
    try:
        return _import(name).probe()
    except ImportError as exc:
        return f"cannot import {BACKENDS[name]}: {exc}"


def select(preference: list[str] | tuple[str, ...]) -> Selected:
    """The first usable backend in ``preference``; :class:`BackendError` listing all failures."""
    if not preference:
        raise BackendError("no backend preference given")
    failures: dict[str, str] = {}
    for name in preference:
        if name not in BACKENDS:
            failures[name] = f"unknown backend (known: {', '.join(BACKENDS)})"
            continue
        missing = _probe(name)
        if missing is None:
            return Selected(name=name, module=_import(name), failures=failures)
        failures[name] = missing
    lines = "; ".join(f"{name}: {why}" for name, why in failures.items())
    raise BackendError(f"no usable inference backend among {list(preference)}: {lines}")
