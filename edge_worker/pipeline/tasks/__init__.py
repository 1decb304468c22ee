"""The pipeline's tasks: one small module each, in one explicit table.

A pack's stages name their task; :data:`TASKS` maps the name to its module (the interface is
described in :mod:`edge_worker.pipeline.tasks.base`).  There is no discovery: a task is a row
of this table or it does not exist, and a pack naming another is refused when it loads.
"""

from __future__ import annotations

from types import ModuleType

from edge_worker.pipeline.tasks import (
    classify,
    derive,
    heatmap,
    orientation,
    regress,
    rules,
    segment,
    tiled_volume,
)

TASKS: dict[str, ModuleType] = {
    "orientation": orientation,
    "classify": classify,
    "segment": segment,
    "regress": regress,
    "rules": rules,
    "heatmap": heatmap,
    "derive": derive,
    "tiled_volume": tiled_volume,
}

#: The tasks that run an ONNX file through an inference backend.
NETWORK_TASKS = tuple(name for name, module in TASKS.items() if module.NETWORK)

__all__ = ["NETWORK_TASKS", "TASKS"]
