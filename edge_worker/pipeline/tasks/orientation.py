"""Task ``orientation``: the anatomy's angle from upright, from a (cos, sin) head (paper 003).

The stage's result turns the image upright for every later stage that reads ``upright``
(:func:`apply`); the angle and its confidence go to the verdict.

Option ``quarter_turns: true``: the network also reads the image turned by 90, 180 and 270
degrees (lossless ``np.rot90``), each answer is turned back, and the four (cos, sin) answers
are averaged.  Four looks average out part of the error; where they disagree the mean is short,
its norm (the confidence) falls and the verdict goes to review instead of trusting one look.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from edge_worker.judging.decision import Reason, orientation_reasons
from edge_worker.pipeline.preprocess import turn_upright
from edge_worker.pipeline.stages import OrientationResult, run_orientation_batch
from edge_worker.pipeline.tasks.base import Context, Item, refuse

if TYPE_CHECKING:
    from edge_worker.backends import Session
    from edge_worker.packs.pack import StageSpec

NETWORK = True
KEYS: frozenset[str] = frozenset({"quarter_turns"})
OUTPUT = "cossin"


def parse(raw: Mapping[str, Any], where: str, earlier: Mapping[str, StageSpec]) -> dict[str, Any]:
    """``quarter_turns`` (true/false, default false) beside the common options (threshold
    ``min_norm``)."""
    turns = raw.get("quarter_turns", False)
    if not isinstance(turns, bool):
        raise refuse(where, "quarter_turns", "must be true or false")
    return {"quarter_turns": turns}


def role(options: Mapping[str, Any], is_view_stage: bool) -> str:
    return "orientation"


def run(session: Session | None, spec: StageSpec, items: Sequence[Item]) -> list[OrientationResult]:
    assert session is not None
    return run_orientation_batch(session, spec, [item.image(spec) for item in items])


def apply(spec: StageSpec, item: Item, result: OrientationResult) -> None:
    """Turn the image upright by the angle found: later stages see the anatomy upright."""
    item.upright, item.turn = turn_upright(item.image(spec), result.angle_deg)


def reasons(
    spec: StageSpec, result: OrientationResult | None, item: Item, context: Context
) -> list[Reason]:
    return [] if result is None else orientation_reasons(spec, result)
