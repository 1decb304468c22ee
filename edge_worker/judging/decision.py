"""What the radiographer should do, and why: reason codes and the one decision rule.

Every finding about an image is a :class:`Reason`: a stable ``code`` from :data:`REASONS`
(subscribers key on it; the verdict schema lists every code), a ``severity`` that says what the
finding does to the decision, and a plain sentence that says what is wrong and what to do.

The decision follows from the severities alone (:func:`decision_of`), in this order:

=============  ==================================================================================
``review``     any finding is unsure or two sources disagree (a network under its threshold,
               header against network, a score at the retake boundary, a reused UID)
``retake``     otherwise, a quality stage found the image not diagnostic (grade 3)
``review``     otherwise, a flag with no network behind it (exposure outside its band)
``not_judged`` otherwise, the pack does not judge quality for this image: never ``ok``
``ok``         nothing of the above
=============  ==================================================================================

Nothing here runs a network; :mod:`edge_worker.pipeline.runner` collects the results and calls
:func:`decide`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_worker.ingest.types import Header
    from edge_worker.packs.pack import Pack, StageSpec
    from edge_worker.pipeline.stages import OrientationResult, QualityResult, RoiResult, ViewResult

#: Severities, from the least to the most consequential for the decision.
INFO, NOT_JUDGED, FLAG, RETAKE, REVIEW = "info", "not_judged", "flag", "retake", "review"
DECISIONS = ("ok", "not_judged", "review", "retake")

#: Every reason code: its severity and what it means (the schema and README list these).
REASONS: dict[str, tuple[str, str]] = {
    "view_uncertain": (REVIEW, "the view stage is under the pack's confidence threshold"),
    "view_header_mismatch": (REVIEW, "the header's ViewPosition names another view than the network"),
    "roi_not_found": (REVIEW, "the region of interest was not found on the upright image"),
    "quality_criteria_met": (INFO, "quality grade 1: the view's criteria are fulfilled"),
    "quality_criteria_partly_met": (INFO, "quality grade 2: criteria partly fulfilled, diagnostic"),
    "quality_not_diagnostic": (RETAKE, "quality grade 3: the view's criteria are not met, retake"),
    "quality_borderline": (REVIEW, "the quality score lies within the pack's margin of 2.5"),
    "quality_stage_missing": (REVIEW, "the pack judges quality, but not for this view"),
    "quality_not_judged": (NOT_JUDGED, "the pack does not judge quality (view and orientation only)"),
    "orientation_uncertain": (REVIEW, "the orientation stage is under its confidence threshold"),
    "orientation_turned": (INFO, "the anatomy is turned; the image was judged upright"),
    "exposure_under": (FLAG, "deviation index below the configured band (IEC 62494-1)"),
    "exposure_over": (FLAG, "deviation index above the configured band (IEC 62494-1)"),
    "body_part_conflict": (REVIEW, "header fields name different body parts"),
    "uid_reused": (REVIEW, "an earlier, different image had this SOP Instance UID"),
    "rule_failed": (RETAKE, "a positioning rule failed; its sentence says what to correct"),
    "rule_flagged": (REVIEW, "a rule the pack leaves to a person failed"),
    "rule_not_measurable": (REVIEW, "a structure a rule measures was not found, so it was not checked"),
    "rules_passed": (INFO, "every positioning rule for the view passed"),
    "label_flagged": (REVIEW, "a multi-label stage found a flagged label (an artifact or finding)"),
    "classify_uncertain": (REVIEW, "a classifier other than the view is under its confidence threshold"),
    "mri_flagged": (REVIEW, "an MR series artifact or finding flag is above the pack's threshold"),
    "mri_quality_low": (REVIEW, "the MR series' quality score is below the pack's review threshold"),
    "mri_quality_not_diagnostic": (RETAKE, "the MR series' quality score is below the pack's retake threshold"),
    "mri_flags_not_judged": (REVIEW, "flags the volume pack cannot be trusted on (low or no AUC on unseen volumes): a person looks for them"),
    "mri_quality_ok": (INFO, "the MR series' quality score is at or above the review threshold"),
    "mri_synthetic_pack": (REVIEW, "the volume pack was trained on synthetic phantoms only: a person decides"),
}

#: What each view's quality criterion is (ankle paper, section 4.2 and figure 2), and what to
#: change for the retake.  Views a pack has that are not listed get the generic sentence.
VIEW_CRITERIA: dict[str, tuple[str, str]] = {
    "AP": (
        "the joint gaps between the medial and lateral malleoli and the talus are not free",
        "correct the rotation of the foot and leg so that both gaps are projected free",
    ),
    "LAT": (
        "the joint space between the distal tibia and the talus is not visible",
        "reposition for a true lateral projection so that the tibiotalar joint space is free",
    ),
}

#: ViewPosition (0018,5101) defined terms (PS3.3 C.8.11.5.1.1; CID 4010) and words sites use,
#: mapped to the families a view stage names.
_HEADER_VIEWS = {
    "AP": "AP", "PA": "PA", "LL": "LAT", "RL": "LAT", "LAT": "LAT", "LATERAL": "LAT",
    "LLD": "LAT", "RLD": "LAT", "LATERAL_LEFT": "LAT", "LATERAL_RIGHT": "LAT",
    "LPO": "OBL", "RPO": "OBL", "LAO": "OBL", "RAO": "OBL", "OBL": "OBL", "OBLIQUE": "OBL",
}  # fmt: skip
_FRONTAL = {"AP", "PA"}


@dataclass(frozen=True)
class Reason:
    """One finding: a stable ``code`` (a key of :data:`REASONS`) and what to do about it."""

    code: str
    text: str
    #: The pack's own code of the rule or label behind the finding (rules and flag stages).
    rule: str = ""

    def __post_init__(self) -> None:
        if self.code not in REASONS:
            raise ValueError(f"unknown reason code {self.code!r}")

    @property
    def severity(self) -> str:
        return REASONS[self.code][0]

    def as_dict(self) -> dict[str, str]:
        """``{"code", "severity", "text"}`` (and ``"rule"`` when set), as published."""
        out = {"code": self.code, "severity": self.severity, "text": self.text}
        if self.rule:
            out["rule"] = self.rule
        return out


@dataclass(frozen=True)
class Rules:
    """Decision settings that come from the site's config, not from the pack."""

    #: Largest accepted |deviation index| (IEC 62494-1); 0 switches the exposure check off.
    deviation_index_limit: float = 3.0


def decision_of(severities: Iterable[str]) -> str:
    """The decision for a set of reason severities (the table in the module docstring)."""
    found = set(severities)
    if REVIEW in found:
        return "review"
    if RETAKE in found:
        return "retake"
    if FLAG in found:
        return "review"
    if NOT_JUDGED in found:
        return "not_judged"
    return "ok"


def add_reason(payload: dict[str, Any], reason: Reason) -> None:
    """Add ``reason`` to a built verdict payload and recompute its decision.

    For findings made after the networks (routing, the journal's UID check): the one rule of
    :func:`decision_of` still decides.
    """
    reasons = list(payload.get("reasons", []))
    reasons.append(reason.as_dict())
    payload["reasons"] = reasons
    payload["decision"] = decision_of(str(r.get("severity", "")) for r in reasons)
    if payload["decision"] == "review":
        payload["diagnostic"] = None


def header_view(view_position: str) -> str | None:
    """The view family a header's ViewPosition names, or ``None`` when it names none."""
    return _HEADER_VIEWS.get((view_position or "").strip().upper())


def _pct(x: float) -> str:
    return f"{100.0 * x:.0f} %"


def view_reasons(spec: StageSpec | None, view: ViewResult, header: Header | None) -> list[Reason]:
    """The view stage's findings: under its confidence threshold, or against the header."""
    reasons = []
    min_conf = spec.threshold("min_confidence", 0.8) if spec else 0.8
    if view.confidence < min_conf:
        reasons.append(Reason("view_uncertain", (
            f"The view could not be recognised with confidence ({view.label} at "
            f"{_pct(view.confidence)}, {_pct(min_conf)} needed): check the projection yourself."
        )))  # fmt: skip
    said = header_view(header.view_position) if header is not None else None
    if header is not None and said is not None:
        labels = {header_view(label) or label.upper() for label in view.probabilities}
        seen = header_view(view.label) or view.label.upper()
        # A pack that does not tell AP from PA compares the frontal family only.
        if not {"AP", "PA"} <= labels:
            said = "FRONTAL" if said in _FRONTAL else said
            seen = "FRONTAL" if seen in _FRONTAL else seen
        if said != seen:
            reasons.append(Reason("view_header_mismatch", (
                f"The header says ViewPosition {header.view_position} but the image looks like "
                f"{view.label} ({_pct(view.confidence)}): check which projection was taken, then "
                "correct the header or retake."
            )))  # fmt: skip
    return reasons


def roi_not_found(label: str | None) -> Reason:
    """The region of interest a later stage needs was not found."""
    return Reason("roi_not_found", (
        f"The {label or 'image'} region of interest was not found: check that the joint is "
        "inside the collimated field, then judge the image yourself."
    ))  # fmt: skip


def no_crop_source(label: str | None) -> Reason:
    """A quality stage is due but the pack has no ROI stage for this view."""
    return Reason("roi_not_found", f"No {label} region of interest to judge quality on.")


def judged_reasons(pack_name: str, judges_anything: bool, label: str | None) -> list[Reason]:
    """Why an image that no judging stage looked at is never ``ok``."""
    if judges_anything:
        return [Reason("quality_stage_missing", (
            f"Pack {pack_name} judges quality, but not for view {label}: judge the image yourself."
        ))]  # fmt: skip
    return [Reason("quality_not_judged", (
        f"Pack {pack_name} checks view and orientation only; quality was not judged: look "
        "at the image yourself."
    ))]  # fmt: skip


def quality_reasons(spec: StageSpec, label: str | None, quality: QualityResult) -> list[Reason]:
    """A quality score in words: its grade, or borderline within the pack's margin of 2.5."""
    margin = spec.threshold("review_margin", 0.15)
    retake_grade = float(spec.options.get("retake_grade", 3))
    boundary = retake_grade - 0.5
    score = quality.score
    if abs(score - boundary) < margin:
        return [Reason("quality_borderline", (
            f"Quality score {score:.2f} lies within {margin:.2f} of the retake boundary {boundary:g}: "
            "a person must decide whether to retake."
        ))]  # fmt: skip
    if quality.grade >= retake_grade:
        what, fix = VIEW_CRITERIA.get(label or "", (
            f"the {label} view's quality criteria are not met", "reposition and retake"
        ))  # fmt: skip
        return [Reason("quality_not_diagnostic", (
            f"{label} not diagnostic (grade 3, score {score:.2f}): {what}. Retake: {fix}."
        ))]  # fmt: skip
    if quality.grade == 1:
        return [Reason("quality_criteria_met", f"{label} diagnostic: criteria met (grade 1, score {score:.2f}).")]
    return [Reason("quality_criteria_partly_met", (
        f"{label} diagnostic: criteria partly met (grade 2, score {score:.2f})."
    ))]  # fmt: skip


def _quality_reasons(
    pack: Pack, view: ViewResult, roi: RoiResult | None, quality: QualityResult | None
) -> list[Reason]:
    label = view.label
    if pack.stage("roi", label) is not None and (roi is None or roi.box is None):
        return [roi_not_found(label)]
    spec = pack.stage("quality", label)
    if spec is None:
        return judged_reasons(pack.name, any(s.role == "quality" for s in pack.stages), label)
    if quality is None:
        return [no_crop_source(label)]
    return quality_reasons(spec, label, quality)


def orientation_reasons(spec: StageSpec, orientation: OrientationResult) -> list[Reason]:
    """The orientation stage's findings: unsure, or turned (the image was judged upright)."""
    min_norm = spec.threshold("min_norm", 0.5)
    if orientation.confidence < min_norm:
        return [Reason("orientation_uncertain", (
            f"The orientation could not be determined with confidence ({orientation.confidence:.2f} "
            f"< {min_norm:.2f}); the other stages may have judged it turned: check it yourself."
        ))]  # fmt: skip
    if orientation.suggested_rotation_deg:
        return [Reason("orientation_turned", (
            f"The anatomy is turned {orientation.angle_deg:.0f} deg: rotate the display "
            f"{orientation.suggested_rotation_deg} deg clockwise to show it upright (it was "
            "judged upright)."
        ))]  # fmt: skip
    return []


def exposure_reasons(header: Header | None, rules: Rules) -> list[Reason]:
    """Under- or over-exposure from the header's deviation index, no network needed.

    The deviation index (0018,1413) is used as written; where only the exposure index and its
    target are given, DI = 10 log10(EI / EI_target) (IEC 62494-1).  A file without them says
    nothing about exposure.
    """
    if header is None or rules.deviation_index_limit <= 0:
        return []
    di = header.deviation_index
    ei, target = header.exposure_index, header.target_exposure_index
    if di is None and ei is not None and target is not None and ei > 0 and target > 0:
        di = 10.0 * math.log10(ei / target)
    if di is None:
        return []
    limit = rules.deviation_index_limit
    facts = f"deviation index {di:+.1f}" + (
        f" (exposure index {ei:g}, target {target:g})" if ei is not None and target is not None
        else f" (exposure index {ei:g})" if ei is not None else ""
    )  # fmt: skip
    if di < -limit:
        return [Reason("exposure_under", (
            f"Under-exposed: {facts}, below -{limit:g}. Check the image for noise; check kV, "
            "mAs and the AEC chamber before the next exposure."
        ))]  # fmt: skip
    if di > limit:
        return [Reason("exposure_over", (
            f"Over-exposed: {facts}, above +{limit:g}: more dose than needed. Check for burnt-out "
            "areas; check kV, mAs and the AEC chamber before the next exposure."
        ))]  # fmt: skip
    return []


def decide(
    pack: Pack,
    view: ViewResult,
    roi: RoiResult | None,
    quality: QualityResult | None,
    orientation: OrientationResult | None,
    header: Header | None = None,
    rules: Rules | None = None,
) -> tuple[str, list[Reason]]:
    """The decision and its reasons for one image; see the table in the module docstring.

    ``header`` (optional: a tool may judge bare pixels) brings the cross-checks with
    ViewPosition and the exposure flags.
    """
    reasons: list[Reason] = []
    orient_spec = pack.stage("orientation")
    if orientation is not None and orient_spec is not None:
        reasons += orientation_reasons(orient_spec, orientation)
    reasons += view_reasons(pack.stage("view"), view, header)
    reasons += _quality_reasons(pack, view, roi, quality)
    reasons += exposure_reasons(header, rules or Rules())
    return decision_of(r.severity for r in reasons), reasons


def codes(reasons: Sequence[Reason]) -> list[str]:
    """The codes of ``reasons``, in order (for tests and logs)."""
    return [r.code for r in reasons]
