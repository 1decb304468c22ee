"""The optional ROI thumbnail: the picture itself, the verdict that carries it, the config switch."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_worker.errors import ConfigError
from edge_worker.judging.overlay import stored_frame_map
from edge_worker.judging.thumbnail import (
    BOX_COLOUR,
    DATA_URL_PREFIX,
    make_thumbnail,
    verdict_thumbnail,
)
from edge_worker.pipeline.preprocess import RotatedBox, resize, turn_upright
from edge_worker.service.config import Config, parse

ROOT = Path(__file__).resolve().parents[1]


def _decode(url: str) -> np.ndarray:
    assert url.startswith(DATA_URL_PREFIX)
    png = base64.b64decode(url[len(DATA_URL_PREFIX):], validate=True)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    picture = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None
    return picture


def _gradient(h: int, w: int) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, w, dtype=np.float32), (h, 1))


def test_roi_crop_with_the_box_drawn() -> None:
    image = _gradient(400, 512)
    box = RotatedBox(cx=300.0, cy=200.0, width=120.0, height=60.0, angle_deg=20.0)
    picture = _decode(make_thumbnail(image, box, size=160))
    assert max(picture.shape[:2]) == 160
    b, g, r = (picture[..., i].astype(int) for i in range(3))
    boxed = (abs(b - BOX_COLOUR[0]) < 40) & (abs(g - BOX_COLOUR[1]) < 40) & (r < 60)
    assert boxed.sum() > 100, "the ROI box is not drawn"
    # Everything else stays grey: the picture is the radiograph, not a colour map.
    grey = (b == g) & (g == r)
    assert grey.mean() > 0.8
    # Cropped around the ROI, not the whole image: the gradient spans only part of its range.
    assert r[grey].min() > 20 and r[grey].max() < 240


def test_no_box_gives_the_whole_image_reduced() -> None:
    picture = _decode(make_thumbnail(_gradient(300, 450), None, size=96))
    assert picture.shape[:2] == (64, 96)
    assert np.array_equal(picture[..., 0], picture[..., 2])  # nothing drawn


def test_a_whole_image_thumbnail_is_in_the_frame_of_the_heatmap_overlay() -> None:
    # A bright block in the stored image's upper right; the orientation stage turned it by 30
    # degrees and the classifier, reading the upright image, looked exactly at the block.
    stored = np.zeros((60, 80), np.float32)
    stored[5:15, 60:75] = 1.0
    upright, turn = turn_upright(stored, 30.0)
    overlay = stored_frame_map(resize(upright, 32, 32), (60, 80), turn, read_upright=True)
    hot = cv2.resize(overlay, (80, 60)) > 0.5
    picture = _decode(verdict_thumbnail(upright, stored, None, 80))[..., 0]
    assert picture.shape == overlay.shape == (60, 80)
    bright = picture > 128
    # The thumbnail's bright pixels are the overlay's: stretched over it, it lies on the block.
    assert (bright & hot).sum() / (bright | hot).sum() > 0.6
    # The upright image, the frame the networks read, would leave the overlay off the block.
    turned = _decode(make_thumbnail(upright, None, 80))[..., 0] > 128
    assert (turned & hot).sum() / (turned | hot).sum() < 0.3
    # With an ROI box the picture is cut from the upright image, where the box was found.
    box = RotatedBox(cx=40.0, cy=30.0, width=20.0, height=20.0, angle_deg=0.0)
    assert verdict_thumbnail(upright, stored, box, 64) == make_thumbnail(upright, box, 64)


def test_a_box_at_the_edge_and_odd_pixels_are_handled() -> None:
    image = _gradient(200, 200)
    image[0, 0], image[1, 1], image[2, 2] = np.nan, np.inf, -np.inf
    box = RotatedBox(cx=5.0, cy=195.0, width=80.0, height=40.0, angle_deg=-45.0)
    picture = _decode(make_thumbnail(image, box, size=64))
    assert max(picture.shape[:2]) == 64


@pytest.mark.parametrize(("shape", "size"), [((100, 100), 8), ((100, 100), 4096), ((10, 10, 3), 64), ((0, 5), 64)])
def test_bad_arguments_are_refused(shape: tuple[int, ...], size: int) -> None:
    with pytest.raises(ValueError):
        make_thumbnail(np.zeros(shape, np.float32), None, size=size)


def test_config_switch_is_off_by_default_and_checked() -> None:
    assert Config().verdict.thumbnail is False
    config = parse("[verdict]\nthumbnail = true\nthumbnail_size = 128\n")
    assert config.verdict.thumbnail is True and config.verdict.thumbnail_size == 128
    with pytest.raises(ConfigError, match="thumbnail_size"):
        parse("[verdict]\nthumbnail_size = 8\n")
    with pytest.raises(ConfigError, match=r":2: unknown key 'verdict.picture'"):
        parse("[verdict]\npicture = true\n")
    # The documented example config knows the section.
    example = parse((ROOT / "systemd" / "edge-worker.toml").read_text())
    assert example.verdict == Config().verdict


def test_a_verdict_carries_the_thumbnail_only_when_asked(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from edge_worker.backends import select
    from edge_worker.ingest.types import IngestPolicy
    from edge_worker.judging.process import Judge
    from edge_worker.packs.pack import load_pack
    from edge_worker.phantoms.ankle import write_phantom
    from edge_worker.pipeline.runner import Pipeline

    schema = json.loads((ROOT / "edge_worker" / "schema" / "verdict.schema.json").read_text())
    pipeline = Pipeline(load_pack(None), select(["onnxruntime-cpu"]))
    path = tmp_path / "p.dcm"
    write_phantom(path, seed=31, view="AP", grade=1, size=768)
    plain = Judge(pipeline, "st-a", "xr-01", IngestPolicy())(path)
    with_picture = Judge(pipeline, "st-a", "xr-01", IngestPolicy(), thumbnail_size=128)(path)
    assert plain.kind == with_picture.kind == "verdict"
    assert "thumbnail" not in plain.payload
    picture = _decode(with_picture.payload["thumbnail"])
    assert max(picture.shape[:2]) == 128
    assert "thumbnail" in with_picture.payload["timings_ms"]
    jsonschema.validate(with_picture.payload, schema)
    jsonschema.validate(plain.payload, schema)
    # The same image, the same decision, the same id: the picture changes nothing else.
    assert with_picture.payload["id"] == plain.payload["id"]
    assert with_picture.payload["decision"] == plain.payload["decision"]
