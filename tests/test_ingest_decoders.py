"""The decoder table: reduced-resolution decoding, fallback, and checks made before decoding.

Files are written into ``tmp_path`` with pydicom's encoders (and imagecodecs' where pydicom
has none); nothing outside the repository is needed.
"""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from test_ingest_files import phantom, rejected, rejected_with_peak, write

from edge_worker.errors import Rejection, RejectReason
from edge_worker.ingest import IngestPolicy, decoders, openjp2, read_radiograph
from edge_worker.ingest.codestream import ends_with_eoi, j2k_frame, jpeg_frame
from edge_worker.ingest.decode import reduction_factor
from edge_worker.ingest.reader import SOP_UID_ATTRIBUTE
from edge_worker.pipeline.preprocess import working_image

R = RejectReason
needs_imagecodecs = pytest.mark.skipif(
    importlib.util.find_spec("imagecodecs") is None, reason="needs imagecodecs"
)
needs_openjpeg = pytest.mark.skipif(
    isinstance(openjp2.library(), str), reason="no libopenjp2 found"
)


def smooth(rows: int = 1024, columns: int = 800, bits: int = 12) -> np.ndarray:
    """A smooth random image: reduced decoding and area resizing then agree closely."""
    noise = np.random.default_rng(5).standard_normal((rows, columns)).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), 12)
    scaled = (blurred - blurred.min()) / (blurred.max() - blurred.min()) * ((1 << bits) - 1)
    return scaled.astype(np.uint16)


def compressed(path: Path, ts: str, pixels: np.ndarray, **attrs: object) -> Path:
    """Write ``pixels`` natively, then compress with pydicom's pylibjpeg encoder."""
    write(path, pixels, **attrs)
    ds = dcmread(path)
    ds.compress(ts, encoding_plugin="pylibjpeg")
    ds.save_as(path)
    return path


# -- reduced resolution ----------------------------------------------------------------------


@needs_openjpeg
def test_jpeg2000_decodes_at_reduced_resolution(tmp_path: Path) -> None:
    image = smooth()
    voi = {"WindowCenter": 2048, "WindowWidth": 4096}  # the percentile window moves a little
    native = read_radiograph(write(tmp_path / "n.dcm", image, **voi))
    path = compressed(tmp_path / "j.dcm", JPEG2000Lossless, image, **voi)
    full = read_radiograph(path)
    assert full.decoder == "openjpeg" and np.array_equal(full.pixels, native.pixels)  # lossless
    quarter = read_radiograph(path, max_side=256)
    assert (quarter.pixels.shape, quarter.scale, quarter.decoder) == ((256, 200), 0.25, "openjpeg")
    half = read_radiograph(path, max_side=300)  # 1/4 would give 256 < 300
    assert (half.pixels.shape, half.scale) == ((512, 400), 0.5)
    # The LL band's sample i is centred on stored pixel 4i (ISO/IEC 15444-1 F.3.8), an area
    # resize's on 4i + 1.5: both are low-passes, 1.5 stored pixels apart.
    assert float(np.abs(full.pixels[::4, ::4] - quarter.pixels).mean()) < 0.002
    reference, factor = working_image(full.pixels, 256)
    assert factor == 0.25
    assert float(np.abs(reference - quarter.pixels).mean()) < 0.02


@needs_openjpeg
@needs_imagecodecs
def test_htj2k_decodes_at_reduced_resolution(tmp_path: Path) -> None:
    import imagecodecs

    image = smooth()
    frame = imagecodecs.htj2k_encode(image, reversible=True)
    path = write(tmp_path / "h.dcm", image, ts=HTJ2KLossless, pixel_data=encapsulate([frame]))
    full = read_radiograph(path)
    assert np.array_equal(full.pixels, read_radiograph(write(tmp_path / "n.dcm", image)).pixels)
    quarter = read_radiograph(path, max_side=256)
    assert (quarter.pixels.shape, quarter.scale) == ((256, 200), 0.25)


@needs_openjpeg
def test_signed_jpeg2000_keeps_its_sign(tmp_path: Path) -> None:
    arr = (smooth(256, 256).astype(np.int32) - 2048).astype(np.int16)
    attrs = {"PixelRepresentation": 1, "RescaleIntercept": 2048}
    native = read_radiograph(write(tmp_path / "n.dcm", arr, **attrs))
    j2k = read_radiograph(compressed(tmp_path / "j.dcm", JPEG2000Lossless, arr, **attrs))
    assert j2k.decoder == "openjpeg" and np.array_equal(j2k.pixels, native.pixels)


@needs_imagecodecs
@pytest.mark.parametrize("ts", [JPEGLosslessSV1, JPEGLSLossless])
def test_imagecodecs_lossless_decoders_are_exact(tmp_path: Path, ts: str) -> None:
    import imagecodecs

    image = smooth(256, 192)
    if ts == JPEGLSLossless:
        frame = imagecodecs.jpegls_encode(image, level=0)
    else:
        frame = imagecodecs.jpeg8_encode(image, lossless=True, predictor=1, bitspersample=12)
    result = read_radiograph(
        write(tmp_path / "a.dcm", image, ts=ts, pixel_data=encapsulate([frame]))
    )
    assert result.decoder.startswith("imagecodecs.")
    assert np.array_equal(result.pixels, read_radiograph(write(tmp_path / "n.dcm", image)).pixels)


def test_codecs_without_reduction_are_averaged_before_the_chain(tmp_path: Path) -> None:
    image = smooth(1000, 800)
    voi = {"WindowCenter": 2048, "WindowWidth": 4096}
    path = write(tmp_path / "n.dcm", image, **voi)
    full = read_radiograph(path)
    reduced = read_radiograph(path, max_side=250)
    assert (reduced.decoder, reduced.scale, reduced.pixels.shape) == ("pydicom", 0.25, (250, 200))
    reference, _ = working_image(full.pixels, 250)
    assert float(np.abs(reference - reduced.pixels).max()) < 1e-3  # a linear window commutes


@pytest.mark.parametrize("candidate", [name for name, _ in openjp2.LIBRARY_CANDIDATES])
def test_each_libopenjp2_candidate_decodes_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, candidate: str
) -> None:
    finder = dict(openjp2.LIBRARY_CANDIDATES)[candidate]
    if not finder():
        pytest.skip(f"{candidate} is not installed")
    image = smooth(300, 260)
    ds = dcmread(compressed(tmp_path / "j.dcm", JPEG2000Lossless, image))
    codestream = ds.PixelData[ds.PixelData.index(b"\xff\x4f\xff\x51") :].rstrip(b"\0")
    monkeypatch.setattr(openjp2, "LIBRARY_CANDIDATES", ((candidate, finder),))
    openjp2.library.cache_clear()
    try:
        lib = openjp2.library()
        assert not isinstance(lib, str), lib
        full = openjp2.decode(codestream, 300, 260, levels=0, lib=lib)
        quarter = openjp2.decode(codestream, 300, 260, levels=2, lib=lib)
    finally:
        monkeypatch.undo()
        openjp2.library.cache_clear()
    assert full.factor == 1 and np.array_equal(full.pixels, image)
    assert quarter.factor == 4 and quarter.pixels.shape == (75, 65)
    with pytest.raises(openjp2.OpenJpegError, match="the header says 1 of 301x260"):
        openjp2.decode(codestream, 301, 260, levels=0)


def test_reduction_factor() -> None:
    assert reduction_factor(3000, 3000, 512) == 4
    assert reduction_factor(1760, 1760, 512) == 2
    assert reduction_factor(8192, 8192, 512) == 16
    assert reduction_factor(3000, 3000, None) == 1
    assert reduction_factor(400, 300, 512) == 1


# -- fallback and failure --------------------------------------------------------------------


@needs_openjpeg
def test_a_failing_fast_decoder_falls_back_to_pydicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(self: object, frame: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(decoders.OpenJpeg, "decode", boom)
    path = compressed(tmp_path / "j.dcm", JPEG2000Lossless, smooth(256, 256))
    result = read_radiograph(path, max_side=64)
    # pydicom decodes at full size; the grayscale chain averages 4x4 blocks instead.
    assert (result.decoder, result.scale, result.pixels.shape) == ("pydicom", 0.25, (64, 64))
    assert any("openjpeg: RuntimeError: boom" in note for note in result.notes)


def test_when_every_decoder_fails_each_failure_is_listed(tmp_path: Path) -> None:
    good = compressed(tmp_path / "j.dcm", JPEG2000Lossless, smooth(256, 256))
    frame = dcmread(good).PixelData
    codestream = frame[frame.index(b"\xff\x4f\xff\x51") :]
    sod = codestream.index(b"\xff\x93")  # start of tile data: keep the headers, spoil the rest
    broken = codestream[: sod + 2] + bytes(range(256)) * 8 + b"\xff\xd9"
    path = write(
        tmp_path / "b.dcm", smooth(256, 256), ts=JPEG2000Lossless, pixel_data=encapsulate([broken])
    )
    error = rejected(path)
    assert error.reason is R.DECODE_FAILED
    assert "openjpeg:" in error.detail and "pydicom:" in error.detail


@needs_imagecodecs
def test_a_broken_jpeg_ls_stream_is_not_handed_to_a_lenient_decoder(tmp_path: Path) -> None:
    import imagecodecs

    image = smooth(256, 192)
    frame = bytearray(imagecodecs.jpegls_encode(image, level=0))
    for at in range(200, len(frame) - 200, 97):
        frame[at] ^= 0x5A  # entropy data damaged, markers and EOI intact
    path = write(
        tmp_path / "a.dcm", image, ts=JPEGLSLossless, pixel_data=encapsulate([bytes(frame)])
    )
    error = rejected(path)
    assert error.reason is R.DECODE_FAILED
    assert "imagecodecs.jpegls_decode" in error.detail and "pydicom" not in error.detail


def test_codestream_larger_than_the_header_is_refused_before_allocation(tmp_path: Path) -> None:
    image = phantom(128, 96, 8)
    frame = bytearray(cv2.imencode(".jpg", image)[1].tobytes())
    sof = frame.index(b"\xff\xc0")
    struct.pack_into(">HH", frame, sof + 5, 65535, 65535)  # SOF0: precision, lines, samples
    path = write(
        tmp_path / "a.dcm", image, ts=JPEGBaseline8Bit, pixel_data=encapsulate([bytes(frame)])
    )
    error, peak = rejected_with_peak(path)
    assert error.reason is R.DECODE_FAILED and "65535x65535" in error.detail
    assert peak < 5_000_000  # 65535^2 pixels would need 4 GB


def test_jpeg_without_end_of_image_is_truncated_not_grey(tmp_path: Path) -> None:
    image = phantom(128, 96, 8)
    frame = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    cut = frame[: len(frame) * 2 // 3]
    cut += b"\0" * (len(cut) % 2)
    path = write(tmp_path / "a.dcm", image, ts=JPEGBaseline8Bit, pixel_data=encapsulate([cut]))
    error = rejected(path)
    assert error.reason is R.TRUNCATED_PIXEL_DATA and "FFD9" in error.detail


@needs_openjpeg
def test_cut_jpeg2000_codestream_is_refused_even_with_an_end_marker(tmp_path: Path) -> None:
    good = compressed(tmp_path / "j.dcm", JPEG2000Lossless, smooth(256, 256))
    frame = dcmread(good).PixelData
    codestream = frame[frame.index(b"\xff\x4f\xff\x51") :]
    cut = codestream[: len(codestream) * 2 // 3] + b"\xff\xd9"
    path = write(
        tmp_path / "c.dcm", smooth(256, 256), ts=JPEG2000Lossless, pixel_data=encapsulate([cut])
    )
    assert rejected(path).reason is R.DECODE_FAILED


def test_codestream_parsers() -> None:
    jpeg = cv2.imencode(".jpg", phantom(128, 96, 8))[1].tobytes()
    declared = jpeg_frame(jpeg)
    assert declared is not None and (declared.rows, declared.columns) == (128, 96)
    assert jpeg_frame(b"\xff\xd8\xff\xda" + b"\0" * 16) is None  # SOS before any SOF
    assert jpeg_frame(b"not a jpeg") is None
    siz = b"\xff\x4f\xff\x51" + struct.pack(
        ">HHIIIIIIIIH", 41, 0, 300, 200, 0, 0, 300, 200, 0, 0, 1
    )
    found = j2k_frame(siz + b"\x0b\x01\x01")
    assert found is not None and (found.rows, found.columns, found.precision) == (200, 300, 12)
    assert ends_with_eoi(b"..\xff\xd9") and ends_with_eoi(b"..\xff\xd9\x00")
    assert ends_with_eoi(b"..\xff\xd9\xff") and not ends_with_eoi(b"..\xff\xd9\x12\x34")


# -- limits checked before reading -----------------------------------------------------------


def test_deflate_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.dcm",
        np.zeros((2048, 1024), dtype=np.uint16),
        ts=DeflatedExplicitVRLittleEndian,
    )
    assert path.stat().st_size < 100_000  # 4 MiB of zeros deflate to a few KiB
    error = rejected(path, IngestPolicy(max_file_mib=1))
    assert error.reason is R.TOO_LARGE and "inflates beyond 1 MiB" in error.detail
    assert read_radiograph(path).pixels.shape == (2048, 1024)  # fine under the default limit


def test_file_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    path = write(tmp_path / "big.dcm", np.zeros((1024, 1024), dtype=np.uint16))
    error = rejected(path, IngestPolicy(max_file_mib=1))
    assert error.reason is R.TOO_LARGE and "MiB" in error.detail


def test_corrupt_deflate_stream_is_unreadable(tmp_path: Path) -> None:
    path = write(tmp_path / "d.dcm", ts=DeflatedExplicitVRLittleEndian)
    data = bytearray(path.read_bytes())
    data[-200:] = bytes(range(200))
    path.write_bytes(bytes(data))
    assert rejected(path).reason in (R.UNREADABLE, R.TRUNCATED_PIXEL_DATA)


def test_corrupt_element_length_costs_no_memory(tmp_path: Path) -> None:
    path = write(tmp_path / "a.dcm", TextValue="note")  # (0040,A160) UT: a 4-byte length
    data = bytearray(path.read_bytes())
    at = data.index(b"\x40\x00\x60\xa1UT")
    struct.pack_into("<I", data, at + 8, 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    error, peak = rejected_with_peak(path)
    assert error.reason in (R.UNREADABLE, R.TRUNCATED_PIXEL_DATA)
    assert "(0040,A160)" in error.detail
    assert peak < 5_000_000  # the declared 4 GiB was never allocated


# -- the rejection is keyed --------------------------------------------------------------------


def test_rejections_after_the_header_carry_the_sop_instance_uid(tmp_path: Path) -> None:
    path = write(tmp_path / "ct.dcm", Modality="CT")
    with pytest.raises(Rejection) as info:
        read_radiograph(path)
    assert getattr(info.value, SOP_UID_ATTRIBUTE) == dcmread(path).SOPInstanceUID
    rle = compressed(tmp_path / "r.dcm", RLELossless, phantom())
    data = rle.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 40])
    with pytest.raises(Rejection) as info:
        read_radiograph(tmp_path / "cut.dcm")
    assert info.value.reason is R.TRUNCATED_PIXEL_DATA
    assert getattr(info.value, SOP_UID_ATTRIBUTE) == dcmread(rle).SOPInstanceUID
    (tmp_path / "junk.dcm").write_bytes(b"junk" * 100)
    with pytest.raises(Rejection) as info:
        read_radiograph(tmp_path / "junk.dcm")
    assert getattr(info.value, SOP_UID_ATTRIBUTE, None) is None
