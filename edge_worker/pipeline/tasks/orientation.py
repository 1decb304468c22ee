"""Task ``orientation``: the anatomy's angle from upright, from a (cos, sin) head (paper 003).

The stage's result turns the image upright for every later stage that reads ``upright``
(:func:`apply`); the angle and its confidence go to the verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from edge_worker.judging.decision import Reason, orientation_reasons
from edge_worker.pipeline.preprocess import turn_upright
from edge_worker.pipeline.stages import OrientationResult, run_orientation_batch
from edge_worker.pipeline.tasks.base import Context, Item

if TYPE_CHECKING:
    from edge_worker.backends import Session
    from edge_worker.packs.pack import StageSpec

NETWORK = True
KEYS: frozenset[str] = frozenset()
OUTPUT = "cossin"


def parse(raw: Mapping[str, Any], where: str, earlier: Mapping[str, StageSpec]) -> dict[str, Any]:
    """No options beyond the common ones (threshold ``min_norm``)."""
    return {}


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
