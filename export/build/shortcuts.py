"""Does the built view stage read the anatomy, or the text, borders and detector look?

Each probe removes one cue from EVERY held-out image (all classes alike) and the view network
is scored again on the upright image, exactly as the per-stage figure is
(:func:`export.build.chain.run_network`).  If the accuracy collapses when a cue is gone, the
network was leaning on it.  The probes are the chest pack's (:mod:`models.chest.shortcuts`):

* ``border_12`` / ``border_15``: the outer 12 % / 15 % of each side blanked (black), where
  burned-in words, side markers and cassette edges sit;
* ``text_removed``: small bright high-contrast blobs (text, markers, lead buttons) painted over
  from their surroundings;
* ``equalised``: histogram equalisation, which flattens the look of one detector or site.

Figures: per probe, the accuracy and balanced accuracy and their change from the unaltered
images (``validation.pipeline`` is the chained figure; this is the view network alone).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from edge_worker.pipeline.runner import Pipeline
from export.build.chain import run_network
from export.build.labels import Row
from export.build.report import class_recall
from export.build.stages import upright
from models.chest.shortcuts import equalise, mask_border, remove_text

PROBES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "unaltered": lambda img: img,
    "border_12": partial(mask_border, frac=0.12),
    "border_15": partial(mask_border, frac=0.15),
    "text_removed": remove_text,
    "equalised": equalise,
}


def shortcut_figures(pipeline: Pipeline, rows: list[Row]) -> dict[str, Any] | None:
    """Accuracy of the view network on the held-out images under each probe; ``None`` for a
    pack without a view stage."""
    pack = pipeline.pack
    spec = next((s for s in pack.stages if s.role == "view"), None)
    if spec is None or not rows:
        return None
    labels = list(spec.labels)
    truth = [r.record.view for r in rows]
    images = [np.clip(upright(r.sample).working.astype(np.float32), 0.0, 1.0) for r in rows]
    out: dict[str, Any] = {}
    for name, probe in PROBES.items():
        pred = [labels[int(np.argmax(run_network(pipeline, spec.name, probe(img))))]
                for img in images]  # fmt: skip
        recall = class_recall(truth, pred, labels)
        out[name] = {"accuracy": round(float(np.mean([t == p for t, p in zip(truth, pred)])), 4),
                     "balanced_accuracy": recall["balanced_accuracy"]}  # fmt: skip
    base = out["unaltered"]
    for facts in out.values():
        facts["accuracy_change"] = round(facts["accuracy"] - base["accuracy"], 4)
        if facts["balanced_accuracy"] is not None and base["balanced_accuracy"] is not None:
            facts["balanced_accuracy_change"] = round(
                facts["balanced_accuracy"] - base["balanced_accuracy"], 4)
    return {"n": len(rows), "network": spec.name, "probes": out}
