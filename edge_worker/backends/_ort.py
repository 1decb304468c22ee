"""What the ONNX Runtime backends share: session options, the optimised-model cache, the run wrapper.

The optimised-model cache: ``ORT_ENABLE_ALL`` (layout transforms, fusions) is what makes ONNX
Runtime fast on the CPU, but it is also what makes session creation slow: ResNet-50 43 ->
354 ms, DeepLabV3 185 -> 441 ms (reference/cpu-baseline.md, section 2).  ORT can write the
optimised graph (``SessionOptions.optimized_model_filepath``); loading that file with the
optimisers off skips the work.  The optimised graph is specific to the ORT build and to the
CPU (NCHWc blocking follows the vector width), so the cache key holds both, plus the source
file's identity and the thread count.

The shared arena: by default every ONNX Runtime session keeps its own memory arena, grown to
that network's largest activations and never given back.  A pack with two DeepLabV3 (one per
view) keeps two arenas of a few hundred MB although only one network runs at a time.  CPU
sessions therefore draw from one arena registered with the ORT environment: on the full-size
seed pack the process peaks at 755 MB instead of 856 MB at batch 1, 975 MB instead of 1,429
MB at batch 4 (BENCHMARKS.md, "Pipeline").

No spinning: every session has its own intra-op thread pool, whose threads spin for a
while after each run.  A pipeline runs four networks back to back, so the spinning threads
of the one that just finished compete with the next one's for the two cores: on the
full-size seed pack ResNet-50 took 43 ms inside the pipeline against 18 ms alone.  CPU
sessions therefore let their threads sleep (``session.intra_op.allow_spinning=0``): the
networks of one image take about 470 -> 400 ms on the seed pack, 17 -> 9 ms on the demo
pack (with the shared arena; BENCHMARKS.md, "Pipeline").
(ORT's process-wide pool does a little better, but once it exists every session in the
process must use it, which would break any other ONNX Runtime user sharing the process.)
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Name suffix of cached optimised models (``<stage>-<key>`` + this).
CACHE_SUFFIX = ".ort-opt.onnx"
_ARENA_LOCK = threading.Lock()
_arena_registered = False
_cuda_preloaded = False


def missing_provider(provider: str, needs: str) -> str | None:
    """``None`` when the GPU build of onnxruntime (``onnxruntime-gpu`` alone) offers ``provider``,
    else what is missing (``needs``: what to install) and which distribution provides the module.

    The CPU build, or both builds installed together, is refused even where the provider
    happens to load: the one installed last owns the module's files (:mod:`.ort_install`).
    """
    from edge_worker.backends.ort_install import installed

    wrong = installed().gpu_problem()
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return f"onnxruntime cannot be imported ({exc}); {wrong or 'reinstall it'}"
    providers = ort.get_available_providers()
    problems = []
    if provider not in providers:
        problems.append(f"onnxruntime has no {provider} (installed build offers "
                        f"{', '.join(providers)}; install {needs})")  # fmt: skip
    if wrong is not None:
        problems.append(wrong)
    return "; ".join(problems) or None


def preload_cuda_libraries() -> None:
    """Load the CUDA runtime and cuDNN that onnxruntime-gpu needs, once per process.

    onnxruntime-gpu does not bundle them; where they come from pip's nvidia-* wheels (installed
    by ``onnxruntime-gpu[cuda,cudnn]`` or with torch) they are not on the loader's path, and
    without torch imported first the CUDA provider fails to load and ORT falls back to the CPU.
    ``preload_dlls`` (ONNX Runtime >= 1.21) loads them from those wheels, else from the
    system's path; it is a no-op where they are already loaded.
    """
    global _cuda_preloaded
    import onnxruntime as ort

    with _ARENA_LOCK:
        if _cuda_preloaded:
            return
        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:
            preload()
        _cuda_preloaded = True


def _register_shared_arena() -> None:
    """Register one CPU arena with ORT's environment (once per process)."""
    global _arena_registered
    import onnxruntime as ort

    with _ARENA_LOCK:
        if _arena_registered:
            return
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                 ort.OrtMemType.DEFAULT)  # fmt: skip
        ort.create_and_register_allocator(info, None)
        _arena_registered = True


@cache
def _cpu_identity() -> str:
    """The CPU model and its feature flags (what the NCHWc and int8 kernels depend on)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    wanted = ("model name", "flags")
    lines = [line for line in text.splitlines() if line.split(":")[0].strip() in wanted]
    return "\n".join(dict.fromkeys(lines))  # the first CPU's lines; every core is the same


def cache_path(cache_dir: Path, model: Path, providers: list[Any], threads: int) -> Path:
    """Where the optimised copy of ``model`` for this ORT, CPU and thread count is kept."""
    import onnxruntime as ort

    st = model.stat()
    key = "\n".join([
        str(model.resolve()), str(st.st_size), str(st.st_mtime_ns), ort.__version__,
        repr(providers), str(threads), _cpu_identity(),
    ])  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir / f"{model.stem}-{digest}{CACHE_SUFFIX}"


class OrtSession:
    """An ``onnxruntime.InferenceSession`` behind the :class:`~edge_worker.backends.Session` API.

    ``cache_dir``: when given, the graph optimised at ``ORT_ENABLE_ALL`` is written there on
    the first load and read back (optimisers off) on later ones.  Only for providers whose
    optimised graph ORT can save (the CPU provider); a damaged cache entry is rebuilt.
    ``shared``: draw CPU memory from the process-wide arena, and let pool threads sleep
    between runs (CPU provider only).
    """

    def __init__(
        self,
        path: Path,
        providers: list[Any],
        threads: int,
        cache_dir: Path | None = None,
        shared: bool = False,
    ) -> None:
        import onnxruntime as ort

        if shared:
            _register_shared_arena()
        self._shared = shared
        self.cached: bool = False
        cached = cache_path(cache_dir, path, providers, threads) if cache_dir else None
        if cached is not None and cached.is_file():
            try:
                options = self._options(threads, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
                self._session = ort.InferenceSession(str(cached), options, providers=providers)
                self.cached = True
            except Exception as exc:  # noqa: BLE001 - any failure means: rebuild the entry
                log.warning("optimised-model cache entry %s unusable (%s); rebuilding", cached.name, exc)
                cached.unlink(missing_ok=True)
        if not self.cached:
            # ENABLE_ALL (with the NCHWc layout transforms) is what makes ORT fast on this class
            # of model: 3x over EXTENDED for EfficientNet (reference/cpu-baseline.md, section 2).
            options = self._options(threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
            partial = None
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                # Written under a private name and renamed: a crash never leaves half a model.
                partial = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
                options.optimized_model_filepath = str(partial)
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
            if partial is not None and cached is not None and partial.is_file():
                os.replace(partial, cached)
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.providers = self._session.get_providers()

    def _options(self, threads: int, level: Any) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if self._shared:
            options.add_session_config_entry("session.use_env_allocators", "1")
        options.graph_optimization_level = level
        options.log_severity_level = 3
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        if self._shared:
            # Pool threads sleep when their network is done instead of spinning (module doc).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one float32 NCHW batch; outputs by name."""
        values = self._session.run(self._outputs, {self._input: np.ascontiguousarray(batch)})
        return dict(zip(self._outputs, values))
