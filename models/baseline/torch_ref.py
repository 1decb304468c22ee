"""The straightforward torch pipeline on a chosen device, for the GPU proof.  IMPORTS TORCH.

:class:`DeviceNaive` is :class:`models.baseline.naive.Naive` (pydicom decode, min-max,
OpenCV resize, torch eager, the same decision rules) with its networks moved to ``device``:
what the hardware allows with the obvious code, as the reference the worker's CUDA path is
compared with.  Only the GPU proof's station processes import this module
(:mod:`edge_worker.bench.proof_station`); the worker never does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.baseline.naive import Naive


class DeviceNaive(Naive):
    """The naive pipeline with every network on ``device`` (``"cuda"`` or ``"cpu"``)."""

    def __init__(self, pack: Path, checkpoints: Path, device: str, threads: int = 2) -> None:
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        super().__init__(pack, checkpoints)
        self.device = torch.device(device)
        self.nets = {name: net.to(self.device) for name, net in self.nets.items()}

    def run(self, name: str, x: torch.Tensor, times: dict[str, float]) -> np.ndarray:
        """One network on the device; the time includes the copies in and out (``.cpu()``
        waits for the GPU, so the wall time is the network's whole cost to the caller)."""
        start = time.perf_counter()
        with torch.no_grad():
            out = self.nets[name](x.to(self.device)).cpu().numpy()
        times[f"net:{name}"] = (time.perf_counter() - start) * 1000.0
        return out

    def parts(self, path: Path) -> dict[str, float]:
        """Judge ``path``; its wall times in ms with ``networks`` (their sum) added."""
        times: dict[str, float] = dict(self.judge(path)["times_ms"])
        times["networks"] = sum(v for k, v in times.items() if k.startswith("net:"))
        return times

    def memory(self) -> dict[str, Any]:
        """Peak GPU memory torch allocated and reserved (MiB); empty on the CPU."""
        if self.device.type != "cuda":
            return {}
        return {
            "torch_allocated_peak_mib": round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1),
            "torch_reserved_peak_mib": round(torch.cuda.max_memory_reserved(self.device) / 2**20, 1),
        }


def versions() -> dict[str, Any]:
    """torch's version, its CUDA and cuDNN, and the GPU it sees."""
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
    }
