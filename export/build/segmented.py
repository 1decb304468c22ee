"""Recipes with segment and rules stages (paper 001): export, the pack, and its evaluation.

A segmented recipe is a view stage, one softmax segmenter per view (classes named in the
recipe, trained on the ``mask`` files) and rules stages measured on a segmentation, as the
lumbar pack runs them (``docs/model-pack.md``: tasks ``classify``, ``segment``, ``rules``;
the rules stages judge).

Evaluation, on the held-out patients through the worker's ingest and :class:`Pipeline` on
ONNX Runtime sessions of the written pack:

* chained: predicted view -> that view's segmenter -> its rules; every rule of the TRUE view
  is compared with the same rule measured (:func:`edge_worker.pipeline.measures.evaluate`) on
  the labelled mask at the segmenter's resolution.  A rule that did not run (wrong view) is
  ``missing``.  The truth of a rule is therefore "what the rule says on the labelled mask":
  a site's masks carry no separate positioning verdict.
* per stage: each segmenter alone on its view's images (the true view), Dice per image (mean
  over the structures present in either mask, background excluded) as in the lumbar pack.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edge_worker.packs.pack import SCHEMA, InputSpec, seal_manifest
from edge_worker.packs.pack_v1 import upgrade_manifest
from edge_worker.pipeline import measures
from edge_worker.pipeline.preprocess import image_part, place
from edge_worker.pipeline.runner import Pipeline
from export.build.chain import per_stage, read_as_worker, run_network, worker_pipeline
from export.build.labels import Row
from export.build.recipe import Recipe, Stage
from export.build.stages import upright, upright_mask
from export.pack import StageFile, sha256_of, stage_entry

STATUSES = ("pass", "fail", "not_measurable", "missing")


def is_segmented(recipe: Recipe) -> bool:
    """Whether the recipe has segment stages (and so builds a classify/segment/rules pack)."""
    return any(s.task == "segment" for s in recipe.stages)


def export_segment(
    checkpoint: Path, out_dir: Path, rows: list[Row]
) -> tuple[Path, dict[str, Any], dict[str, float]]:
    """Checkpoint -> ONNX (output ``mask``) through the parity gate on real working images.

    Returns the ONNX path, the checkpoint's facts and the parity errors.  Raises
    :class:`export.onnx.ExportError` when ONNX Runtime and torch differ.
    """
    from export.onnx import check_parity, export_onnx
    from models.segment import inputs, load

    net, spec, facts = load(checkpoint)
    path = export_onnx(net, out_dir / f"{checkpoint.stem}.onnx", "roi", 1, spec.height, spec.width)
    batch = inputs([r.sample.working for r in rows[:4]], spec)
    return path, facts, check_parity(net, path, batch)


def _segment_entry(stage: Stage, facts: dict[str, Any], sha256: str) -> dict[str, Any]:
    from export.onnx import OPSET
    from models.segment import SegmentSpec

    h = stage.hyper
    spec = SegmentSpec(stage.classes, h.height, h.width, h.net_width)
    layout = {"resize": h.resize} if h.resize != "stretch" else {}
    return {"name": stage.name, "task": "segment", "file": f"{stage.name}.onnx", "sha256": sha256,
            "input": {"name": "image", **{k: facts["input"][k] for k in ("height", "width",
                                                                         "channels", "mean", "std")},
                      **layout},
            "architecture": spec.describe(), "opset": OPSET, "reads": {"image": "upright"},
            "when": {"view": [stage.view]}, "classes": list(stage.classes),
            "activation": "softmax",
            "outputs": {"mask": f"(N, {len(stage.classes)}, {h.height}, {h.width}) softmax "
                        "probabilities in `classes` order; a pixel belongs to its argmax class"},
            "thresholds": {}}  # fmt: skip


def write_segmented_pack(folder: Path, networks: list[StageFile],
                         segments: dict[str, tuple[Path, dict[str, Any]]], recipe: Recipe,
                         **common: Any) -> Path:  # fmt: skip
    """Write the pack (orientation if any, view, segmenters, rules; the rules judge) and seal
    it; the manifest path.

    ``networks``: the exported view stage and any orientation stage; ``segments`` maps a
    segment stage's name to its ONNX file and checkpoint facts.
    """
    view = next(f for f in networks if f.task == "view")
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "manifest.json"
    manifest_path.unlink(missing_ok=True)  # a half-written folder never carries a manifest
    keep = {*(f"{f.name}.onnx" for f in networks), *(f"{n}.onnx" for n in segments)}
    for old in folder.glob("*.onnx"):
        if old.name not in keep:
            old.unlink()
    v1 = []
    for f in networks:
        target = folder / f"{f.name}.onnx"
        shutil.copyfile(f.onnx_path, target)
        v1.append(stage_entry(f, sha256_of(target)))
    # Orientation and view entries are the ankle chain's, converted by the worker's own adapter.
    entries = upgrade_manifest({"stages": v1})["stages"]
    for stage in recipe.stages:
        if stage.task == "segment":
            onnx_path, facts = segments[stage.name]
            copy = folder / f"{stage.name}.onnx"
            shutil.copyfile(onnx_path, copy)
            entries.append(_segment_entry(stage, facts, sha256_of(copy)))
    judged = []
    for stage in recipe.stages:
        if stage.task == "rules":
            entries.append({"name": stage.name, "task": "rules", "when": {"view": [stage.view]},
                            "reads": {"segments": stage.segments}, "rules": list(stage.rules)})
            judged.append(stage.name)
    manifest = {"schema": SCHEMA, **{k: common[k] for k in ("name", "version", "description")},
                "body_parts": list(common["body_parts"]), "not_for_clinical_use": True,
                "training_data": common["training_data"], "validation": common["validation"],
                "view_stage": view.name, "stages": entries, "decision": {"judged_by": judged}}
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    seal_manifest(folder)
    return manifest_path


def _truth_masks(row: Row, classes: list[str], i: InputSpec) -> dict[str, np.ndarray]:
    """The labelled mask as the worker's masks of this row are: turned upright with its image,
    at the segmenter's resolution, laid out as its input and cut back to the image."""
    assert row.mask is not None
    laid = place(upright_mask(row), i.height, i.width, i.resize, nearest=True)
    index = image_part(laid, row.sample.working.shape, i.height, i.width, i.resize)
    return {c: index == k for k, c in enumerate(classes) if c != "background"}


def _dice(pred: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> float | None:
    values = []
    for name, t in truth.items():
        p = pred.get(name, np.zeros_like(t))
        total = int(p.sum() + t.sum())
        if total:
            values.append(2.0 * float((p & t).sum()) / total)
    return round(float(np.mean(values)), 4) if values else None


def _record(pipeline: Pipeline, row: Row) -> dict[str, Any]:
    """One held-out image judged by the pack, its rules compared with those on its mask."""
    rec = row.record
    pixels, header, _ = read_as_worker(rec.path)
    j = pipeline.judge(pixels, header)
    pack = pipeline.pack
    seg = next((s for s in pack.stages if s.task == "segment"
                and rec.view in (s.when or {}).get(pack.view_stage, ())), None)  # fmt: skip
    rules_spec = next((s for s in pack.stages if s.task == "rules"
                       and seg is not None and s.reads.get("segments") == seg.name), None)  # fmt: skip
    rules: list[dict[str, Any]] = []
    dice = None
    if seg is not None and row.mask is not None:
        i = seg.input
        assert i is not None
        truth = _truth_masks(row, list(seg.options["classes"]), i)
        h, w = row.sample.working.shape
        th, tw = next(iter(truth.values())).shape
        found = j.results.get(seg.name)
        if found is not None:
            dice = _dice(found.masks, truth)
        if rules_spec is not None:
            want = measures.evaluate(rules_spec.options["rules"], truth, rec.view,
                                     (w / tw, h / th))  # fmt: skip
            got = j.results.get(rules_spec.name)
            status = {o.code: o.status for o in got.outcomes} if got is not None else {}
            rules = [{"code": o.code, "truth": o.status, "pred": status.get(o.code, "missing")}
                     for o in want]  # fmt: skip
    return {
        "file": rec.path.name, "line": row.line, "patient": row.patient,
        "view_true": rec.view, "view": j.view.label, "view_confidence": j.view.confidence,
        "grade_true": None, "score_true": None, "grade": None, "score": None,
        "decision": j.decision, "reasons": j.reason_codes, "angle_true": None, "angle": None,
        "roi_found": dice is not None, "dice": dice, "rules": rules,
        "thumbnail_source": row.sample.working, "box": None, "truth_box": None,
        # research-only classify stages (paper 004's finding classifier): their answers, for
        # their figures through the worker; never part of the decision
        "research": {s.name: dict(getattr(j.results[s.name], "probabilities", {}))
                     for s in pack.stages if s.research_only and s.task == "classify"
                     and s.name in j.results},
    }  # fmt: skip


def segment_per_stage(pipeline: Pipeline, rows: list[Row]) -> dict[str, list[dict[str, Any]]]:
    """Each segmenter alone on its view's held-out images: Dice per image and per class."""
    out: dict[str, list[dict[str, Any]]] = {}
    pack = pipeline.pack
    for spec in pack.stages:
        if spec.task != "segment":
            continue
        views = (spec.when or {}).get(pack.view_stage, ())
        i = spec.input
        assert i is not None
        classes = list(spec.options["classes"])
        items = []
        for row in rows:
            if row.record.view not in views or row.mask is None:
                continue
            working = upright(row.sample).working.astype(np.float32)
            probs = image_part(run_network(pipeline, spec.name, working), working.shape,
                               i.height, i.width, i.resize)  # fmt: skip
            winner = probs.argmax(0)
            pred = {c: winner == k for k, c in enumerate(classes) if c != "background"}
            truth = _truth_masks(row, classes, i)
            per_class = {c: d for c in truth if (d := _dice({c: pred[c]}, {c: truth[c]})) is not None}
            items.append({"dice": _dice(pred, truth) or 0.0, "per_class": per_class,
                          "box_found": bool(any(m.any() for m in pred.values()))})  # fmt: skip
        out[spec.name] = items
    return out


def evaluate_segmented(pack_dir: Path, rows: list[Row], orientation_turns: int = 0
                       ) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """The chained records and the per-stage records (orientation, view, every segmenter) on
    ``rows``; a self-supervised orientation stage on ``orientation_turns`` turns of each."""
    pipeline = worker_pipeline(pack_dir)
    chain = [_record(pipeline, row) for row in rows]
    stages = {k: v for k, v in per_stage(pipeline, rows, orientation_turns).items() if v}
    stages.update(segment_per_stage(pipeline, rows))
    return chain, stages


def rule_figures(chain: list[dict[str, Any]]) -> dict[str, Any]:
    """Rule agreement with the rules on the labelled masks, overall and per rule.

    ``agreement``: share of (image, rule) pairs with the same outcome; ``fail_detected``: of
    the pairs that fail on the labelled mask, the share the pack did not pass (fail, not
    measurable or missing all stop an ``ok``); ``pass_kept``: of those that pass, the share
    the pack passed too.
    """

    def summary(pairs: list[dict[str, Any]]) -> dict[str, Any]:
        fails = [p for p in pairs if p["truth"] == "fail"]
        passes = [p for p in pairs if p["truth"] == "pass"]
        confusion = {t: dict(Counter(p["pred"] for p in pairs if p["truth"] == t))
                     for t in STATUSES if any(p["truth"] == t for p in pairs)}  # fmt: skip
        return {"n": len(pairs), "n_fail": len(fails), "n_pass": len(passes),
                "agreement": round(float(np.mean([p["truth"] == p["pred"] for p in pairs])), 4)
                if pairs else None,
                "fail_detected": round(float(np.mean([p["pred"] != "pass" for p in fails])), 4)
                if fails else None,
                "pass_kept": round(float(np.mean([p["pred"] == "pass" for p in passes])), 4)
                if passes else None,
                "confusion": confusion}  # fmt: skip

    pairs = [p for r in chain for p in r["rules"]]
    codes = sorted({p["code"] for p in pairs})
    return {"all": summary(pairs),
            "per_rule": {c: summary([p for p in pairs if p["code"] == c]) for c in codes}}


def decisions_by_rule_truth(chain: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The pack's decisions for images whose labelled mask passes every rule, and the rest."""
    out: dict[str, Counter[str]] = {"all_rules_pass": Counter(), "a_rule_fails": Counter()}
    for r in chain:
        key = "all_rules_pass" if all(p["truth"] == "pass" for p in r["rules"]) else "a_rule_fails"
        out[key][r["decision"]] += 1
    return {k: dict(v) for k, v in out.items()}
