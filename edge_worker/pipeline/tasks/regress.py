"""Task ``regress``: a continuous score (the radiologists' 1-3 quality scale, paper 000).

``range`` [lo, hi] (default [1, 3]) clips the score; the grade is the rounded clipped score,
and a grade at or above ``retake_grade`` (default 3) means retake.  A score within
``review_margin`` of the boundary (``retake_grade - 0.5``) goes to a person.  With
``reads.crop`` the stage runs on the upright crop of an earlier segment stage's box.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from edge_worker.judging.decision import Reason, no_crop_source, quality_reasons
from edge_worker.pipeline.preprocess import crop_box
from edge_worker.pipeline.stages import QualityResult, grade, image_batches
from edge_worker.pipeline.tasks.base import Context, Item, earlier_stage, refuse

if TYPE_CHECKING:
    from edge_worker.backends import Session
    from edge_worker.packs.pack import StageSpec

NETWORK = True
KEYS = frozenset({"range", "retake_grade"})


def parse(raw: Mapping[str, Any], where: str, earlier: Mapping[str, StageSpec]) -> dict[str, Any]:
    span = raw.get("range", [1, 3])
    if (not isinstance(span, list) or len(span) != 2
            or not all(isinstance(x, (int, float)) for x in span) or span[0] >= span[1]):  # fmt: skip
        raise refuse(where, "range", f"must be [low, high] with low < high, got {span!r}")
    retake = raw.get("retake_grade", span[1])
    if not isinstance(retake, (int, float)) or not span[0] < retake <= span[1]:
        raise refuse(where, "retake_grade", f"must lie in ({span[0]}, {span[1]}], got {retake!r}")
    crop = raw.get("reads", {}).get("crop")
    if crop is not None:
        source = earlier_stage(earlier, crop, where, "reads.crop", ("segment",))
        if not source.options.get("box"):
            raise refuse(where, "reads.crop", f"stage '{crop}' has no box to crop")
    if "score" not in raw.get("outputs", {}):
        raise refuse(where, "outputs", "a regress stage's network must output 'score'")
    return {"range": (float(span[0]), float(span[1])), "retake_grade": float(retake)}


def role(options: Mapping[str, Any], is_view_stage: bool) -> str:
    return "quality"


def run(session: Session | None, spec: StageSpec, items: Sequence[Item]) -> list[QualityResult]:
    assert session is not None and spec.input is not None
    crop = spec.reads.get("crop")
    i = spec.input
    # A crop is made at the input's size (padded around the box's own aspect with ``pad``), so
    # preparing it for the network below changes nothing but the normalisation.
    images = [
        crop_box(item.image(spec), item.results[crop].box, i.height, i.width, i.resize)
        if crop else item.image(spec)
        for item in items
    ]  # fmt: skip
    scores = image_batches(session, spec, images, ("score",))["score"].reshape(len(images), -1)[:, 0]
    low, high = spec.options["range"]
    return [QualityResult(score=float(s), grade=grade(float(s), low, high)) for s in scores]


def reasons(spec: StageSpec, result: QualityResult | None, item: Item, context: Context) -> list[Reason]:
    if result is None:
        crop = spec.reads.get("crop")
        # The crop's stage, when it was due, already said why there is no box.
        return [] if crop is not None and crop in item.due else [no_crop_source(context.view_label)]
    return quality_reasons(spec, context.view_label, result)
