"""The seed architectures, with width (and depth) knobs so that small variants exist.

* view classifier and quality regressor: EfficientNet-B0 (MONAI), ankle paper section 5.1/5.3;
* ROI segmenter: DeepLabV3 with a bottleneck ResNet-50 backbone at output stride 8 and ASPP,
  one sigmoid map (section 5.2), written in plain torch because torchvision is unusable here;
* orientation regressor: ResNet-50 with a 2-output ``(cos, sin)`` head (paper 003).

Every builder takes ``in_channels``; the demo pack uses one channel (the radiograph is grey).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from monai.networks.nets.efficientnet import EfficientNet
from torch import nn

#: MONAI's block strings for EfficientNet-B0 (``monai.networks.nets.efficientnet``).
B0_BLOCKS = [
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
]
TASKS = ("view", "roi", "quality", "orientation")


@dataclass(frozen=True)
class ArchConfig:
    """Everything needed to rebuild a network; stored in checkpoints."""

    task: str
    width: float = 1.0
    depth: float = 1.0
    in_channels: int = 1
    image_size: int = 224
    drop_connect: float = 0.2
    blocks: tuple[int, ...] = (3, 4, 6, 3)
    aspp_rates: tuple[int, ...] = (12, 24, 36)
    extra: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """Human-readable architecture line for the pack manifest."""
        if self.task in ("view", "quality"):
            return (f"EfficientNet-B0 (MONAI EfficientNet), width {self.width}, depth "
                    f"{self.depth}, drop connect {self.drop_connect}")  # fmt: skip
        backbone = "ResNet-50" if self.blocks == (3, 4, 6, 3) else f"ResNet blocks {self.blocks}"
        if self.task == "roi":
            return (f"DeepLabV3, bottleneck {backbone} backbone at output stride 8, ASPP rates "
                    f"{list(self.aspp_rates)}, width {self.width}, sigmoid output")  # fmt: skip
        outputs = int(self.extra.get("outputs", 2))
        if outputs != 2 or "classes" in self.extra:
            return f"{backbone} (bottleneck), width {self.width}, {outputs}-class linear head"
        return f"{backbone} (bottleneck), width {self.width}, 2-output (cos, sin) head"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def efficientnet_b0(config: ArchConfig, num_classes: int) -> EfficientNet:
    """EfficientNet-B0 scaled by ``config.width`` / ``config.depth`` (MONAI implementation)."""
    net = EfficientNet(
        B0_BLOCKS,
        spatial_dims=2,
        in_channels=config.in_channels,
        num_classes=num_classes,
        width_coefficient=config.width,
        depth_coefficient=config.depth,
        dropout_rate=0.2,
        image_size=config.image_size,
        drop_connect_rate=config.drop_connect,
        # MONAI's default BatchNorm momentum (0.01) leaves the running statistics far from
        # the batch statistics after a short training run; 0.1 is torch's default.
        norm=("batch", {"eps": 1e-3, "momentum": 0.1}),
    )
    # The memory-efficient swish is a custom autograd function that ONNX cannot trace.
    net.set_swish(memory_efficient=False)
    return net


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1, 3x3 (stride, dilation), 1x1 with expansion 4."""

    def __init__(self, cin: int, mid: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        cout = mid * 4
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, padding=dilation, dilation=dilation,
                               bias=False)  # fmt: skip
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + self.down(x))


class ResNetBackbone(nn.Module):
    """Bottleneck ResNet (ResNet-50 for ``blocks=(3, 4, 6, 3)``) scaled by ``width``.

    ``output_stride`` 32 is the classification network; 8 replaces the strides of the last
    two stages by dilation 2 and 4 as DeepLabV3 does.  ``out_channels`` is the last stage's.
    """

    def __init__(self, in_channels: int, width: float, blocks: tuple[int, ...],
                 output_stride: int = 32) -> None:  # fmt: skip
        super().__init__()
        base = max(8, int(round(64 * width)))
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
        )  # fmt: skip
        dilate = {32: (False, False, False), 8: (False, True, True)}[output_stride]
        stages, cin, dilation = [], base, 1
        for i, n in enumerate(blocks):
            mid, stride = base * 2**i, 1 if i == 0 else 2
            if i > 0 and dilate[i - 1]:
                dilation, stride = dilation * stride, 1
            layers = [Bottleneck(cin, mid, stride, dilation if stride == 1 else 1)]
            cin = mid * 4
            layers += [Bottleneck(cin, mid, 1, dilation) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and image pooling."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...]) -> None:
        super().__init__()

        def branch(k: int, r: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=0 if k == 1 else r,
                                           dilation=r, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True))  # fmt: skip

        self.branches = nn.ModuleList([branch(1, 1)] + [branch(3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False),
                                  nn.ReLU(inplace=True))  # fmt: skip
        self.project = nn.Sequential(
            nn.Conv2d(cout * (len(rates) + 2), cout, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True), nn.Dropout(0.5),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The pooled branch has no BatchNorm: with one value per channel and a batch of one
        # its statistics would be undefined during training.
        pooled = self.pool(x).expand(-1, -1, x.shape[-2], x.shape[-1])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3(nn.Module):
    """DeepLabV3 (ResNet backbone at output stride 8 + ASPP) with one sigmoid output map."""

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(config.in_channels, config.width, config.blocks, 8)
        mid = max(16, int(round(256 * config.width)))
        self.head = nn.Sequential(
            ASPP(self.backbone.out_channels, mid, config.aspp_rates),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True), nn.Conv2d(mid, 1, 1),
        )  # fmt: skip

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid map at the input resolution, ``(N, 1, H, W)``."""
        y = self.head(self.backbone(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


class OrientationResNet(nn.Module):
    """ResNet with a raw ``(cos, sin)`` head; the norm of the output is left free on purpose:
    a short vector says the network is unsure (the pack's ``min_norm`` threshold)."""

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(config.in_channels, config.width, config.blocks, 32)
        # ``extra["outputs"]``: a view classifier of this layout (started from the
        # self-supervised orientation network's backbone) has one output per class.
        self.fc = nn.Linear(self.backbone.out_channels, int(config.extra.get("outputs", 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x).mean(dim=(2, 3))
        return self.fc(features)


def build(config: ArchConfig) -> nn.Module:
    """The network for ``config.task``; outputs are what the pack contract names."""
    if config.task == "view":
        # ``extra["classes"]``: a view vocabulary other than AP/LAT (export.build recipes).
        return efficientnet_b0(config, num_classes=int(config.extra.get("classes", 2)))
    if config.task == "quality":
        net = efficientnet_b0(config, num_classes=1)
        # Start every image at the middle of the 1-3 scale: with random weights, drop connect
        # and dropout make the first outputs swing by several grades and the MSE explode.
        nn.init.constant_(net._fc.bias, 2.0)
        nn.init.normal_(net._fc.weight, std=1e-3)
        return net
    if config.task == "roi":
        return DeepLabV3(config)
    if config.task == "orientation":
        return OrientationResNet(config)
    raise ValueError(f"task must be one of {TASKS}, got {config.task!r}")


def circular_mse(cossin: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """Paper 003's loss: mean of ``||z(theta) - output||^2`` with ``z = (cos, sin)``.

    ``cossin`` is the raw ``(N, 2)`` output, ``angle_deg`` the ``(N,)`` true angles.  The
    pair (2 deg, 359 deg) costs little; opposite angles cost 4 for unit outputs.
    """
    theta = angle_deg * (math.pi / 180.0)
    target = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    return ((cossin - target) ** 2).sum(dim=1).mean()


def angle_of(cossin: torch.Tensor) -> torch.Tensor:
    """Angles in degrees in [0, 360) from ``(N, 2)`` ``(cos, sin)`` vectors."""
    return torch.rad2deg(torch.atan2(cossin[:, 1], cossin[:, 0])) % 360.0


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


