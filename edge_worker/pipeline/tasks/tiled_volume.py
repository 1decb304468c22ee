"""Task ``tiled_volume``: an MR volume's quality score and flags from 64^3 tiles (MIQA, paper 002).

The stage judges a whole volume, not a radiograph: :meth:`Pipeline.judge_volume` runs it
(:mod:`edge_worker.pipeline.volume`); the per-image runner never does (``run`` refuses).

Keys (docs/model-pack.md, `tiled_volume`), all checked when the pack loads:

``tile``
    the cube's side in voxels (the network's ``input`` depth, height and width).
``overlap``
    ``"minimal"`` (the only one): the fewest tiles that cover each axis, evenly overlapping.
``spacing_mm``
    ``[z, y, x]`` voxel size the volume is resampled to before tiling.
``batch``
    tiles per network run (default 4).
``outputs``
    ``["quality", flag, ...]``: the columns of the network's one ONNX output ``outputs``
    ``(N, 1 + flags)``, the score (0-10) then each flag's probability.
``score_range``
    ``[low, high]`` the mean score is clipped to.
``thresholds``
    ``score_review_below``, ``score_retake_below``, ``flag_review_above``.
``synthetic``
    true when the network was trained on synthetic phantoms only.
``max_voxels``
    the largest resampled volume judged (default 512 * 512 * 256); above: ``volume_too_large``.
``intensity_percentile``
    tiles are divided by this percentile of the volume's voxels (default 99.5), then
    ``(x - input.mean) / input.std``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from edge_worker.errors import PackError
from edge_worker.judging.decision import Reason
from edge_worker.pipeline.tasks.base import Context, Item, refuse, string_list

if TYPE_CHECKING:
    from edge_worker.backends import Session
    from edge_worker.packs.pack import StageSpec

NETWORK = True
KEYS = frozenset({"tile", "overlap", "spacing_mm", "batch", "score_range", "synthetic",
                  "max_voxels", "intensity_percentile"})  # fmt: skip
#: Keys a tiled_volume stage must name (the others have defaults).
REQUIRED = ("tile", "spacing_mm", "outputs", "score_range", "thresholds", "synthetic")
THRESHOLDS = ("score_review_below", "score_retake_below", "flag_review_above")
DEFAULT_MAX_VOXELS = 512 * 512 * 256


def _number(raw: Any, where: str, name: str, low: float, high: float | None = None) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < low or (
            high is not None and raw > high):  # fmt: skip
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise refuse(where, name, f"must be a number {span}, got {raw!r}")
    return float(raw)


def parse(raw: Mapping[str, Any], where: str, earlier: Mapping[str, StageSpec]) -> dict[str, Any]:
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise PackError(f"{where}: a tiled_volume stage needs {', '.join(missing)} (missing)")
    tile = raw["tile"]
    if isinstance(tile, bool) or not isinstance(tile, int) or not 8 <= tile <= 256:
        raise refuse(where, "tile", f"must be an integer in [8, 256], got {tile!r}")
    if raw.get("overlap", "minimal") != "minimal":
        raise refuse(where, "overlap", f"only 'minimal' is supported, got {raw.get('overlap')!r}")
    spacing = raw["spacing_mm"]
    if not isinstance(spacing, list) or len(spacing) != 3:
        raise refuse(where, "spacing_mm", f"must be [z, y, x] in mm, got {spacing!r}")
    spacing_mm = tuple(_number(s, where, "spacing_mm", 0.05, 20.0) for s in spacing)
    batch = raw.get("batch", 4)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 64:
        raise refuse(where, "batch", f"must be an integer in [1, 64], got {batch!r}")
    names = string_list(raw["outputs"], where, "outputs", minimum=2)
    if names[0] != "quality":
        raise refuse(where, "outputs", f"the first output must be 'quality' (the score), got {names[0]!r}")
    span = raw["score_range"]
    if (not isinstance(span, list) or len(span) != 2 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in span) or span[0] >= span[1]):  # fmt: skip
        raise refuse(where, "score_range", f"must be [low, high] with low < high, got {span!r}")
    thresholds = raw["thresholds"]
    if not isinstance(thresholds, dict) or [k for k in THRESHOLDS if k not in thresholds]:
        got = sorted(thresholds) if isinstance(thresholds, dict) else thresholds
        raise refuse(where, "thresholds", f"needs {', '.join(THRESHOLDS)}, got {got!r}")
    checked = {k: _number(thresholds[k], where, f"thresholds.{k}", -1e9) for k in THRESHOLDS}
    if not span[0] <= checked["score_retake_below"] <= checked["score_review_below"] <= span[1]:
        raise refuse(where, "thresholds", "needs score_retake_below <= score_review_below, both "
                     f"within score_range {span}")  # fmt: skip
    if not 0.0 <= checked["flag_review_above"] <= 1.0:
        raise refuse(where, "thresholds.flag_review_above", "is a probability in [0, 1]")
    if not isinstance(raw["synthetic"], bool):
        raise refuse(where, "synthetic", "must be true or false")
    max_voxels = raw.get("max_voxels", DEFAULT_MAX_VOXELS)
    if isinstance(max_voxels, bool) or not isinstance(max_voxels, int) or max_voxels < tile**3:
        raise refuse(where, "max_voxels", f"must be an integer >= tile^3, got {max_voxels!r}")
    _input_matches(raw.get("input"), tile, where)
    return {
        "tile": tile,
        "overlap": "minimal",
        "spacing_mm": spacing_mm,
        "batch": batch,
        "flags": names[1:],
        "outputs": names,
        "score_range": (float(span[0]), float(span[1])),
        "thresholds": checked,
        "synthetic": raw["synthetic"],
        "max_voxels": max_voxels,
        "intensity_percentile": _number(raw.get("intensity_percentile", 99.5), where,
                                        "intensity_percentile", 50.0, 100.0),
    }  # fmt: skip


def _input_matches(raw: Any, tile: int, where: str) -> None:
    """The network's input must be one-channel tile^3 cubes."""
    if not isinstance(raw, dict):
        raise refuse(where, "input", "must be an object (depth, height, width, channels)")
    dims = [raw.get(k) for k in ("depth", "height", "width")]
    if dims != [tile] * 3 or raw.get("channels") != 1:
        raise refuse(where, "input", f"must be one channel of {tile}^3 voxels (the tile), got "
                     f"depth/height/width {dims}, channels {raw.get('channels')!r}")  # fmt: skip
    if raw.get("resize", "stretch") != "stretch":
        # A tile is cut from the resampled volume at the network's size: nothing to pad.
        raise refuse(where, "input.resize", f"a tiled_volume stage's tiles fill the input; only "
                     f"'stretch' applies, got {raw.get('resize')!r}")  # fmt: skip


def role(options: Mapping[str, Any], is_view_stage: bool) -> str:
    return "volume"


def run(session: Session | None, spec: StageSpec, items: Sequence[Item]) -> list[Any]:
    raise PackError(f"stage '{spec.name}' is a tiled_volume stage: it judges volumes "
                    "(Pipeline.judge_volume), not radiographs")  # fmt: skip


def reasons(spec: StageSpec, result: Any, item: Item, context: Context) -> list[Reason]:
    return []  # the series verdict decides (edge_worker.publish.series_verdict)
