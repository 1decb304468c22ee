"""Training loops for the chest pack's two stages, on working images already in memory.

* ``view``: a ResNet fine-tuned from the orientation checkpoint (``backbone="resnet"``,
  ``init``; the pack's recipe) or an EfficientNet-B0 from scratch, with cross-entropy on
  class-balanced batches (AP outnumbers PA almost four to one) under :func:`models.chest.augment.view_augment`, plus
  outlier exposure: a few non-chest inputs per batch whose target is the uniform
  distribution (:mod:`models.chest.outliers`).
* ``orientation``: the bottleneck ResNet with a ``(cos, sin)`` head and paper 003's circular
  MSE, self-supervised: every upright training image turned by a random angle over the full
  circle is a labelled example (:func:`models.chest.augment.orientation_example`).

Both use Adam with a short warm-up and cosine decay.  The checkpoint has the keys that
``export.onnx.load_checkpoint`` reads, so the ankle recipe's exporter rebuilds it unchanged.
Batches are made in one DataLoader worker process while torch trains on the other core.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from edge_worker.pipeline.preprocess import to_tensor
from models.chest.augment import cdf, orientation_example, view_augment
from models.chest.data import ChestRecord
from models.chest.outliers import TRAIN_PHANTOM_SEED, outlier, phantom_ankles
from models.data import MEAN, STD
from models.networks import ArchConfig, build, circular_mse
from models.train import fit


@dataclass(frozen=True)
class StageConfig:
    """One stage's recipe."""

    task: str
    steps: int
    batch: int
    size: int
    width: float
    lr: float = 1e-3
    seed: int = 0
    #: view only: outlier-exposure inputs added to each batch, and the weight of their loss.
    outliers: int = 0
    outlier_weight: float = 0.5
    #: size of the phantom-ankle pool the outliers are drawn from (rendered once per worker).
    outlier_phantoms: int = 48
    warmup: int = 30
    #: 0 makes batches in the training process (tests); 1 overlaps them with the step.
    workers: int = 1
    #: view only: ``efficientnet`` (from scratch) or ``resnet`` (the orientation network's
    #: layout, so that it can start from the self-supervised orientation checkpoint).
    backbone: str = "efficientnet"
    #: a checkpoint whose backbone weights initialise this network (its head is re-drawn).
    init: str | None = None

    def arch(self) -> ArchConfig:
        """The network's architecture for the checkpoint and the manifest.

        A ResNet view stage is stored with ``task="orientation"`` in its architecture:
        ``models.networks.build`` picks the network by that field, and the orientation
        network is a ResNet with a 2-output linear head, which is also a 2-class classifier.
        The checkpoint's own ``task`` stays ``view``.
        """
        if self.task == "view" and self.backbone == "efficientnet":
            return ArchConfig("view", width=self.width, image_size=self.size, drop_connect=0.2)
        return ArchConfig("orientation", width=self.width, image_size=self.size)


def patient_weights(records: Sequence[ChestRecord]) -> np.ndarray:
    """Sampling weights: each class half of the draws, each patient ~ sqrt(its image count).

    Balancing the classes handles the 4:1 AP/PA imbalance; the square root keeps the two
    22-image patients from dominating their class without ignoring their extra images.
    """
    per_patient = Counter(r.patient for r in records)
    raw = np.array([1.0 / math.sqrt(per_patient[r.patient]) for r in records])
    labels = np.array([r.label for r in records])
    weights = np.zeros(len(records))
    for label in np.unique(labels):
        chosen = labels == label
        weights[chosen] = raw[chosen] / raw[chosen].sum()
    return weights / weights.sum()


class BatchStream(IterableDataset):  # type: ignore[type-arg]
    """An endless stream of ``(x, y, n_outliers)`` batches for one stage."""

    def __init__(self, config: StageConfig, images: list[np.ndarray],
                 records: Sequence[ChestRecord]) -> None:  # fmt: skip
        super().__init__()
        self.config = config
        self.images = images
        self.labels = np.array([r.label for r in records], dtype=np.int64)
        self.weights = patient_weights(records)
        self.phantoms: list[np.ndarray] = []
        self.looks = self._balanced_looks(images) if config.task == "view" else None

    def _balanced_looks(self, images: list[np.ndarray]) -> np.ndarray:
        """Training images' grey-level CDFs, the rarer class repeated to as many rows as the
        commoner, so that a randomly imposed look carries no information about the label."""
        per_class = [[cdf(img) for img, y in zip(images, self.labels) if y == k]
                     for k in np.unique(self.labels)]  # fmt: skip
        most = max(len(rows) for rows in per_class)
        return np.stack([rows[i % len(rows)] for rows in per_class for i in range(most)])

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: ``x`` ``(B[+outliers], 1, S, S)`` and targets (labels or angles)."""
        c = self.config
        picks = rng.choice(len(self.images), size=c.batch, p=self.weights)
        xs, ys = [], []
        for i in picks:
            if c.task == "view":
                img, target = view_augment(rng, self.images[i], self.looks), float(self.labels[i])
            else:
                img, target = orientation_example(rng, self.images[i])
            xs.append(to_tensor(img, c.size, c.size, 1, MEAN, STD)[0])
            ys.append(target)
        for _ in range(c.outliers):
            img = outlier(rng, self.phantoms, self.images)
            xs.append(to_tensor(img, c.size, c.size, 1, MEAN, STD)[0])
        return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.float32)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.config.seed, info.id if info else 0])
        if self.config.outliers and not self.phantoms:
            self.phantoms = phantom_ankles(TRAIN_PHANTOM_SEED, self.config.outlier_phantoms)
        while True:
            yield self.batch(rng)


def stage_loss(config: StageConfig, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (+ outlier exposure) for view; circular MSE for orientation."""
    n = target.shape[0]
    if config.task == "orientation":
        return circular_mse(output, target)
    loss = F.cross_entropy(output[:n], target.long())
    if output.shape[0] > n:
        # Cross-entropy to the uniform distribution: the mean negative log-probability.
        loss = loss - config.outlier_weight * F.log_softmax(output[n:], dim=1).mean()
    return loss


def train_stage(
    config: StageConfig, images: list[np.ndarray], records: Sequence[ChestRecord], out: Path,
    name: str | None = None,
) -> Path:  # fmt: skip
    """Train one stage on the working ``images`` of ``records``; return the checkpoint path."""
    torch.manual_seed(config.seed)
    arch = config.arch()
    net = build(arch)
    if config.init:
        # Self-supervised pre-training: the rotation task has seen every training image under
        # every look, so its features describe the anatomy; only the head starts afresh.
        state = torch.load(config.init, map_location="cpu", weights_only=False)["state_dict"]
        backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
        result = net.load_state_dict(backbone, strict=False)
        if result.unexpected_keys or any(not k.startswith("fc.") for k in result.missing_keys):
            raise ValueError(f"{config.init} does not fit this network: {result}")
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=1e-4)

    def rate(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    schedule = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    stream = BatchStream(config, images, records)
    loader = DataLoader(stream, batch_size=None, num_workers=config.workers,
                        prefetch_factor=4 if config.workers else None)  # fmt: skip
    batches = iter(loader)
    started = time.monotonic()
    net.train()
    running = fit(net, batches, lambda out, y: stage_loss(config, out, y), opt, schedule,
                  config.steps, desc=name or config.task, mininterval=5.0)  # fmt: skip
    del batches, loader  # stops the worker process
    net.eval()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name or config.task}.pt"
    torch.save({
        "task": config.task,
        "view": None,
        "arch": arch.as_dict(),
        "input": {"height": config.size, "width": config.size, "channels": 1,
                  "mean": MEAN, "std": STD},
        "steps": config.steps,
        "n_train": len(records),
        "recipe": asdict(config),
        "metrics": {"train_seconds": round(time.monotonic() - started, 1),
                    "final_loss": round(float(running or 0.0), 4)},
        "state_dict": net.state_dict(),
    }, path)  # fmt: skip
    return path
