"""Bone suppression (paper 004) trained on synthetic chest pairs, measured on unseen phantoms.

Paper 004 trains a conditional GAN on dual-energy pairs.  There are none here, so the pairs
come from :mod:`edge_worker.phantoms.chest` (radiograph = soft tissue + bone; target = soft
tissue alone): the stage is **synthetic-trained**, and says so wherever it appears.

The generator is MONAI's 2-D U-Net predicting the bone component, subtracted from the input
(``soft = clamp(input - unet(input), 0, 1)``: the identity is where it starts, so it begins
at the trivial baseline and learns only the bones).  The loss is L1 plus, with
``adversarial > 0``, pix2pix's conditional PatchGAN term (least-squares GAN, a discriminator
that sees (radiograph, soft tissue) pairs).  Figures on phantoms of seeds never trained on:
MAE, PSNR and SSIM of the soft-tissue image, and the same for the trivial baseline
(output = input), so the network's gain is visible.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import SSIMMetric
from monai.networks.nets import UNet
from torch import nn

from edge_worker.phantoms.chest import pairs
from models.chest.resume import load_state, run_steps, same_recipe

#: Phantom seeds: training draws from the first range, the test from the second (disjoint).
TRAIN_SEEDS = range(0, 100_000)
TEST_SEED_START = 900_000
MEAN, STD = 0.5, 0.25


@dataclass(frozen=True)
class BoneConfig:
    """One bone-suppression recipe."""

    size: int
    train_phantoms: int
    test_phantoms: int
    steps: int
    batch: int
    channels: tuple[int, ...] = (16, 32, 64, 128)
    lr: float = 2e-3
    #: Weight of the conditional PatchGAN term (0: L1 alone).
    adversarial: float = 0.01
    seed: int = 4


class BoneSuppressor(nn.Module):
    """Normalised radiograph ``(x - MEAN) / STD`` in, soft-tissue image in [0, 1] out."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.unet = UNet(spatial_dims=2, in_channels=1, out_channels=8, channels=channels,
                         strides=(2,) * (len(channels) - 1), num_res_units=1)  # fmt: skip
        # A zeroed 1x1 convolution last: the network starts as the identity (the baseline) and
        # learns only what to take away, instead of first undoing a random output (MONAI's
        # U-Net ends in a residual unit, so zeroing its own last layer would not do it).
        self.bone = nn.Conv2d(8, 1, 1)
        nn.init.zeros_(self.bone.weight)
        assert self.bone.bias is not None
        nn.init.zeros_(self.bone.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x * STD + MEAN - self.bone(self.unet(x)), 0.0, 1.0)


def _discriminator() -> nn.Module:
    """pix2pix's PatchGAN on (radiograph, soft tissue): one logit per ~22 px patch."""
    def block(cin: int, cout: int, norm: bool = True) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, stride=2, padding=1)]
        if norm:
            layers.append(nn.InstanceNorm2d(cout))
        return layers + [nn.LeakyReLU(0.2)]

    return nn.Sequential(*block(2, 16, norm=False), *block(16, 32), *block(32, 64),
                         nn.Conv2d(64, 1, 3, padding=1))  # fmt: skip


def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same flip and brightness scale on the pair (the bones' subtraction is linear in it)."""
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    scale = np.float32(rng.uniform(0.85, 1.1))
    return np.clip(x * scale, 0, 1), np.clip(y * scale, 0, 1)


def metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Mean MAE, PSNR (dB, data range 1) and SSIM (Gaussian 11 px window) over ``(N, H, W)``."""
    err = pred.astype(np.float64) - target.astype(np.float64)
    mse = np.maximum((err**2).mean(axis=(1, 2)), 1e-12)
    ssim: Any = SSIMMetric(spatial_dims=2, data_range=1.0)(
        torch.from_numpy(pred[:, None].astype(np.float32)),
        torch.from_numpy(target[:, None].astype(np.float32)),
    )
    return {"mae": float(np.abs(err).mean()), "psnr_db": float((10 * np.log10(1.0 / mse)).mean()),
            "ssim": float(ssim.mean())}  # fmt: skip


def predict(net: BoneSuppressor, images: np.ndarray, batch: int = 8) -> np.ndarray:
    """Soft-tissue images of ``(N, H, W)`` radiographs in [0, 1]."""
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy((images[i:i + batch, None] - MEAN) / STD).float()
            out.append(net(x)[:, 0].numpy())
    return np.concatenate(out)


def train_bone(config: BoneConfig, workdir: Path) -> tuple[BoneSuppressor, dict[str, Any]]:
    """Train (or resume from ``workdir/bone_state.pt``) and measure on unseen phantoms.

    Returns the network and its figures: the network's and the baseline's MAE/PSNR/SSIM on
    ``config.test_phantoms`` phantoms of seeds never trained on, and the recipe.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    start_time = time.perf_counter()
    train_x, train_y = pairs(TRAIN_SEEDS[:config.train_phantoms], config.size)
    net = BoneSuppressor(config.channels)
    disc = _discriminator()
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=(0.5, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps)))
    path = workdir / "bone_state.pt"
    saved = load_state(path)
    start = 0
    if saved is not None and same_recipe(saved["config"], asdict(config)):
        net.load_state_dict(saved["net"])
        disc.load_state_dict(saved["disc"])
        opt.load_state_dict(saved["opt"])
        opt_d.load_state_dict(saved["opt_d"])
        sched.load_state_dict(saved["sched"])
        rng.bit_generator.state = saved["rng"]
        start = int(saved["step"])

    def step(_: int) -> float:
        net.train()
        picks = rng.integers(0, len(train_x), config.batch)
        xs, ys = zip(*(_augment(train_x[i], train_y[i], rng) for i in picks))
        x = torch.from_numpy((np.stack(xs)[:, None] - MEAN) / STD).float()
        y = torch.from_numpy(np.stack(ys)[:, None].copy()).float()
        raw = x * STD + MEAN
        fake = net(x)
        loss = F.l1_loss(fake, y)
        if config.adversarial > 0:
            d_fake = disc(torch.cat([raw, fake], 1))
            loss = loss + config.adversarial * F.mse_loss(d_fake, torch.ones_like(d_fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if config.adversarial > 0:
            d_real = disc(torch.cat([raw, y], 1))
            d_fake = disc(torch.cat([raw, fake.detach()], 1))
            d_loss = 0.5 * (F.mse_loss(d_real, torch.ones_like(d_real))
                            + F.mse_loss(d_fake, torch.zeros_like(d_fake)))  # fmt: skip
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
        return float(loss.item())

    def state(done: int) -> dict[str, Any]:
        return {"config": asdict(config), "step": done, "net": net.state_dict(),
                "disc": disc.state_dict(), "opt": opt.state_dict(), "opt_d": opt_d.state_dict(),
                "sched": sched.state_dict(), "rng": rng.bit_generator.state}  # fmt: skip

    run_steps(start, config.steps, step, state, path, "bone suppression", every=50)
    test_seeds = range(TEST_SEED_START, TEST_SEED_START + config.test_phantoms)
    test_x, test_y = pairs(test_seeds, config.size)
    network, baseline = metrics(predict(net, test_x), test_y), metrics(test_x, test_y)
    figures = {
        "network": network,
        "baseline_output_equals_input": baseline,
        "better_than_baseline": bool(network["mae"] < baseline["mae"] and network["psnr_db"] > baseline["psnr_db"]
                                     and network["ssim"] > baseline["ssim"]),  # fmt: skip
        "test": f"{config.test_phantoms} chest phantoms of seeds {test_seeds.start}.."
                f"{test_seeds.stop - 1} (training used seeds 0..{config.train_phantoms - 1})",
        "loss": "L1" + (f" + {config.adversarial} x least-squares conditional PatchGAN (pix2pix)"
                        if config.adversarial > 0 else ""),
        "recipe": asdict(config),
        "resumed_at_step": start,
        "train_seconds": round(time.perf_counter() - start_time, 1),
        "data": "synthetic chest phantoms (edge_worker.phantoms.chest); no real dual-energy pairs",
    }
    return net, figures
