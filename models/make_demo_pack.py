"""The 1.x demo-pack maker: ``python -m models.make_demo_pack --out runs/ankle-1x``.

The bundled ``models/packs/ankle-demo`` 2.x is built by the ML team's one command from
``models/recipes/ankle.toml`` (README, "The demo pack"); this maker made the 1.x networks kept
as ``tests/data/packs/ankle-demo-1.1``, and its phantom sets and learning rates feed
:mod:`models.make_full_pack` (the GPU proof's full-width pack).

1. Write phantom DICOM files: a training set with small rotations (+-15 deg) for the view,
   ROI and quality stages, one with any rotation for the orientation stage, and two
   validation sets of the same kinds from seeds never used for training.
2. Train the six stages (view, roi AP/LAT, quality AP/LAT, orientation) with ``models.train``.
3. Export each to ONNX through the parity gate and write the pack with the validation
   figures measured on the unseen phantoms.

4. Judge fresh phantoms through the worker (upright first) for the chained figures
   (:mod:`models.evaluate_chain`) and write them into the manifest too.

``--preset quick`` is a smoke run of a few minutes whose version says so; ``full`` (default)
made the 1.x pack, about 25 minutes on 2 CPU cores.  ``--only view,roi_ap`` retrains the
named stages and keeps the others of the pack in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from edge_worker.packs.pack_v1 import role_of
from edge_worker.phantoms.ankle import write_dataset
from export.onnx import export_stage, load_checkpoint
from export.pack import StageFile, write_pack
from models.data import VIEW_LABELS, load_samples, read_csv
from models.evaluate_chain import evaluate as evaluate_chain
from models.train import TrainConfig, default_arch, train

DESCRIPTION = ("Ankle AP/LAT quality pipeline trained on synthetic phantoms. "
               "Demonstration only: NOT FOR CLINICAL USE.")
TRAIN_SEEDS = {"upright": 11, "rotated": 12}
VALIDATION_SEEDS = {"upright": 9011, "rotated": 9012}
#: First seed of the chained evaluation's fresh phantoms (models.evaluate_chain's default).
EVAL_SEED = 7301
PRESETS: dict[str, dict[str, int]] = {
    # images per set, validation images per set, steps per stage kind
    "quick": {"n": 120, "n_val": 40, "view": 60, "roi": 60, "quality": 60, "orientation": 60},
    "full": {"n": 600, "n_val": 200, "view": 700, "roi": 700, "quality": 1000,
             "orientation": 2000},
}  # fmt: skip
WIDTH = {"view": 0.25, "roi": 0.2, "quality": 0.35, "orientation": 0.2}
SIZE = {"view": (128, 128), "roi": (128, 128), "quality": (96, 160), "orientation": (128, 128)}
BATCH = {"view": 8, "roi": 8, "quality": 16, "orientation": 8}
#: Peak rates (cosine decay to zero): 10x the papers' for view, roi and quality, whose
#: 50k-500k-iteration schedules do not fit a 25-minute budget.
LR = {"view": 1e-2, "roi": 1e-3, "quality": 1e-2, "orientation": 1e-3}


def stage_plan() -> list[tuple[str, str | None, str]]:
    """(task, view, training set) for every stage, in pack order."""
    return [
        ("view", None, "upright"),
        ("roi", "AP", "upright"),
        ("roi", "LAT", "upright"),
        ("quality", "AP", "upright"),
        ("quality", "LAT", "upright"),
        ("orientation", None, "rotated"),
    ]


def make_sets(work: Path, n: int, n_val: int) -> dict[str, Path]:
    """Write the four phantom sets (or reuse them) and return their CSV paths."""
    paths = {}
    for kind, rotation in (("upright", (-15.0, 15.0)), ("rotated", (0.0, 360.0))):
        for split, seed, count in (("train", TRAIN_SEEDS[kind], n),
                                   ("val", VALIDATION_SEEDS[kind], n_val)):  # fmt: skip
            folder = work / f"{split}_{kind}_{count}"
            csv_path = folder / "labels.csv"
            if not csv_path.exists():
                write_dataset(folder, count, seed, rotation_range=rotation)
            paths[f"{split}_{kind}"] = csv_path
    return paths


def reused_stage(pack_dir: Path, manifest: dict[str, Any], name: str, scratch: Path) -> StageFile:
    """A stage of the pack already in ``pack_dir``, as it was exported, for ``--only`` builds."""
    entry = next(e for e in manifest["stages"] if e["name"] == name)
    task, view = role_of(entry, str(manifest.get("view_stage", "view")))
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / f"{name}.onnx"
    shutil.copyfile(pack_dir / entry["file"], copy)
    return StageFile(
        name=name, task=task, onnx_path=copy, output_name=next(iter(entry["outputs"])),
        input={k: v for k, v in entry["input"].items() if k != "name"},
        architecture=entry.get("architecture", ""), opset=int(entry.get("opset", 18)),
        applies_to_view=view, labels=entry.get("labels"),
        thresholds=dict(entry.get("thresholds", {})),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Build the pack; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m models.make_demo_pack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ankle-1x"))
    parser.add_argument("--work", type=Path, default=Path("runs/demo"),
                        help="phantoms and checkpoints (not part of the pack)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--only", help="train only these stages (e.g. view,roi_ap); the others "
                        "are taken unchanged from the pack already in --out")  # fmt: skip
    parser.add_argument("--eval-n", type=int, default=240,
                        help="fresh phantoms per set for the chained figures (models.evaluate_chain)")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    previous = json.loads((args.out / "manifest.json").read_text()) if only else {}
    preset = PRESETS[args.preset]
    if args.preset != "full" and "quick" not in args.version:
        # A smoke build must never pass for the real pack: its version says what it is.
        args.version = f"{args.version}-{args.preset}"
    started = time.monotonic()
    # One torch thread plus one augmentation process: with two threads, torch's OpenMP
    # barriers stall badly whenever anything else runs on a 2-core box.
    torch.set_num_threads(args.threads)

    csvs = make_sets(args.work, preset["n"], preset["n_val"])
    samples = {key: load_samples(read_csv(path), desc=key) for key, path in csvs.items()}
    print(f"phantoms ready after {time.monotonic() - started:.0f} s")

    stages, validation = [], {}
    for task, view, kind in stage_plan():
        name = task if view is None else f"{task}_{view.lower()}"
        if only is not None and name not in only:
            stage = reused_stage(args.out, previous, name, args.work / "onnx")
            validation[name] = previous["validation"]["per_stage"][name]
            stages.append(stage)
            print(f"{name}: reused from {args.out}")
            continue
        height, width = SIZE[task]
        config = TrainConfig(
            task=task, view=view, steps=preset[task], batch=BATCH[task], height=height,
            width=width, lr=LR[task], seed=len(stages),
            arch=default_arch(task, WIDTH[task], 1.0, height, width),
        )  # fmt: skip
        ckpt = train(config, samples[f"train_{kind}"], samples[f"val_{kind}"], args.work / "ckpt")
        stage, errors = export_stage(ckpt, args.work / "onnx")
        print(f"{stage.name}: exported, parity max abs error {errors}")
        validation[stage.name] = load_checkpoint(ckpt).meta["metrics"]
        stages.append(stage)

    n_train = sum(len(samples[f"train_{k}"]) for k in TRAIN_SEEDS)
    n_val = sum(len(samples[f"val_{k}"]) for k in VALIDATION_SEEDS)
    summary = {
        "data": "phantoms generated with seeds never used in training "
        f"(edge_worker.phantoms.ankle seeds {sorted(VALIDATION_SEEDS.values())}; training used "
        f"{sorted(TRAIN_SEEDS.values())}); each stage measured alone, quality on crops of the "
        "true ROI",
        "view_accuracy": validation["view"]["accuracy"],
        "roi_dice": {v: validation[f"roi_{v.lower()}"]["dice"] for v in VIEW_LABELS},
        "quality_accuracy": {
            v: validation[f"quality_{v.lower()}"]["accuracy"] for v in VIEW_LABELS
        },
        "quality_mae": {v: validation[f"quality_{v.lower()}"]["mae"] for v in VIEW_LABELS},
        "orientation_mae_deg": validation["orientation"]["mae_deg"],
        "per_stage": validation,
    }
    training_data = {
        "kind": "synthetic-phantom",
        "description": "Synthetic ankle AP/LAT phantoms from edge_worker.phantoms.ankle (CR and DX, "
        "12-16 bit, MONOCHROME1/2, 1024-2048 px), written as DICOM and read back through the "
        "worker's preprocessing. Upright set: rotations within +-15 deg (view, roi, quality); "
        "rotated set: any rotation (orientation). Views and grades balanced.",
        "n_train": n_train,
        "n_validation": n_val,
        "preset": args.preset,
    }
    manifest = write_pack(
        args.out, stages, name="ankle-demo", version=args.version,
        description=DESCRIPTION,
        training_data=training_data, validation=summary,
    )  # fmt: skip
    chained = evaluate_chain(args.out, args.eval_n, EVAL_SEED)
    summary["pipeline"] = {
        "data": f"{args.eval_n} fresh phantoms per set (seeds {EVAL_SEED}, {EVAL_SEED + 1}: never "
        "used in training or validation), judged by the worker itself: its ingest, orientation "
        "first, the image turned upright, then view -> ROI of that view -> box -> quality, and "
        "its decision rule (python -m models.evaluate_chain)",
        **chained["sets"],
    }
    write_pack(
        args.out, stages, name="ankle-demo", version=args.version,
        description=DESCRIPTION, training_data=training_data, validation=summary,
    )  # fmt: skip
    minutes = (time.monotonic() - started) / 60.0
    print(json.dumps(summary, indent=2))
    print(f"wrote {manifest} in {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
