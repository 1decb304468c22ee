"""A pack of the FULL-SIZE seed architectures with untrained weights, for speed work only.

    python -m export.seed_pack --out DIR [--seed 0]

The demo pack's networks are narrow (width 0.2-0.35, 96-128 px) so that they train in
minutes on two cores; a hospital pack will use the architectures at the sizes the papers
use.  ``edge-worker bench`` measures the worker on those:

* view and quality: EfficientNet-B0 (MONAI), width 1.0, 224 x 224;
* roi (one per view): DeepLabV3 with a ResNet-50 backbone at output stride 8, ASPP rates
  12/24/36, 400 x 400;
* orientation: ResNet-50, 224 x 224, ``(cos, sin)`` head.

Weights are random; only two things are set so that the pipeline does all of its work on
every image, as a trained pack would (a speed figure must not be flattered by a stage that
never runs):

* BatchNorm running statistics are measured on phantom inputs (train-mode forward passes),
  so activations have realistic ranges and INT8 calibration sees realistic distributions;
* the segmenter's last bias is shifted so that about 40 % of the map exceeds the ROI
  threshold, so a region is found and the quality stage runs.

Each network goes through the same path as a trained one: a checkpoint in ``models.train``'s
format, then ``export.onnx.export_stage`` (dynamo export, parity gate) and
``export.pack.write_pack``.  The checkpoints are kept in ``DIR/checkpoints`` because the
straightforward torch pipeline of the benchmark loads the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch import nn

from export.onnx import ATOL, RTOL, export_stage, phantom_batch
from export.pack import DEFAULT_THRESHOLDS, write_pack
from models.data import MEAN, STD
from models.networks import build
from models.train import checkpoint_name, default_arch

#: Bump when the recipe changes: the benchmark's cache rebuilds a pack of another recipe.
RECIPE = "seed-full@1"
#: (task, view, height, width) per stage, in pack order; sizes from the seed papers.
STAGES: tuple[tuple[str, str | None, int, int], ...] = (
    ("view", None, 224, 224),
    ("roi", "AP", 400, 400),
    ("roi", "LAT", 400, 400),
    ("quality", "AP", 224, 224),
    ("quality", "LAT", 224, 224),
    ("orientation", None, 224, 224),
)
#: Share of the segmenter's map left above the ROI threshold by the bias shift.
ROI_COVER = 0.4
#: DeepLabV3-R50 at 400 px sums ~100 GMAC per image; float32 summation order differs between
#: torch and ONNX Runtime by up to ~3e-4 on a sigmoid output (reference/cpu-baseline.md 2.).
SEED_ATOL = 1e-3


def _calibrate_batchnorm(net: nn.Module, batches: list[torch.Tensor]) -> None:
    """Set every BatchNorm's running statistics to their average over ``batches``."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration passes
    net.train()
    with torch.no_grad():
        for batch in batches:
            net(batch)
    net.eval()


def _shift_roi_bias(net: nn.Module, batch: torch.Tensor) -> None:
    """Move the segmenter's last bias so that ROI_COVER of the map exceeds the threshold."""
    last = net.head[-1]  # type: ignore[index]
    assert isinstance(last, nn.Conv2d) and last.bias is not None
    with torch.no_grad():
        logits = net.logits(batch)  # type: ignore[operator]
        threshold = DEFAULT_THRESHOLDS["roi"]["mask"]
        target = math.log(threshold / (1.0 - threshold))
        level = float(torch.quantile(logits.flatten()[::7], 1.0 - ROI_COVER))
        last.bias += target - level


def seed_checkpoint(task: str, view: str | None, height: int, width: int, out: Path,
                    seed: int) -> Path:  # fmt: skip
    """Write one untrained full-size checkpoint in ``models.train``'s format; returns its path."""
    torch.manual_seed(seed)
    arch = default_arch(task, 1.0, 1.0, height, width)
    net = build(arch)
    spec = {"height": height, "width": width, "channels": arch.in_channels, "mean": MEAN,
            "std": STD}  # fmt: skip
    inputs = [
        torch.from_numpy(phantom_batch(task, spec, view, n=4, seed=seed * 100 + i))
        for i in range(2)
    ]
    _calibrate_batchnorm(net, inputs)
    if task == "roi":
        _shift_roi_bias(net, inputs[0])
    out.mkdir(parents=True, exist_ok=True)
    path = out / checkpoint_name(task, view)
    torch.save({
        "task": task, "view": view, "arch": arch.as_dict(), "input": spec, "steps": 0,
        "n_train": 0, "metrics": {}, "state_dict": net.state_dict(),
    }, path)  # fmt: skip
    return path


def build_seed_pack(out: Path, seed: int = 0) -> Path:
    """Checkpoints under ``out/checkpoints``, the pack in ``out/pack``; returns the manifest."""
    ckpt_dir, pack_dir = out / "checkpoints", out / "pack"
    stages = []
    for i, (task, view, height, width) in enumerate(STAGES):
        ckpt = seed_checkpoint(task, view, height, width, ckpt_dir, seed + i)
        stage, errors = export_stage(ckpt, pack_dir / ".export", max(ATOL, SEED_ATOL), RTOL)
        print(f"{stage.name}: exported, parity max abs error {errors}", flush=True)
        stages.append(stage)
    training = {
        "kind": "untrained",
        "description": f"{RECIPE}: random weights (seed {seed}), BatchNorm statistics from "
        "phantoms, ROI bias shifted so a region is found; for speed measurements only",
        "n_train": 0,
        "n_validation": 0,
    }
    manifest = write_pack(
        pack_dir, stages, name="seed-full", version="0.0.0",
        description="Full-size seed architectures, UNTRAINED: speed benchmarks only. "
        "NOT FOR CLINICAL USE; its verdicts mean nothing.",
        training_data=training, validation={}, not_for_clinical_use=True,
    )  # fmt: skip
    for leftover in (pack_dir / ".export").glob("*"):
        leftover.unlink()
    (pack_dir / ".export").rmdir()
    (out / "recipe.json").write_text(json.dumps({"recipe": RECIPE, "seed": seed}) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m export.seed_pack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for checkpoints/ and pack/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"wrote {build_seed_pack(args.out, args.seed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
