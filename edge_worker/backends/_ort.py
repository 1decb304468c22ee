"""What the ONNX Runtime backends share: session options and the run wrapper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class OrtSession:
    """An ``onnxruntime.InferenceSession`` behind the :class:`~edge_worker.backends.Session` API."""

    def __init__(self, path: Path, providers: list[Any], threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # ENABLE_ALL (with the NCHWc layout transforms) is what makes ORT fast on this class
        # of model: 3x over EXTENDED for EfficientNet (reference/cpu-baseline.md, section 2).
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.providers = self._session.get_providers()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one float32 NCHW batch; outputs by name."""
        values = self._session.run(self._outputs, {self._input: np.ascontiguousarray(batch)})
        return dict(zip(self._outputs, values))
