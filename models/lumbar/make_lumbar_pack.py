"""Build the lumbar-demo pack (paper 001): ``python -m models.lumbar.make_lumbar_pack --out
models/packs/lumbar-demo [--quick]``.

1. Draw three disjoint phantom splits (:mod:`models.lumbar.data`; one seed per patient):
   train, validation (printed while building) and test (the figures of the manifest).
2. Train the view classifier and one softmax U-Net per view (:mod:`models.lumbar.train`).
3. Export each network to ONNX (opset 18) through the parity gate of :mod:`export.onnx`.
4. Measure Dice per view and the rules' accuracy, sensitivity and specificity on the unseen
   test phantoms by running the EXPORTED files in ONNX Runtime and the pack's rules through
   :mod:`edge_worker.pipeline.measures` (:mod:`models.lumbar.evaluate`); and on a sweep set
   whose error angles straddle the thresholds, rules on predicted masks against rules on the
   true masks.
5. Write ``manifest.json`` (format version 2) last and seal it.

``--quick`` is a smoke build of a minute or two whose version says so; the full build trains
for about 10 minutes on 2 CPU cores.  ``--evaluate-only`` keeps the networks and measures
them again (no torch training; a minute).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_worker.packs.pack import seal_manifest
from edge_worker.phantoms.lumbar import BODY_PART, CLASSES, RULE_OF_ERROR, VIEWS
from export.onnx import OPSET, check_parity, export_onnx
from export.pack import sha256_of
from models.lumbar.data import (
    MEAN,
    SEG_INPUT,
    SPLIT_SEEDS,
    STD,
    VIEW_INPUT,
    Example,
    make_set,
    make_sweep,
    tensor,
)
from models.lumbar.evaluate import PackRunner, evaluate_pack, evaluate_sweep
from models.lumbar.rules import RULES
from models.lumbar.train import describe, train_seg, train_view

SCHEMA = "edge-worker/model-pack@2"
DESCRIPTION = ("Lumbar spine AP/lateral/oblique positioning QC after paper 001 (U-Net "
               "segmentation, then textbook positioning rules on the segmentation), trained "
               "on synthetic phantoms. Demonstration only: NOT FOR CLINICAL USE.")  # fmt: skip
#: Images per split (a multiple of 3: views balanced) and optimiser steps per network.
PRESETS: dict[str, dict[str, int]] = {
    "quick": {"train": 90, "validation": 30, "test": 60, "sweep": 40, "view": 40, "seg": 40},
    "full": {"train": 900, "validation": 90, "test": 300, "sweep": 400, "view": 300,
             "seg": 1000},
}


def _input(size: tuple[int, int]) -> dict[str, Any]:
    return {"name": "image", "height": size[0], "width": size[1], "channels": 1,
            "mean": MEAN, "std": STD}  # fmt: skip


def _export(net: torch.nn.Module, path: Path, task: str, size: tuple[int, int],
            examples: list[Example]) -> dict[str, float]:  # fmt: skip
    """ONNX at ``path`` through the parity gate on four real inputs; returns the errors."""
    export_onnx(net, path, task, 1, size[0], size[1])
    batch = np.stack([tensor(e.working, size) for e in examples[:4]])
    return check_parity(net, path, batch)


def stages(out: Path) -> list[dict[str, Any]]:
    """The manifest's ordered stage list for the ONNX files already in ``out``."""

    def network(name: str, task: str, size: tuple[int, int]) -> dict[str, Any]:
        return {"name": name, "task": task, "file": f"{name}.onnx",
                "sha256": sha256_of(out / f"{name}.onnx"), "input": _input(size),
                "architecture": describe(name), "opset": OPSET,
                "reads": {"image": "upright"}}  # fmt: skip

    view = network("view", "classify", VIEW_INPUT)
    view.update(labels=list(VIEWS), multi_label=False,
                outputs={"logits": f"(N, {len(VIEWS)}) raw scores in `labels` order; softmax "
                         "gives probabilities"},
                thresholds={"min_confidence": 0.8})  # fmt: skip
    listed = [view]
    for v in VIEWS:
        seg = network(f"seg_{v.lower()}", "segment", SEG_INPUT)
        seg.update(when={"view": [v]}, classes=list(CLASSES[v]), activation="softmax",
                   outputs={"mask": f"(N, {len(CLASSES[v])}, {SEG_INPUT[0]}, {SEG_INPUT[1]}) "
                            "softmax probabilities in `classes` order; a pixel belongs to its "
                            "argmax class"},
                   thresholds={})  # fmt: skip
        listed.append(seg)
    for v in VIEWS:
        listed.append({"name": f"rules_{v.lower()}", "task": "rules", "when": {"view": [v]},
                       "reads": {"segments": f"seg_{v.lower()}"}, "rules": RULES[v]})  # fmt: skip
    return listed


def train_and_export(out: Path, sets: dict[str, list[Example]], preset: dict[str, int]
                     ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:  # fmt: skip
    """Train every network and export it into ``out``; returns seconds and parity errors."""
    train, held = sets["train"], sets["validation"]
    seconds: dict[str, float] = {}
    parity: dict[str, dict[str, float]] = {}
    net, seconds["view"] = train_view(train, preset["view"])
    parity["view"] = _export(net, out / "view.onnx", "view", VIEW_INPUT, held)
    for v in VIEWS:
        name = f"seg_{v.lower()}"
        net, seconds[name] = train_seg(v, train, preset["seg"])
        mine = [e for e in held if e.truth.view == v]
        parity[name] = _export(net, out / f"{name}.onnx", "roi", SEG_INPUT, mine)
        print(f"{name}: exported, parity max abs error {parity[name]}", flush=True)
    return seconds, parity


def measure(out: Path, sets: dict[str, list[Example]], sweep: list[Example]) -> dict[str, Any]:
    """The manifest's ``validation`` figures of the ONNX files in ``out`` (ONNX Runtime)."""
    runner = PackRunner(out, {"view_stage": "view", "stages": stages(out)})
    held, test = sets["validation"], sets["test"]
    checked = evaluate_pack(runner, held)
    print(f"validation ({len(held)} images): Dice "
          f"{ {v: d['mean'] for v, d in checked['dice'].items()} }, rules "
          f"{checked['rules']['all']}", flush=True)  # fmt: skip
    figures = evaluate_pack(runner, test)
    return {
        "data": f"{len(test)} unseen phantoms (split seed {SPLIT_SEEDS['test']}: patients "
        f"never used in training (seed {SPLIT_SEEDS['train']}) or validation (seed "
        f"{SPLIT_SEEDS['validation']})), views balanced, half with one positioning error; run "
        "through the exported ONNX files in ONNX Runtime and the pack's rules "
        "(edge_worker.pipeline.measures), not torch (models.lumbar.evaluate)",
        "method": "Dice per view: mean over structures per image (background excluded), true "
        "view's segmenter, at the segmenter's input resolution. Rules chained: predicted view "
        "-> its segmenter -> its rules; every rule of the true view compared with the phantom "
        "truth over (image, rule) pairs; not measurable or missing counts as a detected failure.",
        **figures,
        "sweep": {
            "data": f"{len(sweep)} more unseen phantoms (test seed, items 50000+) whose own "
            "error angle is uniform from 0 to the top of its error band (AP rotation 0-16 deg, "
            "AP column 0-22, LAT tilt 0-18, OBL 45 +- 0-28): many lie between the training "
            "bands and near the thresholds. Truth: the same rules on the TRUE masks; true view "
            "(models.lumbar.evaluate.evaluate_sweep)",
            **evaluate_sweep(runner, sweep),
        },
        "validation_split": {
            "n_images": len(held), "dice": checked["dice"], "rules": checked["rules"]["all"]
        },
        "paper_001": {"dice": {"AP": 0.91, "LAT": 0.87, "OBL": 0.80}, "accuracy": 0.98,
                      "sensitivity": 0.86, "specificity": 0.99,
                      "note": "the paper's figures on 561 real images, for comparison only"},
    }


def write_manifest(out: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically and seal it."""
    path = out / "manifest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    seal_manifest(out)
    return path


def main(argv: list[str] | None = None) -> int:
    """Build the pack (or re-measure it: ``--evaluate-only``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m models.lumbar.make_lumbar_pack",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("models/packs/lumbar-demo"))
    parser.add_argument("--quick", action="store_true", help="a smoke build (version says so)")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="keep the networks in --out, measure them again and rewrite the "
                        "manifest (training facts kept from the old one)")  # fmt: skip
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (2 stall on OpenMP barriers when anything else runs "
                        "on a 2-core box)")
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full"]
    version = f"{args.version}-quick" if args.quick else args.version
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    previous = json.loads((args.out / "manifest.json").read_text()) if args.evaluate_only else {}

    wanted = ("validation", "test") if args.evaluate_only else tuple(SPLIT_SEEDS)
    sets = {split: make_set(split, preset[split]) for split in wanted}
    sweep = make_sweep("test", preset["sweep"])
    print(f"phantoms: {', '.join(f'{k} {len(v)}' for k, v in sets.items())}, sweep "
          f"{len(sweep)} ({time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip

    args.out.mkdir(parents=True, exist_ok=True)
    # The manifest goes last: a half-built folder must not carry one.
    for stale in ("manifest.json", "manifest.sha256"):
        (args.out / stale).unlink(missing_ok=True)
    if args.evaluate_only:
        training_data = previous["training_data"]
        version = previous["version"]
        parity = previous["validation"]["parity_max_abs_error"]
        seconds = previous["validation"]["train_seconds"]
    else:
        seconds, parity = train_and_export(args.out, sets, preset)
        training_data = {
            "kind": "synthetic-phantom",
            "description": "Synthetic lumbar spine AP/LL/LPO/RPO phantoms from "
            "edge_worker.phantoms.lumbar (T12 to sacrum, exact labels), 512 x 416 px, one "
            "patient per seed; half of each view with one positioning error (AP trunk "
            "rotation, AP column tilt, LAT tilt with closed disc spaces, OBL off 45 deg, "
            "T12 or sacrum out of the field). Training reads the phantom pixels as the "
            "working image (no DICOM round trip); intensity augmentation only.",
            "n_train": len(sets["train"]),
            "n_validation": len(sets["validation"]),
            "n_test": len(sets["test"]),
            "split_seeds": SPLIT_SEEDS,
            "errors_and_rules": {f"{v}:{e}": code for (v, e), code in RULE_OF_ERROR.items()},
            "preset": "quick" if args.quick else "full",
            "train_seconds": round(sum(seconds.values()), 1),
        }
    validation = {**measure(args.out, sets, sweep), "parity_max_abs_error": parity,
                  "train_seconds": seconds}  # fmt: skip
    manifest = {
        "schema": SCHEMA,
        "name": "lumbar-demo",
        "version": version,
        "description": DESCRIPTION,
        "body_parts": [BODY_PART],
        "not_for_clinical_use": True,
        "training_data": training_data,
        "validation": validation,
        "view_stage": "view",
        "stages": stages(args.out),
        "decision": {"judged_by": [f"rules_{v.lower()}" for v in VIEWS]},
    }
    path = write_manifest(args.out, manifest)
    size = sum(p.stat().st_size for p in args.out.iterdir()) / 1e6
    shown = ("dice", "view_accuracy", "rules", "images")
    print(json.dumps({k: validation[k] for k in shown}, indent=1))
    print(f"sweep: {json.dumps(validation['sweep']['per_rule'])}")
    print(f"wrote {path} ({size:.1f} MB) in {(time.monotonic() - started) / 60:.1f} min, "
          f"training {training_data['train_seconds']:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
