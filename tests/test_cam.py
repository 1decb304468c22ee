"""Class activation maps: the worker's numpy CAM against torch, through a real ONNX export, and
on a small net trained to find a bright square.

The numpy-only tests (zero maps, shapes, PNG, summary) run without torch; the others skip
cleanly where torch (or ONNX Runtime) is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_worker.pipeline.cam import (
    class_activation_maps,
    load_head,
    peak,
    summary,
    to_uint8_png,
)


def _torch_cam(torch: Any, features: Any, weight: Any, bias: Any, classes: list[int],
               out_hw: tuple[int, int]) -> np.ndarray:  # fmt: skip
    """The reference: weighted sum in torch, bilinear upsampling, ReLU, divided by the max."""
    import torch.nn.functional as F

    raw = torch.einsum("kc,nchw->nkhw", weight[classes], features)
    if bias is not None:
        raw = raw + bias[classes][None, :, None, None]
    up = F.relu(F.interpolate(raw, size=out_hw, mode="bilinear", align_corners=False))
    top = up.amax(dim=(2, 3), keepdim=True)
    return torch.where(top > 0, up / top.clamp_min(1e-30), up).detach().numpy()


def _small_backbone(torch: Any) -> Any:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
    )  # fmt: skip


# -- (a) numpy CAM equals torch's CAM ---------------------------------------------------------


@pytest.mark.parametrize(
    ("feature_hw", "out_hw"), [((7, 7), (224, 224)), ((5, 9), (37, 64)), ((16, 16), (8, 8))]
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_cam_equals_torch_on_random_features(
    feature_hw: tuple[int, int], out_hw: tuple[int, int], with_bias: bool
) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(5)
    head = torch.nn.Linear(12, 4)
    features = torch.randn(3, 12, *feature_hw)
    weight, bias = head.weight.detach(), head.bias.detach()
    classes = [0, 3, 2]
    got = class_activation_maps(features.numpy(), weight.numpy(),
                                bias.numpy() if with_bias else None, classes, out_hw)  # fmt: skip
    want = _torch_cam(torch, features, weight, bias if with_bias else None, classes, out_hw)
    assert got.shape == (3, len(classes), *out_hw) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert got.min() >= 0.0 and got.max() <= 1.0
    # Every map with any positive evidence peaks at exactly 1.
    tops = got.max(axis=(2, 3))
    assert np.all((tops == 1.0) | (tops == 0.0))


# -- (b) through a real ONNX export -----------------------------------------------------------


def test_exported_features_and_head_give_the_modules_cam(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from export.cam import CamClassifier, export_cam_classifier
    from export.pack import sha256_of

    torch.manual_seed(11)
    net = CamClassifier(_small_backbone(torch), 16, 3).eval()
    onnx_path, npz_path = tmp_path / "cam.onnx", tmp_path / "cam_head.npz"
    digests = export_cam_classifier(net, (32, 40), onnx_path, npz_path)
    assert digests == (sha256_of(onnx_path), sha256_of(npz_path))

    with np.load(npz_path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["bias", "weight"]
        assert npz["weight"].dtype == np.float32 and npz["weight"].shape == (3, 16)
        assert npz["bias"].dtype == np.float32 and npz["bias"].shape == (3,)
    weight, bias = load_head(npz_path)

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "features"]
    assert [i.name for i in session.get_inputs()] == ["image"]
    for n in (1, 5):  # the batch axis is dynamic
        image = np.random.default_rng(n).standard_normal((n, 1, 32, 40)).astype(np.float32)
        logits, features = session.run(["logits", "features"], {"image": image})
        with torch.inference_mode():
            torch_logits, torch_features = net(torch.from_numpy(image))
        np.testing.assert_allclose(logits, torch_logits.numpy(), atol=1e-4, rtol=1e-4)
        assert features.shape == (n, 16, 16, 20)
        got = class_activation_maps(features, weight, bias, [0, 1, 2], (32, 40))
        want = _torch_cam(torch, torch_features, net.head.weight.detach(),
                          net.head.bias.detach(), [0, 1, 2], (32, 40))  # fmt: skip
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_export_refuses_a_head_it_would_have_to_convert(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from export.cam import CamClassifier, export_cam_classifier
    from export.onnx import ExportError

    net = CamClassifier(_small_backbone(torch), 16, 2).double()
    with pytest.raises(ExportError, match="float32"):
        export_cam_classifier(net, (16, 16), tmp_path / "a.onnx", tmp_path / "a.npz")
    net = CamClassifier(_small_backbone(torch), 16, 2)
    with pytest.raises(ExportError, match=r"\.npz"):
        export_cam_classifier(net, (16, 16), tmp_path / "a.onnx", tmp_path / "a.weights")
    assert not list(tmp_path.iterdir())


# -- (c) behaviour: the map points at the object ----------------------------------------------

SIZE, SIDE = 32, 8


def _squares(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise images, half with a bright SIDE x SIDE square; labels (1 = square) and corners."""
    images = rng.normal(0.0, 1.0, (n, 1, SIZE, SIZE)).astype(np.float32)
    labels = np.arange(n) % 2
    corners = rng.integers(0, SIZE - SIDE + 1, (n, 2))
    for i in np.flatnonzero(labels):
        x0, y0 = corners[i]
        images[i, 0, y0 : y0 + SIDE, x0 : x0 + SIDE] += 2.0
    return images, labels, corners


def test_cam_peak_of_the_square_class_lies_in_the_square() -> None:
    torch = pytest.importorskip("torch")
    from export.cam import CamClassifier

    torch.manual_seed(0)
    net = CamClassifier(_small_backbone(torch), 16, 2)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    rng = np.random.default_rng(1)
    for _ in range(40):
        images, labels, _ = _squares(rng, 32)
        logits, _ = net(torch.from_numpy(images))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    net.eval()
    images, labels, corners = _squares(np.random.default_rng(7), 48)
    with torch.inference_mode():
        logits, features = net(torch.from_numpy(images))
    accuracy = float((logits.argmax(dim=1).numpy() == labels).mean())
    assert accuracy >= 0.95, f"the net did not learn the task (accuracy {accuracy:.2f})"
    weight, bias = net.head.weight.detach().numpy(), net.head.bias.detach().numpy()
    cams = class_activation_maps(features.numpy(), weight, bias, [1], (SIZE, SIZE))
    misses = []
    for i in np.flatnonzero(labels):
        x, y, value = peak(cams[i, 0])
        x0, y0 = corners[i]
        if not (x0 <= x < x0 + SIDE and y0 <= y < y0 + SIDE and value == 1.0):
            misses.append((i, (x, y), (int(x0), int(y0))))
    # A peak placed at random would land in the square about 6 % of the time.
    assert not misses, f"peaks outside the square (image, peak, square corner): {misses}"
    found = summary(cams[int(np.flatnonzero(labels)[0]), 0])
    assert found["peak_x"] is not None and 0.0 < found["peak_x"] < 1.0
    assert 0.0 < float(found["area_fraction"] or 0.0) < 0.5


# -- (d) zero maps, bad shapes, the small outputs ---------------------------------------------


def test_zero_evidence_gives_zero_maps_not_nan() -> None:
    features = np.zeros((2, 4, 3, 3), np.float32)
    weight = np.ones((2, 4), np.float32)
    cams = class_activation_maps(features, weight, None, [0, 1], (12, 12))
    assert cams.shape == (2, 2, 12, 12) and not np.isnan(cams).any() and not cams.any()
    # Negative evidence everywhere (a bias that outweighs it) is cut by the ReLU: zero too.
    cams = class_activation_maps(np.ones((1, 4, 3, 3), np.float32), weight,
                                 np.array([-10.0, -10.0], np.float32), [1], (6, 6))  # fmt: skip
    assert not np.isnan(cams).any() and not cams.any()
    assert peak(cams[0, 0]) == (0, 0, 0.0)
    assert summary(cams[0, 0]) == {"peak_x": None, "peak_y": None, "peak_value": 0.0,
                                   "area_fraction": 0.0}  # fmt: skip


@pytest.mark.parametrize(
    ("features", "weight", "bias", "classes", "out_hw", "message"),
    [
        ((2, 4, 3), (2, 4), None, [0], (8, 8), r"features must be \(N, C, h, w\), got shape \(2, 4, 3\)"),
        ((2, 4, 3, 3), (2, 5), None, [0], (8, 8), r"C = 4 \(features \(2, 4, 3, 3\)\), got shape \(2, 5\)"),
        ((2, 4, 3, 3), (4,), None, [0], (8, 8), r"got shape \(4,\)"),
        ((2, 4, 3, 3), (2, 4), (3,), [0], (8, 8), r"bias must be \(2,\) for weight \(2, 4\), got \(3,\)"),
        ((2, 4, 3, 3), (2, 4), None, [2], (8, 8), r"classes .* 0\.\.1, got \[2\]"),
        ((2, 4, 3, 3), (2, 4), None, [], (8, 8), r"classes must be a non-empty"),
        ((2, 4, 3, 3), (2, 4), None, [0], (0, 8), r"out_hw .* got \(0, 8\)"),
    ],
)  # fmt: skip
def test_bad_shapes_raise_naming_them(
    features: tuple[int, ...], weight: tuple[int, ...], bias: tuple[int, ...] | None,
    classes: list[int], out_hw: tuple[int, int], message: str,
) -> None:  # fmt: skip
    with pytest.raises(ValueError, match=message):
        class_activation_maps(np.zeros(features, np.float32), np.zeros(weight, np.float32),
                              None if bias is None else np.zeros(bias, np.float32),
                              classes, out_hw)  # fmt: skip


def test_non_finite_features_and_maps_raise() -> None:
    features = np.zeros((1, 2, 2, 2), np.float32)
    features[0, 1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        class_activation_maps(features, np.ones((1, 2), np.float32), None, [0], (4, 4))
    with pytest.raises(ValueError, match=r"2-D map \(H, W\), got shape \(1, 4, 4\)"):
        peak(np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        summary(np.full((4, 4), np.inf))


def test_png_and_summary_of_a_known_map() -> None:
    cam = np.zeros((100, 200), np.float32)
    cam[20:40, 150:170] = 0.6
    cam[30, 160] = 1.0
    assert peak(cam) == (160, 30, 1.0)
    assert summary(cam) == {"peak_x": 160.5 / 200, "peak_y": 30.5 / 100, "peak_value": 1.0,
                            "area_fraction": 400 / 20000}  # fmt: skip
    assert summary(cam, threshold=1.0)["area_fraction"] == 1 / 20000
    png = to_uint8_png(cam, 64)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    picture = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert picture is not None
    assert picture.shape == (32, 64) and picture.dtype == np.uint8
    assert picture[:, :40].max() == 0 and picture[8:12, 48:52].min() > 100
    with pytest.raises(ValueError, match="outside 8..512"):
        to_uint8_png(cam, 4)
    with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
        summary(cam, threshold=0.0)


def test_load_head_names_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "head.npz"
    np.savez(path, weight=np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"lacks \['bias'\]"):
        load_head(path)
    np.savez(path, weight=np.ones((2, 3), np.float32), bias=np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"weight \(2, 3\) and bias \(3,\)"):
        load_head(path)
