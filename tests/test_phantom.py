"""The phantom generator writes valid DICOM whose pixels agree with its ground truth."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from edge_worker.phantoms import ankle as phantom
from edge_worker.pipeline.preprocess import box_mask


@pytest.mark.parametrize(
    ("modality", "sop_class"),
    [("CR", "1.2.840.10008.5.1.4.1.1.1"), ("DX", "1.2.840.10008.5.1.4.1.1.1.1")],
)
def test_written_file_is_valid_dicom_with_header(
    tmp_path: Path, modality: str, sop_class: str
) -> None:
    path = tmp_path / "a.dcm"
    truth = phantom.write_phantom(path, 3, view="LAT", modality=modality, bits_stored=12,
                                  size=1024, laterality="L", index=7)  # fmt: skip
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == sop_class == ds.file_meta.MediaStorageSOPClassUID
    assert ds.Modality == modality
    assert ds.BodyPartExamined == "ANKLE"
    assert ds.Manufacturer == "EdgeWorker Phantom"
    assert ds.ViewPosition == ("LL" if modality == "DX" else "LATERAL")
    assert ds.ImageLaterality == "L"
    assert str(ds.PatientName) == "PHANTOM^ANKLE^7"
    assert ds.PatientID and ds.PatientBirthDate
    assert "PHANTOM" in ds.ImageComments.upper()
    assert ("PresentationIntentType" in ds) == (modality == "DX")
    assert ds.PresentationIntentType == "FOR PRESENTATION" if modality == "DX" else True
    assert (ds.BitsStored, ds.HighBit, ds.BitsAllocated) == (12, 11, 16)
    assert len(ds.ImagerPixelSpacing) == 2
    for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
        assert pydicom.uid.UID(uid).is_valid
    pixels = ds.pixel_array
    assert pixels.shape == (truth.rows, truth.columns) == (1024, 820)
    assert pixels.max() <= 4095 and pixels.max() > 2000


def test_same_seed_is_reproducible_and_seeds_differ() -> None:
    a, ta = phantom.make_dataset(5)
    b, tb = phantom.make_dataset(5)
    c, _ = phantom.make_dataset(6)
    assert a.PixelData == b.PixelData and ta == tb
    assert a.SOPInstanceUID == b.SOPInstanceUID != c.SOPInstanceUID


def test_monochrome1_is_the_inverse_of_monochrome2() -> None:
    kwargs = dict(view="AP", grade=1, rotation=0.0, bits_stored=14, size=1024)
    m1, _ = phantom.make_dataset(11, photometric="MONOCHROME1", **kwargs)  # type: ignore[arg-type]
    m2, _ = phantom.make_dataset(11, photometric="MONOCHROME2", **kwargs)  # type: ignore[arg-type]
    assert m1.PhotometricInterpretation == "MONOCHROME1"
    p1 = m1.pixel_array.astype(np.int32)
    p2 = m2.pixel_array.astype(np.int32)
    assert np.array_equal(p1, (1 << 14) - 1 - p2)
    # Bone (the joint's neighbourhood) is bright in MONOCHROME2, so dark in MONOCHROME1.
    assert p2.mean() < (1 << 13) < p1.mean()


@pytest.mark.parametrize("view", ["AP", "LAT"])
@pytest.mark.parametrize("rotation", [0.0, 37.0, 200.0])
def test_roi_box_covers_the_joint_and_follows_rotation(view: str, rotation: float) -> None:
    rng = np.random.default_rng(1)
    pixels, truth = phantom.render(rng, view, 1, rotation, 1024)
    assert pixels.dtype == np.uint16 and pixels.shape == (1024, 820)
    assert truth.rotation_deg == pytest.approx(rotation)
    inside = box_mask(pixels.shape, truth.roi)
    jx, jy = (int(round(v)) for v in truth.joint)
    assert inside[jy, jx] == 1
    x0, y0, x1, y1 = truth.roi.bounds()
    assert 0 <= x0 and x1 < pixels.shape[1] and 0 <= y0 and y1 < pixels.shape[0]
    # The box's long side follows the anatomy's rotation (box angles are mod 180).
    assert (truth.roi.angle_deg + rotation) % 180.0 == pytest.approx(0.0, abs=0.5) or (
        truth.roi.angle_deg + rotation
    ) % 180.0 == pytest.approx(180.0, abs=0.5)
    # Bone inside the ROI: brighter on average than the image.
    assert pixels[inside == 1].mean() > pixels.mean()


@pytest.mark.parametrize("view", ["AP", "LAT"])
def test_grade_three_hides_the_joint_gap(view: str) -> None:
    """On the vertical line through the joint, the gap is a dark dip at grade 1 that the
    misaligned bone fills at grade 3."""
    gap, around = {}, {}
    for grade, score in ((1, 1.0), (3, 3.0)):
        rng = np.random.default_rng(2)
        pixels, truth = phantom.render(rng, view, grade, 0.0, 1024, score=score, marker=False)
        jx, jy = (int(round(v)) for v in truth.joint)
        column = pixels[:, jx - 3 : jx + 4].astype(np.float64).mean(axis=1)
        gap[grade] = column[jy - 3 : jy + 4].mean()
        around[grade] = min(column[jy - 60 : jy - 25].mean(), column[jy + 25 : jy + 60].mean())
    dip = around[1] - gap[1]
    assert dip > 0.2 * around[1]  # grade 1: a clear, dark joint space
    assert gap[3] - gap[1] > 0.4 * dip  # grade 3: filled in


def test_scores_follow_grades_and_rotation_label_is_in_range() -> None:
    for seed in range(12):
        _, truth = phantom.make_dataset(seed, rotation_range=(-30.0, 30.0))
        lo, hi = phantom.GRADE_BANDS[truth.grade]
        assert lo <= truth.score <= hi
        assert round(truth.score) == truth.grade
        assert 0.0 <= truth.rotation_deg < 360.0


def test_write_dataset_csv(tmp_path: Path) -> None:
    csv_path = phantom.write_dataset(tmp_path / "set", 6, seed=4, rotation_range=(0.0, 360.0))
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 6
    for key in ("file", "view", "grade", "score", "rotation_deg", "roi_cx", "roi_cy", "roi_w",
                "roi_h", "roi_angle"):  # fmt: skip
        assert key in rows[0]
    assert {r["view"] for r in rows} == {"AP", "LAT"}
    assert {r["grade"] for r in rows} == {"1", "2", "3"}
    for row in rows:
        ds = pydicom.dcmread(csv_path.parent / row["file"])
        assert ds.Rows == int(row["rows"]) and float(row["roi_w"]) >= float(row["roi_h"])


def test_generation_is_fast() -> None:
    rng = np.random.default_rng(0)
    phantom.render(rng, "AP", 2, 10.0, 2048)
    start = time.perf_counter()
    for i in range(5):
        phantom.render(rng, ("AP", "LAT")[i % 2], 2, 10.0, 2048)
    assert (time.perf_counter() - start) / 5 < 0.25  # generous: the box is shared


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="view"):
        phantom.render(np.random.default_rng(0), "PA", 1, 0.0)
    with pytest.raises(ValueError, match="bits_stored"):
        phantom.make_dataset(0, bits_stored=10)
