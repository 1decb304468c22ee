"""Task ``rules``: geometric checks over an earlier segment stage's structures (paper 001).

No network.  The rules are data in the manifest (``rules``: a list), each a measure from the
closed set in :mod:`edge_worker.pipeline.measures` with its threshold, the views it applies
to, a stable code, a plain sentence for the radiographer and the textbook criterion behind it.
Each rule's outcome is ``pass``, ``fail`` or ``not_measurable``; a failed rule makes a
``retake`` or a ``review`` (its ``on_fail``), one that could not be measured a ``review``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_worker.judging.decision import Reason
from edge_worker.pipeline import measures
from edge_worker.pipeline.tasks.base import Context, Item, earlier_stage, refuse

if TYPE_CHECKING:
    from edge_worker.backends import Session
    from edge_worker.packs.pack import StageSpec

NETWORK = False
KEYS = frozenset({"rules"})


@dataclass(frozen=True)
class RulesResult:
    """Every rule that applied to the image's view, with its measured value and outcome."""

    outcomes: tuple[measures.RuleOutcome, ...]

    @property
    def failed(self) -> list[measures.RuleOutcome]:
        return [o for o in self.outcomes if o.status == "fail"]


def parse(raw: Mapping[str, Any], where: str, earlier: Mapping[str, StageSpec]) -> dict[str, Any]:
    source = earlier_stage(earlier, raw.get("reads", {}).get("segments"), where,
                           "reads.segments", ("segment",))  # fmt: skip
    if not isinstance(raw.get("rules"), list) or not raw["rules"]:
        raise refuse(where, "rules", "must be a non-empty list of rules")
    classes = [c for c in source.options["classes"] if c != "background"]
    return {"rules": measures.parse_rules(raw["rules"], classes, where)}


def role(options: Mapping[str, Any], is_view_stage: bool) -> str:
    return "rules"


def run(session: Session | None, spec: StageSpec, items: Sequence[Item]) -> list[RulesResult]:
    source = spec.reads["segments"]
    out = []
    for item in items:
        segments = item.results[source]
        outcomes = measures.evaluate(spec.options["rules"], segments.masks, item.view, segments.scale)
        out.append(RulesResult(tuple(outcomes)))
    return out


def _value(o: measures.RuleOutcome) -> str:
    limits = " and ".join(
        f"{word} {limit:g}" for word, limit in (("at least", o.min), ("at most", o.max))
        if limit is not None
    )  # fmt: skip
    return f"{o.measure} {o.value:.3g}, {limits}" if o.value is not None else o.measure


def reasons(spec: StageSpec, result: RulesResult | None, item: Item, context: Context) -> list[Reason]:
    if result is None:
        return []  # the segment stage was not due or found nothing: it said so
    found: list[Reason] = []
    for o in result.outcomes:
        if o.status == "fail":
            code = "rule_failed" if o.on_fail == "retake" else "rule_flagged"
            found.append(Reason(code, f"{o.sentence} ({_value(o)}; {o.criterion})", rule=o.code))
        elif o.status == "not_measurable":
            found.append(Reason("rule_not_measurable", (
                f"{o.code} could not be checked: {o.note}. Check it on the image yourself."
            ), rule=o.code))  # fmt: skip
    if not found and result.outcomes:
        found.append(Reason("rules_passed", (
            f"All {len(result.outcomes)} positioning rules for the {context.view_label} view passed."
        )))  # fmt: skip
    return found
