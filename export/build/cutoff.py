"""Known-truth checks of the edge rules: a structure cut off by the collimation.

A rules stage whose rules measure ``margin_top`` / ``margin_bottom`` / ``margin_left`` /
``margin_right`` (the chest recipe's lung-field rules) says "cut off at that edge: retake".
A site's images rarely come labelled "cut off", so the build makes the truth: every held-out
image of the stage's view that has a labelled mask is judged by the written pack through the
worker's :class:`Pipeline`

* **as it is**: a margin rule that fails where the same rule on the labelled mask passes is a
  false alarm (``false_alarm_rate`` = false alarms / images whose labelled mask passes it);
* **cut on each side**: the image is cropped so that the labelled structure loses
  :data:`CUT_FRACTION` of its extent at that edge (it now reaches the edge: cut off, known
  truth); the crop is detected when the pack's rule for that side fails
  (``detection_rate``), and ``not_ok_rate`` counts every decision that is not ``ok`` (a
  wrong view, a missing lung, another rule) since each of those also stops the image
  passing as fine.

The crops are of the upright working image (the labelled rotation undone), as the worker would
read an image already upright, so the orientation stage runs on them too.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from edge_worker.pipeline.runner import Pipeline
from export.build.labels import Row
from export.build.stages import upright, upright_mask

#: Share of the labelled structure's extent cut away at the edge under test.
CUT_FRACTION = 0.15
SIDES = ("top", "bottom", "left", "right")


def _margin_rules(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """``{view: {"stage": rules stage, "rules": {side: code}, "segment": class}}``."""
    pack = pipeline.pack
    out: dict[str, dict[str, Any]] = {}
    for spec in pack.stages:
        if spec.task != "rules":
            continue
        sides = {r.measure.removeprefix("margin_"): r for r in spec.options["rules"]
                 if r.measure.startswith("margin_")}  # fmt: skip
        for view in (spec.when or {}).get(pack.view_stage, ()):
            if sides:
                out[view] = {"stage": spec.name, "rules": sides}
    return out


def _crop(image: np.ndarray, region: np.ndarray, side: str) -> np.ndarray | None:
    """``image`` cut so that ``region`` (bool, same shape) loses CUT_FRACTION at ``side``."""
    rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    if rows.size < 8 or cols.size < 8:
        return None
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    dy, dx = max(1, round(CUT_FRACTION * (y1 - y0))), max(1, round(CUT_FRACTION * (x1 - x0)))
    cut = {"top": image[y0 + dy:], "bottom": image[: y1 + 1 - dy],
           "left": image[:, x0 + dx:], "right": image[:, : x1 + 1 - dx]}[side]  # fmt: skip
    return np.ascontiguousarray(cut)


def _status(j: Any, stage: str, code: str) -> str:
    result = j.results.get(stage)
    if result is None:
        return "missing"  # the rules did not run: another view, or no segmentation
    return next((o.status for o in result.outcomes if o.code == code), "missing")


def cut_off_figures(pipeline: Pipeline, rows: list[Row]) -> dict[str, Any] | None:
    """Detection of cropped images and false alarms on uncropped ones, per view and side;
    ``None`` when the pack has no margin rules."""
    from edge_worker.pipeline import measures

    wanted = _margin_rules(pipeline)
    if not wanted:
        return None
    tally: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        view = row.record.view
        if view not in wanted or row.mask is None:
            continue
        plan = wanted[view]
        image = upright(row.sample).working.astype(np.float32)
        index = upright_mask(row)
        rule_list = list(plan["rules"].values())
        segment = rule_list[0].segments[0]
        spec = next(s for s in pipeline.pack.stages if s.name == plan["stage"])
        classes = list(next(s for s in pipeline.pack.stages
                            if s.name == spec.reads["segments"]).options["classes"])  # fmt: skip
        region = index == classes.index(segment)
        truth = {o.code: o.status for o in measures.evaluate(rule_list, {segment: region}, view)}
        whole = pipeline.judge(image)
        for side, rule in plan["rules"].items():
            t = tally[(view, side)]
            if truth.get(rule.code) == "pass":
                t["uncropped"] += 1
                t["false_alarms"] += _status(whole, plan["stage"], rule.code) == "fail"
            crop = _crop(image, region, side)
            if crop is None:
                continue
            j = pipeline.judge(crop)
            t["cropped"] += 1
            t["detected"] += _status(j, plan["stage"], rule.code) == "fail"
            t["not_ok"] += j.decision != "ok"

    def rate(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    per: dict[str, dict[str, Any]] = defaultdict(dict)
    totals: dict[str, int] = defaultdict(int)
    for (view, side), t in sorted(tally.items()):
        per[view][side] = {**t, "detection_rate": rate(t["detected"], t["cropped"]),
                           "not_ok_rate": rate(t["not_ok"], t["cropped"]),
                           "false_alarm_rate": rate(t["false_alarms"], t["uncropped"])}  # fmt: skip
        for k, v in t.items():
            totals[k] += v
    return {"cut_fraction": CUT_FRACTION, "per_view": dict(per),
            "all": {**totals, "detection_rate": rate(totals["detected"], totals["cropped"]),
                    "not_ok_rate": rate(totals["not_ok"], totals["cropped"]),
                    "false_alarm_rate": rate(totals["false_alarms"], totals["uncropped"])}}
