"""Training feeds a padded stage what the worker feeds it, and the export writes the key.

A portrait working image is made into examples by :func:`models.data.example` and compared with the worker's own
preparation; a checkpoint trained with ``--resize pad`` is exported, packed and loaded, and
its stage pads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edge_worker.packs.pack import load_pack
from edge_worker.phantoms.ankle import write_dataset
from edge_worker.pipeline.preprocess import (
    RotatedBox,
    box_mask,
    crop_box,
    place,
    placement,
    to_tensor,
)
from export.onnx import export_stage, phantom_batch
from export.pack import write_pack
from models import train
from models.data import MEAN, STD, Record, Sample, example
from models.networks import ArchConfig, build
from models.segment import SegmentSpec, inputs, targets

PAD_VALUE = (0.0 - MEAN) / STD


def _portrait_sample() -> Sample:
    rng = np.random.default_rng(7)
    working = (0.3 + 0.4 * rng.random((300, 140))).astype(np.float16)
    box = RotatedBox(70.0, 150.0, 90.0, 50.0, 20.0)
    record = Record(Path("x.dcm"), "AP", 2, 2.0, 0.0, box)
    return Sample(record, working, box)


def test_examples_pad_as_the_worker_pads() -> None:
    sample = _portrait_sample()
    img = sample.working.astype(np.float32)
    where = placement(img.shape, 64, 64, "pad")
    assert (where.width, where.height) == (30, 64)
    for task in ("view", "roi"):
        x, _ = example(task, sample, 64, 64, None, resize="pad")
        assert np.array_equal(x, to_tensor(img, 64, 64, 1, MEAN, STD, "pad")[0])
    _, target = example("roi", sample, 64, 64, None, resize="pad")
    assert sample.roi is not None
    expected = place(box_mask(img.shape, sample.roi).astype(np.float32), 64, 64, "pad") > 0.5
    assert np.array_equal(target[0] > 0.5, expected) and not target[0][:, : where.x0].any()
    x, _ = example("quality", sample, 48, 80, None, resize="pad")
    worker = to_tensor(crop_box(img, sample.roi, 48, 80, "pad"), 48, 80, 1, MEAN, STD)[0]
    assert np.allclose(x, worker, atol=1e-6)


def test_augmented_examples_keep_their_padding_at_zero() -> None:
    sample = _portrait_sample()
    box = RotatedBox(70.0, 150.0, 120.0, 30.0, 10.0)
    narrow = Sample(sample.record, sample.working, box)
    rng = np.random.default_rng(11)
    for _ in range(5):
        x, _ = example("view", sample, 64, 64, rng, resize="pad")
        assert np.all(x[0, :, :10] == PAD_VALUE) and np.all(x[0, :, -10:] == PAD_VALUE)
        q, _ = example("quality", narrow, 48, 80, rng, resize="pad")
        # A 120 x 30 box (jittered) in 48 x 80: about 20 rows of crop, the rest padding.
        assert np.all(q[0, :8] == PAD_VALUE) and np.all(q[0, -8:] == PAD_VALUE)


def test_stretch_examples_are_unchanged() -> None:
    sample = _portrait_sample()
    img = sample.working.astype(np.float32)
    x, _ = example("view", sample, 64, 64, None)
    assert np.array_equal(x, to_tensor(img, 64, 64, 1, MEAN, STD)[0])
    q, _ = example("quality", sample, 48, 80, None)
    assert sample.roi is not None
    assert np.array_equal(q, to_tensor(crop_box(img, sample.roi, 48, 80), 48, 80, 1, MEAN, STD)[0])


def test_segment_inputs_and_targets_are_laid_out_alike() -> None:
    image = np.zeros((160, 80), np.float32)
    mask = np.zeros((160, 80), np.uint8)
    image[40:120, 20:60], mask[40:120, 20:60] = 1.0, 2
    spec = SegmentSpec(("background", "a", "b"), 64, 64, 0.25, "pad")
    x, y = inputs([image], spec)[0, 0], targets([mask], spec)[0]
    assert y.dtype == np.int64 and set(np.unique(y)) == {0, 2}
    assert np.array_equal(y == 2, x > 0)  # the block in the same place in both
    assert y[:, :16].max() == 0 and np.all(x[:, :16] == PAD_VALUE)


def test_a_pad_checkpoint_exports_a_pad_stage(tmp_path: Path) -> None:
    csv = write_dataset(tmp_path / "data", 4, seed=31, size=512)
    argv = ["roi", "--csv", str(csv), "--val-csv", str(csv), "--out", str(tmp_path / "ckpt"),
            "--view", "AP", "--steps", "2", "--batch", "2", "--size", "64", "--width", "0.125",
            "--resize", "pad"]  # fmt: skip
    assert train.main(argv) == 0
    roi_ckpt = tmp_path / "ckpt" / "roi_ap.pt"
    assert torch.load(roi_ckpt, weights_only=False)["input"]["resize"] == "pad"
    # An untrained view network beside it, saved as models.train saves one, stretching.
    arch = ArchConfig("view", width=0.25, depth=0.5, image_size=64)
    view_ckpt = tmp_path / "ckpt" / "view.pt"
    torch.save({"task": "view", "view": None, "arch": arch.as_dict(), "metrics": {},
                "input": {"height": 64, "width": 64, "channels": 1, "mean": MEAN, "std": STD,
                          "resize": "stretch"}, "state_dict": build(arch).state_dict()},
               view_ckpt)  # fmt: skip
    stages = [export_stage(c, tmp_path / "onnx")[0] for c in (view_ckpt, roi_ckpt)]
    manifest = write_pack(tmp_path / "pack", stages, name="t", version="0", description="t",
                          training_data={"kind": "synthetic-phantom"}, validation={})  # fmt: skip
    entries = {e["name"]: e for e in json.loads(manifest.read_text())["stages"]}
    assert "resize" not in entries["view"]["input"] and entries["roi_ap"]["input"]["resize"] == "pad"
    pack = load_pack(tmp_path / "pack")
    assert [(s.name, s.input.resize) for s in pack.networks if s.input] == [("view", "stretch"), ("roi_ap", "pad")]
    spec = {"height": 64, "width": 64, "channels": 1, "mean": MEAN, "std": STD, "resize": "pad"}
    # The phantoms are portrait (1024 x 820): the parity batch of a padded stage is padded.
    batch = phantom_batch("roi", spec, "AP")
    assert np.all(batch[:, 0, :, :3] == PAD_VALUE) and np.all(batch[:, 0, :, -3:] == PAD_VALUE)
    assert not np.all(phantom_batch("roi", {**spec, "resize": "stretch"}, "AP")[:, 0, :, :3] == PAD_VALUE)


def test_the_segmented_evaluation_lays_its_truth_out_as_the_worker_masks(tmp_path: Path) -> None:
    import cv2

    from edge_worker.backends import select
    from edge_worker.pipeline.runner import Pipeline
    from export.build.labels import Row
    from export.build.segmented import _dice, _truth_masks
    from tests.tiny_packs import SEG, VIEW, write_tiny_pack

    pytest.importorskip("onnx")
    image = np.zeros((256, 128), np.float32)
    image[64:160, 32:96] = 1.0
    mask = (image > 0.5).astype(np.uint8)  # class 1 ``bright`` where the block is
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    seg = json.loads(json.dumps(SEG))
    seg["input"]["resize"] = "pad"
    pack = load_pack(write_tiny_pack(tmp_path / "p", [VIEW, seg]))
    found = Pipeline(pack, select(["onnxruntime-cpu"])).judge(image).results["seg"]
    row = Row(Record(Path("x.dcm"), "AP", None, None, 0.0, None),
              Sample(Record(Path("x.dcm"), "AP", None, None, 0.0, None), image.astype(np.float16), None),
              "p", None, (), None, 2, tmp_path / "mask.png")  # fmt: skip
    spec = next(s for s in pack.stages if s.name == "seg")
    assert spec.input is not None
    truth = _truth_masks(row, ["background", "bright", "dark"], spec.input)
    assert truth["bright"].shape == found.masks["bright"].shape == (32, 16)
    assert _dice({"bright": found.masks["bright"]}, {"bright": truth["bright"]}) == pytest.approx(1.0)
