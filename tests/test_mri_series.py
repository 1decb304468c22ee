"""Series collection and assembly on real DICOM files written by the phantom writer.

No network and no pack: the collector's completeness rule (quiet period, count headers,
positions), the geometry checks with their typed refusals, and the volume rebuilt from
single-frame files and from one enhanced multi-frame file, voxel for voxel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from edge_worker.errors import Rejection, RejectReason
from edge_worker.ingest.slices import slice_file
from edge_worker.ingest.volume import build_volume, geometry, missing
from edge_worker.phantoms.mri import make_head
from edge_worker.phantoms.mri_dicom import SeriesSpec, write_enhanced, write_mixed, write_series
from edge_worker.watching.series import SeriesCollector

SHAPE = (12, 40, 48)
BIG = 10**9


def _volume(seed: int = 0) -> np.ndarray:
    return make_head(seed, SHAPE, (12.0, 5.0, 4.0))  # the whole head in a small grid


def _facts(paths: list[Path]) -> list:
    out = [slice_file(p, ("MR",)) for p in paths]
    assert all(f is not None for f in out)
    return out


def _collect(paths: list[Path], quiet: float = 2.0, max_wait: float = 30.0) -> SeriesCollector:
    c = SeriesCollector(quiet, max_wait)
    for f in _facts(paths):
        c.add(f, now=100.0)
    return c


def test_single_frame_series_rebuilds_the_volume_in_position_order(tmp_path: Path) -> None:
    vol = _volume()
    spec = SeriesSpec(spacing_mm=(2.5, 0.9, 0.8))
    paths = write_series(vol, tmp_path, spec)
    # Shuffle the file order the collector sees: order must come from positions, not names.
    facts = _facts(paths[::-1])
    assert missing(facts) is None
    g = geometry(facts, BIG)
    v = build_volume(g)
    assert v.voxels.shape == SHAPE
    assert v.spacing_mm == pytest.approx((2.5, 0.9, 0.8))
    step = (vol.max() - vol.min()) / 4095.0
    assert np.max(np.abs(v.voxels - vol)) <= step  # 12-bit storage: one step at most
    assert len(v.pixel_digest) == 64


def test_enhanced_multi_frame_gives_the_same_volume(tmp_path: Path) -> None:
    vol = _volume(1)
    single = build_volume(geometry(_facts(write_series(vol, tmp_path / "s")), BIG))
    path = write_enhanced(vol, tmp_path / "e.dcm")
    assert int(pydicom.dcmread(path, stop_before_pixels=True).NumberOfFrames) == SHAPE[0]
    facts = _facts([path])
    assert facts[0].multi_frame and facts[0].expected == SHAPE[0]
    multi = build_volume(geometry(facts, BIG))
    np.testing.assert_allclose(multi.voxels, single.voxels, atol=1e-3)
    c = _collect([path])
    (due,) = c.due(now=103.0)
    assert due.short is None and len(due.files) == 1


def test_quiet_period_then_complete(tmp_path: Path) -> None:
    paths = write_series(_volume(), tmp_path)
    c = _collect(paths, quiet=2.0)
    assert c.due(now=101.0) == []  # still within the quiet period
    (due,) = c.due(now=102.5)
    assert due.short is None and len(due.files) == SHAPE[0]
    assert c.due(now=200.0) == []  # handed on once


def test_a_short_series_waits_then_times_out(tmp_path: Path) -> None:
    paths = write_series(_volume(), tmp_path)
    c = _collect(paths[:7], quiet=2.0, max_wait=30.0)  # the last five never come
    assert c.due(now=110.0) == []  # quiet, but ImagesInAcquisition says 12: waits
    (due,) = c.due(now=131.0)
    assert due.short is not None and due.short.reason is RejectReason.SERIES_TIMEOUT
    assert "7 of 12" in due.short.detail


def test_a_late_file_completes_the_series(tmp_path: Path) -> None:
    paths = write_series(_volume(), tmp_path)
    facts = _facts(paths)
    c = SeriesCollector(2.0, 30.0)
    for f in facts[:-1]:
        c.add(f, now=100.0)
    assert c.due(now=105.0) == []
    c.add(facts[-1], now=106.0)
    (due,) = c.due(now=108.5)
    assert due.short is None


def test_missing_slice_is_refused_after_the_wait(tmp_path: Path) -> None:
    paths = write_series(_volume(), tmp_path, drop=(5,))
    facts = _facts(paths)
    gap = missing(facts)
    assert gap is not None and gap.reason is RejectReason.SLICE_MISSING
    c = _collect(paths, max_wait=30.0)
    assert c.due(now=110.0) == []
    (due,) = c.due(now=131.0)
    assert due.short is not None and due.short.reason is RejectReason.SLICE_MISSING
    with pytest.raises(Rejection) as err:
        geometry(facts, BIG)
    assert err.value.reason is RejectReason.SLICE_MISSING


def test_missing_slice_without_count_headers_is_seen_from_positions(tmp_path: Path) -> None:
    paths = write_series(_volume(), tmp_path, SeriesSpec(images_in_acquisition=False), drop=(3,))
    facts = _facts(paths)
    assert all(f.expected is None for f in facts)
    gap = missing(facts)
    assert gap is not None and gap.reason is RejectReason.SLICE_MISSING


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"duplicate": 4}, RejectReason.POSITIONS_DUPLICATED),
        ({"tilt": (6, 5.0)}, RejectReason.ORIENTATION_INCONSISTENT),
    ],
)
def test_geometry_refusals(tmp_path: Path, options: dict, reason: RejectReason) -> None:
    facts = _facts(write_series(_volume(), tmp_path, **options))
    with pytest.raises(Rejection) as err:
        geometry(facts, BIG)
    assert err.value.reason is reason


def test_irregular_spacing_is_refused(tmp_path: Path) -> None:
    paths = write_series(_volume(), tmp_path)
    ds = pydicom.dcmread(paths[6])
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                               float(ds.ImagePositionPatient[2]) + 0.4]  # fmt: skip
    ds.save_as(paths[6])
    with pytest.raises(Rejection) as err:
        geometry(_facts(paths), BIG)
    assert err.value.reason is RejectReason.SPACING_IRREGULAR


def test_too_large_is_refused_before_any_pixel_is_read(tmp_path: Path) -> None:
    facts = _facts(write_series(_volume(), tmp_path))
    with pytest.raises(Rejection) as err:
        geometry(facts, max_voxels=SHAPE[0] * SHAPE[1] * SHAPE[2] - 1)
    assert err.value.reason is RejectReason.VOLUME_TOO_LARGE


def test_mixed_folder_gives_two_series_and_a_mixed_uid_is_refused(tmp_path: Path) -> None:
    a, b = write_mixed(_volume(0), _volume(1), tmp_path)
    c = _collect(sorted(a + b))
    due = c.due(now=103.0)
    assert sorted(len(d.files) for d in due) == [SHAPE[0], SHAPE[0]]
    assert all(d.short is None for d in due)
    # One UID, two sizes: no volume.
    other = write_series(
        _volume(2)[:, :32, :32], tmp_path / "small", SeriesSpec(series_uid=_facts(a)[0].series_uid)
    )
    with pytest.raises(Rejection) as err:
        geometry(_facts(a + other[:2]), BIG)
    assert err.value.reason is RejectReason.SERIES_MIXED


def test_radiographs_are_not_series_files(tmp_path: Path) -> None:
    paths = write_series(_volume(), tmp_path)
    ds = pydicom.dcmread(paths[0])
    ds.Modality = "DX"
    ds.save_as(tmp_path / "dx.dcm")
    assert slice_file(tmp_path / "dx.dcm", ("MR",)) is None
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    assert slice_file(tmp_path / "junk.dcm", ("MR",)) is None


def test_first_seen_is_the_mtime_after_a_restart(tmp_path: Path) -> None:
    paths = write_series(_volume(), tmp_path)
    c = SeriesCollector(2.0, 30.0)
    for f in _facts(paths[:5]):
        c.add(f, now=1000.0, mtime=900.0)  # files older than the restart
    (due,) = c.due(now=1003.0)  # quiet passed and first seen 103 s ago: timed out at once
    assert due.short is not None and due.short.reason is RejectReason.SERIES_TIMEOUT


def test_the_series_bench_times_last_file_to_message(tmp_path: Path) -> None:
    from edge_worker.bench.series import time_series

    report = time_series(tmp_path, (8, 32, 32), quiet_s=0.2, runs=1, pack=None)
    assert report["message"] == "error (no_pack_for_body_part)"  # no volume pack given
    assert report["last_file_to_message_ms"]["median"] >= 200.0  # never before the quiet period
