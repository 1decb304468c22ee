"""The decision rules: ok, retake, or review when the networks are unsure."""

from __future__ import annotations

from pathlib import Path

from edge_worker.pack import InputSpec, Pack, StageSpec
from edge_worker.pipeline.runner import decide
from edge_worker.pipeline.stages import OrientationResult, QualityResult, RoiResult, ViewResult
from edge_worker.preprocess import RotatedBox

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


def test_good_image_is_ok() -> None:
    decision, reasons = decide(PACK, AP, ROI, QualityResult(1.2, 1), UPRIGHT)
    assert decision == "ok"
    assert any("grade 1" in r for r in reasons)


def test_grade_three_is_a_retake() -> None:
    decision, reasons = decide(PACK, AP, ROI, QualityResult(2.95, 3), UPRIGHT)
    assert decision == "retake"
    assert any("retake" in r for r in reasons)


def test_score_near_the_boundary_needs_review() -> None:
    assert decide(PACK, AP, ROI, QualityResult(2.6, 3), UPRIGHT)[0] == "review"
    assert decide(PACK, AP, ROI, QualityResult(2.35, 2), UPRIGHT)[0] == "review"
    assert decide(PACK, AP, ROI, QualityResult(2.25, 2), UPRIGHT)[0] == "ok"


def test_unsure_view_missing_roi_or_missing_stage_need_review() -> None:
    unsure = ViewResult("AP", 0.6, {"AP": 0.6, "LAT": 0.4})
    decision, reasons = decide(PACK, unsure, ROI, QualityResult(1.1, 1), UPRIGHT)
    assert decision == "review" and "view uncertain" in reasons[0]
    decision, reasons = decide(PACK, AP, RoiResult(None, 0.0), None, UPRIGHT)
    assert decision == "review" and any("no AP region" in r for r in reasons)
    lat = ViewResult("LAT", 0.99, {"AP": 0.01, "LAT": 0.99})
    decision, reasons = decide(PACK, lat, None, None, UPRIGHT)
    assert decision == "review" and any("no quality stage" in r for r in reasons)


def test_a_pack_without_quality_stages_judges_view_and_orientation_only() -> None:
    view_only = Pack(
        root=Path("."), name="v", version="1", body_parts=("CHEST",), not_for_clinical_use=True,
        training_data={"kind": "real"}, validation={},
        stages=(_stage("view", "view", min_confidence=0.8), _stage("orientation", "orientation", min_norm=0.5)),
    )  # fmt: skip
    decision, reasons = decide(view_only, AP, None, None, UPRIGHT)
    assert decision == "ok" and any("not quality" in r for r in reasons)
    unsure = ViewResult("AP", 0.55, {"AP": 0.55, "LAT": 0.45})
    assert decide(view_only, unsure, None, None, UPRIGHT)[0] == "review"


def test_orientation_reason_and_quarter_turn() -> None:
    sideways = OrientationResult(268.0, 0.97)
    assert sideways.suggested_rotation_deg == 270
    assert OrientationResult(359.0, 1.0).suggested_rotation_deg == 0
    assert OrientationResult(134.0, 1.0).suggested_rotation_deg == 90
    decision, reasons = decide(PACK, AP, ROI, QualityResult(1.2, 1), sideways)
    assert decision == "ok" and any("rotate 270 deg clockwise" in r for r in reasons)
    assert decide(PACK, AP, ROI, QualityResult(1.2, 1), OrientationResult(10.0, 0.2))[0] == "review"
