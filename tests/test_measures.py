"""The rule measures on drawn masks with known answers, and every refusal of the parser."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from edge_worker.errors import PackError
from edge_worker.pipeline.measures import evaluate, parse_rules

CLASSES = ("background", "a", "b", "c")


def rect(shape: tuple[int, int], x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """A bool mask with the rectangle ``[x0, x1) x [y0, y1)`` set."""
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def rule(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "code": "r", "measure": "overlap", "segments": ["a", "b"], "min": 0.5,
        "sentence": "Something is wrong; retake.", "criterion": "Textbook, p. 1",
        "on_fail": "retake",
    }  # fmt: skip
    base.update(over)
    return base


def value(raw: dict[str, object], masks: dict[str, np.ndarray], view: str | None = None,
          scale: tuple[float, float] = (1.0, 1.0)) -> float | None:  # fmt: skip
    (outcome,) = evaluate(parse_rules([raw], CLASSES, "test"), masks, view, scale)
    return outcome.value


def test_centroid_offset_three_segments_is_normalised_by_the_reference_span() -> None:
    shape = (100, 100)
    left, right = rect(shape, 20, 40, 30, 50), rect(shape, 60, 40, 70, 50)  # centres 25, 65
    target = rect(shape, 50, 60, 54, 70)  # centre x 52: 7 px right of the midpoint 45
    raw = rule(measure="centroid_offset", segments=["c", "a", "b"], min=None, max=0.1)
    assert value(raw, {"a": left, "b": right, "c": target}) == pytest.approx(7 / 40)


def test_centroid_offset_two_segments_uses_the_reference_width_in_true_proportions() -> None:
    shape = (100, 100)
    body = rect(shape, 20, 10, 60, 90)  # width 40, centre x 40
    eye = rect(shape, 46, 40, 50, 44)  # centre x 48: offset 8
    raw = rule(measure="centroid_offset", segments=["a", "b"], min=None, max=0.5)
    assert value(raw, {"a": eye, "b": body}) == pytest.approx(8 / 40)
    # A horizontal scale changes both lengths alike: the ratio stays.
    assert value(raw, {"a": eye, "b": body}, scale=(2.0, 1.0)) == pytest.approx(8 / 40)


def test_axis_angle_to_the_vertical_and_between_segments() -> None:
    shape = (200, 200)
    bar = np.zeros(shape, dtype=np.uint8)
    box = cv2.boxPoints(((100.0, 100.0), (12.0, 140.0), 20.0)).astype(np.int32)
    cv2.fillPoly(bar, [box], 1)
    upright = rect(shape, 95, 20, 105, 180)
    raw = rule(measure="axis_angle", segments=["a"], min=None, max=30.0)
    assert value(raw, {"a": bar.astype(bool)}) == pytest.approx(20.0, abs=0.5)
    assert value(raw, {"a": upright}) == pytest.approx(0.0, abs=1e-6)
    pair = rule(measure="axis_angle", segments=["a", "b"], min=None, max=30.0)
    assert value(pair, {"a": bar.astype(bool), "b": upright}) == pytest.approx(20.0, abs=0.5)


def test_axis_angle_is_measured_in_true_proportions() -> None:
    # A 45-degree diagonal in a mask whose pixels are twice as tall as wide is really at
    # atan(2) from the horizontal, i.e. 90 - 63.43 = 26.57 degrees from the vertical.
    diag = np.zeros((100, 100), dtype=bool)
    for i in range(10, 90):
        diag[i, i - 2 : i + 3] = True
    raw = rule(measure="axis_angle", segments=["a"], min=None, max=90.0)
    assert value(raw, {"a": diag}, scale=(1.0, 2.0)) == pytest.approx(90 - math.degrees(math.atan(2)), abs=1.0)


def test_overlap_is_the_fraction_of_the_first_inside_the_second() -> None:
    shape = (50, 50)
    a, b = rect(shape, 10, 10, 20, 20), rect(shape, 15, 0, 50, 50)
    assert value(rule(), {"a": a, "b": b}) == pytest.approx(0.5)


def test_inside_field_is_one_only_for_a_present_uncut_structure() -> None:
    shape = (50, 50)
    raw = rule(measure="inside_field", segments=["a"], min=1.0)
    assert value(raw, {"a": rect(shape, 10, 10, 20, 20)}) == 1.0
    assert value(raw, {"a": rect(shape, 10, 0, 20, 20)}) == 0.0
    (outcome,) = evaluate(parse_rules([raw], CLASSES, "t"), {"a": np.zeros(shape, bool)}, None)
    assert (outcome.value, outcome.status) == (0.0, "fail")


def test_margins_are_the_gap_to_each_edge_as_a_share_of_the_image() -> None:
    shape = (100, 80)  # rows, columns
    lungs = rect(shape, 10, 0, 60, 90)  # x 10..59, y 0..89: touches the top edge only
    gaps = {side: value(rule(measure=f"margin_{side}", segments=["a"], min=0.005), {"a": lungs})
            for side in ("top", "bottom", "left", "right")}  # fmt: skip
    assert gaps == {"top": 0.0, "bottom": 10 / 100, "left": 10 / 80, "right": 20 / 80}
    outcomes = evaluate(parse_rules([rule(code=f"cut_{s}", measure=f"margin_{s}", segments=["a"],
                                          min=0.005) for s in ("top", "left")], CLASSES, "t"),
                        {"a": lungs}, None)  # fmt: skip
    assert [(o.code, o.status) for o in outcomes] == [("cut_top", "fail"), ("cut_left", "pass")]
    # No lung found: not measurable (a person looks), never a pass.
    (absent,) = evaluate(parse_rules([rule(measure="margin_top", segments=["a"], min=0.005)],
                                     CLASSES, "t"), {"a": np.zeros(shape, bool)}, None)  # fmt: skip
    assert (absent.value, absent.status) == (None, "not_measurable")


def test_component_count_ignores_specks() -> None:
    shape = (100, 100)
    m = rect(shape, 10, 10, 20, 20) | rect(shape, 30, 10, 40, 20) | rect(shape, 50, 50, 60, 60)
    m[90, 90] = True  # one pixel: below MIN_COMPONENT_FRACTION, a network speck
    raw = rule(measure="component_count", segments=["a"], min=4.0)
    (outcome,) = evaluate(parse_rules([raw], CLASSES, "t"), {"a": m}, None)
    assert (outcome.value, outcome.status) == (3.0, "fail")


def test_status_pass_fail_not_measurable_and_views() -> None:
    shape = (50, 50)
    rules = parse_rules([
        rule(code="ov", min=0.4),
        rule(code="ov_strict", min=0.9, on_fail="review"),
        rule(code="off", measure="centroid_offset", segments=["c", "a"], min=None, max=0.1),
        rule(code="lat_only", views=["LAT"]),
    ], CLASSES, "t")  # fmt: skip
    masks = {"a": rect(shape, 10, 10, 20, 20), "b": rect(shape, 15, 0, 50, 50)}
    out = {o.code: o for o in evaluate(rules, masks, "AP")}
    assert set(out) == {"ov", "ov_strict", "off"}
    assert out["ov"].status == "pass" and out["ov_strict"].status == "fail"
    assert out["off"].status == "not_measurable" and out["off"].note == "no c in the image"
    assert out["ov_strict"].as_dict()["on_fail"] == "review"
    assert {o.code for o in evaluate(rules, masks, "LAT")} == {"ov", "ov_strict", "off", "lat_only"}


@pytest.mark.parametrize(("change", "field"), [
    ({"measure": "area"}, "measure"),
    ({"segments": ["a", "zz"]}, "segments"),
    ({"segments": ["background", "a"]}, "segments"),
    ({"segments": ["a"]}, "segments"),
    ({"min": "0.5"}, "min"),
    ({"min": None}, "min/max"),
    ({"min": 2.0, "max": 1.0}, "min/max"),
    ({"on_fail": "ignore"}, "on_fail"),
    ({"colour": "red"}, "colour"),
    ({"sentence": ""}, "sentence"),
    ({"views": "AP"}, "views"),
    ({"code": "Bad Code"}, "code"),
])  # fmt: skip
def test_parse_rules_refuses_and_names_rule_and_field(change: dict[str, object], field: str) -> None:
    raw = rule(**change)
    with pytest.raises(PackError) as err:
        parse_rules([raw], CLASSES, "stage 'rules_ap'")
    assert str(err.value).startswith(f"stage 'rules_ap' rule '{raw['code']}': {field}:")


def test_parse_rules_refuses_a_missing_field_and_a_duplicate_code() -> None:
    missing = rule()
    del missing["criterion"]
    with pytest.raises(PackError, match=r"rule 'r': criterion: missing"):
        parse_rules([missing], CLASSES, "s")
    with pytest.raises(PackError, match=r"rule 'r': code: duplicate code"):
        parse_rules([rule(), rule()], CLASSES, "s")
