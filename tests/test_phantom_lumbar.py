"""The lumbar phantoms: exact labels, DICOM headers, and rules that agree with the truth.

The rules of the pack (``models.lumbar.rules``) evaluated on the TRUE masks must pass for a
well-positioned phantom and fail exactly the rule of the error introduced: this proves that
the generator and the rules measure the same thing.
"""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pydicom
import pytest

from edge_worker.phantoms.lumbar import (
    CLASSES,
    ERRORS,
    RULE_CODES,
    RULE_OF_ERROR,
    VIEWS,
    balanced,
    render,
    write_lumbar_dataset,
)
from edge_worker.pipeline.measures import evaluate, parse_rules
from models.lumbar.rules import RULES


def test_rule_tables_and_phantom_codes_agree() -> None:
    for view in VIEWS:
        rules = parse_rules(RULES[view], CLASSES[view], f"rules {view}")
        assert tuple(r.code for r in rules) == RULE_CODES[view]
        for error in ERRORS[view]:
            assert RULE_OF_ERROR[(view, error)] in RULE_CODES[view]


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("case", range(8))
def test_rules_on_true_masks_match_the_truth(view: str, case: int) -> None:
    rules = parse_rules(RULES[view], CLASSES[view], view)
    errors = (None, *ERRORS[view])
    for error in errors:
        rng = np.random.default_rng([case, VIEWS.index(view), errors.index(error)])
        _, truth = render(rng, view, error, side="LR"[case % 2])
        got = {o.code: o.status for o in evaluate(rules, truth.masks(), view)}
        assert got == truth.rule_truth(), (view, error, case)
        assert list(got.values()).count("fail") == (error is not None)


def test_measured_values_follow_the_geometry() -> None:
    rules = {r.code: r for r in parse_rules(RULES["AP"], CLASSES["AP"], "AP")}
    _, truth = render(np.random.default_rng(5), "AP", "rotation")
    (offset,) = evaluate([rules["ap_spinous_midline"]], truth.masks(), "AP")
    # 1.083 * tan(rotation) inter-pedicle distances (zs - zp = 0.65, 2a = 0.6 body widths).
    expected = 0.65 / 0.6 * abs(np.tan(np.radians(truth.rotation_deg)))
    assert offset.value == pytest.approx(expected, abs=0.03)
    (angle,) = evaluate([rules["ap_column_aligned"]], truth.masks(), "AP")
    assert angle.value == pytest.approx(abs(truth.inplane_deg), abs=1.0)


def test_labels_are_exact_and_classes_present() -> None:
    pixels, truth = render(np.random.default_rng(1), "AP", None, size=800)
    assert pixels.shape == truth.labels.shape == (800, 640)
    assert pixels.dtype == np.uint16
    present = {truth.classes[k] for k in np.unique(truth.labels)}
    assert present == set(CLASSES["AP"])
    # Five lumbar bodies, ten pedicles, five spinous processes.
    masks = truth.masks()
    for name, count in (("body", 5), ("pedicle_left", 5), ("pedicle_right", 5), ("spinous", 5)):
        n, _ = cv2.connectedComponents(masks[name].astype(np.uint8))
        assert n - 1 == count, name


def test_refuses_an_error_of_another_view() -> None:
    with pytest.raises(ValueError, match="error for LAT"):
        render(np.random.default_rng(0), "LAT", "rotation")


def test_write_lumbar_dataset(tmp_path) -> None:  # type: ignore[no-untyped-def]
    csv_path = write_lumbar_dataset(tmp_path, 6, seed=3, size=600)
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["view"], r["error"] or None) for r in rows] == [balanced(i) for i in range(6)]
    for row in rows:
        ds = pydicom.dcmread(tmp_path / row["file"])
        assert ds.BodyPartExamined == "LSPINE"
        assert ds.ViewPosition == row["view_position"]
        assert ds.ViewPosition in {"AP": ("AP",), "LAT": ("LL",), "OBL": ("LPO", "RPO")}[row["view"]]
        assert (ds.Rows, ds.Columns) == (600, 480)
        stored = np.load(tmp_path / row["labels"])
        assert stored["labels"].shape == (600, 480)
        assert tuple(stored["classes"]) == CLASSES[row["view"]]
    again = write_lumbar_dataset(tmp_path / "b", 1, seed=4, size=600)
    first = pydicom.dcmread(tmp_path / rows[0]["file"])
    other = pydicom.dcmread(again.parent / next(csv.DictReader(again.open()))["file"])
    assert first.PatientID != other.PatientID


def test_angles_override_sweeps_an_error_and_unknown_keys_are_refused() -> None:
    rules = parse_rules(RULES["OBL"], CLASSES["OBL"], "OBL")
    _, truth = render(np.random.default_rng(2), "OBL", None, angles={"obliquity_deg": 70.0})
    assert truth.obliquity_deg == 70.0
    got = {o.code: o for o in evaluate(rules, truth.masks(), "OBL")}
    # 0.566 * sin(25 deg) body widths off the centre.
    assert got["obl_eye_centred"].value == pytest.approx(0.4 * 2**0.5 * np.sin(np.radians(25)), abs=0.03)
    assert got["obl_eye_centred"].status == "fail"
    with pytest.raises(ValueError, match="unknown angles"):
        render(np.random.default_rng(2), "OBL", None, angles={"yaw_deg": 1.0})
