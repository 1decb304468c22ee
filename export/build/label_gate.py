"""The label gate: a converted pack may not be less accurate on the labelled held-out images.

The precision gate (:mod:`export.precision_gate`) asks whether a copy decides as the FP32 pack
does; this one asks whether it is still right as often.  Both packs judge the held-out
patients of their build (``validation.test_set`` in the manifest, written by
``edge-export build``) or another labelled set (``--labels CSV --data FOLDER``) through the
worker's ingest and pipeline (:func:`export.build.chain.evaluate_pack`); the copy is refused
when its view or grade accuracy, or the share of ROIs found, falls by more than
``max_drop``, or when more grade-3 images are decided ``ok``.  A pack judged by rules (a
segmented build) is also refused when its rule agreement with the rules on the labelled masks,
or the share of those masks' failed rules it catches, falls by more than ``max_drop``
(:mod:`export.build.segmented`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_worker.packs.pack import Pack
from export.build.labels import LabelsRefused, Row, read_labels, sha256_file
from export.build.recipe import RecipeError, load_recipe

#: The default largest accepted fall of an accuracy (absolute, 0-1).
MAX_ACCURACY_DROP = 0.02
#: Figures where lower is worse (a drop is measured) and the count that may not grow.
ACCURACIES = ("view_accuracy", "grade_accuracy", "roi_found", "rule_agreement",
              "rule_fail_detected")


class LabelGateError(ValueError):
    """The labelled test set cannot be read (moved, changed, or never recorded)."""


def test_rows(pack: Pack, labels: Path | None = None, data: Path | None = None) -> list[Row] | None:
    """The labelled held-out rows for ``pack``; ``None`` when it has none and none is given.

    Uses the pack's ``validation.test_set`` (the build's labels file, data folder, recipe and
    held-out lines); ``labels``/``data`` replace the file and folder.  The same labels file
    (same sha256) keeps the recorded held-out lines; another one is used whole.
    """
    ref: dict[str, Any] = dict(pack.validation.get("test_set") or {})
    if not ref and labels is None:
        return None
    if "recipe" not in ref:
        raise LabelGateError("the pack records no build recipe (validation.test_set.recipe): "
                             "the label gate needs a pack written by edge-export build")
    # The build records the paths relative to the pack's folder where it can (a pack that
    # travels with its data keeps finding it; no build machine's paths in a shipped pack).
    labels_path = Path(labels) if labels else pack.root / ref["labels"]
    data_path = Path(data) if data else (pack.root / ref["data"] if ref.get("data")
                                         else labels_path.parent)  # fmt: skip
    if not labels_path.is_file():
        raise LabelGateError(f"the labelled test set {labels_path} is not here; pass --labels "
                             "CSV --data FOLDER")  # fmt: skip
    try:
        recipe = load_recipe(pack.root / ref["recipe"], str(ref.get("preset", "full")))
        rows = read_labels(labels_path, data_path, recipe).rows
    except (RecipeError, LabelsRefused, OSError) as exc:
        raise LabelGateError(f"the labelled test set cannot be used: {exc}") from exc
    if sha256_file(labels_path) == ref.get("labels_sha256"):
        held = set(ref.get("lines", []))
        rows = [r for r in rows if r.line in held]
    if not rows:
        raise LabelGateError(f"no labelled test images in {labels_path}")
    return rows


def pack_figures(pack_dir: Path, rows: list[Row]) -> dict[str, float | None]:
    """The figures against the labels a precision change may not lower, for the pack at
    ``pack_dir``: the rules' too when its rules stages judge it."""
    from edge_worker.packs.pack import load_pack
    from export.build.chain import evaluate_pack, label_figures
    from export.build.segmented import evaluate_segmented, rule_figures

    if not any(s.task == "rules" for s in load_pack(pack_dir).stages):
        return label_figures(evaluate_pack(pack_dir, rows)[0])
    chain = evaluate_segmented(pack_dir, rows)[0]
    rules = rule_figures(chain)["all"]
    return {**label_figures(chain), "rule_agreement": rules["agreement"],
            "rule_fail_detected": rules["fail_detected"]}


def label_gate(reference: Path, candidate: Path, rows: list[Row],
               max_drop: float = MAX_ACCURACY_DROP) -> dict[str, Any]:  # fmt: skip
    """Both packs' figures against the labels on ``rows``, and whether the candidate passes."""
    before = pack_figures(reference, rows)
    after = pack_figures(candidate, rows)
    drops = {k: round(b - a, 4) for k in ACCURACIES
             if (b := before.get(k)) is not None and (a := after.get(k)) is not None}  # fmt: skip
    worse_g3 = float(after["grade3_decided_ok"] or 0) > float(before["grade3_decided_ok"] or 0)
    failed = [k for k, d in drops.items() if d > max_drop] + (["grade3_decided_ok"] * worse_g3)
    return {"images": len(rows), "max_accuracy_drop": max_drop, "reference": before,
            "candidate": after, "drop": drops, "failed": failed, "accepted": not failed}


def format_gate(gate: dict[str, Any]) -> str:
    """The label gate's figures as lines for a terminal."""
    lines = [f"label gate on {gate['images']} labelled held-out images (max drop "
             f"{gate['max_accuracy_drop']}): FP32 {gate['reference']}, copy {gate['candidate']}"]
    lines.append("label gate ACCEPTED" if gate["accepted"] else
                 f"label gate REFUSED: {', '.join(gate['failed'])} fell too far")  # fmt: skip
    return "\n".join(lines)
