"""A softmax U-Net per view trained on class-index masks (paper 001), for ``edge-export build``.

The network is MONAI's 2-D ``UNet`` (four levels, one residual unit each) with one output
channel per class, ``background`` included, learnt with Dice + cross-entropy
(``monai.losses.DiceCELoss``) and Adam with cosine decay, as the lumbar demo pack's segmenters
(:mod:`models.lumbar.train`) but for any named classes.  The exported network ends in a
softmax (:class:`models.lumbar.train.Softmaxed`), so the pack's ``mask`` output holds
probabilities and a pixel belongs to its highest class.

Inputs are made exactly as the worker makes them (:func:`edge_worker.pipeline.preprocess.to_tensor`
on the working image, laid out by the spec's ``resize``: a plain resize or padded); masks are
laid out alike, resized with nearest neighbour.  Augmentation is intensity only (gamma, contrast, noise): a mirror would swap
classes named for a side (``pedicle_left``), a crop would cut structures the rules look for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from torch import nn

from edge_worker.pipeline.preprocess import place, to_tensor
from models.lumbar.data import MEAN, STD  # the normalisation intensity_augment undoes
from models.lumbar.train import Softmaxed, intensity_augment
from models.train import fit

#: Channels per level at ``net_width`` 1.0 (the lumbar demo pack's U-Net).
CHANNELS = (16, 32, 64, 128)


@dataclass(frozen=True)
class SegmentSpec:
    """What one segmenter is: its classes, input size and width."""

    classes: tuple[str, ...]
    height: int
    width: int
    net_width: float = 1.0
    #: The input layout (the manifest's ``input.resize``): ``stretch`` or ``pad``.
    resize: str = "stretch"

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(max(4, round(c * self.net_width)) for c in CHANNELS)

    def describe(self) -> str:
        """The manifest's architecture line."""
        return (f"MONAI UNet 2-D, channels {list(self.channels)}, strides 2, 1 residual unit per "
                f"level, softmax over {len(self.classes)} classes (incl. background)")  # fmt: skip


def network(spec: SegmentSpec) -> nn.Module:
    """The bare U-Net (logits) for ``spec``."""
    return UNet(spatial_dims=2, in_channels=1, out_channels=len(spec.classes),
                channels=spec.channels, strides=(2, 2, 2), num_res_units=1)  # fmt: skip


def inputs(images: list[np.ndarray], spec: SegmentSpec) -> np.ndarray:
    """``(N, 1, H, W)`` float32 network inputs of working images, as the worker makes them."""
    return np.stack([to_tensor(np.asarray(i, np.float32), spec.height, spec.width, 1, MEAN,
                               STD, spec.resize)[0] for i in images])  # fmt: skip


def targets(masks: list[np.ndarray], spec: SegmentSpec) -> np.ndarray:
    """``(N, H, W)`` int64 class indices at the network's resolution (nearest neighbour), laid
    out as :func:`inputs` lays out their images (padding is class 0, background)."""
    return np.stack([place(m, spec.height, spec.width, spec.resize, nearest=True)
                     for m in masks]).astype(np.int64)  # fmt: skip


def dice_per_class(pred: np.ndarray, truth: np.ndarray, classes: tuple[str, ...]) -> dict[str, float]:
    """Dice of every non-background class present in ``pred`` or ``truth`` (index maps)."""
    out = {}
    for k, name in enumerate(classes):
        if name == "background":
            continue
        p, t = pred == k, truth == k
        total = int(p.sum() + t.sum())
        if total:
            out[name] = round(2.0 * float((p & t).sum()) / total, 4)
    return out


#: A frame crop keeps at least this share of a training input's height and width.
FRAME_CROP_KEEP = 0.7


def frame_crop(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator,
               p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Draws ``x`` ``(N, 1, H, W)`` with masks ``y`` (same, class indices), about ``p`` of them
    cut by a tighter frame: a random window of 70-100 % of the height and of the width, resized
    back (image bilinear, mask nearest).  Structures then reach the image edge in training as
    they do under tight collimation, so the network learns to segment up to the edge instead
    of stopping a few pixels short (which would hide a cut-off from an edge rule)."""
    n, _, h, w = x.shape
    xs, ys = x.clone(), y.clone()
    for i in range(n):
        if rng.random() >= p:
            continue
        ch = max(8, round(h * rng.uniform(FRAME_CROP_KEEP, 1.0)))
        cw = max(8, round(w * rng.uniform(FRAME_CROP_KEEP, 1.0)))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        window = (slice(i, i + 1), slice(None), slice(y0, y0 + ch), slice(x0, x0 + cw))
        xs[i] = F.interpolate(x[window], size=(h, w), mode="bilinear", align_corners=False)[0]
        ys[i] = F.interpolate(y[window].float(), size=(h, w), mode="nearest")[0].to(y.dtype)
    return xs, ys


def train_segmenter(spec: SegmentSpec, images: list[np.ndarray], masks: list[np.ndarray],
                    steps: int, batch: int, lr: float, seed: int, desc: str,
                    frame_crops: bool = False) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    """Train on working ``images`` and their class-index ``masks`` (any resolution, same shape);
    ``frame_crops``: half the draws cut by a tighter frame (:func:`frame_crop`).

    Returns the network wrapped in a softmax (eval mode) and its training facts.
    """
    if not images:
        raise ValueError(f"{desc}: no images with masks to train on")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(inputs(images, spec))
    y = torch.from_numpy(targets(masks, spec)[:, None])
    net = network(spec)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def batches():  # type: ignore[no-untyped-def]
        while True:
            pick = torch.from_numpy(rng.integers(0, x.shape[0], batch))
            xb, yb = (frame_crop(x[pick], y[pick], rng) if frame_crops else (x[pick], y[pick]))
            yield intensity_augment(xb, rng), yb

    started = time.monotonic()
    net.train()
    running = fit(net, batches(), loss, opt, schedule, steps, desc)
    wrapped = Softmaxed(net)
    wrapped.eval()
    return wrapped, {"n_train": len(images), "final_loss": running,
                     "train_seconds": round(time.monotonic() - started, 1)}  # fmt: skip


def save(path: Path, net: nn.Module, spec: SegmentSpec, view: str | None, facts: dict[str, Any],
         extra: dict[str, Any]) -> None:  # fmt: skip
    """Write the checkpoint atomically (a killed run leaves a whole file or none)."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"task": "segment", "view": view, "classes": list(spec.classes),
                "input": {"height": spec.height, "width": spec.width, "channels": 1,
                          "mean": MEAN, "std": STD, "resize": spec.resize},
                "net_width": spec.net_width, "metrics": facts, **extra,
                "state_dict": net.state_dict()}, tmp)  # fmt: skip
    tmp.replace(path)


def load(path: Path) -> tuple[nn.Module, SegmentSpec, dict[str, Any]]:
    """The softmax segmenter saved by :func:`save`, its spec and the checkpoint's facts."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    spec = SegmentSpec(tuple(saved["classes"]), int(saved["input"]["height"]),
                       int(saved["input"]["width"]), float(saved["net_width"]),
                       str(saved["input"].get("resize", "stretch")))  # fmt: skip
    net = Softmaxed(network(spec))
    net.load_state_dict(saved["state_dict"])
    net.eval()
    return net, spec, {k: v for k, v in saved.items() if k != "state_dict"}
