"""Which installed distribution provides the ``onnxruntime`` module, and whether that is right.

Two wheels install the same top-level module: ``onnxruntime`` (the CPU build) and
``onnxruntime-gpu`` (CUDA and TensorRT execution providers).  Both may sit in one environment;
their files then overwrite each other and whichever was installed last wins, so a GPU box
can run the CPU build without a word (the install pitfall ONNX Runtime's own install page warns
of).  The worker's extras therefore choose one: ``.[cpu]`` or ``.[gpu]``, never both; this
module reads the installed metadata (no import of onnxruntime itself) so that the probes and
``edge-worker check`` can say which build is there and how to fix a wrong one.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Mapping
from dataclasses import dataclass

#: The distributions (normalised names) known to provide the ``onnxruntime`` module.
CPU_DIST = "onnxruntime"
GPU_DIST = "onnxruntime-gpu"
#: What to run when a GPU box has the CPU build, or both.
GPU_FIX = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install '.[gpu]'"
#: What to run when neither is installed.
NONE_FIX = "one of the two extras: pip install '.[cpu]' (CPU box) or pip install '.[gpu]' (GPU box)"


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@dataclass(frozen=True)
class OrtInstall:
    """The distributions that provide the ``onnxruntime`` module, with their versions."""

    distributions: dict[str, str]
    """Normalised distribution name -> version, e.g. ``{"onnxruntime-gpu": "1.22.0"}``."""

    @property
    def gpu_build(self) -> bool:
        """True when the only provider is ``onnxruntime-gpu``."""
        return set(self.distributions) == {GPU_DIST}

    @property
    def conflict(self) -> bool:
        """True when more than one distribution writes the ``onnxruntime`` module."""
        return len(self.distributions) > 1

    def describe(self) -> str:
        """``"onnxruntime-gpu 1.22.0"``, ``"onnxruntime 1.32.0 and onnxruntime-gpu 1.22.0"`` or
        ``"no distribution"``."""
        if not self.distributions:
            return "no distribution"
        return " and ".join(f"{name} {ver}" for name, ver in sorted(self.distributions.items()))

    def problem(self) -> str | None:
        """Why this environment is not a sound worker install (``None`` when it is)."""
        if not self.distributions:
            return f"ONNX Runtime is not installed; install {NONE_FIX}"
        if self.conflict:
            return (f"the onnxruntime module is provided by both {self.describe()}; whichever was "
                    f"installed last wins: {GPU_FIX} (or '.[cpu]' on a CPU box)")  # fmt: skip
        return None

    def gpu_problem(self) -> str | None:
        """Why this is not the GPU build (``None`` when ``onnxruntime-gpu`` alone is installed)."""
        problem = self.problem()
        if problem is not None:
            return problem
        if not self.gpu_build:
            return f"the onnxruntime module comes from the CPU build ({self.describe()}): {GPU_FIX}"
        return None


def installed(providers: Mapping[str, list[str]] | None = None,
              versions: Mapping[str, str] | None = None) -> OrtInstall:  # fmt: skip
    """The distributions providing the ``onnxruntime`` module in this environment.

    ``providers`` (top-level module -> distributions, as ``packages_distributions()``) and
    ``versions`` (distribution -> version) replace the installed metadata, for tests.
    """
    mapping = md.packages_distributions() if providers is None else providers
    names = {_normalise(d) for d in mapping.get("onnxruntime", [])}
    found: dict[str, str] = {}
    for name in sorted(names):
        if versions is not None:
            found[name] = versions.get(name, "?")
            continue
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:  # a stale top_level entry without metadata
            continue
    return OrtInstall(found)
