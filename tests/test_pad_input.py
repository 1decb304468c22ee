"""``input.resize: "pad"``: the aspect ratio kept with zeros around, and every map cut back.

The geometry is checked alone (a box drawn on a portrait image comes back where it was), then
through the pack loader and real ONNX Runtime sessions on the hand-written networks of
tests/tiny_packs.py, whose answers on a drawn image are known: the ROI network is its input
thresholded, the segmenter calls a pixel of 0 (the padding) ``dark``, the derive network
halves the image.  A map that was not cut back would show the padding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_worker.backends import select
from edge_worker.errors import PackError
from edge_worker.packs.pack import load_pack
from edge_worker.pipeline.preprocess import (
    RotatedBox,
    box_mask,
    crop_box,
    image_part,
    place,
    placement,
    to_tensor,
)
from edge_worker.pipeline.runner import Judgement, Pipeline
from edge_worker.pipeline.stages import _tensor
from edge_worker.pipeline.tasks import tiled_volume
from tests.tiny_packs import CAM, DERIVE, FLAGS, ROI, SCORE, SEG, VIEW, write_tiny_pack

pytest.importorskip("onnx")

PAD = {"resize": "pad"}


def _padded(stage: dict[str, Any]) -> dict[str, Any]:
    entry = json.loads(json.dumps(stage))
    entry["input"].update(PAD)
    return entry


def _portrait() -> np.ndarray:
    """256 rows x 128 columns, black, a white block over rows 64..160, columns 32..96."""
    image = np.zeros((256, 128), np.float32)
    image[64:160, 32:96] = 1.0
    return image


def _judge(root: Path, image: np.ndarray) -> Judgement:
    return Pipeline(load_pack(root), select(["onnxruntime-cpu"])).judge(image)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


# --- geometry ---------------------------------------------------------------------------


def test_pad_centres_the_image_scaled_evenly() -> None:
    where = placement((300, 120), 64, 96, "pad")
    # min(64 / 300, 96 / 120): the height limits; 120 * 64 / 300 = 25.6 -> 26 columns.
    assert (where.height, where.width) == (64, 26) and (where.y0, where.x0) == (0, 35)
    assert placement((300, 120), 64, 96, "stretch").fills
    assert placement((512, 512), 64, 64, "pad").fills  # same aspect: nothing to pad
    with pytest.raises(ValueError, match="'stretch', 'pad'"):
        placement((10, 10), 8, 8, "fit")


@pytest.mark.parametrize("map_size", [(64, 64), (32, 32), (16, 16)])
def test_a_box_drawn_on_a_portrait_image_comes_back_where_it_was(map_size: tuple[int, int]) -> None:
    shape = (300, 140)
    box = RotatedBox(80.0, 170.0, 90.0, 40.0, 25.0)
    mask = box_mask(shape, box).astype(np.float32)
    net = place(mask, 64, 64, "pad")
    where = placement(shape, 64, 64, "pad")
    # Zeros around the image, nothing of the box outside it.
    assert not net[:, : where.x0].any() and not net[:, where.x0 + where.width :].any()
    at_map = cv2.resize(net, map_size[::-1], interpolation=cv2.INTER_AREA)
    part = image_part(at_map, shape, 64, 64, "pad")
    back = cv2.resize(np.ascontiguousarray(part), shape[::-1], interpolation=cv2.INTER_LINEAR) > 0.5
    assert _iou(back, mask > 0) > (0.9 if map_size[0] >= 32 else 0.8)


@pytest.mark.parametrize("shape", [(300, 120), (120, 300), (512, 512), (1536, 1024), (7, 5)])
def test_the_straightforward_pipeline_pads_where_the_worker_does(shape: tuple[int, int]) -> None:
    """models.baseline.naive (edge-worker bench's torch comparison) lays a padded stage out in
    the worker's placement: a box mapped back by one lands where the other put it."""
    pytest.importorskip("torch")
    from models.baseline.naive import laid, where

    stage = {"input": {"height": 64, "width": 96, "resize": "pad"}}
    ours = placement(shape, 64, 96, "pad")
    assert where(shape, stage) == (ours.x0, ours.y0, ours.width, ours.height)
    image = np.ones(shape, np.float32)
    theirs = laid(image, stage)
    assert theirs.shape == (64, 96) and np.array_equal(theirs > 0, place(image, 64, 96, "pad") > 0)
    stage["input"]["resize"] = "stretch"
    assert where(shape, stage) == (0, 0, 96, 64) and laid(image, stage).min() == 1.0


def test_stretch_is_the_plain_resize_and_its_map_is_the_map_itself() -> None:
    image = np.random.default_rng(3).random((300, 140), dtype=np.float32)
    legacy = (cv2.resize(image, (48, 32), interpolation=cv2.INTER_AREA) - np.float32(0.5)) / np.float32(0.25)
    assert np.array_equal(to_tensor(image, 32, 48, 1, 0.5, 0.25)[0, 0], legacy)
    assert np.array_equal(to_tensor(image, 32, 48, 1, 0.5, 0.25, "stretch"), to_tensor(image, 32, 48, 1, 0.5, 0.25))
    net_map = np.zeros((3, 16, 24))
    assert image_part(net_map, image.shape, 32, 48, "stretch") is net_map


def test_a_padded_crop_keeps_the_box_aspect() -> None:
    image = np.ones((200, 200), np.float32)
    box = RotatedBox(100.0, 100.0, 100.0, 30.0, 0.0)  # 10 : 3, long side horizontal
    crop = crop_box(image, box, 48, 80, "pad")
    where = placement((30.0, 100.0), 48, 80, "pad")
    assert (where.height, where.width) == (24, 80)
    assert crop.shape == (48, 80) and not crop[: where.y0].any() and not crop[where.y0 + where.height :].any()
    assert crop[where.y0 : where.y0 + where.height].min() == pytest.approx(1.0)
    assert np.array_equal(crop_box(image, box, 48, 80, "stretch"), crop_box(image, box, 48, 80))


# --- the manifest key ---------------------------------------------------------------------


def test_a_pad_stage_loads_and_its_tensor_has_zeros_around_a_centred_image(tmp_path: Path) -> None:
    pack = load_pack(write_tiny_pack(tmp_path / "p", [_padded(VIEW)]))
    spec = pack.stages[0]
    assert spec.input is not None and spec.input.resize == "pad"
    x = _tensor(spec, _portrait() * 0 + 1.0)[0, 0]  # all white, 256 x 128 -> 32 x 16 inside 32 x 32
    pad_value = (0.0 - 0.5) / 0.25
    assert np.all(x[:, :8] == pad_value) and np.all(x[:, 24:] == pad_value)
    assert np.all(x[:, 8:24] == pytest.approx((1.0 - 0.5) / 0.25))


def test_a_bundled_style_stage_without_the_key_stretches(tmp_path: Path) -> None:
    spec = load_pack(write_tiny_pack(tmp_path / "p", [VIEW])).stages[0]
    assert spec.input is not None and spec.input.resize == "stretch"


def test_an_unknown_resize_is_refused_naming_the_stage(tmp_path: Path) -> None:
    bad = json.loads(json.dumps(VIEW))
    bad["input"]["resize"] = "letterbox"
    with pytest.raises(PackError, match=r"manifest stage 'view': input.resize: must be one of "
                                        r"'stretch', 'pad', got 'letterbox'"):  # fmt: skip
        load_pack(write_tiny_pack(tmp_path / "p", [bad]))


def test_a_tiled_volume_refuses_pad() -> None:
    spec = {"depth": 8, "height": 8, "width": 8, "channels": 1, "resize": "pad"}
    with pytest.raises(PackError, match="input.resize"):
        tiled_volume._input_matches(spec, 8, "manifest stage 'mri'")


# --- maps back to the image, through ONNX Runtime -------------------------------------------


def test_roi_box_with_pad_lies_where_the_block_is(tmp_path: Path) -> None:
    image = _portrait()
    for stage in (ROI, _padded(ROI)):
        root = write_tiny_pack(tmp_path / stage["input"].get("resize", "stretch"), [VIEW, stage])
        j = _judge(root, image)
        assert j.roi is not None and j.roi.box is not None, stage["input"]
        box = j.roi.box
        # The block: centre (64, 112), 96 rows x 64 columns; one map pixel is 8 image pixels.
        assert (box.cx, box.cy) == pytest.approx((64, 112), abs=4)
        assert sorted((box.width, box.height)) == pytest.approx([64, 96], abs=9)
        # The share of the image (not of the padded input) above threshold.
        assert j.roi.area_fraction == pytest.approx(96 * 64 / (256 * 128), abs=0.03)


def test_segment_masks_with_pad_cover_the_image_only(tmp_path: Path) -> None:
    j = _judge(write_tiny_pack(tmp_path / "p", [VIEW, _padded(SEG)]), _portrait())
    seg = j.results["seg"]
    # The padding reads 0, which this segmenter calls dark: cut away, it is not counted.
    assert seg.masks["bright"].shape == (32, 16) and seg.scale == (128 / 16, 256 / 32)
    bright = 96 * 64 / (256 * 128)
    assert seg.measures["bright"]["area_fraction"] == pytest.approx(bright)
    assert seg.measures["dark"]["area_fraction"] == pytest.approx(1 - bright)
    assert (seg.measures["bright"]["cx"], seg.measures["bright"]["cy"]) == pytest.approx((0.5, 112 / 256))


def test_a_padded_crop_is_scored(tmp_path: Path) -> None:
    image = _portrait()
    root = write_tiny_pack(tmp_path / "p", [VIEW, _padded(ROI), _padded(SCORE)], judged_by=["score"])
    j = _judge(root, image)
    assert j.roi is not None and j.roi.box is not None and j.quality is not None
    crop = crop_box(image, j.roi.box, 32, 32, "pad")
    # score = 1 + 0.5 * mean(x): the padding of the crop (x = -2) is in that mean.
    expected = 1.0 + 0.5 * float(((crop - 0.5) / 0.25).mean())
    assert j.quality.score == pytest.approx(expected, abs=1e-4) and j.quality.score < 1.8


def test_derived_image_with_pad_is_the_image_halved(tmp_path: Path) -> None:
    image = _portrait() * 0.8 + 0.1
    j = _judge(write_tiny_pack(tmp_path / "p", [VIEW, _padded(DERIVE)]), image)
    derived = j.results["derive"].image
    assert derived.shape == image.shape
    inside = (slice(72, 152), slice(40, 88))  # away from the block's edges
    assert derived[inside] == pytest.approx(0.45, abs=1e-3)
    assert derived[:48, :24] == pytest.approx(0.05, abs=1e-3)  # no padding pulled in


def test_heatmap_with_pad_maps_the_image_part(tmp_path: Path) -> None:
    # Rows 32..160 white across a black portrait: ``bright_spot`` evidence there, ``dark_field``
    # on the rest, and in the padding (black too): an uncut map would count it.
    image = np.zeros((256, 128), np.float32)
    image[32:160] = 1.0
    j = _judge(write_tiny_pack(tmp_path / "p", [VIEW, _padded(FLAGS), CAM]), image)
    heat = j.results["cam"]
    assert set(heat.maps) == {"bright_spot", "dark_field"}
    assert heat.maps["bright_spot"].shape == heat.maps["dark_field"].shape == (32, 16)
    bright, dark = heat.summaries["bright_spot"], heat.summaries["dark_field"]
    assert 32 / 256 <= bright["peak_y"] <= 160 / 256
    assert bright["area_fraction"] == pytest.approx(0.5, abs=0.05)
    assert dark["area_fraction"] == pytest.approx(0.5, abs=0.05)  # 0.75 with the padding
    assert dark["peak_value"] == pytest.approx(1.0)
