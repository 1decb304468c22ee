"""Each grayscale step on small synthetic arrays, with expected values worked out by hand.

Formulas: PS3.3 C.11.1 (Modality LUT / rescale), C.11.2.1.1 (VOI LUT), C.11.2.1.2.1 (LINEAR),
C.11.2.1.3.1 (SIGMOID), C.11.2.1.3.2 (LINEAR_EXACT), C.7.6.3.1.2 (MONOCHROME1),
C.7.5.1.1.2 (Pixel Padding Value).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from pydicom.dataset import Dataset

from edge_worker.ingest import grayscale as g
from edge_worker.ingest.grayscale import GrayscaleMeta, Lut


def u16(values: list[int] | list[list[int]]) -> np.ndarray:
    return np.array(values, dtype=np.uint16)


# -- stored values -------------------------------------------------------------------------


def test_stored_values_masks_bits_above_high_bit() -> None:
    meta = GrayscaleMeta(bits_stored=12)
    # 0x1005: an overlay bit (bit 12) set on top of the value 5.
    assert g.stored_values(u16([0x1005, 4095, 0]), meta).tolist() == [5, 4095, 0]


def test_stored_values_sign_extends_signed_data() -> None:
    meta = GrayscaleMeta(bits_stored=12, signed=True)
    raw = np.array([0x0FFF, 0x0800, 0x07FF, 1], dtype=np.int16)
    # 12-bit two's complement: 0xFFF = -1, 0x800 = -2048, 0x7FF = 2047.
    assert g.stored_values(raw, meta).tolist() == [-1, -2048, 2047, 1]


def test_stored_values_leaves_full_depth_data_alone() -> None:
    arr = u16([0, 65535])
    assert g.stored_values(arr, GrayscaleMeta(bits_stored=16)) is arr


# -- modality LUT ----------------------------------------------------------------------------


def test_rescale_slope_and_intercept() -> None:
    meta = GrayscaleMeta(rescale_slope=2.0, rescale_intercept=-1024.0)
    # 2 * 0 - 1024, 2 * 100 - 1024, 2 * 1000 - 1024
    assert g.modality_lut(u16([0, 100, 1000]), meta).tolist() == [-1024.0, -824.0, 976.0]


def test_modality_lut_sequence_wins_over_rescale_and_clamps_its_range() -> None:
    lut = Lut(first_mapped=10, bits=16, data=np.array([100.0, 200.0, 300.0]))
    meta = GrayscaleMeta(modality_lut=lut, rescale_slope=5.0, rescale_intercept=7.0)
    # Below the first mapped value -> first entry, beyond the last -> last entry.
    assert g.modality_lut(u16([5, 10, 11, 12, 50]), meta).tolist() == [100, 100, 200, 300, 300]


def test_lut_from_item_reads_ow_bytes_and_signed_first_value() -> None:
    item = Dataset()
    item.LUTDescriptor = [3, 65535, 16]  # first mapped -1 written as unsigned
    item.LUTData = np.array([7, 8, 9], dtype="<u2").tobytes()
    lut = g.lut_from_item(item, signed=True)
    assert (lut.first_mapped, lut.bits, lut.data.tolist()) == (-1, 16, [7.0, 8.0, 9.0])
    assert g.apply_lut(np.array([-5, -1, 0, 1, 9], dtype=np.int16), lut).tolist() == [7, 7, 8, 9, 9]


def test_lut_descriptor_zero_entries_means_65536() -> None:
    item = Dataset()
    item.LUTDescriptor = [0, 0, 16]
    item.LUTData = np.arange(65536, dtype="<u2").tobytes()
    assert g.lut_from_item(item, signed=False).data.size == 65536


# -- VOI --------------------------------------------------------------------------------------


def test_voi_lut_scales_by_its_bit_depth() -> None:
    lut = Lut(first_mapped=0, bits=8, data=np.array([0.0, 51.0, 255.0]))
    # 0/255, 51/255 = 0.2, 255/255, and 9 clamps to the last entry.
    np.testing.assert_allclose(g.voi_lut(u16([0, 1, 2, 9]), lut), [0.0, 0.2, 1.0, 1.0])


def test_voi_lut_declared_16_bits_but_filled_to_12_uses_12() -> None:
    lut = Lut(first_mapped=0, bits=16, data=np.array([0.0, 4095.0]))
    assert g.lut_output_max(lut) == 4095.0
    assert g.lut_output_max(Lut(0, 16, np.array([0.0, 40000.0]))) == 65535.0


def test_window_linear_has_half_pixel_offsets() -> None:
    x = np.array([94.0, 94.5, 95.0, 100.0, 104.0, 104.5, 105.0])
    # c=100, w=11: 0 at x <= 94.5, 1 at x > 104.5, else (x - 99.5) / 10 + 0.5
    expected = [0.0, 0.0, 0.05, 0.55, 0.95, 1.0, 1.0]
    np.testing.assert_allclose(g.window(x, 100.0, 11.0, "LINEAR"), expected, atol=1e-12)


def test_window_linear_exact_has_none() -> None:
    x = np.array([94.0, 95.0, 100.0, 102.0, 105.0, 106.0])
    # c=100, w=10: (x - 100) / 10 + 0.5, clipped
    np.testing.assert_allclose(
        g.window(x, 100.0, 10.0, "LINEAR_EXACT"), [0.0, 0.0, 0.5, 0.7, 1.0, 1.0], atol=1e-12
    )
    # The two functions differ at the centre: 0.55 (w=11 LINEAR) against 0.5.
    assert g.window(np.array([100.0]), 100.0, 10.0, "LINEAR")[0] == pytest.approx(0.5 + 0.5 / 9)


def test_window_linear_width_one_is_a_threshold() -> None:
    assert g.window(np.array([99.0, 99.5, 100.0]), 100.0, 1.0).tolist() == [0.0, 0.0, 1.0]


def test_window_sigmoid() -> None:
    x = np.array([75.0, 100.0, 125.0])
    # 1 / (1 + exp(-4 (x - 100) / 50)): exp(2) -> 0.119203, 0.5, 0.880797
    np.testing.assert_allclose(
        g.window(x, 100.0, 50.0, "SIGMOID"), [0.1192029, 0.5, 0.8807971], atol=1e-6
    )


@pytest.mark.parametrize(
    ("function", "width"), [("LINEAR", 0.5), ("LINEAR_EXACT", 0.0), ("SIGMOID", -1.0)]
)
def test_window_rejects_widths_the_standard_forbids(function: str, width: float) -> None:
    with pytest.raises(ValueError):
        g.window(np.array([1.0]), 0.0, width, function)
    meta = GrayscaleMeta(window_center=0.0, window_width=width, voi_lut_function=function)
    assert not g.has_voi(meta)


def test_voi_prefers_lut_then_window_then_bounds() -> None:
    x = np.array([0.0, 1.0, 2.0])
    lut = Lut(first_mapped=0, bits=8, data=np.array([255.0, 0.0, 0.0]))
    both = GrayscaleMeta(voi_lut=lut, window_center=1.0, window_width=2.0)
    assert g.voi(x, both, None).tolist() == [1.0, 0.0, 0.0]
    window_only = GrayscaleMeta(
        window_center=1.0, window_width=2.0, voi_lut_function="LINEAR_EXACT"
    )
    assert g.voi(x, window_only, None).tolist() == [0.0, 0.5, 1.0]
    assert g.voi(x, GrayscaleMeta(), (0.0, 4.0)).tolist() == [0.0, 0.25, 0.5]
    assert g.voi(x, GrayscaleMeta(), None).tolist() == [0.0, 0.0, 0.0]


# -- polarity ----------------------------------------------------------------------------------


def test_monochrome1_is_inverted_and_monochrome2_is_not() -> None:
    x = np.array([0.0, 0.25, 1.0])
    assert g.polarity(x, GrayscaleMeta(photometric="MONOCHROME1")).tolist() == [1.0, 0.75, 0.0]
    assert g.polarity(x, GrayscaleMeta(photometric="MONOCHROME2")).tolist() == [0.0, 0.25, 1.0]


def test_monochrome1_inversion_comes_after_the_window() -> None:
    meta = GrayscaleMeta(
        photometric="MONOCHROME1", bits_stored=12, window_center=100.0, window_width=11.0
    )
    # VOI first: [0, 0.05, 0.55, 1]; then 1 - v.  Inverting the stored values first (4095 - x)
    # would put every pixel outside the window and give all ones.
    out = g.normalise(u16([[90, 95, 100, 110]]), meta)
    np.testing.assert_allclose(out, [[1.0, 0.95, 0.45, 0.0]], atol=1e-6)
    assert out.dtype == np.float32


# -- padding, border runs, percentile window -------------------------------------------------


def test_padding_mask_value_and_range() -> None:
    stored = u16([0, 5, 10, 11, 4095])
    assert g.padding_mask(stored, GrayscaleMeta()) is None
    assert g.padding_mask(stored, GrayscaleMeta(padding_value=4095)).tolist() == [0, 0, 0, 0, 1]
    # The range limit may lie on either side of the padding value.
    ranged = GrayscaleMeta(padding_value=10, padding_range_limit=0)
    assert g.padding_mask(stored, ranged).tolist() == [1, 1, 1, 0, 0]


def test_border_runs_marks_only_edge_connected_extremes() -> None:
    arr = np.full((6, 6), 150, dtype=np.uint16)
    arr[:, :2] = 0  # collimator blade on the left: exact minimum
    arr[5, :] = 999  # burnt-out bottom row: exact maximum
    arr[2, 3] = 0  # an interior minimum is anatomy, not a border
    arr[3, 4] = 160
    mask = g.border_runs(arr)
    expected = np.zeros((6, 6), dtype=bool)
    expected[:, :2] = True
    expected[5, :] = True
    assert np.array_equal(mask, expected)


def _ramp_with(block_value: int) -> np.ndarray:
    """A 100x100 ramp 1000..1099 by column with an interior 40x40 block of ``block_value``."""
    arr = np.tile(np.arange(1000, 1100, dtype=np.uint16), (100, 1))
    arr[30:70, 30:70] = block_value
    return arr


def test_padding_value_is_excluded_from_the_percentile_window() -> None:
    arr = _ramp_with(50)  # 16 % of the image is padding, well below the anatomy
    plain = g.fallback_bounds(arr, GrayscaleMeta())
    assert plain is not None and plain[0] == 50.0  # the 1st percentile lands on the padding
    bounds = g.fallback_bounds(arr, GrayscaleMeta(padding_value=50))
    assert bounds is not None and bounds[0] >= 1000.0 and bounds[1] <= 1099.0
    out = g.normalise(arr, GrayscaleMeta(padding_value=50))
    assert out[50, 50] == 0.0  # padding is rendered black
    assert out[0, 99] == pytest.approx(1.0) and out[0, 0] == pytest.approx(0.0)


def test_saturated_borders_do_not_dominate_the_percentile_window() -> None:
    arr = np.tile(np.arange(1000, 1100, dtype=np.uint16), (100, 1))
    arr[:, :30] = 0  # 30 % black collimation on the left
    arr[:, 80:] = 4095  # 20 % saturated direct exposure on the right
    bounds = g.fallback_bounds(arr, GrayscaleMeta())
    assert bounds is not None
    lo, hi = bounds
    # Percentiles of the anatomy only: 5000 values, 1030..1079 a hundred times each; the 1st
    # percentile sits at sorted index 49.99 (a 1030) and the 99th at 4949.01 (a 1079).
    assert (lo, hi) == (1030.0, 1079.0)
    # Without the exclusion the window would span 0..4095 and flatten the anatomy.
    assert np.percentile(arr, (1, 99)).tolist() == [0.0, 4095.0]


def test_percentile_window_and_flat_images() -> None:
    arr = np.arange(101, dtype=np.float64).reshape(1, 101)
    out = g.percentile_window(arr, percentiles=(10.0, 90.0))
    assert out[0, 10] == 0.0 and out[0, 50] == pytest.approx(0.5) and out[0, 90] == 1.0
    assert g.percentile_window(np.full((4, 4), 7.0)).tolist() == np.zeros((4, 4)).tolist()
    flat = g.normalise(np.full((8, 8), 7, dtype=np.uint16), GrayscaleMeta())
    assert flat.dtype == np.float32 and not flat.any()


# -- the whole chain ---------------------------------------------------------------------------


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("signed", [False, True])
def test_table_lookup_equals_the_elementwise_chain(photometric: str, signed: bool) -> None:
    rng = np.random.default_rng(0)
    dtype = np.int16 if signed else np.uint16
    arr = rng.integers(-2000 if signed else 0, 4000, size=(64, 80)).astype(dtype)
    meta = GrayscaleMeta(
        photometric=photometric,
        bits_stored=13,
        signed=signed,
        rescale_slope=0.5,
        rescale_intercept=-10.0,
        padding_value=int(arr[0, 0]),
    )
    stored = g.stored_values(arr, meta)
    bounds = g.fallback_bounds(stored, meta)
    direct = g.polarity(g.voi(g.modality_lut(stored, meta), meta, bounds), meta)
    pad = g.padding_mask(stored, meta)
    assert pad is not None
    direct = np.where(pad, 0.0, direct)
    np.testing.assert_allclose(g.normalise(arr, meta), direct, atol=1e-6)
    windowed = replace(meta, window_center=100.0, window_width=500.0, voi_lut_function="SIGMOID")
    expected = g.polarity(
        g.window(g.modality_lut(stored, windowed), 100.0, 500.0, "SIGMOID"), windowed
    )
    np.testing.assert_allclose(g.normalise(arr, windowed), np.where(pad, 0.0, expected), atol=1e-6)


def test_meta_from_dataset_takes_the_first_of_several_windows() -> None:
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsStored = 10
    ds.PixelRepresentation = 0
    ds.WindowCenter = ["550", "600"]
    ds.WindowWidth = ["1024", "800"]
    ds.VOILUTFunction = "LINEAR_EXACT"
    ds.RescaleSlope = "0"  # invalid; treated as 1 rather than flattening the image
    ds.PixelPaddingValue = 0
    meta = g.meta_from_dataset(ds)
    assert (meta.window_center, meta.window_width) == (550.0, 1024.0)
    assert (meta.voi_lut_function, meta.photometric, meta.bits_stored) == (
        "LINEAR_EXACT",
        "MONOCHROME1",
        10,
    )
    assert (meta.rescale_slope, meta.rescale_intercept, meta.padding_value) == (1.0, 0.0, 0)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_meta_from_dataset_ignores_unusable_values() -> None:
    ds = Dataset()
    ds.WindowCenter = "nan"
    ds.WindowWidth = "400"
    broken = Dataset()
    broken.LUTDescriptor = [2, 0]  # two values instead of three
    broken.LUTData = [0, 1]
    ds.VOILUTSequence = [broken]
    meta = g.meta_from_dataset(ds)
    assert meta.window_center is None and meta.voi_lut is None and not g.has_voi(meta)
    ds.ModalityLUTSequence = [broken]
    with pytest.raises(ValueError):
        g.meta_from_dataset(ds)


def test_box_reduce_averages_blocks_and_keeps_the_dtype() -> None:
    arr = np.arange(36, dtype=np.uint16).reshape(6, 6)
    out = g.box_reduce(arr, 2)
    assert out.dtype == np.uint16 and out.shape == (3, 3)
    assert int(out[0, 0]) == round((0 + 1 + 6 + 7) / 4)
    assert g.box_reduce(arr, 1) is arr
    odd = g.box_reduce(np.ones((7, 5), dtype=np.int16) * -3, 4)
    assert odd.shape == (2, 2) and odd.dtype == np.int16 and (odd == -3).all()
    wide = g.box_reduce(np.full((4, 4), 70000, dtype=np.uint32), 2)
    assert wide.dtype == np.uint32 and (wide == 70000).all()


def test_normalise_with_reduce_equals_reduce_then_chain() -> None:
    rng = np.random.default_rng(2)
    stored = (rng.integers(0, 4096, (64, 48)) | (1 << 13)).astype(np.uint16)  # an overlay bit
    meta = g.GrayscaleMeta(bits_stored=12, window_center=2048.0, window_width=4096.0)
    reduced = g.normalise(stored, meta, reduce=4)
    expected = g.normalise(g.box_reduce(g.stored_values(stored, meta), 4), meta)
    assert reduced.shape == (16, 12) and np.array_equal(reduced, expected)
