"""The chest phantom: seeded, its bone layer separable, and a DICOM file the worker reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_worker.phantoms.chest import BONES, _expose, make_dataset, render


def test_the_same_seed_draws_the_same_phantom_and_another_seed_another() -> None:
    a, b, c = render(7, 128), render(7, 128), render(8, 128)
    np.testing.assert_array_equal(a.radiograph, b.radiograph)
    np.testing.assert_array_equal(a.soft_tissue, b.soft_tissue)
    assert a.exposure == b.exposure
    assert np.abs(a.radiograph - c.radiograph).mean() > 0.01
    assert a.radiograph.shape == a.soft_tissue.shape == (128, 128) and a.radiograph.dtype == np.float32
    with pytest.raises(ValueError, match="64..2048"):
        render(1, 32)


def test_radiograph_is_soft_tissue_plus_bone_and_the_pair_differs_by_the_bones_alone() -> None:
    p = render(11, 192, noise=False)
    # The layers add up, and each bone group is drawn.
    np.testing.assert_allclose(sum(p.bone_layers[k] for k in BONES), p.bone, atol=1e-5)
    assert all(p.bone_layers[k].max() > 0.05 for k in BONES)
    # Exposure of the summed attenuations is the radiograph; of the soft layer alone, its twin.
    np.testing.assert_allclose(p.radiograph, np.clip(_expose(p.soft + p.bone, **p.exposure), 0, 1), atol=1e-6)
    np.testing.assert_allclose(p.soft_tissue, np.clip(_expose(p.soft, **p.exposure), 0, 1), atol=1e-6)
    diff = p.radiograph - p.soft_tissue
    no_bone, bone = p.bone == 0, p.bone > 0.1
    assert np.abs(diff[no_bone]).max() < 1e-6  # where there is no bone the pair is identical
    assert diff[bone].min() > 0.0 and diff[bone].mean() > 0.05  # bone adds brightness
    # The spine runs down the middle, the clavicles lie high.
    spine_cols = np.flatnonzero(p.bone_layers["spine"].sum(axis=0) > 0)
    assert abs(spine_cols.mean() - 96) < 12
    clav_rows = np.flatnonzero(p.bone_layers["clavicles"].sum(axis=1) > 0)
    assert clav_rows.mean() < 0.35 * 192


def test_noise_is_shared_by_both_images_of_the_pair() -> None:
    clean, noisy = render(5, 128, noise=False), render(5, 128)
    grain_a = noisy.radiograph - clean.radiograph
    grain_b = noisy.soft_tissue - clean.soft_tissue
    inside = (clean.radiograph > 0.05) & (clean.radiograph < 0.95) & (clean.soft_tissue > 0.05)
    np.testing.assert_allclose(grain_a[inside], grain_b[inside], atol=1e-5)
    assert grain_a[inside].std() > 0.002


def test_the_phantom_dicom_reads_through_the_worker_ingest(tmp_path: Path) -> None:
    from edge_worker.ingest import read_radiograph

    ds, phantom = make_dataset(21, size=96)
    path = tmp_path / "chest.dcm"
    ds.save_as(path, enforce_file_format=True)
    image = read_radiograph(path)
    assert image.header.body_part == "CHEST" and image.header.view_position == "PA"
    assert (image.header.rows, image.header.columns) == (96, 96)
    assert "SYNTHETIC" in str(ds.ImageComments)
    # The stored pixels are the radiograph (16 bits); the ingest windows them for display.
    stored = np.frombuffer(ds.PixelData, np.uint16).reshape(96, 96) / 65535.0
    np.testing.assert_allclose(stored, phantom.radiograph, atol=1 / 65535.0)
    assert np.corrcoef(image.pixels.ravel(), phantom.radiograph.ravel())[0, 1] > 0.99
