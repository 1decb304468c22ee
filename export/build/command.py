"""``edge-export build``: a data folder and a labels file in, an evaluated pack out.

    edge-export build --recipe RECIPE.toml --data FOLDER --labels CSV --out PACK
                      [--preset short|full] [--resume] [--work DIR]

1. The recipe is parsed (:mod:`export.build.recipe`) and the labels file checked whole, every
   image read through the worker's ingest (:mod:`export.build.labels`): any problem refuses
   the build before training, all of them listed.
2. The images are split by patient (:mod:`export.build.split`), seed and counts recorded.
3. Every stage of the recipe is trained, each checkpoint saved as it finishes
   (:mod:`export.build.stages`); ``--resume`` skips the stages already trained from the same
   recipe, labels and split.
4. Each checkpoint is exported to ONNX through the parity gate (:func:`export.onnx.export_stage`)
   and the pack written (:func:`export.pack.write_pack`).
5. The pack is judged on the held-out patients as the worker runs it (:mod:`export.build.chain`)
   and the figures go into the manifest and into ``evaluation.json`` / ``evaluation.html``
   in the pack folder (:mod:`export.build.report`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from export.build.labels import LabelSet, LabelsRefused
from export.build.recipe import PRESETS, Recipe, RecipeError, Stage, load_recipe
from export.build.split import Split, split_by_patient

#: Recipe decision keys -> (stage task, threshold name).
_DECISION = {"view_min_confidence": ("view", "min_confidence"),
             "quality_review_margin": ("quality", "review_margin"),
             "orientation_min_norm": ("orientation", "min_norm")}  # fmt: skip


def add_parser(sub: Any) -> None:
    """Add the ``build`` subcommand to ``edge-export``'s subparsers."""
    cmd = sub.add_parser("build", help="train, evaluate and package a pack from a recipe, a "
                         "data folder and a labels file")  # fmt: skip
    cmd.add_argument("--recipe", type=Path, required=True, help="recipe TOML (docs/recipes.md)")
    cmd.add_argument("--data", type=Path, required=True, help="folder the labels' files are in")
    cmd.add_argument("--labels", type=Path, required=True, help="labels CSV (docs/recipes.md)")
    cmd.add_argument("--out", type=Path, required=True, help="pack folder to write")
    cmd.add_argument("--preset", choices=PRESETS, default="full",
                     help="full: the papers' recipes (default); short: a smoke run whose pack "
                     "says so in its name and version")  # fmt: skip
    cmd.add_argument("--resume", action="store_true",
                     help="reuse the stages already trained from this recipe, labels and split")
    cmd.add_argument("--work", type=Path,
                     help="checkpoints and ONNX scratch (default: PACK's folder/.<name>.build)")
    cmd.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def _training_data(recipe: Recipe, labels: LabelSet, split: Split) -> dict[str, Any]:
    rows = labels.rows
    licences = Counter(r.license or recipe.license or "unstated" for r in rows)
    return {
        "kind": recipe.kind,
        "description": f"{len(rows)} labelled images of {len({r.patient for r in rows})} "
        f"patients from {labels.path.name}; views {dict(Counter(r.record.view for r in rows))}, "
        f"grades {dict(Counter(str(r.record.grade) for r in rows))}, file types "
        f"{dict(Counter(r.record.path.suffix.lower() or '(none)' for r in rows))}",
        "n_train": len(split.train),
        "n_test": len(split.test),
        "preset": recipe.preset,
        "recipe": {"file": recipe.path.name, "name": recipe.name, "version": recipe.version},
        "labels": {"file": labels.path.name, "sha256": labels.sha256, "columns": labels.columns,
                   "ignored_columns": labels.ignored_columns,
                   "patient_key": labels.patient_source},
        "split": split.describe(),
        "licenses": dict(licences),
        "stages": {s.name: _stage_facts(s) for s in recipe.stages},
    }  # fmt: skip


def _stage_facts(s: Stage) -> dict[str, Any]:
    if not s.network:
        return {"task": s.task, "view": s.view, "segments": s.segments, "rules": len(s.rules)}
    if s.extra:
        return {"task": s.task, "views": list(s.views), "input": [s.hyper.height, s.hyper.width],
                "batch": s.hyper.batch, "steps": s.hyper.steps, "lr": s.hyper.lr,
                "research_only": True,
                **({"phantoms": list(s.phantoms), "data": "synthetic chest phantoms"}
                   if s.task == "bone_suppression" else {})}  # fmt: skip
    facts: dict[str, Any] = {"task": s.task, "view": s.view, "input": [s.hyper.height, s.hyper.width],
                             "batch": s.hyper.batch, "steps": s.hyper.steps,
                             "lr": s.hyper.lr or "paper", "net_width": s.hyper.net_width,
                             "resize": s.hyper.resize}
    if s.classes:
        facts["classes"] = list(s.classes)
    for key, default in (("turn_any", False), ("quarter_turns", False),
                         ("mirrored_look", False), ("balance_classes", False), ("break_shortcuts", False),
                         ("backbone", "efficientnet"), ("init_from", None),
                         ("mask_values", ()), ("mask_optional", False), ("frame_crops", False)):
        if getattr(s, key) != default and (s.task == "view" or key not in ("backbone",)):
            facts[key] = list(v) if isinstance(v := getattr(s, key), tuple) else v
    return facts


def _summary(chained: dict[str, Any]) -> str:
    if "rules" in chained:
        return f", rule agreement {chained['rules']['all']['agreement']}"
    if "grade_accuracy" in chained:
        return (f", grade accuracy {chained['grade_accuracy']}, grade-3 decided ok "
                f"{chained['grade3_decided_ok']}")
    return f", decisions {chained['decisions']}"


def _thresholds(recipe: Recipe, task: str) -> dict[str, float]:
    return {key: recipe.decision[name] for name, (t, key) in _DECISION.items()
            if t == task and name in recipe.decision}  # fmt: skip


def worker_options(pack: Path, recipe: Recipe) -> None:
    """Write the recipe's inference options into the pack's stage entries (resealed): an
    orientation stage's ``quarter_turns``, a view stage's ``mirrored_look``."""
    from edge_worker.packs.pack import seal_manifest

    wanted = {s.name: {"quarter_turns": True} for s in recipe.stages
              if s.task == "orientation" and s.quarter_turns}  # fmt: skip
    wanted.update({s.name: {"mirrored_look": True} for s in recipe.stages
                   if s.task == "view" and s.mirrored_look})  # fmt: skip
    if not wanted:
        return
    path = pack / "manifest.json"
    manifest = json.loads(path.read_text())
    for entry in manifest["stages"]:
        entry.update(wanted.get(entry["name"], {}))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    seal_manifest(pack)


def _from_pack(pack: Path, path: Path) -> str:
    """``path`` relative to the pack's folder (absolute only across drives): the label gate
    finds the test set from the pack wherever the two are moved together."""
    # abspath, not resolve(): a data folder reached through a link keeps the path given.
    try:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(pack))
    except ValueError:
        return os.path.abspath(path)


def build(args: argparse.Namespace, log: Any = print) -> Path:
    """Run the whole build; returns the manifest path.  Raises RecipeError / LabelsRefused."""
    import torch

    from export.build.chain import ORIENTATION_TURNS, evaluate_pack, worker_pipeline
    from export.build.cutoff import cut_off_figures
    from export.build.extras import add_extras, through_worker, train_extras
    from export.build.labels import read_labels
    from export.build.report import GRADE_KEYS, figures, write_report
    from export.build.segmented import (
        decisions_by_rule_truth,
        evaluate_segmented,
        export_segment,
        is_segmented,
        rule_figures,
        write_segmented_pack,
    )
    from export.build.shortcuts import orientation_figures, shortcut_figures
    from export.build.stages import train_stages
    from export.cam_graph import add_heatmap_stage
    from export.onnx import ATOL, RTOL, ExportError, export_stage, load_checkpoint
    from export.pack import write_pack
    from export.seed_pack import SEED_ATOL

    started = time.monotonic()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, args.preset)
    labels = read_labels(args.labels, args.data, recipe)
    split = split_by_patient(labels, recipe)
    log(f"labels accepted: {len(labels.rows)} images; split by patient (seed {split.seed}): "
        f"{len(split.train)} train, {len(split.test)} held out ({time.monotonic() - started:.0f} s)")
    out: Path = args.out
    work: Path = args.work or out.parent / f".{out.name}.build"
    work.mkdir(parents=True, exist_ok=True)
    (work / "split.json").write_text(json.dumps({
        **split.describe(), "train_lines": [r.line for r in split.train],
        "test_lines": [r.line for r in split.test]}, indent=1) + "\n")  # fmt: skip
    ckpts = train_stages(recipe, split, labels.sha256, work, args.resume, log)
    extras = train_extras(recipe, split, labels.sha256, work, args.resume, log)
    stage_files: list[Any] = []
    per_stage_torch: dict[str, Any] = {}
    parity: dict[str, Any] = {}
    segments: dict[str, tuple[Path, dict[str, Any]]] = {}
    for stage in recipe.stages:
        if not stage.network or stage.extra:
            continue
        if stage.task == "segment":
            mine = [r for r in split.test + split.train if r.record.view == stage.view]
            onnx_path, facts, errors = export_segment(ckpts[stage.name], work / "onnx", mine)
            segments[stage.name] = (onnx_path, facts)
            parity[stage.name], per_stage_torch[stage.name] = errors, facts
            log(f"{stage.name}: exported, parity max abs error {errors}")
            continue
        atol = max(ATOL, SEED_ATOL) if stage.task == "roi" else ATOL
        exported, errors = export_stage(ckpts[stage.name], work / "onnx", atol, RTOL)
        exported = replace(exported, thresholds=_thresholds(recipe, stage.task))
        parity[stage.name] = errors
        per_stage_torch[stage.name] = load_checkpoint(ckpts[stage.name]).meta["metrics"]
        log(f"{stage.name}: exported, parity max abs error {errors}")
        stage_files.append(exported)
    training = _training_data(recipe, labels, split)
    description = (recipe.description or f"{recipe.body_part} pack built by edge-export build.")
    if recipe.preset != "full":
        description = f"SMOKE BUILD (preset {recipe.preset}): machinery check only. {description}"
    common: dict[str, Any] = {"name": recipe.pack_name, "version": recipe.pack_version,
                              "description": description, "training_data": training,
                              "body_parts": (recipe.body_part,)}  # fmt: skip
    segmented = is_segmented(recipe)

    def write(validation: dict[str, Any]) -> Path:
        if segmented:
            path = write_segmented_pack(out, stage_files, segments, recipe,
                                        validation=validation, **common)  # fmt: skip
        else:
            path = write_pack(out, stage_files, validation=validation, **common)
        worker_options(out, recipe)
        add_extras(out, extras)
        # Every built view classifier gets its class activation map (paper 004), for people:
        # it never changes a decision; the verdict carries it when [verdict] says so.
        try:
            add_heatmap_stage(out, next(f.name for f in stage_files if f.task == "view"))
        except ExportError as exc:
            log(f"no heatmap stage for the view classifier: {exc}")
        return path

    write({"per_stage_torch": per_stage_torch})
    log(f"judging the {len(split.test)} held-out images through the worker's pipeline")
    turns = ORIENTATION_TURNS if any(s.turn_any for s in recipe.stages) else 0
    chain, per_stage = (evaluate_segmented if segmented else evaluate_pack)(out, split.test, turns)
    figs = figures(chain, per_stage, list(recipe.views), list(recipe.grades))
    if not any(s.task == "quality" for s in recipe.stages):  # no grade: no grade figures
        figs["chained"] = {k: v for k, v in figs["chained"].items() if k not in GRADE_KEYS}
        figs["chained"]["decisions"] = dict(Counter(r["decision"] for r in chain))
    written = worker_pipeline(out)  # the checks below judge again with the written pack
    if segmented:
        through_worker(extras, chain, split)
    if segmented:  # judged by rules: the rules' figures
        figs["chained"]["rules"] = rule_figures(chain)
        figs["chained"]["decisions_by_rule_truth"] = decisions_by_rule_truth(chain)
        log("cropping the held-out masked images for the edge (cut-off) rules")
        cut_off = cut_off_figures(written, split.test)
        if cut_off is not None:
            figs["chained"]["cut_off"] = cut_off
    shortcuts = shortcut_figures(written, split.test)
    if shortcuts is not None:
        figs["shortcut_check"] = shortcuts
        log("shortcut check (view network, every held-out image altered): " + ", ".join(
            f"{k} {v['accuracy']}" for k, v in shortcuts["probes"].items()))  # fmt: skip
        corners = orientation_figures(written, split.test, turns)
        if corners is not None:
            shortcuts["orientation"] = corners
            log("shortcut check (orientation, mean error): " + ", ".join(
                f"{k} {corners[k]['mean_deg']} deg" for k in ("turned", "corners_only", "no_corners",
                                                             "as_stored")))  # fmt: skip
    data_text = (f"{len(split.test)} images of {len({r.patient for r in split.test})} held-out "
                 f"patients (never trained on; split seed {split.seed}), read by the worker's "
                 "ingest and judged by its pipeline on ONNX Runtime sessions of this pack")
    validation: dict[str, object] = {
        "data": data_text,
        "pipeline": {k: v for k, v in figs["chained"].items()
                     if not isinstance(v, list)},
        "per_stage": {n: {k: v for k, v in s.items() if not isinstance(v, list)}
                      for n, s in figs["per_stage"].items()},
        "per_stage_torch": per_stage_torch,
        **({"shortcut_check": shortcuts} if shortcuts is not None else {}),
        # Paper 004's research-only extras: the finding classifier's AUC on the held-out
        # patients, the bone suppressor's error on unseen synthetic phantoms.
        **({"extras": extras.figures} if extras.figures else {}),
        "parity_max_abs_error": parity,
        "test_set": {"labels": _from_pack(out, args.labels), "data": _from_pack(out, args.data),
                     "recipe": _from_pack(out, args.recipe), "preset": recipe.preset,
                     "labels_sha256": labels.sha256, "lines": [r.line for r in split.test]},
        "report": ["evaluation.html", "evaluation.json"],
    }  # fmt: skip
    manifest = write(validation)
    result = {"pack": {"name": recipe.pack_name, "version": recipe.pack_version},
              "data": data_text, "preset": recipe.preset, "split": training["split"],
              "labels_sha256": labels.sha256, "figures": {**figs, **(
                  {"extras": extras.figures} if extras.figures else {})},
              "seconds": round(time.monotonic() - started, 1)}  # fmt: skip
    write_report(out, result, chain)
    log(f"wrote {manifest} and its report in {(time.monotonic() - started) / 60:.1f} min: view "
        f"accuracy {figs['chained']['view_accuracy']}" + _summary(figs["chained"]))
    return manifest


def run(args: argparse.Namespace) -> int:
    """``edge-export build``; 0 on success, 1 with the reasons on stderr otherwise."""
    from export.onnx import ExportError

    try:
        build(args)
    except (RecipeError, LabelsRefused, ExportError) as exc:
        print(f"edge-export build: {exc}", file=sys.stderr)
        return 1
    return 0
