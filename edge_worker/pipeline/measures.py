"""Positioning rules measured on a segmentation: the closed set of measures and its parser.

A rules stage (pack format version 2, ``task: "rules"``) names an earlier segment stage and
lists rules.  Each rule applies one measure from the table below to named segment masks and
compares the value with ``min`` and/or ``max``.  The set is closed on purpose: a pack can
choose segments and thresholds, never new code.

===================  ===========  ==========================================================
measure              segments     value
===================  ===========  ==========================================================
centroid_offset      T, A, B      distance from T's centroid to the midpoint of A's and B's
                                  centroids, along the line A -> B, divided by the distance
                                  A -> B (unsigned).  AP trunk rotation: spinous processes
                                  against the midpoint between the left and right pedicles.
centroid_offset      T, R         distance along the image x axis from T's centroid to R's,
                                  divided by R's width (its extent along x; unsigned).
                                  Oblique: the pedicle ("Scottie dog's eye") against the
                                  vertebral bodies.
axis_angle           S            angle in degrees (0-90) between S's principal axis and the
                                  image vertical (the long axis of the detector).
axis_angle           S, U         angle in degrees (0-90) between the principal axes of S and U.
overlap              S, U         fraction of S's area that lies inside U (0-1).
inside_field         S            1.0 when S is present and touches no image border (it is
                                  wholly inside the collimated field), else 0.0.  An absent S
                                  is a measured 0.0, not "not measurable": presence is the
                                  question.
component_count      S            number of connected components of S (8-connectivity).
margin_top           S            the gap between S and the image's top edge, as a fraction of
                                  the image height (0 when S touches it).  Chest: a lung field
                                  cut off at the apices by the collimation.  ``margin_bottom``
                                  (costophrenic angles), ``margin_left`` and ``margin_right``
                                  (fractions of the width; the image's sides as displayed)
                                  are the same for the other edges.
===================  ===========  ==========================================================

Every measure first drops connected components smaller than :data:`MIN_COMPONENT_FRACTION`
of the image (specks of a network's output).  Lengths and angles are taken in true
proportions: ``scale = (sx, sy)`` is the size of one mask pixel in working-image pixels, so a
network input resized non-uniformly does not skew them.  A structure a measure needs that is
absent makes the rule ``not_measurable`` with a note (``inside_field`` excepted).

Pure numpy and OpenCV: the worker imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge_worker.errors import PackError

#: Components smaller than this fraction of the mask's pixels are ignored by every measure.
MIN_COMPONENT_FRACTION = 0.0004
#: How many segments each measure takes.
ARITY: dict[str, tuple[int, ...]] = {
    "centroid_offset": (2, 3),
    "axis_angle": (1, 2),
    "overlap": (2,),
    "inside_field": (1,),
    "component_count": (1,),
    "margin_top": (1,),
    "margin_bottom": (1,),
    "margin_left": (1,),
    "margin_right": (1,),
}
ON_FAIL = ("retake", "review")
STATUSES = ("pass", "fail", "not_measurable")
_KEYS = {"code", "measure", "segments", "min", "max", "views", "sentence", "criterion", "on_fail"}
_REQUIRED = ("code", "measure", "segments", "sentence", "criterion", "on_fail")


@dataclass(frozen=True)
class Rule:
    """One positioning rule: ``min <= measure(segments) <= max`` (either bound optional).

    ``views`` empty means every view; ``sentence`` tells the radiographer what is wrong and
    what to do; ``criterion`` cites the textbook evaluation criterion; ``on_fail`` is what a
    failure asks for (``retake`` or ``review``).
    """

    code: str
    measure: str
    segments: tuple[str, ...]
    min: float | None
    max: float | None
    views: tuple[str, ...]
    sentence: str
    criterion: str
    on_fail: str


@dataclass(frozen=True)
class RuleOutcome:
    """The result of one rule on one image; ``note`` says why a rule was not measurable."""

    code: str
    measure: str
    value: float | None
    min: float | None
    max: float | None
    status: str
    sentence: str
    criterion: str
    on_fail: str
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The outcome as a JSON-ready dict (value rounded to 4 decimals)."""
        return {
            "code": self.code,
            "measure": self.measure,
            "value": None if self.value is None else round(self.value, 4),
            "min": self.min,
            "max": self.max,
            "status": self.status,
            "sentence": self.sentence,
            "criterion": self.criterion,
            "on_fail": self.on_fail,
            "note": self.note,
        }


def _threshold(raw: dict[str, Any], key: str, fail: Callable[[str, str], PackError]) -> float | None:
    if key not in raw or raw[key] is None:
        return None
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(key, f"must be a finite number, got {value!r}")
    return float(value)


def parse_rules(raw: list[dict[str, Any]], classes: Sequence[str], where: str) -> tuple[Rule, ...]:
    """Validate the rule dicts of a rules stage against the segment stage's ``classes``.

    ``where`` names the stage in messages (``"stage 'rules_ap'"``).  Raises
    :class:`PackError` naming the rule and the field on: an unknown key, a missing field, an
    unknown measure, the wrong number of segments, a segment not in ``classes`` (or the
    ``background`` class), a missing or non-numeric threshold, ``min > max``, a bad
    ``on_fail``, a duplicate code.
    """
    if not isinstance(raw, list):
        raise PackError(f"{where}: rules: must be a list of rule objects, got {type(raw).__name__}")
    structures = {c for c in classes if c != "background"}
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise PackError(f"{where} rule #{i}: must be an object, got {type(item).__name__}")
        code = item.get("code")
        label = code if isinstance(code, str) and code else f"#{i}"

        def fail(field: str, why: str, label: str = label) -> PackError:
            return PackError(f"{where} rule '{label}': {field}: {why}")

        unknown = sorted(set(item) - _KEYS)
        if unknown:
            raise fail(unknown[0], f"unknown key (allowed: {', '.join(sorted(_KEYS))})")
        for key in _REQUIRED:
            if key not in item:
                raise fail(key, "missing")
        if not isinstance(code, str) or not code.replace("_", "").isalnum() or code != code.lower():
            raise fail("code", f"must be a snake_case string, got {code!r}")
        if code in seen:
            raise fail("code", "duplicate code")
        seen.add(code)
        measure = item["measure"]
        if measure not in ARITY:
            raise fail("measure", f"unknown measure {measure!r} (known: {', '.join(ARITY)})")
        segments = item["segments"]
        if not isinstance(segments, list) or not all(isinstance(s, str) for s in segments):
            raise fail("segments", f"must be a list of class names, got {segments!r}")
        if len(segments) not in ARITY[measure]:
            counts = " or ".join(str(n) for n in ARITY[measure])
            raise fail("segments", f"{measure} takes {counts} segments, got {len(segments)}")
        for name in segments:
            if name not in structures:
                raise fail("segments", f"{name!r} is not a structure of the segment stage "
                                       f"(classes: {', '.join(sorted(structures))})")  # fmt: skip
        low, high = _threshold(item, "min", fail), _threshold(item, "max", fail)
        if low is None and high is None:
            raise fail("min/max", "a rule needs a numeric min or max threshold")
        if low is not None and high is not None and low > high:
            raise fail("min/max", f"min {low} is greater than max {high}")
        views = item.get("views", [])
        if not isinstance(views, list) or not all(isinstance(v, str) and v for v in views):
            raise fail("views", f"must be a list of view labels, got {views!r}")
        for key in ("sentence", "criterion"):
            if not isinstance(item[key], str) or not item[key].strip():
                raise fail(key, "must be a non-empty string")
        if item["on_fail"] not in ON_FAIL:
            raise fail("on_fail", f"must be one of {', '.join(ON_FAIL)}, got {item['on_fail']!r}")
        rules.append(Rule(code, measure, tuple(segments), low, high, tuple(views),
                          item["sentence"], item["criterion"], item["on_fail"]))  # fmt: skip
    return tuple(rules)


class _Absent(Exception):
    """A structure a measure needs is not in the image (the rule is not measurable)."""


def clean(mask: np.ndarray) -> np.ndarray:
    """``mask`` without the connected components smaller than :data:`MIN_COMPONENT_FRACTION`."""
    binary = np.ascontiguousarray(mask, dtype=np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    floor = max(1.0, MIN_COMPONENT_FRACTION * mask.size)
    keep = np.zeros(n, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= floor
    return keep[labels]


def _points(mask: np.ndarray, name: str, scale: tuple[float, float]) -> np.ndarray:
    """``(N, 2)`` pixel centres of ``mask`` in working-image units; :class:`_Absent` if empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise _Absent(f"no {name} in the image")
    return np.stack([(xs + 0.5) * scale[0], (ys + 0.5) * scale[1]], axis=1)


def _axis(points: np.ndarray) -> np.ndarray:
    """Unit principal (major) axis of a point cloud."""
    centred = points - points.mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred)
    return vectors[:, int(np.argmax(values))]


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two undirected axes, degrees in [0, 90]."""
    cos = abs(float(np.dot(a, b)) / (float(np.linalg.norm(a) * np.linalg.norm(b)) or 1.0))
    return math.degrees(math.acos(min(1.0, cos)))


def _centroid_offset(m: list[np.ndarray], names: tuple[str, ...], s: tuple[float, float]) -> float:
    target = _points(m[0], names[0], s).mean(axis=0)
    if len(m) == 3:
        a = _points(m[1], names[1], s).mean(axis=0)
        b = _points(m[2], names[2], s).mean(axis=0)
        span = b - a
        length = float(np.linalg.norm(span))
        if length == 0.0:
            raise _Absent(f"{names[1]} and {names[2]} share one centroid")
        return abs(float(np.dot(target - (a + b) / 2.0, span))) / length**2
    ref = _points(m[1], names[1], s)
    width = float(ref[:, 0].max() - ref[:, 0].min()) + s[0]
    return abs(float(target[0] - ref[:, 0].mean())) / width


def _axis_angle(m: list[np.ndarray], names: tuple[str, ...], s: tuple[float, float]) -> float:
    first = _axis(_points(m[0], names[0], s))
    other = _axis(_points(m[1], names[1], s)) if len(m) == 2 else np.array([0.0, 1.0])
    return _angle(first, other)


def _overlap(m: list[np.ndarray], names: tuple[str, ...], s: tuple[float, float]) -> float:
    area = int(m[0].sum())
    if area == 0:
        raise _Absent(f"no {names[0]} in the image")
    return float(np.logical_and(m[0], m[1]).sum()) / area


def _inside_field(m: list[np.ndarray], names: tuple[str, ...], s: tuple[float, float]) -> float:
    mask = m[0]
    if not mask.any():
        return 0.0
    border = mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
    return 0.0 if border else 1.0


def _component_count(m: list[np.ndarray], names: tuple[str, ...], s: tuple[float, float]) -> float:
    n, _ = cv2.connectedComponents(m[0].astype(np.uint8), connectivity=8)
    return float(n - 1)


def _margin(side: str) -> Measure:
    """The measure of the gap between a segment and one image edge (see the module table)."""

    def measure(m: list[np.ndarray], names: tuple[str, ...], s: tuple[float, float]) -> float:
        mask = m[0]
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if rows.size == 0:
            raise _Absent(f"no {names[0]} in the image")
        h, w = mask.shape
        gaps = {"top": rows[0] / h, "bottom": (h - 1 - rows[-1]) / h,
                "left": cols[0] / w, "right": (w - 1 - cols[-1]) / w}  # fmt: skip
        return float(gaps[side])

    return measure


Measure = Callable[[list[np.ndarray], tuple[str, ...], tuple[float, float]], float]
MEASURES: dict[str, Measure] = {
    "centroid_offset": _centroid_offset,
    "axis_angle": _axis_angle,
    "overlap": _overlap,
    "inside_field": _inside_field,
    "component_count": _component_count,
    **{f"margin_{side}": _margin(side) for side in ("top", "bottom", "left", "right")},
}


def evaluate(
    rules: Sequence[Rule],
    masks: Mapping[str, np.ndarray],
    view: str | None,
    scale: tuple[float, float] = (1.0, 1.0),
) -> list[RuleOutcome]:
    """Apply ``rules`` to ``masks`` (class name -> bool ``(H, W)`` array, one resolution).

    Rules whose ``views`` exclude ``view`` are left out (with ``view`` ``None`` only the
    rules for every view run).  ``scale = (sx, sy)`` is one mask pixel's size in
    working-image pixels.  A class missing from ``masks`` counts as an empty mask.
    """
    shape = next(iter(masks.values())).shape if masks else None
    cleaned: dict[str, np.ndarray] = {}
    outcomes = []
    for rule in rules:
        if rule.views and view not in rule.views:
            continue
        chosen = []
        for name in rule.segments:
            if name not in cleaned:
                raw = masks.get(name)
                if raw is None:
                    raw = np.zeros(shape or (1, 1), dtype=bool)
                cleaned[name] = clean(raw)
            chosen.append(cleaned[name])
        value: float | None
        note = None
        try:
            value = MEASURES[rule.measure](chosen, rule.segments, scale)
        except _Absent as absent:
            value, note = None, str(absent)
        if value is None:
            status = "not_measurable"
        elif (rule.min is not None and value < rule.min) or (rule.max is not None and value > rule.max):
            status = "fail"
        else:
            status = "pass"
        outcomes.append(RuleOutcome(rule.code, rule.measure, value, rule.min, rule.max, status,
                                    rule.sentence, rule.criterion, rule.on_fail, note))  # fmt: skip
    return outcomes
