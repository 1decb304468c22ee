"""The decision rules: one table of reason codes, never a confident wrong "ok"."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge_worker.ingest.types import Header
from edge_worker.judging.decision import (
    REASONS,
    Reason,
    Rules,
    add_reason,
    codes,
    decide,
    decision_of,
)
from edge_worker.packs.pack import InputSpec, Pack, StageSpec
from edge_worker.pipeline.preprocess import RotatedBox
from edge_worker.pipeline.stages import OrientationResult, QualityResult, RoiResult, ViewResult

_INPUT = InputSpec("image", 64, 64, 1, 0.5, 0.25)


def _stage(name: str, task: str, view: str | None = None, **thresholds: float) -> StageSpec:
    return StageSpec(
        name=name, task=task, applies_to_view=view, file=Path(f"{name}.onnx"), sha256="0" * 64,
        input=_INPUT, outputs={}, labels=("AP", "LAT") if task == "view" else (),
        thresholds=dict(thresholds),
    )  # fmt: skip


PACK = Pack(
    root=Path("."), name="t", version="1", body_parts=("ANKLE",), not_for_clinical_use=True,
    training_data={"kind": "synthetic-phantom"}, validation={},
    stages=(
        _stage("view", "view", min_confidence=0.8),
        _stage("roi_ap", "roi", "AP"),
        _stage("quality_ap", "quality", "AP", review_margin=0.2),
        _stage("orientation", "orientation", min_norm=0.5),
    ),
)  # fmt: skip
AP = ViewResult("AP", 0.99, {"AP": 0.99, "LAT": 0.01})
ROI = RoiResult(RotatedBox(10, 10, 20, 5, 0), 0.1)
UPRIGHT = OrientationResult(3.0, 0.98)


HEADER = Header(
    sop_instance_uid="1.2.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", study_instance_uid="1.2",
    series_instance_uid="1.2.4", modality="DX", body_part="ANKLE", view_position="AP", laterality="R",
    rows=2000, columns=1600, bits_stored=12, photometric="MONOCHROME2", transfer_syntax="1.2.840.10008.1.2.1",
    pixel_spacing_mm=None, manufacturer="test",
)  # fmt: skip


def _codes(*args: object, **kwargs: object) -> tuple[str, list[str]]:
    decision, reasons = decide(*args, **kwargs)  # type: ignore[arg-type]
    return decision, codes(reasons)


def test_good_image_is_ok_with_the_grade_in_words() -> None:
    decision, reasons = decide(PACK, AP, ROI, QualityResult(1.2, 1), UPRIGHT, HEADER)
    assert decision == "ok"
    assert codes(reasons) == ["quality_criteria_met"]
    assert "grade 1" in reasons[0].text


def test_grade_three_is_a_retake_that_says_what_to_fix_per_view() -> None:
    decision, reasons = decide(PACK, AP, ROI, QualityResult(2.95, 3), UPRIGHT, HEADER)
    assert (decision, codes(reasons)) == ("retake", ["quality_not_diagnostic"])
    # The ankle paper's AP criterion: the medial and lateral joint gaps must be free.
    assert "malleoli" in reasons[0].text and "Retake" in reasons[0].text


def test_score_near_the_boundary_needs_review() -> None:
    assert _codes(PACK, AP, ROI, QualityResult(2.6, 3), UPRIGHT) == ("review", ["quality_borderline"])
    assert decide(PACK, AP, ROI, QualityResult(2.35, 2), UPRIGHT)[0] == "review"
    assert decide(PACK, AP, ROI, QualityResult(2.25, 2), UPRIGHT)[0] == "ok"


def test_unsure_view_missing_roi_or_missing_stage_need_review() -> None:
    unsure = ViewResult("AP", 0.6, {"AP": 0.6, "LAT": 0.4})
    decision, found = _codes(PACK, unsure, ROI, QualityResult(1.1, 1), UPRIGHT)
    assert decision == "review" and found[0] == "view_uncertain"
    assert _codes(PACK, AP, RoiResult(None, 0.0), None, UPRIGHT) == ("review", ["roi_not_found"])
    lat = ViewResult("LAT", 0.99, {"AP": 0.01, "LAT": 0.99})
    assert _codes(PACK, lat, None, None, UPRIGHT) == ("review", ["quality_stage_missing"])


VIEW_ONLY = Pack(
    root=Path("."), name="v", version="1", body_parts=("CHEST",), not_for_clinical_use=True,
    training_data={"kind": "real"}, validation={},
    stages=(_stage("view", "view", min_confidence=0.8), _stage("orientation", "orientation", min_norm=0.5)),
)  # fmt: skip


def test_a_pack_without_quality_stages_never_says_ok() -> None:
    decision, found = _codes(VIEW_ONLY, AP, None, None, UPRIGHT, HEADER)
    assert (decision, found) == ("not_judged", ["quality_not_judged"])
    unsure = ViewResult("AP", 0.55, {"AP": 0.55, "LAT": 0.45})
    assert decide(VIEW_ONLY, unsure, None, None, UPRIGHT)[0] == "review"


def test_header_view_that_disagrees_with_the_network_goes_to_review_naming_both() -> None:
    lat_header = dataclasses.replace(HEADER, view_position="LL")  # DICOM's term for a left lateral
    decision, reasons = decide(PACK, AP, ROI, QualityResult(1.2, 1), UPRIGHT, lat_header)
    assert decision == "review" and "view_header_mismatch" in codes(reasons)
    text = next(r.text for r in reasons if r.code == "view_header_mismatch")
    assert "LL" in text and "AP" in text
    # An ankle pack that knows AP and LAT only does not tell AP from PA: no false alarm.
    pa_header = dataclasses.replace(HEADER, view_position="PA")
    assert decide(PACK, AP, ROI, QualityResult(1.2, 1), UPRIGHT, pa_header)[0] == "ok"
    # A chest pack that knows both does: header PA, network AP -> review, never ok or not_judged.
    chest = dataclasses.replace(VIEW_ONLY, stages=(
        dataclasses.replace(_stage("view", "view", min_confidence=0.8), labels=("AP", "PA")),
        _stage("orientation", "orientation", min_norm=0.5),
    ))  # fmt: skip
    ap = ViewResult("AP", 0.98, {"AP": 0.98, "PA": 0.02})
    assert _codes(chest, ap, None, None, UPRIGHT, pa_header) == (
        "review", ["view_header_mismatch", "quality_not_judged"]
    )
    # An empty or unknown ViewPosition says nothing.
    blank = dataclasses.replace(HEADER, view_position="")
    assert decide(PACK, AP, ROI, QualityResult(1.2, 1), UPRIGHT, blank)[0] == "ok"


@pytest.mark.parametrize(("di", "ei", "target", "expected"), [
    (-3.5, None, None, "exposure_under"),
    (4.0, None, None, "exposure_over"),
    (2.9, None, None, None),
    (None, 100.0, 400.0, "exposure_under"),   # 10 log10(1/4) = -6.0
    (None, 500.0, 400.0, None),               # +0.97
    (None, None, None, None),                 # a file without them says nothing
])  # fmt: skip
def test_exposure_from_the_header(di: float | None, ei: float | None, target: float | None,
                                  expected: str | None) -> None:  # fmt: skip
    header = dataclasses.replace(HEADER, deviation_index=di, exposure_index=ei, target_exposure_index=target)
    decision, found = _codes(PACK, AP, ROI, QualityResult(1.2, 1), UPRIGHT, header)
    if expected is None:
        assert (decision, found) == ("ok", ["quality_criteria_met"])
    else:
        assert decision == "review" and found[-1] == expected
    # A flag never overrules a retake, and the band comes from the site's config.
    retake = decide(PACK, AP, ROI, QualityResult(2.95, 3), UPRIGHT, header)[0]
    assert retake == "retake"
    off = decide(PACK, AP, ROI, QualityResult(1.2, 1), UPRIGHT, header, Rules(deviation_index_limit=0))
    assert off[0] == "ok"


def test_orientation_reason_and_quarter_turn() -> None:
    sideways = OrientationResult(268.0, 0.97)
    assert sideways.suggested_rotation_deg == 270
    assert OrientationResult(359.0, 1.0).suggested_rotation_deg == 0
    assert OrientationResult(134.0, 1.0).suggested_rotation_deg == 90
    decision, reasons = decide(PACK, AP, ROI, QualityResult(1.2, 1), sideways)
    assert decision == "ok" and codes(reasons)[0] == "orientation_turned"
    assert "rotate the display 270 deg clockwise" in reasons[0].text
    assert _codes(PACK, AP, ROI, QualityResult(1.2, 1), OrientationResult(10.0, 0.2))[1][0] == "orientation_uncertain"
    assert decide(PACK, AP, ROI, QualityResult(1.2, 1), OrientationResult(10.0, 0.2))[0] == "review"


def test_the_decision_table() -> None:
    assert decision_of([]) == "ok"
    assert decision_of(["info"]) == "ok"
    assert decision_of(["info", "not_judged"]) == "not_judged"
    assert decision_of(["not_judged", "flag"]) == "review"
    assert decision_of(["retake", "flag"]) == "retake"
    assert decision_of(["retake", "review"]) == "review"
    assert {s for s, _ in REASONS.values()} == {"info", "not_judged", "flag", "retake", "review"}
    with pytest.raises(ValueError):
        Reason("no_such_code", "x")


def test_a_later_finding_recomputes_the_decision() -> None:
    payload = {"decision": "ok", "diagnostic": True,
               "reasons": [Reason("quality_criteria_met", "fine").as_dict()]}  # fmt: skip
    add_reason(payload, Reason("uid_reused", "another image had this UID"))
    assert payload["decision"] == "review" and payload["diagnostic"] is None
    assert [r["code"] for r in payload["reasons"]] == ["quality_criteria_met", "uid_reused"]
