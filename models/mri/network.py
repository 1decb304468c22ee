"""The MIQA network: five 3-D convolutions and one fully connected layer, 11 outputs.

Paper 002 (MIQA) judges 64^3 tiles with five 3-D convolution layers and one fully connected
layer: one regression output (overall quality) and one logit per flag.  The widths here are
small (8-64 channels by default) so that it trains on two shared CPU cores in minutes.

:class:`Exported` is what goes into the pack: the network's raw outputs turned into what the
worker reads (``edge_worker.pipeline.volume.ONNX_OUTPUT``): column 0 the score on 0-10
(``10 * sigmoid``), then each flag's probability (``sigmoid``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: The ten flags, in the order of the pack's ``outputs`` after ``quality`` (docs/mri.md).
FLAGS = ("normal_variant", "lesion", "incomplete_coverage", "misalignment", "wraparound",
         "ghosting", "inhomogeneity", "susceptibility", "flow", "truncation")  # fmt: skip
SCORE_MAX = 10.0


class MiqaNet(nn.Module):
    """Five stride-2 3x3x3 convolutions (BatchNorm, ReLU), global average pool, one linear layer.

    Input ``(N, 1, t, t, t)``; output ``(N, 1 + flags)`` raw: the score's logit, the flags'.
    """

    def __init__(self, widths: Sequence[int] = (8, 16, 24, 32, 48), flags: int = len(FLAGS)) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"MIQA has five convolution layers, got widths {tuple(widths)}")
        layers: list[nn.Module] = []
        c_in = 1
        for c in widths:
            layers += [nn.Conv3d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm3d(c),
                       nn.ReLU(inplace=True)]  # fmt: skip
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 1 + flags)
        self.widths = tuple(int(w) for w in widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3, 4)))

    def describe(self) -> str:
        return (f"MIQA: 5 x Conv3d(3, stride 2) widths {list(self.widths)} + BN + ReLU, global "
                f"mean, Linear({self.widths[-1]}, {self.head.out_features})")  # fmt: skip


class Exported(nn.Module):
    """The pack's network: score ``10 * sigmoid`` and flag probabilities ``sigmoid``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.net(x)
        return torch.cat([SCORE_MAX * torch.sigmoid(raw[:, :1]), torch.sigmoid(raw[:, 1:])], dim=1)
