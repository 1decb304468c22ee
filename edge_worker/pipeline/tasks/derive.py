"""Task ``derive``: an image-to-image network whose output is a new image for people to read.

Paper 004's bone suppression is one: radiograph in, soft-tissue estimate out.  The network has
one output, ``(N, 1, H, W)`` in [0, 1] (display polarity) at its input size; the stage's
``description`` says what the image is (it becomes the DICOM Derivation Description).  The
result is resized back to the shape of the image the stage read (``reads.image``: keep
``working`` to get the source's geometry, not the upright turn), so the derived image covers
the whole source.  The worker writes it as a DICOM Secondary Capture into ``[derived] folder``
(:mod:`edge_worker.publish.secondary_capture`) and the verdict names the file; a derived image
never changes the decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_worker.judging.decision import Reason
from edge_worker.pipeline.preprocess import resize
from edge_worker.pipeline.stages import cut_to_image, image_batches
from edge_worker.pipeline.tasks.base import Context, Item, refuse

if TYPE_CHECKING:
    from edge_worker.backends import Session
    from edge_worker.packs.pack import StageSpec

NETWORK = True
KEYS = frozenset({"description"})


@dataclass(frozen=True)
class DerivedResult:
    """The derived image (float32 in [0, 1], the shape of the image read) and what it is."""

    image: np.ndarray = field(repr=False, compare=False)
    description: str
    #: The pack stage's training data kind (``synthetic-...`` for bone suppression).
    training_data: str


def parse(raw: Mapping[str, Any], where: str, earlier: Mapping[str, StageSpec]) -> dict[str, Any]:
    outputs = raw.get("outputs", {})
    if not isinstance(outputs, dict) or len(outputs) != 1:
        raise refuse(where, "outputs", f"a derive stage's network has exactly one output image, "
                     f"got {sorted(outputs) if isinstance(outputs, dict) else outputs!r}")  # fmt: skip
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip():
        raise refuse(where, "description", "must say what the derived image is (a non-empty string)")
    if len(description) > 64:
        # DICOM Series Description is LO: at most 64 characters (PS3.5 table 6.2-1).
        raise refuse(where, "description", f"must fit a DICOM LO (64 characters), has {len(description)}")
    data = raw.get("training_data")
    kind = str(data.get("kind", "")) if isinstance(data, dict) else ""
    return {"output": next(iter(outputs)), "description": description.strip(), "training_data": kind}


def role(options: Mapping[str, Any], is_view_stage: bool) -> str:
    return "derive"


def run(session: Session | None, spec: StageSpec, items: Sequence[Item]) -> list[DerivedResult]:
    assert session is not None
    images = [item.image(spec) for item in items]
    name = spec.options["output"]
    out = image_batches(session, spec, images, (name,))[name]
    if out.ndim != 4 or out.shape[1] != 1:
        raise ValueError(f"stage {spec.name}: output {name!r} has shape {out.shape}, not (N, 1, H, W)")
    results = []
    for source, derived in zip(images, out):
        h, w = source.shape[:2]
        part = cut_to_image(spec, derived[0].astype(np.float32), source.shape)
        picture = np.clip(resize(part, h, w), 0.0, 1.0)
        results.append(DerivedResult(picture, spec.options["description"], spec.options["training_data"]))
    return results


def reasons(spec: StageSpec, result: DerivedResult | None, item: Item, context: Context) -> list[Reason]:
    return []
