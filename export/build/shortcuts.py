"""Does the built view stage read the anatomy, or the text, borders and detector look?

Each probe removes one cue from EVERY held-out image (all classes alike) and the view stage
is scored again on the upright image, exactly as the per-stage figure is (the worker's
:func:`edge_worker.pipeline.stages.run_view_batch`, options included).  If the accuracy
collapses when a cue is gone, the network was leaning on it.  The probes are the chest pack's (:mod:`models.chest.shortcuts`):

* ``border_12`` / ``border_15``: the outer 12 % / 15 % of each side blanked (black), where
  burned-in words, side markers and cassette edges sit;
* ``text_removed``: small bright high-contrast blobs (text, markers, lead buttons) painted over
  from their surroundings;
* ``equalised``: histogram equalisation, which flattens the look of one detector or site.

Figures: per probe, the accuracy and balanced accuracy and their change from the unaltered
images (``validation.pipeline`` is the chained figure; this is the view network alone).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from edge_worker.pipeline.runner import Pipeline
from edge_worker.pipeline.stages import run_orientation_batch, run_view_batch
from export.build.chain import ORIENTATION_SEED
from export.build.labels import Row
from export.build.report import class_recall
from export.build.stages import upright
from models.chest.augment import rotate
from models.chest.shortcuts import equalise, mask_border, remove_text
from models.evaluate import angular_error
from models.turns import QUARTER_RESIDUE_DEG, seeded_turns

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
        session = pipeline.session(spec.name)
        pred = [run_view_batch(session, spec, [probe(img)])[0].label for img in images]
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


def orientation_figures(pipeline: Pipeline, rows: list[Row], turns: int) -> dict[str, Any] | None:
    """Does the orientation stage read the frame of a turn instead of the anatomy, and how
    does it do on images framed as radiographs arrive?

    On the same ``turns`` seeded angles per held-out image as the per-stage figure
    (:data:`export.build.chain.ORIENTATION_SEED`), the worker's own function
    (``quarter_turns`` included) reads:

    * ``turned``: the upright image turned on its own canvas (black corners): the per-stage
      figure itself;
    * ``corners_only``: the upright image, not turned, given only the black corners that turn
      leaves; truth 0: the error is what the corners alone say;
    * ``no_corners``: the turned image cut to the central square that the turn leaves without
      black (any angle, inside a full frame);
    * ``as_stored``: a lossless quarter turn of the image tilted by up to 10 deg and cut to the
      centred rectangle with no black: a patient tilted in a full frame, the frame stored at
      any quarter turn, as radiographs arrive; ``quadrant_right``: the share under 45 deg.

    Mean, median and share within 10 deg of each; ``None`` for a pack without an orientation
    stage or without turns to measure on (a stage trained on labelled angles).
    """
    spec = next((s for s in pipeline.pack.stages if s.role == "orientation"), None)
    if spec is None or turns <= 0 or not rows:
        return None
    session = pipeline.session(spec.name)
    errors: dict[str, list[float]] = {"turned": [], "corners_only": [], "no_corners": [],
                                      "as_stored": []}  # fmt: skip
    for row in rows:
        image = np.clip(upright(row.sample).working.astype(np.float32), 0.0, 1.0)
        h, w = image.shape
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        square = image[y0 : y0 + side, x0 : x0 + side]
        rng = np.random.default_rng(ORIENTATION_SEED + row.line)
        for n, angle in enumerate(seeded_turns(ORIENTATION_SEED + row.line, turns)):
            r = math.radians(angle % 90.0)
            inner = max(8, int(side / (abs(math.cos(r)) + abs(math.sin(r)))) - 2)
            c0 = (side - inner) // 2
            frame = rotate(np.ones_like(image), angle, "same") > 0.5
            tilt = float(rng.uniform(-QUARTER_RESIDUE_DEG, QUARTER_RESIDUE_DEG))
            looks = [rotate(image, angle, "same"), image * frame,
                     rotate(square, angle, "same")[c0 : c0 + inner, c0 : c0 + inner],
                     np.rot90(_tilted_in_frame(image, tilt), n % 4)]  # fmt: skip
            truths = (angle % 360.0, 0.0, angle % 360.0, (tilt + 90.0 * (n % 4)) % 360.0)
            found = run_orientation_batch(session, spec, [np.ascontiguousarray(x) for x in looks])
            for key, result, truth in zip(errors, found, truths):
                errors[key].append(float(angular_error(np.array([result.angle_deg]),
                                                       np.array([truth]))[0]))  # fmt: skip
    out: dict[str, Any] = {"n": len(errors["turned"]), "stage": spec.name}
    for key, values in errors.items():
        e = np.array(values)
        out[key] = {"mean_deg": round(float(e.mean()), 2), "median_deg": round(float(np.median(e)), 2),
                    "within_10_deg": round(float((e <= 10.0).mean()), 4)}  # fmt: skip
    out["as_stored"]["quadrant_right"] = round(float((np.array(errors["as_stored"]) < 45.0).mean()), 4)
    return out


def _tilted_in_frame(image: np.ndarray, tilt: float) -> np.ndarray:
    """``image`` turned by ``tilt`` degrees and cut to the largest centred rectangle of its
    own aspect ratio that the turn leaves without black."""
    h, w = image.shape
    t = math.radians(abs(tilt))
    c, s = math.cos(t), math.sin(t)
    scale = 0.98 * min(w / (w * c + h * s), h / (w * s + h * c))
    ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return rotate(image, tilt, "same")[y0 : y0 + ch, x0 : x0 + cw]
