"""Task ``classify``: single-label (the view, a body part) or multi-label (artifact flags).

Single-label: softmax over ``labels``; under ``min_confidence`` the decision is ``review``.
Multi-label: a sigmoid per label; a label at or above ``present`` (default 0.5) is a finding
(``label_flagged``: a person looks).  A classifier that exports ``features`` (N, C, h, w)
keeps each image's map in its result, for a ``heatmap`` stage to read.

Option ``mirrored_look: true``: the network also reads each image mirrored left-right and the
two answers (softmax or sigmoid) are averaged; for labels that a mirror does not change (a
projection, a body part), not for a side (left/right marker) or anything lateralised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_worker.judging.decision import Reason, view_reasons
from edge_worker.pipeline.stages import run_view_batch, view_from_logits, with_mirrored_look
from edge_worker.pipeline.tasks.base import Context, Item, refuse, string_list

if TYPE_CHECKING:
    from edge_worker.backends import Session
    from edge_worker.packs.pack import StageSpec

NETWORK = True
KEYS = frozenset({"labels", "multi_label", "mirrored_look"})


@dataclass(frozen=True)
class FlagsResult:
    """A multi-label stage's answer: every label's probability and those present."""

    probabilities: dict[str, float]
    present: tuple[str, ...]
    #: The classifier's last feature map (C, h, w), kept only when a heatmap stage reads it.
    features: np.ndarray | None = field(default=None, repr=False, compare=False)


def parse(raw: Mapping[str, Any], where: str, earlier: Mapping[str, StageSpec]) -> dict[str, Any]:
    labels = string_list(raw.get("labels"), where, "labels", minimum=1)
    multi = raw.get("multi_label", False)
    if not isinstance(multi, bool):
        raise refuse(where, "multi_label", "must be true or false")
    if not multi and len(labels) < 2:
        raise refuse(where, "labels", "a single-label classifier needs at least two labels")
    if "logits" not in raw.get("outputs", {}):
        raise refuse(where, "outputs", "a classify stage's network must output 'logits'")
    mirror = raw.get("mirrored_look", False)
    if not isinstance(mirror, bool):
        raise refuse(where, "mirrored_look", "must be true or false")
    return {"labels": labels, "multi_label": multi, "mirrored_look": mirror}


def role(options: Mapping[str, Any], is_view_stage: bool) -> str:
    return "view" if is_view_stage else "classify"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def run(session: Session | None, spec: StageSpec, items: Sequence[Item]) -> list[Any]:
    assert session is not None
    images = [item.image(spec) for item in items]
    keep = "features" in spec.outputs
    if not spec.options.get("multi_label") and not keep:
        return list(run_view_batch(session, spec, images))
    outputs, mirror = with_mirrored_look(session, spec, images,
                                         ("logits", "features") if keep else ("logits",))  # fmt: skip
    results: list[Any] = []
    for i, row in enumerate(outputs["logits"]):
        features = outputs["features"][i] if "features" in outputs else None
        other = None if mirror is None else mirror[i]
        if spec.options.get("multi_label"):
            probs = _sigmoid(row.astype(np.float64))
            if other is not None:
                probs = (probs + _sigmoid(other.astype(np.float64))) / 2.0
            cut = spec.threshold("present", 0.5)
            results.append(FlagsResult(
                {label: float(p) for label, p in zip(spec.labels, probs)},
                tuple(label for label, p in zip(spec.labels, probs) if p >= cut), features,
            ))  # fmt: skip
        else:
            results.append(view_from_logits(spec, row, features, other))
    return results


def _flagged(spec: StageSpec, label: str, probability: float) -> Reason:
    text = (f"{spec.name}: {label} found ({100.0 * probability:.0f} %): look at the image and "
            "confirm or dismiss it.")  # fmt: skip
    return Reason("label_flagged", text, rule=label)


def reasons(spec: StageSpec, result: Any, item: Item, context: Context) -> list[Reason]:
    if result is None:
        return []
    if isinstance(result, FlagsResult):
        return [_flagged(spec, label, result.probabilities[label]) for label in result.present]
    if spec.role == "view":
        return view_reasons(spec, result, context.header)
    min_conf = spec.threshold("min_confidence", 0.8)
    if result.confidence < min_conf:
        return [Reason("classify_uncertain", (
            f"{spec.name}: {result.label} at {100.0 * result.confidence:.0f} %, "
            f"{100.0 * min_conf:.0f} % needed: check it yourself."
        ))]  # fmt: skip
    return []
