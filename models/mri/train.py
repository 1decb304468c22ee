"""Train the MIQA network on artifact phantoms, export ``models/packs/mri-demo``, measure it.

    python3 -m models.mri.train                      # short: ~10 minutes on 2 shared cores
    python3 -m models.mri.train --train 1200 --minutes 90 --widths 16,32,48,64,96   # longer

Loss (paper 002): mean squared error of the score (on 0-1, i.e. score / 10) plus the focal
loss (gamma 2) of each flag.  Batches are tiles cut from random training phantoms with the
tile grid jittered by up to 8 voxels; every tile carries its volume's labels (MIQA's weak
labels).  Splits are by phantom (disjoint seed ranges, :data:`models.mri.data.SPLIT_SEEDS`).

The figures are measured on unseen phantoms (the ``test`` seeds) through the exported pack,
ONNX Runtime and the worker's own ``Pipeline.judge_volume``: R-squared of the volume's score
against the true score, and each flag's AUC of its mean probability (``"no examples"`` when a
flag has no positive or no negative test volume).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.mri.data import (
    SPACING_MM,
    SPLIT_SEEDS,
    TILE,
    Example,
    make_example,
    split_seeds,
    tiles_of,
)
from models.mri.network import FLAGS, SCORE_MAX, MiqaNet
from models.mri.pack import write_volume_pack

OUT = Path(__file__).resolve().parents[1] / "packs" / "mri-demo"


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017), mean over elements; ``alpha`` weights positives."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    a_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (a_t * (1 - p_t) ** gamma * ce).mean()


def loss_of(raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Regression of score / 10 plus the focal loss of the flags (2x: they are ten)."""
    score = torch.sigmoid(raw[:, 0])
    return F.mse_loss(score, target[:, 0] / SCORE_MAX) + 2.0 * focal_loss(raw[:, 1:], target[:, 1:])


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def make_split(split: str, n: int) -> list[Example]:
    start = time.monotonic()
    out = []
    for i, seed in enumerate(split_seeds(split, n)):
        out.append(make_example(seed))
        if (i + 1) % 25 == 0 or i + 1 == n:
            spent = time.monotonic() - start
            _progress(f"[{split}] phantoms {i + 1}/{n}  {spent:.0f}s, ~{spent / (i + 1) * (n - i - 1):.0f}s left")
    return out


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None without both classes."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def r_squared(pred: np.ndarray, true: np.ndarray) -> float:
    ss_res = float(((true - pred) ** 2).sum())
    ss_tot = float(((true - true.mean()) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def figures(pred_scores: np.ndarray, pred_flags: np.ndarray, examples: list[Example]) -> dict[str, Any]:
    """R-squared of the score and per-flag AUC (with positives / negatives counted)."""
    true = np.array([e.labels.score for e in examples])
    flags: dict[str, Any] = {}
    for f, name in enumerate(FLAGS):
        y = np.array([e.labels.flags[name] for e in examples])
        value = auc(pred_flags[:, f], y)
        flags[name] = {"auc": round(value, 3) if value is not None else "no examples",
                       "positives": int(y.sum()), "negatives": int(len(y) - y.sum())}  # fmt: skip
    return {"score_r2": round(r_squared(pred_scores, true), 3),
            "score_mae": round(float(np.abs(pred_scores - true).mean()), 3),
            "volumes": len(examples), "flags": flags}  # fmt: skip


def evaluate_torch(net: MiqaNet, examples: list[Example]) -> dict[str, Any]:
    """The figures with the torch network (volume = mean over its tiles, as the worker)."""
    net.eval()
    scores, flags = [], []
    with torch.inference_mode():
        for e in examples:
            out = net(torch.from_numpy(tiles_of(e.volume).astype(np.float32)))
            scores.append(float(SCORE_MAX * torch.sigmoid(out[:, 0]).mean()))
            flags.append(torch.sigmoid(out[:, 1:]).mean(dim=0).numpy())
    net.train()
    return figures(np.array(scores), np.array(flags), examples)


def train(net: MiqaNet, examples: list[Example], val: list[Example], steps: int, minutes: float,
          batch_volumes: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """Adam with a cosine schedule for ``steps`` steps or ``minutes``, whichever comes first."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    start = time.monotonic()
    budget = minutes * 60.0
    history, running = [], 0.0
    net.train()
    step = 0
    for step in range(1, steps + 1):
        picks = rng.choice(len(examples), size=batch_volumes, replace=False)
        x = np.concatenate([tiles_of(examples[i].volume, rng) for i in picks]).astype(np.float32)
        y = np.concatenate([np.repeat(examples[i].labels.vector()[None], len(x) // batch_volumes, 0) for i in picks])
        if rng.random() < 0.5:  # a left-right flip changes no label
            x = x[..., ::-1].copy()
        loss = loss_of(net(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        value = loss.item()
        running = 0.9 * running + 0.1 * value if step > 1 else value
        spent = time.monotonic() - start
        if step % 20 == 0 or step == steps:
            left = min(spent / step * (steps - step), max(0.0, budget - spent))
            _progress(f"step {step}/{steps}  loss {running:.4f}  {spent:.0f}s, ~{left:.0f}s left")
        if step % 200 == 0 and val:
            v = evaluate_torch(net, val)
            history.append({"step": step, "loss": round(running, 4), "val_r2": v["score_r2"]})
            _progress(f"  val R2 {v['score_r2']}  AUCs " + " ".join(
                f"{k}={d['auc']}" for k, d in v["flags"].items()))
        if spent > budget:
            _progress(f"time budget of {minutes} min reached at step {step}")
            break
    return {"steps": step, "seconds": round(time.monotonic() - start, 1), "final_loss": round(running, 4),
            "history": history}  # fmt: skip


def measure_pack(folder: Path, examples: list[Example]) -> dict[str, Any]:
    """The figures through the worker: ONNX Runtime and ``Pipeline.judge_volume``."""
    from edge_worker.backends import select
    from edge_worker.packs.pack import load_pack
    from edge_worker.pipeline.runner import Pipeline

    pipeline = Pipeline(load_pack(folder), select(["onnxruntime-cpu"]))
    scores, flags, ms = [], [], []
    for e in examples:
        j = pipeline.judge_volume(e.volume, SPACING_MM)
        scores.append(j.score)
        flags.append([j.flags[f] for f in FLAGS])
        ms.append(j.timings_ms["total"])
    out = figures(np.array(scores), np.array(flags), examples)
    out["ms_per_volume_median"] = round(float(np.median(ms)), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=400, help="training phantoms")
    ap.add_argument("--val", type=int, default=40, help="validation phantoms")
    ap.add_argument("--test", type=int, default=160, help="unseen test phantoms (the figures)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--minutes", type=float, default=9.0, help="stop training after this long")
    ap.add_argument("--batch-volumes", type=int, default=2, help="phantoms per step (8 tiles each)")
    ap.add_argument("--widths", default="8,16,24,32,48", help="the five convolutions' channels")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    widths = tuple(int(w) for w in args.widths.split(","))
    t0 = time.monotonic()
    train_set, val_set = make_split("train", args.train), make_split("val", args.val)
    net = MiqaNet(widths)
    run = train(net, train_set, val_set, args.steps, args.minutes, args.batch_volumes, args.seed)
    del train_set
    net.eval()
    test_set = make_split("test", args.test)
    run["val"] = evaluate_torch(net, val_set)
    training_data = {
        "kind": "synthetic-phantom",
        "note": "head-like T1 phantoms (edge_worker.phantoms.mri) with TorchIO/simulated artifacts at "
                "known strengths (models.mri.artifacts); NOT real MR scans, not for clinical use",
        "phantoms": {"train": args.train, "val": args.val, "test": args.test},
        "split": "by phantom: disjoint seed ranges " + json.dumps(SPLIT_SEEDS),
        "spacing_mm": list(SPACING_MM), "tile": TILE,
    }  # fmt: skip
    description = ("MR head volume quality (MIQA-style 3-D network on 64^3 tiles): overall score 0-10 and "
                   "ten flags. SYNTHETIC: trained and measured on phantoms only; a person decides.")  # fmt: skip
    arch = net.describe()
    # Write once to measure through the worker, then again with the figures in the manifest.
    write_volume_pack(args.out, net, tile=TILE, spacing_mm=SPACING_MM, name="mri-demo", version="0.1.0",
                      description=description, training_data=training_data, validation={}, architecture=arch)  # fmt: skip
    test = measure_pack(args.out, test_set)
    validation = {
        "measured_on": f"{args.test} unseen phantoms (seeds {SPLIT_SEEDS['test']}+), through ONNX Runtime "
                       "and Pipeline.judge_volume",
        "score_r2": test["score_r2"], "score_mae": test["score_mae"], "flags": test["flags"],
        "ms_per_volume_median": test["ms_per_volume_median"],
        "paper_reference": "MIQA (paper 002) reports R-squared 0.14-0.33 for the overall score on real data",
        "training": {k: v for k, v in run.items() if k != "val"}, "val": run["val"],
        "machine": "2-core AMD EPYC (shared), no GPU, torch threads " + str(args.threads),
    }  # fmt: skip
    _, parity = write_volume_pack(args.out, net, tile=TILE, spacing_mm=SPACING_MM, name="mri-demo",
                                  version="0.1.0", description=description, training_data=training_data,
                                  validation=validation, architecture=arch)  # fmt: skip
    print(json.dumps({"test": test, "parity": parity, "minutes": round((time.monotonic() - t0) / 60, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
