"""Training of the lumbar networks: a view classifier and one softmax U-Net per view (MONAI).

* view: ``monai.networks.nets.Classifier`` (residual conv encoder + linear head), 3 logits
  AP/LAT/OBL, cross-entropy, Adam;
* seg_<view>: ``monai.networks.nets.UNet`` (4 levels, residual units), one channel per class
  including ``background``, Dice + cross-entropy (``monai.losses.DiceCELoss``), Adam.  The
  exported network ends in a softmax (:class:`Softmaxed`), so the pack's ``mask`` output
  holds probabilities.

Augmentation is intensity only (gamma, contrast, noise): the phantoms already vary in
geometry, and a mirror would swap the AP classes ``pedicle_left`` and ``pedicle_right``.
Progress and the time left are printed while training.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import Classifier, UNet
from torch import nn

from edge_worker.phantoms.lumbar import CLASSES, VIEWS
from models.lumbar.data import MEAN, SEG_INPUT, STD, VIEW_INPUT, Example, tensor, view_index

VIEW_CHANNELS = (8, 16, 32, 64)
SEG_CHANNELS = (16, 32, 64, 128)


class Softmaxed(nn.Module):
    """A segmenter whose output is the per-pixel softmax over classes, ``(N, K, H, W)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def view_net() -> nn.Module:
    return Classifier(in_shape=(1, *VIEW_INPUT), classes=len(VIEWS), channels=VIEW_CHANNELS,
                      strides=(2, 2, 2, 2), num_res_units=1, dropout=0.1)  # fmt: skip


def seg_net(view: str) -> nn.Module:
    return UNet(spatial_dims=2, in_channels=1, out_channels=len(CLASSES[view]),
                channels=SEG_CHANNELS, strides=(2, 2, 2), num_res_units=1)  # fmt: skip


def describe(stage: str) -> str:
    """The architecture line of the manifest."""
    if stage == "view":
        return (f"MONAI Classifier (residual conv encoder, channels {list(VIEW_CHANNELS)}, "
                f"strides 2), {len(VIEWS)} logits")  # fmt: skip
    return (f"MONAI UNet 2-D, channels {list(SEG_CHANNELS)}, strides 2, 1 residual unit per "
            "level, softmax over classes (incl. background)")  # fmt: skip


def intensity_augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Intensity augmentation of normalised inputs (``MEAN``/``STD``): gamma, contrast and noise
    per image.  Shared by the recipe's segmenters (:mod:`models.segment`)."""
    n = x.shape[0]
    image = (x * STD + MEAN).clamp(0.0, 1.0)
    gamma = torch.from_numpy(rng.uniform(0.7, 1.4, (n, 1, 1, 1)).astype(np.float32))
    gain = torch.from_numpy(rng.uniform(0.85, 1.15, (n, 1, 1, 1)).astype(np.float32))
    image = image**gamma * gain + torch.randn_like(image) * 0.01
    return (image - MEAN) / STD


def _fit(
    name: str, net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int,
    lr: float, loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], seed: int,
) -> float:  # fmt: skip
    """Adam with cosine decay for ``steps`` steps on random batches; prints progress."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    net.train()
    started, running = time.monotonic(), float("nan")
    every = max(1, steps // 10)
    for step in range(1, steps + 1):
        pick = torch.from_numpy(rng.integers(0, x.shape[0], batch))
        loss = loss_of(net(intensity_augment(x[pick], rng)), y[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        running = loss.item() if step == 1 else 0.95 * running + 0.05 * loss.item()
        if step % every == 0 or step == steps:
            spent = time.monotonic() - started
            left = spent / step * (steps - step)
            print(f"  {name}: step {step}/{steps} loss {running:.4f} "
                  f"{spent:.0f} s spent, about {left:.0f} s left", flush=True)  # fmt: skip
    net.eval()
    return time.monotonic() - started


def train_view(examples: list[Example], steps: int, seed: int = 0) -> tuple[nn.Module, float]:
    """The view classifier trained on every example; returns it (eval mode) and seconds."""
    x = torch.from_numpy(np.stack([tensor(e.working, VIEW_INPUT) for e in examples]))
    y = torch.tensor([view_index(e) for e in examples])
    net = view_net()
    seconds = _fit("view", net, x, y, steps, 16, 2e-3, F.cross_entropy, seed)
    return net, seconds


def train_seg(
    view: str, examples: list[Example], steps: int, seed: int = 0
) -> tuple[nn.Module, float]:
    """The ``view`` segmenter on that view's examples; returns it wrapped in :class:`Softmaxed`."""
    chosen = [e for e in examples if e.truth.view == view]
    x = torch.from_numpy(np.stack([tensor(e.working, SEG_INPUT) for e in chosen]))
    y = torch.from_numpy(np.stack([e.labels[None].astype(np.int64) for e in chosen]))
    net = seg_net(view)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    seconds = _fit(f"seg_{view.lower()}", net, x, y, steps, 8, 3e-3, loss, seed)
    wrapped = Softmaxed(net)
    wrapped.eval()
    return wrapped, seconds
