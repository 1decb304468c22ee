"""Task ``segment``: named classes per pixel; optionally the rotated box of one class.

``activation`` ``sigmoid``: independent channels, a pixel belongs to a class at or above
threshold ``mask`` (default 0.5).  ``softmax``: a pixel belongs to its highest channel; a class
named ``background`` is no structure.  ``box`` names the class whose largest region's
minimum-area rectangle is the stage's box (the ankle ROI: threshold 0.7, paper 000), which a
later stage may crop; a box smaller than ``min_area_fraction`` of the map is "not found".
Per class the result keeps the mask (network resolution) and its area fraction and centroid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_worker.judging.decision import Reason, roi_not_found
from edge_worker.pipeline.stages import RoiResult, box_result, cut_to_image, image_batches
from edge_worker.pipeline.tasks.base import Context, Item, refuse, string_list

if TYPE_CHECKING:
    from edge_worker.backends import Session
    from edge_worker.packs.pack import StageSpec

NETWORK = True
KEYS = frozenset({"classes", "activation", "box"})
BACKGROUND = "background"


@dataclass(frozen=True)
class SegmentResult(RoiResult):
    """The box (if the stage has one), and every structure's mask and measures.

    ``masks`` are boolean at the network's resolution, cut to the part that covers the image
    where the input was padded; ``scale`` is the size of one mask pixel in pixels of the image
    the stage read, ``(sx, sy)``.
    """

    masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    scale: tuple[float, float] = (1.0, 1.0)
    measures: dict[str, dict[str, float]] = field(default_factory=dict)


def parse(raw: Mapping[str, Any], where: str, earlier: Mapping[str, StageSpec]) -> dict[str, Any]:
    classes = string_list(raw.get("classes"), where, "classes", minimum=1)
    activation = raw.get("activation", "sigmoid")
    if activation not in ("sigmoid", "softmax"):
        raise refuse(where, "activation", f"must be 'sigmoid' or 'softmax', got {activation!r}")
    if activation == "softmax" and len(classes) < 2:
        raise refuse(where, "classes", "a softmax segmentation needs at least two classes")
    box = raw.get("box")
    if box is not None and (box not in classes or box == BACKGROUND):
        raise refuse(where, "box", f"names '{box}', which is not one of its classes {list(classes)}")
    if "mask" not in raw.get("outputs", {}):
        raise refuse(where, "outputs", "a segment stage's network must output 'mask'")
    return {"classes": classes, "activation": activation, "box": box}


def role(options: Mapping[str, Any], is_view_stage: bool) -> str:
    return "roi" if options.get("box") else "segment"


def _class_maps(spec: StageSpec, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Each class's probability map (K, H, W) -> {class: float map} for the structures."""
    classes = spec.options["classes"]
    if spec.options["activation"] == "softmax":
        winner = np.argmax(scores, axis=0)
        return {c: (winner == k).astype(np.float32) for k, c in enumerate(classes) if c != BACKGROUND}
    return {c: scores[k] for k, c in enumerate(classes) if c != BACKGROUND}


def _measures(mask: np.ndarray) -> dict[str, float]:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    if len(xs) == 0:
        return {"area_fraction": 0.0}
    return {"area_fraction": round(float(len(xs) / mask.size), 5),
            "cx": round(float(xs.mean() + 0.5) / w, 4), "cy": round(float(ys.mean() + 0.5) / h, 4)}  # fmt: skip


def _result(spec: StageSpec, scores: np.ndarray, shape: tuple[int, ...]) -> SegmentResult:
    maps = _class_maps(spec, scores)
    softmax = spec.options["activation"] == "softmax"
    threshold = 0.5 if softmax else spec.threshold("mask", 0.5)
    h, w = shape[:2]
    sx, sy = w / scores.shape[2], h / scores.shape[1]
    masks = {c: p >= threshold if softmax else p > threshold for c, p in maps.items()}
    box_class = spec.options.get("box")
    box, area = None, 0.0
    if box_class is not None:
        threshold_box = 0.5 if softmax else spec.threshold("mask", 0.7)
        found = box_result(maps[box_class], threshold_box,
                           spec.threshold("min_area_fraction", 0.002), shape)  # fmt: skip
        box, area = found.box, found.area_fraction
    return SegmentResult(box=box, area_fraction=area, masks=masks, scale=(sx, sy),
                         measures={c: _measures(m) for c, m in masks.items()})  # fmt: skip


def run(session: Session | None, spec: StageSpec, items: Sequence[Item]) -> list[SegmentResult]:
    assert session is not None
    images = [item.image(spec) for item in items]
    scores = image_batches(session, spec, images, ("mask",))["mask"]
    return [_result(spec, cut_to_image(spec, s.astype(np.float32), image.shape), image.shape)
            for s, image in zip(scores, images)]  # fmt: skip


def reasons(spec: StageSpec, result: SegmentResult | None, item: Item, context: Context) -> list[Reason]:
    if result is not None and spec.options.get("box") and result.box is None:
        return [roi_not_found(context.view_label)]
    return []
