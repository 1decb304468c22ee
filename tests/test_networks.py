"""Shapes of the small variants of every seed architecture, and the circular loss."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from models.networks import ArchConfig, DeepLabV3, angle_of, build, circular_mse


@pytest.mark.parametrize(
    ("config", "shape", "out_shape"),
    [
        (ArchConfig("view", width=0.25, depth=0.5, image_size=64), (3, 1, 64, 64), (3, 2)),
        (ArchConfig("quality", width=0.25, depth=0.5, image_size=80), (2, 1, 48, 80), (2, 1)),
        (ArchConfig("roi", width=0.125, aspp_rates=(1, 2, 3)), (2, 1, 64, 64), (2, 1, 64, 64)),
        (ArchConfig("orientation", width=0.125), (2, 3, 64, 64), (2, 2)),
    ],
    ids=["view", "quality", "roi", "orientation"],
)
def test_small_variants_have_contract_shapes(
    config: ArchConfig, shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> None:
    if config.task == "orientation":
        config = ArchConfig("orientation", width=0.125, in_channels=3)
    net = build(config).eval()
    with torch.inference_mode():
        out = net(torch.randn(*shape))
    assert tuple(out.shape) == out_shape
    if config.task == "roi":
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_quality_starts_in_the_middle_of_the_scale() -> None:
    net = build(ArchConfig("quality", width=0.25, depth=0.5, image_size=64)).eval()
    with torch.inference_mode():
        score = net(torch.zeros(1, 1, 64, 64))
    assert abs(float(score) - 2.0) < 1.0


def test_deeplab_backbone_runs_at_output_stride_8_and_width_scales() -> None:
    small = DeepLabV3(ArchConfig("roi", width=0.125, aspp_rates=(1, 2, 3)))
    wider = DeepLabV3(ArchConfig("roi", width=0.25, aspp_rates=(1, 2, 3)))
    features = small.backbone(torch.zeros(1, 1, 64, 64))
    assert tuple(features.shape[-2:]) == (8, 8)
    assert features.shape[1] == small.backbone.out_channels == 256
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert 3.0 < count(wider) / count(small) < 4.5


def test_full_width_resnet50_matches_the_reference_parameter_count() -> None:
    # torchvision's resnet50 backbone without its fc layer has 23,508,032 parameters.
    from models.networks import ResNetBackbone

    backbone = ResNetBackbone(3, 1.0, (3, 4, 6, 3))
    assert sum(p.numel() for p in backbone.parameters()) == 23_508_032


def test_circular_mse_values() -> None:
    def loss(pred_deg: float, true_deg: float) -> float:
        rad = math.radians(pred_deg)
        pred = torch.tensor([[math.cos(rad), math.sin(rad)]])
        return float(circular_mse(pred, torch.tensor([true_deg])))

    assert loss(30.0, 30.0) == pytest.approx(0.0, abs=1e-7)
    assert loss(0.0, 180.0) == pytest.approx(4.0, abs=1e-6)
    assert loss(90.0, 0.0) == pytest.approx(2.0, abs=1e-6)
    # The pair (2 deg, 359 deg) is close on the circle: 2 - 2 cos(3 deg).
    assert loss(2.0, 359.0) == pytest.approx(2 - 2 * math.cos(math.radians(3)), rel=1e-4)
    assert loss(2.0, 359.0) < loss(2.0, 10.0)
    # Raw outputs are not normalised: a short vector towards the truth still costs something.
    short = torch.tensor([[0.5, 0.0]])
    assert float(circular_mse(short, torch.tensor([0.0]))) == pytest.approx(0.25)


def test_angle_of_folds_into_0_360() -> None:
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -2.0]])
    assert angle_of(vectors).tolist() == pytest.approx([0.0, 90.0, 180.0, 270.0])


def test_unknown_task_is_refused() -> None:
    with pytest.raises(ValueError, match="task"):
        build(ArchConfig("segment-everything"))
