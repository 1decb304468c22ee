"""Train one stage: ``python -m models.train {view,roi,quality,orientation} --csv CSV --out DIR``.

Recipes follow the papers: view (ankle paper 5.1) SGD lr 1e-3, momentum 0.9, weight decay
1e-5, cross-entropy; roi (5.2) Adam lr 1e-4, weight decay 1e-4, pixel-wise MSE on the sigmoid
output; quality (5.3) SGD lr 1e-3, momentum 0.9, weight decay 1e-3, MSE on the 1-3 score, on
crops of the ground-truth ROI; orientation (paper 003) Adam, circular MSE on (cos, sin).
ROI and quality train one model per view (``--view AP`` / ``--view LAT``).

The checkpoint (``<out>/<task>[_<view>].pt``) holds the weights, the architecture, the input
specification and the validation figures, everything ``export`` needs.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from models.chest.augment import cdf, view_augment
from models.data import MEAN, STD, VIEW_LABELS, Sample, example, load_samples, read_csv
from models.evaluate import evaluate
from models.networks import ArchConfig, build
from models.turns import turned_sample


@dataclass
class TrainConfig:
    """One training run.  ``lr`` ``None`` means the paper's learning rate for the task."""

    task: str
    view: str | None = None
    steps: int = 1000
    batch: int = 8
    height: int = 128
    width: int = 128
    lr: float | None = None
    seed: int = 0
    #: Augment in a separate process (a DataLoader worker) while the network trains.
    loader_worker: bool = True
    arch: ArchConfig = field(default_factory=lambda: ArchConfig("view"))
    #: The view classifier's vocabulary, in class order (``arch.extra["classes"]`` must match).
    labels: tuple[str, ...] = VIEW_LABELS
    #: How the image is laid out in the input (``stretch`` or ``pad``: the manifest's
    #: ``input.resize``, stored in the checkpoint's ``input``).
    resize: str = "stretch"
    #: orientation: turn every draw by a random angle, the label with it (:mod:`models.turns`).
    turn_any: bool = False
    #: view: draw every class equally often.
    balance_classes: bool = False
    #: view: the chest shortcut breakers on every draw (:func:`models.chest.augment.view_augment`)
    #: before the usual augmentation.
    break_shortcuts: bool = False
    #: A checkpoint whose backbone initialises this network (its head is drawn afresh): a
    #: view classifier started from the self-supervised orientation network.
    init: Path | None = None


def optimizer(task: str, params: list[nn.Parameter], lr: float | None) -> torch.optim.Optimizer:
    """The papers' optimiser for ``task``."""
    if task == "view":
        return torch.optim.SGD(params, lr=lr or 1e-3, momentum=0.9, weight_decay=1e-5)
    if task == "quality":
        return torch.optim.SGD(params, lr=lr or 1e-3, momentum=0.9, weight_decay=1e-3)
    if task == "roi":
        return torch.optim.Adam(params, lr=lr or 1e-4, weight_decay=1e-4)
    return torch.optim.Adam(params, lr=lr or 1e-3, betas=(0.9, 0.999), eps=1e-8)


def loss_fn(task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The papers' loss for ``task`` on a batch."""
    from models.networks import circular_mse

    if task == "view":
        return F.cross_entropy(output, target)
    if task == "orientation":
        return circular_mse(output, target[:, 0])
    return F.mse_loss(output, target)


def select(samples: list[Sample], task: str, view: str | None) -> list[Sample]:
    """The samples a task can learn from: right view, and the labels it needs."""
    chosen = [s for s in samples if view is None or s.record.view == view]
    if task in ("roi", "quality"):
        chosen = [s for s in chosen if s.roi is not None]
    if task == "quality":
        chosen = [s for s in chosen if s.record.score is not None]
    if task == "orientation":
        chosen = [s for s in chosen if s.record.rotation_deg is not None]
    if not chosen:
        raise ValueError(f"no samples with labels for task {task!r} (view {view})")
    return chosen


class BatchStream(IterableDataset):
    """An endless stream of augmented ``(x, y)`` batches for one task.

    It runs in a DataLoader worker process so that augmentation (OpenCV, one core) overlaps
    the network's step (torch, the other core).
    """

    def __init__(self, config: TrainConfig, samples: list[Sample]) -> None:
        super().__init__()
        self.config = config
        self.samples = samples

    def __iter__(self):  # type: ignore[no-untyped-def]
        # No cv2.setNumThreads() here: calling it in a forked worker deadlocks.
        info = torch.utils.data.get_worker_info()
        c = self.config
        rng = np.random.default_rng([c.seed, info.id if info else 0])
        weights = None
        if c.balance_classes:
            counts = Counter(s.record.view for s in self.samples)
            weights = np.array([1.0 / counts[s.record.view] for s in self.samples])
            weights /= weights.sum()
        looks = shortcut_looks(rng, self.samples) if c.break_shortcuts else None
        while True:
            picks = (rng.integers(0, len(self.samples), size=c.batch) if weights is None
                     else rng.choice(len(self.samples), size=c.batch, p=weights))  # fmt: skip
            chosen = [self.samples[i] for i in picks]
            if c.turn_any:
                chosen = [turned_sample(rng, s) for s in chosen]
            if looks is not None:
                chosen = [Sample(s.record, view_augment(rng, s.working.astype(np.float32), looks),
                                 s.roi) for s in chosen]  # fmt: skip
            pairs = [example(c.task, s, c.height, c.width, rng, c.labels, c.resize) for s in chosen]
            yield (torch.from_numpy(np.stack([p[0] for p in pairs])),
                   torch.from_numpy(np.stack([p[1] for p in pairs])))  # fmt: skip


def shortcut_looks(rng: np.random.Generator, samples: list[Sample], per_class: int = 32
                   ) -> np.ndarray:  # fmt: skip
    """Grey-level CDFs of ``per_class`` random training images of every view, an equal number
    of each, for :func:`models.chest.augment.view_augment` to impose: the imposed histogram is
    then independent of the label."""
    by_view: dict[str | None, list[Sample]] = {}
    for s in samples:
        by_view.setdefault(s.record.view, []).append(s)
    looks = [cdf(np.clip(group[i].working.astype(np.float32), 0.0, 1.0))
             for group in by_view.values()
             for i in rng.choice(len(group), size=per_class, replace=len(group) < per_class)]
    return np.stack(looks)


def fit(
    net: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    opt: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    steps: int,
    desc: str,
    mininterval: float = 0.1,
) -> float | None:
    """``steps`` optimiser steps on ``batches``, with the running loss on a progress bar;
    returns that loss (an exponential average; ``None`` after no step)."""
    bar = tqdm(range(steps), desc=desc, mininterval=mininterval)
    running: float | None = None
    for _ in bar:
        x, y = next(batches)
        loss = loss_of(net(x), y)
        opt.zero_grad()
        loss.backward()
        # Regression from scratch with SGD + momentum can blow up in the first steps.
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        schedule.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)
    return running


def checkpoint_name(task: str, view: str | None) -> str:
    """``view.pt``, ``roi_ap.pt``, ...: also the stage name in the pack."""
    return f"{task}_{view.lower()}.pt" if view else f"{task}.pt"


def train(
    config: TrainConfig, train_samples: list[Sample], val_samples: list[Sample], out: Path
) -> Path:
    """Train for ``config.steps`` steps, evaluate on ``val_samples`` and save a checkpoint."""
    torch.manual_seed(config.seed)
    data = select(train_samples, config.task, config.view)
    val = select(val_samples, config.task, config.view)
    net = build(config.arch)
    if config.init is not None:
        start_from(net, config.init)
    opt = optimizer(config.task, list(net.parameters()), config.lr)
    # Cosine decay to zero: the papers ran 50k-500k iterations at a fixed rate; a schedule
    # of a few thousand steps needs the decay to settle.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.steps))
    net.train()
    started = time.monotonic()
    workers = 1 if config.loader_worker else 0
    loader = DataLoader(BatchStream(config, data), batch_size=None, num_workers=workers,
                        prefetch_factor=4 if workers else None)  # fmt: skip
    batches = iter(loader)
    fit(net, batches, lambda out, y: loss_fn(config.task, out, y), opt, schedule, config.steps,
        desc=checkpoint_name(config.task, config.view)[:-3])  # fmt: skip
    del batches, loader  # stops the worker process
    metrics = evaluate(config.task, net, val, config.height, config.width, config.labels,
                       config.resize)  # fmt: skip
    metrics["train_seconds"] = round(time.monotonic() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    path = out / checkpoint_name(config.task, config.view)
    torch.save({
        "task": config.task,
        "view": config.view,
        "arch": config.arch.as_dict(),
        "input": {"height": config.height, "width": config.width,
                  "channels": config.arch.in_channels, "mean": MEAN, "std": STD,
                  "resize": config.resize},
        "steps": config.steps,
        "labels": list(config.labels),
        "n_train": len(data),
        "metrics": metrics,
        "state_dict": net.state_dict(),
    }, path)  # fmt: skip
    print(f"{path.name}: validation on {len(val)} images: {metrics}")
    return path


def start_from(net: nn.Module, checkpoint: Path) -> None:
    """Load ``checkpoint``'s backbone weights into ``net`` (every tensor but the ``fc.`` head);
    ValueError when the layouts differ (another width, depth or network)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = net.load_state_dict(backbone, strict=False)
    if result.unexpected_keys or any(not k.startswith("fc.") for k in result.missing_keys):
        raise ValueError(f"{checkpoint.name} does not fit this network: {result}")


def default_arch(task: str, width: float, depth: float, height: int, width_px: int) -> ArchConfig:
    """The demo-sized architecture for ``task`` at a given width multiplier."""
    if task in ("view", "quality"):
        drop = 0.4 if task == "view" else 0.1
        return ArchConfig(task, width=width, depth=depth, image_size=max(height, width_px),
                          drop_connect=drop)  # fmt: skip
    # ASPP rates of 12/24/36 suit a 400 px input at output stride 8 (a 50 px feature map);
    # scale them with the feature map so the dilated taps stay inside it.
    scale = max(height, width_px) / 400.0
    rates = tuple(max(1, round(r * scale)) for r in (12, 24, 36))
    return ArchConfig(task, width=width, depth=depth, aspp_rates=rates)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["view", "roi", "quality", "orientation"])
    parser.add_argument("--csv", type=Path, required=True, help="training label CSV")
    parser.add_argument("--val-csv", type=Path, help="validation CSV (default: 20%% of --csv)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--view", choices=["AP", "LAT"], help="roi/quality: the view to train")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="input height (and width)")
    parser.add_argument("--input-width", type=int, help="input width if not square")
    parser.add_argument("--resize", choices=["stretch", "pad"], default="stretch",
                        help="image to input: plain resize, or aspect ratio kept with zeros around")
    parser.add_argument("--width", type=float, default=0.5, help="network width multiplier")
    parser.add_argument("--depth", type=float, default=1.0, help="EfficientNet depth multiplier")
    parser.add_argument("--lr", type=float, help="override the paper's learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is robust on a shared 2-core box; see docs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.task in ("roi", "quality") and args.view is None:
        raise SystemExit(f"{args.task} trains one model per view: pass --view AP or --view LAT")
    records = read_csv(args.csv)
    if args.val_csv:
        train_records, val_records = records, read_csv(args.val_csv)
    else:
        order = np.random.default_rng(args.seed).permutation(len(records))
        cut = max(1, len(records) // 5)
        val_records = [records[i] for i in order[:cut]]
        train_records = [records[i] for i in order[cut:]]
    width_px = args.input_width or args.size
    config = TrainConfig(
        task=args.task, view=args.view, steps=args.steps, batch=args.batch,
        height=args.size, width=width_px, lr=args.lr, seed=args.seed, resize=args.resize,
        arch=default_arch(args.task, args.width, args.depth, args.size, width_px),
    )  # fmt: skip
    train(config, load_samples(train_records), load_samples(val_records), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
