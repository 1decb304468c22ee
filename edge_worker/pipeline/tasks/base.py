"""What every task module shares: the per-image state a stage reads, and the refusal helpers.

A task module (one per task, listed in :data:`edge_worker.pipeline.tasks.TASKS`) has:

``NETWORK``
    True when the stage runs an ONNX file through a backend.
``KEYS``
    the manifest keys the task adds to the common ones (anything else is refused).
``parse(raw, where, earlier) -> dict``
    checks a stage's task-specific keys at load time and returns its options; ``earlier``
    maps the names of the stages before it to their specs.  Raises :class:`PackError` naming
    the stage and the field.
``role(options, is_view_stage) -> str``
    what the stage is to the verdict (``orientation``, ``view``, ``roi``, ``quality`` or the
    task's own name).
``run(session, spec, items) -> list``
    the stage's result for each item (a batch: the network runs once on all of them).
``reasons(spec, result, item, context) -> list[Reason]``
    what the result means for the decision (``result`` is ``None`` when the stage was due but
    an input it reads was missing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_worker.errors import PackError

if TYPE_CHECKING:
    from edge_worker.ingest.types import Header
    from edge_worker.packs.pack import Pack, StageSpec
    from edge_worker.pipeline.preprocess import Turn


@dataclass
class Item:
    """One image on its way through the stages.

    ``upright`` is ``working`` until an orientation stage turns it; ``results`` holds every
    finished stage's result by stage name; ``due`` the names of the stages that applied to
    this image (their ``when`` held), finished or not.
    """

    working: np.ndarray
    upright: np.ndarray
    turn: Turn | None = None
    results: dict[str, Any] = field(default_factory=dict)
    due: list[str] = field(default_factory=list)
    #: The top label of every single-label classify stage that ran, by stage name.
    labels: dict[str, str] = field(default_factory=dict)
    #: The view stage's label, once it ran.
    view: str | None = None

    def image(self, spec: StageSpec) -> np.ndarray:
        """The image ``spec`` reads (``reads.image``: ``working`` or ``upright``)."""
        return self.working if spec.reads.get("image") == "working" else self.upright


@dataclass(frozen=True)
class Context:
    """What a stage's reasons may consult besides its own result."""

    pack: Pack
    header: Header | None
    #: The view stage's top label for this image (``None`` before or without one).
    view_label: str | None


def refuse(where: str, field_name: str, problem: str) -> PackError:
    """The load-time refusal for one field of one stage."""
    return PackError(f"{where}: {field_name}: {problem}")


def earlier_stage(
    earlier: Mapping[str, StageSpec], name: Any, where: str, field_name: str, tasks: tuple[str, ...]
) -> StageSpec:
    """The earlier stage ``name`` of one of ``tasks``, or a refusal naming the field."""
    if not isinstance(name, str) or name not in earlier:
        raise refuse(where, field_name, f"reads '{name}', which no earlier stage makes "
                     f"(earlier stages: {', '.join(earlier) or 'none'})")  # fmt: skip
    spec = earlier[name]
    if spec.task not in tasks:
        raise refuse(where, field_name, f"stage '{name}' is a {spec.task} stage, not "
                     f"{' or '.join(tasks)}")  # fmt: skip
    return spec


def string_list(raw: Any, where: str, field_name: str, minimum: int = 1) -> tuple[str, ...]:
    """A list of at least ``minimum`` distinct non-empty strings."""
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise refuse(where, field_name, "must be a list of non-empty strings")
    if len(raw) < minimum or len(set(raw)) != len(raw):
        raise refuse(where, field_name, f"needs at least {minimum} distinct names, got {raw}")
    return tuple(raw)
