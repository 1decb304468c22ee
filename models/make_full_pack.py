"""The full-size seed architectures, TRAINED briefly on phantoms: ``python -m models.make_full_pack``.

    python -m models.make_full_pack --out DIR [--preset quick|full] [--work runs/demo]
                                    [--only STAGE,...]   # retrain these, reuse the rest

``export.seed_pack`` gives the same architectures with random weights, which is enough to
time them but not to judge a precision conversion: a random segmenter's map hovers near the
threshold everywhere and a random regressor's scores run far off the 1-3 scale, so any
rounding moves the box and the grade, and ``edge-export quantize`` rightly refuses an INT8
copy.  A trained network's map is near 0 or 1 and its scores sit on the scale; whether INT8
keeps *its* verdicts is the question a hospital pack will face.  This recipe answers it on
phantoms, on two CPU cores, in about 50 minutes:

* the six stages at the sizes in ``export.seed_pack.STAGES`` (EfficientNet-B0 224 for view
  and quality, DeepLabV3-ResNet50 400 per view, ResNet-50 224 for orientation), random
  initialisation (no downloaded weights);
* the demo pack's phantom sets and recipes (``models.make_demo_pack``: the papers' losses and
  optimisers, cosine decay, its 10x learning rates except for orientation), far fewer steps
  than a real pack;
* validation on phantoms from seeds never used for training, measured per stage and chained.

The pack (``DIR/pack``) says it is phantom-trained and NOT FOR CLINICAL USE; the checkpoints
(``DIR/checkpoints``) feed the benchmark's straightforward torch pipeline.  About 440 MB each,
so both stay out of git, built into the benchmark's cache (``edge-worker bench --train-full``;
the bench uses them whenever they are there).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from export.onnx import ATOL, RTOL, export_stage, load_checkpoint
from export.pack import write_pack
from export.seed_pack import SEED_ATOL, STAGES
from models.data import load_samples, read_csv
from models.make_demo_pack import LR, make_sets
from models.pack_eval import pack_figures
from models.train import TrainConfig, checkpoint_name, default_arch, train

#: Bump when the recipe changes: the benchmark's cache rebuilds a pack of another recipe.
RECIPE = "full-phantom@3"
DESCRIPTION = ("Full-size seed architectures trained briefly on synthetic ankle phantoms, for "
               "speed and precision-gate measurements. NOT FOR CLINICAL USE.")  # fmt: skip
#: phantom sets written (train, validation images per set, as make_demo_pack's presets),
#: images used from them, and (steps, batch) per task.
PRESETS: dict[str, dict[str, tuple[int, int]]] = {
    "quick": {"sets": (120, 40), "images": (40, 12), "view": (4, 4), "roi": (3, 2),
              "quality": (4, 4), "orientation": (4, 4)},
    "full": {"sets": (600, 200), "images": (400, 60), "view": (150, 8), "roi": (160, 2),
             "quality": (800, 8), "orientation": (700, 8)},
}  # fmt: skip
#: make_demo_pack's rates, except orientation: at 1e-3 the full-width ResNet-50 settled on the
#: trivial answer (output (0, 0), loss 1.0) and stayed there for 200 steps.
RATES = {**LR, "orientation": 3e-4}
#: Which phantom set trains each task (make_demo_pack's split: orientation sees any rotation).
SET_OF = {"view": "upright", "roi": "upright", "quality": "upright", "orientation": "rotated"}


#: The full-size pack's version; a smoke preset appends its name.
VERSION = "0.1.0"


def main(argv: list[str] | None = None) -> int:
    """Train, export and write the pack; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m models.make_full_pack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for pack/ and checkpoints/")
    parser.add_argument("--work", type=Path, default=Path("runs/demo"),
                        help="phantom sets (shared with make_demo_pack) and ONNX scratch")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--only", help="train only these stages (e.g. quality_ap,quality_lat); "
                        "the others' checkpoints are reused from DIR/checkpoints")  # fmt: skip
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    # A smoke build must never pass for the real pack: its version says what it is.
    version = VERSION if args.preset == "full" else f"{VERSION}-{args.preset}"
    started = time.monotonic()
    torch.set_num_threads(args.threads)

    n_train, n_val = preset["images"]
    csvs = make_sets(args.work, *preset["sets"])
    samples = {}
    for key, path in csvs.items():
        records = read_csv(path)
        random.Random(key).shuffle(records)  # views and grades stay balanced in a subset
        samples[key] = load_samples(records[: n_train if key.startswith("train") else n_val],
                                    desc=key)  # fmt: skip
    print(f"phantoms ready after {time.monotonic() - started:.0f} s", flush=True)

    ckpt_dir, pack_dir = args.out / "checkpoints", args.out / "pack"
    only = set(args.only.split(",")) if args.only else None
    stages, validation, steps_run = [], {}, {}
    for i, (task, view, height, width) in enumerate(STAGES):
        steps, batch = preset[task]
        config = TrainConfig(
            task=task, view=view, steps=steps, batch=batch, height=height, width=width,
            lr=RATES[task], seed=100 + i, arch=default_arch(task, 1.0, 1.0, height, width),
        )  # fmt: skip
        kind = SET_OF[task]
        ckpt = ckpt_dir / checkpoint_name(task, view)
        if only is None or ckpt.stem in only or not ckpt.is_file():
            ckpt = train(config, samples[f"train_{kind}"], samples[f"val_{kind}"], ckpt_dir)
        else:
            print(f"{ckpt.stem}: reusing {ckpt}", flush=True)
        steps_run[ckpt.stem] = load_checkpoint(ckpt).meta["steps"]
        atol = max(ATOL, SEED_ATOL) if task == "roi" else ATOL
        stage, errors = export_stage(ckpt, args.work / "onnx-full", atol, RTOL)
        print(f"{stage.name}: exported, parity max abs error {errors}", flush=True)
        validation[stage.name] = load_checkpoint(ckpt).meta["metrics"]
        stages.append(stage)

    training = {
        "kind": "synthetic-phantom",
        "description": f"{RECIPE}: edge_worker.phantoms.ankle ankle AP/LAT phantoms (the demo pack's "
        f"sets), {n_train} images per set, "
        + ", ".join(f"{name} {n} steps" for name, n in steps_run.items())
        + "; random initialisation",
        "n_train": 2 * n_train,
        "n_validation": 2 * n_val,
        "preset": args.preset,
    }
    summary: dict[str, object] = {
        "data": f"{n_val} phantoms per set from seeds never used for training; each stage alone",
        "per_stage": validation,
    }
    write_pack(pack_dir, stages, name="full-phantom", version=version, description=DESCRIPTION,
               training_data=training, validation=summary)  # fmt: skip
    summary["pipeline"] = {
        "data": "the same unseen phantoms, the pack's ONNX files chained as the worker does",
        "upright": pack_figures(pack_dir, samples["val_upright"]),
    }
    manifest = write_pack(pack_dir, stages, name="full-phantom", version=version,
                          description=DESCRIPTION, training_data=training, validation=summary)  # fmt: skip
    (args.out / "recipe.json").write_text(json.dumps({"recipe": RECIPE, "preset": args.preset}) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {manifest} in {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
