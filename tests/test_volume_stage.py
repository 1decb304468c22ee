"""The tiled_volume stage: tiling, resampling, bounded memory, the pack refusals.

The network here is a tiny MIQA-shaped one (random weights) exported by our export tool's
parity gate (models.mri.pack), run by a real ONNX Runtime session: what is tested is the
stage's plumbing, not the trained pack (tests/test_mri_pack.py does that).
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from edge_worker.backends import select
from edge_worker.errors import PackError, Rejection, RejectReason
from edge_worker.packs.pack import load_pack, seal_manifest
from edge_worker.phantoms.mri import make_head
from edge_worker.pipeline.runner import Pipeline
from edge_worker.pipeline.volume import plan_tiles, resample, resampled_shape, tile_starts
from models.mri.network import FLAGS


def _tiny_pack(dest: Path, spacing: tuple[float, float, float]) -> Path:
    import torch

    from models.mri.network import MiqaNet
    from models.mri.pack import write_volume_pack

    torch.manual_seed(0)
    net = MiqaNet((2, 2, 2, 2, 2)).eval()
    write_volume_pack(dest, net, tile=64, spacing_mm=spacing, name="tiny-volume", version="0",
                      description="test network, random weights", training_data={"kind": "synthetic test"},
                      validation={}, architecture=net.describe())  # fmt: skip
    return dest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_pack(tmp_path_factory.mktemp("tiny") / "pack", (1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def pipeline(tiny: Path) -> Pipeline:
    p = Pipeline(load_pack(tiny), select(["onnxruntime-cpu"]))
    p.warm_up()
    return p


@pytest.mark.parametrize("length", [1, 40, 64, 65, 100, 128, 129, 200, 256, 512])
def test_tiles_cover_each_axis_with_minimal_overlap(length: int) -> None:
    starts = tile_starts(length, 64)
    assert len(starts) == max(1, math.ceil(length / 64))  # the fewest tiles that cover it
    assert starts[0] == 0 and starts == sorted(set(starts))
    covered = np.zeros(max(length, 64), bool)
    for s in starts:
        covered[s : s + 64] = True
    assert covered[:length].all()
    if len(starts) > 1:
        assert starts[-1] + 64 == length  # no tile hangs over the edge
        overlaps = [a + 64 - b for a, b in itertools.pairwise(starts)]
        total = len(starts) * 64 - length
        assert sum(overlaps) == total and max(overlaps) - min(overlaps) <= 1  # spread evenly


def test_resample_keeps_extent_and_values() -> None:
    z = np.arange(40, dtype=np.float32)[:, None, None] * 2.0  # 2 mm slices: value = position
    vol = np.broadcast_to(z, (40, 50, 60)).copy()
    out = resample(vol, (2.0, 0.5, 0.5), (1.0, 1.0, 1.0))
    assert out.shape == resampled_shape(vol.shape, (2.0, 0.5, 0.5), (1.0, 1.0, 1.0)) == (80, 25, 30)
    # Linear along z: interior slices interpolate the positions (centre-aligned grids).
    k = np.arange(1, 79)
    assert np.allclose(out[1:79, 10, 10], 2.0 * ((k + 0.5) / 2.0 - 0.5), atol=1e-4)
    assert np.allclose(out[:, 0, 0], out[:, -1, -1])  # in-plane constant stays constant
    same = np.zeros((8, 8, 8), np.float32)
    assert resample(same, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)) is same  # no copy when nothing changes


def test_a_512x512x256_volume_in_bounded_memory(pipeline: Pipeline) -> None:
    vol = np.zeros((256, 512, 512), np.float32)
    vol[64:192, 128:384, 128:384] = 500.0
    assert len(plan_tiles(vol.shape, 64)) == 4 * 8 * 8
    tracemalloc.start()
    try:
        j = pipeline.judge_volume(vol, (1.0, 1.0, 1.0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert j.tiles == 256
    # The volume is 256 MiB; what the stage adds is one batch of tiles (4 x 1 MiB) and a sample.
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert set(j.flags) == set(FLAGS) and all(0.0 <= p <= 1.0 for p in j.flags.values())
    assert 0.0 <= j.score <= 10.0
    for boxes in j.flag_tiles.values():
        assert 1 <= len(boxes) <= 3
        assert [b.probability for b in boxes] == sorted((b.probability for b in boxes), reverse=True)
        for b in boxes:
            assert 0 <= b.z0 < b.z1 <= 256 and 0 <= b.y0 < b.y1 <= 512 and 0 <= b.x0 < b.x1 <= 512
            assert (b.z1 - b.z0, b.y1 - b.y0, b.x1 - b.x0) == (64, 64, 64)
    assert set(j.timings_ms) == {"resample", "tile", "infer", "total"}


def test_tile_boxes_are_in_input_voxels(pipeline: Pipeline) -> None:
    vol = make_head(3, shape=(48, 200, 200), spacing_mm=(3.0, 0.75, 0.75))
    j = pipeline.judge_volume(vol, (3.0, 0.75, 0.75))  # resampled to 144 x 150 x 150 at 1 mm
    assert j.tiles == 3 * 3 * 3
    for boxes in j.flag_tiles.values():
        for b in boxes:
            assert b.z1 <= 48 and b.y1 <= 200 and b.x1 <= 200
            assert b.z1 - b.z0 in (21, 22) and b.y1 - b.y0 in (85, 86)  # 64 mm of input voxels
    assert j.synthetic is True and j.thresholds["flag_review_above"] == 0.5


def test_too_large_a_volume_is_a_typed_rejection(tiny: Path, tmp_path: Path) -> None:
    dest = shutil.copytree(tiny, tmp_path / "small")
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["stages"][0]["max_voxels"] = 128**3
    (dest / "manifest.json").write_text(json.dumps(manifest))
    seal_manifest(dest)
    p = Pipeline(load_pack(dest), select(["onnxruntime-cpu"]))
    with pytest.raises(Rejection) as err:
        p.judge_volume(np.zeros((100, 200, 200), np.float32), (1.0, 1.0, 1.0))
    assert err.value.reason is RejectReason.VOLUME_TOO_LARGE
    assert "(100, 200, 200)" in err.value.detail and str(128**3) in err.value.detail


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"drop": "tile"}, "needs tile (missing)"),
        ({"drop": "thresholds"}, "needs thresholds (missing)"),
        ({"tile": 32}, "input: must be one channel of 32^3 voxels"),
        ({"outputs": ["ghosting", "quality"]}, "the first output must be 'quality'"),
        ({"overlap": "half"}, "overlap: only 'minimal'"),
        ({"thresholds": {"score_review_below": 6.0}}, "thresholds: needs score_review_below"),
        ({"spacing_mm": [1.0, 1.0]}, "spacing_mm: must be [z, y, x]"),
    ],
)
def test_a_stage_missing_or_bad_keys_is_refused_with_the_reason(
    tiny: Path, tmp_path: Path, change: dict, reason: str  # type: ignore[type-arg]
) -> None:
    dest = shutil.copytree(tiny, tmp_path / "bad")
    manifest = json.loads((dest / "manifest.json").read_text())
    stage = manifest["stages"][0]
    if "drop" in change:
        del stage[change["drop"]]
    else:
        stage.update(change)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    seal_manifest(dest)
    with pytest.raises(PackError) as err:
        load_pack(dest)
    assert "manifest stage 'mri_quality'" in str(err.value) and reason in str(err.value)


def test_a_radiograph_pack_judges_no_volume_and_a_volume_pack_no_radiograph(pipeline: Pipeline) -> None:
    radiograph = Pipeline(load_pack(None), select(["onnxruntime-cpu"]))
    assert radiograph.judges_volumes is False and radiograph.pack.judges_radiographs
    with pytest.raises(PackError, match="no tiled_volume stage"):
        radiograph.judge_volume(np.zeros((8, 8, 8), np.float32), (1.0, 1.0, 1.0))
    assert pipeline.judges_volumes is True and not pipeline.pack.judges_radiographs
    with pytest.raises(PackError, match="volume pack"):
        pipeline.judge(np.zeros((64, 64), np.float32))


def test_volume_packs_are_not_bundled_radiograph_packs_nor_routed(tiny: Path, tmp_path: Path) -> None:
    from edge_worker.packs.pack import bundled_pack_dirs
    from edge_worker.service.assembly import build_pipeline, build_router
    from edge_worker.service.config import parse

    assert "mri-demo" not in [d.name for d in bundled_pack_dirs()]
    config = parse(f'[watch]\nfolder = "{tmp_path / "in"}"\n[state]\nfolder = "{tmp_path / "state"}"\n'
                   f'[pack]\nbundled = false\nextra = ["{tiny}"]\n')  # fmt: skip
    with pytest.raises(PackError, match="is a volume pack"):
        build_router(config, build_pipeline(config))
