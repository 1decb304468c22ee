"""Paper 001's figures measured on a built pack: its ONNX files through ONNX Runtime, its
rules through :func:`edge_worker.pipeline.measures.evaluate` (no torch).

* Dice per view: for each image, the mean Dice over the view's structures (``background``
  left out; a structure absent from both truth and prediction is skipped), segmented by the
  true view's segmenter (segmentation measured alone, as the paper does); then the mean, SD,
  minimum and maximum over the images of the view.
* Rules, chained as the worker judges: the view classifier picks the view (argmax), that
  view's segmenter segments, that view's rules are evaluated.  Every rule of the image's TRUE
  view is compared with the phantom's truth; a rule that did not come out ``pass`` (fail, not
  measurable, or missing because the view was wrong) counts as a detected failure.
  Accuracy, sensitivity (true failures detected) and specificity (true passes passed) are
  over (image, rule) pairs, per view and overall; the image level (any rule failed) as well.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_worker.phantoms.lumbar import VIEWS
from edge_worker.pipeline.measures import Rule, evaluate, parse_rules
from edge_worker.pipeline.preprocess import to_tensor
from models.lumbar.data import Example, tensor


def dice(pred: np.ndarray, true: np.ndarray, classes: Sequence[str]) -> float | None:
    """Mean Dice over the structures of two label maps; ``None`` when neither has any."""
    scores = []
    for k, name in enumerate(classes):
        if name == "background":
            continue
        p, t = pred == k, true == k
        total = int(p.sum() + t.sum())
        if total:
            scores.append(2.0 * float(np.logical_and(p, t).sum()) / total)
    return float(np.mean(scores)) if scores else None


class PackRunner:
    """The pack's networks in ONNX Runtime sessions and its parsed rules, by view."""

    def __init__(self, pack_dir: Path, manifest: dict[str, Any] | None = None) -> None:
        manifest = manifest or json.loads((pack_dir / "manifest.json").read_text())
        stages = {s["name"]: s for s in manifest["stages"]}
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1

        def session(stage: dict[str, Any]) -> ort.InferenceSession:
            return ort.InferenceSession(str(pack_dir / stage["file"]), options,
                                        providers=["CPUExecutionProvider"])  # fmt: skip

        self.view_stage = stages[manifest["view_stage"]]
        self.view_session = session(self.view_stage)
        self.seg: dict[str, tuple[dict[str, Any], ort.InferenceSession]] = {}
        self.rules: dict[str, tuple[Rule, ...]] = {}
        for stage in manifest["stages"]:
            views = stage.get("when", {}).get(manifest["view_stage"], [])
            if stage["task"] == "segment":
                for view in views:
                    self.seg[view] = (stage, session(stage))
            if stage["task"] == "rules":
                seg_stage = stages[stage["reads"]["segments"]]
                parsed = parse_rules(stage["rules"], seg_stage["classes"], f"stage '{stage['name']}'")
                for view in views:
                    self.rules[view] = parsed

    def view(self, working: np.ndarray) -> tuple[str, float]:
        """The top view label and its softmax confidence."""
        spec = self.view_stage["input"]
        x = to_tensor(working, spec["height"], spec["width"], 1, spec["mean"], spec["std"],
                      spec.get("resize", "stretch"))  # fmt: skip
        logits = self.view_session.run(None, {"image": x})[0][0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        k = int(np.argmax(p))
        return self.view_stage["labels"][k], float(p[k])

    def segment(self, view: str, working: np.ndarray) -> np.ndarray:
        """The ``view`` segmenter's label map (argmax over the softmax channels)."""
        stage, sess = self.seg[view]
        if stage["input"].get("resize", "stretch") != "stretch":
            raise ValueError(f"stage {stage['name']}: only stretched segmenters are measured here")
        x = tensor(working, (stage["input"]["height"], stage["input"]["width"]))[None]
        probs = sess.run(None, {"image": x})[0][0]
        return np.argmax(probs, axis=0).astype(np.uint8)

    def judge(self, view: str, labels: np.ndarray, scale: tuple[float, float]) -> dict[str, str]:
        """Rule code -> status for a label map of ``view``."""
        classes = self.seg[view][0]["classes"]
        masks = {c: labels == k for k, c in enumerate(classes) if c != "background"}
        return {o.code: o.status for o in evaluate(self.rules[view], masks, view, scale)}


def _rates(pairs: list[tuple[bool, bool]]) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity of (truth failed, detected) pairs."""
    tp = sum(1 for t, d in pairs if t and d)
    tn = sum(1 for t, d in pairs if not t and not d)
    pos = sum(1 for t, _ in pairs if t)
    neg = len(pairs) - pos
    return {
        "accuracy": round((tp + tn) / len(pairs), 4) if pairs else None,
        "sensitivity": round(tp / pos, 4) if pos else None,
        "specificity": round(tn / neg, 4) if neg else None,
        "n": len(pairs), "n_fail": pos, "n_pass": neg,
    }  # fmt: skip


def evaluate_pack(runner: PackRunner, examples: list[Example]) -> dict[str, Any]:
    """Dice per view, view accuracy and rule figures (see the module docstring)."""
    dices: dict[str, list[float]] = {v: [] for v in VIEWS}
    rule_pairs: dict[str, list[tuple[bool, bool]]] = {v: [] for v in VIEWS}
    image_pairs: dict[str, list[tuple[bool, bool]]] = {v: [] for v in VIEWS}
    per_rule: dict[str, list[tuple[bool, bool]]] = {}
    view_hits = {v: 0 for v in VIEWS}
    for ex in examples:
        true_view = ex.truth.view
        labels = runner.segment(true_view, ex.working)
        score = dice(labels, ex.labels, ex.truth.classes)
        if score is not None:
            dices[true_view].append(score)
        predicted, _ = runner.view(ex.working)
        view_hits[true_view] += predicted == true_view
        if predicted != true_view:
            labels = runner.segment(predicted, ex.working)
        got = runner.judge(predicted, labels, ex.scale) if predicted in runner.rules else {}
        truth = ex.truth.rule_truth()
        pairs = [(truth[c] == "fail", got.get(c, "not_measurable") != "pass") for c in truth]
        rule_pairs[true_view] += pairs
        for code, pair in zip(truth, pairs):
            per_rule.setdefault(code, []).append(pair)
        image_pairs[true_view].append((any(t for t, _ in pairs), any(d for _, d in pairs)))
    counts = {v: sum(1 for e in examples if e.truth.view == v) for v in VIEWS}

    def stats(values: list[float]) -> dict[str, Any]:
        a = np.array(values)
        return {"mean": round(float(a.mean()), 4), "sd": round(float(a.std()), 4),
                "min": round(float(a.min()), 4), "max": round(float(a.max()), 4), "n": len(a)}  # fmt: skip

    all_rules = [p for v in VIEWS for p in rule_pairs[v]]
    all_images = [p for v in VIEWS for p in image_pairs[v]]
    return {
        "dice": {v: stats(dices[v]) for v in VIEWS if dices[v]},
        "view_accuracy": round(sum(view_hits.values()) / max(1, len(examples)), 4),
        "view_accuracy_per_view": {v: round(view_hits[v] / counts[v], 4) for v in VIEWS if counts[v]},
        "rules": {**{v: _rates(rule_pairs[v]) for v in VIEWS}, "all": _rates(all_rules)},
        "rules_per_rule": {code: _rates(p) for code, p in per_rule.items()},
        "images": {**{v: _rates(image_pairs[v]) for v in VIEWS}, "all": _rates(all_images)},
        "n_images": len(examples),
    }


def evaluate_sweep(runner: PackRunner, examples: list[Example]) -> dict[str, Any]:
    """Rules on predicted masks against the same rules on the TRUE masks, on a sweep set
    (:func:`models.lumbar.data.make_sweep`) whose errors straddle the thresholds.

    The view is the true one here: this measures how segmentation errors move a measure
    across its threshold.  Returns per-rule and overall accuracy, sensitivity, specificity.
    """
    per_rule: dict[str, list[tuple[bool, bool]]] = {}
    for ex in examples:
        view = ex.truth.view
        classes = ex.truth.classes
        true_masks = {c: ex.labels == k for k, c in enumerate(classes) if c != "background"}
        truth = {o.code: o.status for o in evaluate(runner.rules[view], true_masks, view, ex.scale)}
        got = runner.judge(view, runner.segment(view, ex.working), ex.scale)
        for code, status in truth.items():
            per_rule.setdefault(code, []).append((status != "pass", got[code] != "pass"))
    everything = [p for pairs in per_rule.values() for p in pairs]
    return {"per_rule": {c: _rates(p) for c, p in per_rule.items()}, "all": _rates(everything),
            "n_images": len(examples)}  # fmt: skip


#: The seed of :func:`evaluate_dicom`'s phantoms (the recipe's folder is written with seed 7).
FRESH_DICOM_SEED = 909


def main(argv: list[str] | None = None) -> int:
    """Measure a built lumbar pack on fresh phantoms and a threshold sweep; prints JSON."""
    import argparse
    import time

    from models.lumbar.data import SPLIT_SEEDS, make_set, make_sweep

    parser = argparse.ArgumentParser(
        prog="python -m models.lumbar.evaluate",
        description="Paper 001's figures of a lumbar pack on phantoms drawn in memory (split "
        f"seed {SPLIT_SEEDS['test']}: patients the recipe's phantom folders never hold) and on "
        "a sweep whose error angles straddle the rules' thresholds (truth: the same rules on "
        "the true masks).")  # fmt: skip
    parser.add_argument("--pack", type=Path, default=Path("models/packs/lumbar-demo"))
    parser.add_argument("--test", type=int, default=300, help="fresh phantoms (views balanced)")
    parser.add_argument("--sweep", type=int, default=400, help="threshold-sweep phantoms")
    parser.add_argument("--dicom", type=int, default=0,
                        help="also this many fresh DICOM phantoms with mask files (seed "
                        f"{FRESH_DICOM_SEED}) through the worker, measured by edge-export build's "
                        "evaluator")  # fmt: skip
    args = parser.parse_args(argv)
    started = time.monotonic()
    runner = PackRunner(args.pack, json.loads((args.pack / "manifest.json").read_text()))
    figures: dict[str, Any] = {"pack": args.pack.name}
    figures["test"] = evaluate_pack(runner, make_set("test", args.test))
    print(f"test set measured ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    figures["sweep"] = evaluate_sweep(runner, make_sweep("test", args.sweep))
    if args.dicom:
        figures["dicom"] = evaluate_dicom(args.pack, args.dicom)
    figures["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(figures, indent=1))
    return 0


def evaluate_dicom(pack: Path, n: int) -> dict[str, Any]:
    """``n`` fresh DICOM phantoms with class-index masks, written as a site brings them, judged
    by the worker and measured as ``edge-export build`` measures its held-out set."""
    import tempfile

    from export.build.labels import read_labels
    from export.build.recipe import load_recipe
    from export.build.report import figures
    from export.build.segmented import decisions_by_rule_truth, evaluate_segmented, rule_figures
    from models.recipes.make_lumbar_data import write_lumbar_build_data

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "lumbar.toml"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        labels = write_lumbar_build_data(folder, n, seed=FRESH_DICOM_SEED)
        rows = read_labels(labels, folder, load_recipe(recipe, "full")).rows
        chain, stages = evaluate_segmented(pack, rows)
    chained = figures(chain, stages, list(VIEWS), [1, 2, 3])["chained"]
    return {"n": len(rows), "seed": FRESH_DICOM_SEED, "view_accuracy": chained["view_accuracy"],
            "recall": chained.get("recall"), "rules": rule_figures(chain)["all"],
            "decisions_by_rule_truth": decisions_by_rule_truth(chain)}  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
