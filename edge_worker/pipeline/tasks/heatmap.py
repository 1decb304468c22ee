"""Task ``heatmap``: class activation maps of an earlier classifier (paper 004), without torch.

The classifier exports its last feature map as output ``features`` (N, C, h, w); the pack
carries its final linear layer as ``file`` (an ``.npz`` with ``weight`` (K, C) and ``bias``
(K,), sha256-checked like a network; ``export.cam`` writes both).  The map of class k is
ReLU(b[k] + sum_c w[k, c] F[c]), upsampled to the input size, cut to the part that covers the
image the classifier read (where its input pads, ``input.resize: "pad"``) and divided by its
maximum (:mod:`edge_worker.pipeline.cam`).  ``classes`` lists the labels to map
(default: every label); for a multi-label classifier only the labels found present are
mapped, for a single-label one the top label.  Heatmaps are shown to people; they never
change the decision.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_worker.judging.decision import Reason
from edge_worker.pipeline import cam
from edge_worker.pipeline.stages import cut_to_image
from edge_worker.pipeline.tasks.base import Context, Item, earlier_stage, refuse, string_list

if TYPE_CHECKING:
    from edge_worker.backends import Session
    from edge_worker.packs.pack import StageSpec

NETWORK = False
KEYS = frozenset({"classes"})


@dataclass(frozen=True)
class HeatmapResult:
    """Per mapped label: the map in [0, 1] at the classifier's input size (its part over the
    image where the input pads), and its summary."""

    maps: dict[str, np.ndarray] = field(repr=False, compare=False)
    summaries: dict[str, dict[str, float | None]]


def parse(raw: Mapping[str, Any], where: str, earlier: Mapping[str, StageSpec]) -> dict[str, Any]:
    source = earlier_stage(earlier, raw.get("reads", {}).get("classifier"), where,
                           "reads.classifier", ("classify",))  # fmt: skip
    if "features" not in source.outputs:
        raise refuse(where, "reads.classifier",
                     f"stage '{source.name}' does not output 'features' (N, C, h, w)")
    if not str(raw.get("file", "")).endswith(".npz"):
        raise refuse(where, "file", "must name the .npz with the classifier's weight and bias")
    labels = source.options["labels"]
    classes = string_list(raw["classes"], where, "classes") if "classes" in raw else labels
    unknown = [c for c in classes if c not in labels]
    if unknown:
        raise refuse(where, "classes", f"{unknown} are not labels of '{source.name}' {list(labels)}")
    try:
        weight, _ = cam.load_head(raw["file_path"])
    except (OSError, ValueError) as exc:
        raise refuse(where, "file", str(exc)) from None
    if weight.shape[0] != len(labels):
        raise refuse(where, "file", f"the head has {weight.shape[0]} rows, '{source.name}' has "
                     f"{len(labels)} labels")  # fmt: skip
    return {"classes": tuple(classes), "input": source.input, "source": source}


def role(options: Mapping[str, Any], is_view_stage: bool) -> str:
    return "heatmap"


@functools.lru_cache(maxsize=16)
def _weights(path: str, sha256: str) -> tuple[np.ndarray, np.ndarray | None]:
    return cam.load_head(path)


def load_weights(spec: StageSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """The classifier head's ``weight`` (K, C) and ``bias`` from the stage's verified npz."""
    assert spec.file is not None
    return _weights(str(spec.file), spec.sha256)


def run(session: Session | None, spec: StageSpec, items: Sequence[Item]) -> list[HeatmapResult]:
    source = spec.reads["classifier"]
    source_input = spec.options["input"]
    weight, bias = load_weights(spec)
    out = []
    for item in items:
        answer = item.results[source]
        labels = list(answer.probabilities)
        wanted = [c for c in spec.options["classes"]
                  if c in getattr(answer, "present", (getattr(answer, "label", None),))]  # fmt: skip
        if answer.features is None or not wanted:
            out.append(HeatmapResult({}, {}))
            continue
        assert source_input is not None
        h, w = source_input.height, source_input.width
        maps = cam.class_activation_maps(
            answer.features[None], weight, bias, [labels.index(c) for c in wanted], (h, w)
        )[0]
        # The classifier read the image its own ``reads.image`` names; with a padded input
        # only that image's part of the map means anything.
        maps = _image_part(maps, cut_to_image(spec.options["source"], maps,
                                              item.image(spec.options["source"]).shape))  # fmt: skip
        out.append(HeatmapResult(
            {c: m for c, m in zip(wanted, maps)}, {c: cam.summary(m) for c, m in zip(wanted, maps)}
        ))  # fmt: skip
    return out


def _image_part(maps: np.ndarray, part: np.ndarray) -> np.ndarray:
    """``part`` of ``maps`` (K, H, W), each divided again by its own peak; ``maps`` itself
    when the part is the whole."""
    if part.shape == maps.shape:
        return maps
    part = np.ascontiguousarray(part)
    peaks = part.max(axis=(1, 2), keepdims=True)
    return np.divide(part, peaks, out=part, where=peaks > 0)


def reasons(spec: StageSpec, result: HeatmapResult | None, item: Item, context: Context) -> list[Reason]:
    return []
