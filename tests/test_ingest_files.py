"""The ingest on files made here with pydicom: every way a file can be refused, and phantoms.

Each test writes its files into ``tmp_path``; nothing outside the repository is needed.
"""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from edge_worker.errors import Rejection, RejectReason
from edge_worker.ingest import IngestPolicy, read_header, read_radiograph
from edge_worker.pipeline.preprocess import working_image

R = RejectReason
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
PATIENT = "Doe^Jane^Q"
PATIENT_ID = "PID-778899"


def phantom(rows: int = 128, columns: int = 96, bits: int = 12) -> np.ndarray:
    """A bright vertical 'bone' band on a mid-grey 'soft tissue' ramp (MONOCHROME2 sense)."""
    top = (1 << bits) - 1
    ramp = np.linspace(0.2 * top, 0.5 * top, columns)
    arr = np.tile(ramp, (rows, 1))
    arr[:, columns // 3 : columns // 2] = 0.9 * top
    return arr.astype(np.uint16 if bits > 8 else np.uint8)


def write(
    path: Path,
    pixels: np.ndarray | None = None,
    *,
    ts: str = ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
    file_meta: bool = True,
    **attrs: Any,
) -> Path:
    """Write a small single-frame radiograph; ``attrs`` override or add (None deletes)."""
    arr = phantom() if pixels is None else pixels
    ds = Dataset()
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientName = PATIENT
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = 12 if arr.dtype.itemsize == 2 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.2, 0.2]
    for key, value in attrs.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    if pixel_data is not None or UID(ts).is_encapsulated:
        ds.PixelData = pixel_data if pixel_data is not None else arr.tobytes()
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = UID(ts).is_encapsulated
    else:
        ds.PixelData = arr.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    if file_meta:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(path, enforce_file_format=True)
    else:
        # ACR-NEMA style: no preamble, no group 0002; encoding follows ``ts``.
        ds.save_as(path, implicit_vr=UID(ts).is_implicit_VR, little_endian=True)
    return path


def rejected(path: Path, policy: IngestPolicy | None = None, **kwargs: Any) -> Rejection:
    with pytest.raises(Rejection) as info:
        read_radiograph(path, policy or IngestPolicy(), **kwargs)
    return info.value


def rejected_with_peak(path: Path) -> tuple[Rejection, int]:
    """:func:`rejected`, and the peak of Python allocations (bytes) while it ran."""
    tracemalloc.start()
    try:
        error = rejected(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return error, peak


# -- not DICOM, unreadable -------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"",
        np.random.default_rng(1).bytes(4096),
        cv2.imencode(".png", phantom(32, 32, 8))[1].tobytes(),
        b"hello, this is a text file\n" * 20,
        b"\0" * 2048,
    ],
    ids=["empty", "random", "png", "text", "zeros"],
)
def test_not_dicom(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "file.dcm"
    path.write_bytes(content)
    assert rejected(path).reason is R.NOT_DICOM
    with pytest.raises(Rejection) as info:
        read_header(path)
    assert info.value.reason is R.NOT_DICOM


def test_missing_file_and_directory_are_unreadable(tmp_path: Path) -> None:
    assert rejected(tmp_path / "absent.dcm").reason is R.UNREADABLE
    assert rejected(tmp_path).reason is R.UNREADABLE
    with pytest.raises(Rejection) as info:
        read_header(tmp_path / "absent.dcm")
    assert info.value.reason is R.UNREADABLE


def test_corrupted_headers_only_ever_raise_rejection(tmp_path: Path) -> None:
    good = write(tmp_path / "good.dcm").read_bytes()
    rng = np.random.default_rng(7)
    for i in range(40):
        data = bytearray(good)
        for offset in rng.integers(128, 700, size=8):
            data[int(offset)] = int(rng.integers(0, 256))
        path = tmp_path / f"bad{i}.dcm"
        path.write_bytes(bytes(data))
        try:
            result = read_radiograph(path)
        except Rejection:
            continue
        assert result.pixels.dtype == np.float32


# -- pixel data: missing, truncated ----------------------------------------------------------


def test_no_pixel_data(tmp_path: Path) -> None:
    path = write(tmp_path / "a.dcm")
    from pydicom import dcmread

    ds = dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    assert rejected(path).reason is R.NO_PIXEL_DATA
    assert read_header(path).rows == 128  # the header alone is fine


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_native_pixel_data(tmp_path: Path, keep: float) -> None:
    path = write(tmp_path / "a.dcm")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    error = rejected(path)
    assert error.reason is R.TRUNCATED_PIXEL_DATA
    assert "of 24576 bytes" in error.detail and "cut short" in error.detail  # 128 x 96 x 2


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_encapsulated_pixel_data(tmp_path: Path, keep: float) -> None:
    from pydicom import dcmread

    path = write(tmp_path / "a.dcm")
    ds = dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(path)
    assert read_radiograph(path).pixels.shape == (128, 96)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert rejected(path).reason is R.TRUNCATED_PIXEL_DATA


def test_encapsulated_pixel_data_without_fragments(tmp_path: Path) -> None:
    path = write(tmp_path / "a.dcm", ts=RLELossless, pixel_data=b"\xfe\xff\x00\xe0\x00\x00\x00\x00")
    assert rejected(path).reason is R.NO_PIXEL_DATA


# -- header policy ---------------------------------------------------------------------------


def test_multi_frame(tmp_path: Path) -> None:
    frames = np.concatenate([phantom()] * 3)
    path = write(tmp_path / "a.dcm", frames, Rows=128, NumberOfFrames=3)
    error = rejected(path)
    assert error.reason is R.MULTI_FRAME and "3" in error.detail


def test_huge_declared_size_is_rejected_without_allocation(tmp_path: Path) -> None:
    path = write(tmp_path / "a.dcm", phantom(4, 4), Rows=65535, Columns=65535)
    error, peak = rejected_with_peak(path)
    assert error.reason is R.TOO_LARGE and "65535x65535" in error.detail
    assert peak < 5_000_000  # a decoded 65535^2 uint16 image would need 8.6 GB


def test_size_limits_follow_the_policy(tmp_path: Path) -> None:
    path = write(tmp_path / "a.dcm")
    assert rejected(path, IngestPolicy(max_side=100)).reason is R.TOO_LARGE
    assert rejected(path, IngestPolicy(min_side=100)).reason is R.TOO_SMALL
    assert rejected(write(tmp_path / "b.dcm", phantom(2, 2))).reason is R.TOO_SMALL


@pytest.mark.parametrize(
    "attrs",
    [
        {
            "PresentationIntentType": "FOR PROCESSING",
            "SOPClassUID": DX_PRESENTATION,
            "Modality": "DX",
        },
        {"SOPClassUID": DX_PROCESSING, "Modality": "DX"},
    ],
    ids=["presentation-intent", "sop-class"],
)
def test_for_processing(tmp_path: Path, attrs: dict[str, str]) -> None:
    path = write(tmp_path / "a.dcm", **attrs)
    assert rejected(path).reason is R.FOR_PROCESSING
    accepted = read_radiograph(path, IngestPolicy(accept_for_processing=True))
    assert accepted.pixels.shape == (128, 96)


@pytest.mark.parametrize("modality", ["CT", "MR", "US", None])
def test_unsupported_modality(tmp_path: Path, modality: str | None) -> None:
    error = rejected(write(tmp_path / "a.dcm", Modality=modality))
    assert error.reason is R.UNSUPPORTED_MODALITY
    assert (modality or "(none)") in error.detail


def test_colour_is_unsupported_photometric(tmp_path: Path) -> None:
    rgb = np.zeros((64, 64, 3), dtype=np.uint8)
    path = write(
        tmp_path / "a.dcm",
        phantom(64, 64, 8),
        pixel_data=rgb.tobytes(),
        PhotometricInterpretation="RGB",
        SamplesPerPixel=3,
        PlanarConfiguration=0,
    )
    assert rejected(path).reason is R.UNSUPPORTED_PHOTOMETRIC


def test_unsupported_transfer_syntax_names_it(tmp_path: Path) -> None:
    mpeg2 = "1.2.840.10008.1.2.4.100"
    path = write(tmp_path / "a.dcm", ts=mpeg2, pixel_data=encapsulate([b"\x00\x00\x01\xb3" * 16]))
    error = rejected(path)
    assert error.reason is R.UNSUPPORTED_TRANSFER_SYNTAX
    assert mpeg2 in error.detail and "MPEG2" in error.detail


def test_garbage_codestream_is_decode_failed_without_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = b"\xff\x4f\xff\x51" + bytes(range(256)) * 4 + b"\xff\xd9"
    path = write(tmp_path / "a.dcm", ts=JPEG2000Lossless, pixel_data=encapsulate([junk]))
    with caplog.at_level(logging.DEBUG):
        error = rejected(path)
    assert error.reason is R.DECODE_FAILED
    assert "JPEG 2000" in error.detail and JPEG2000Lossless in error.detail
    captured = capsys.readouterr()
    assert "Traceback" not in caplog.text + captured.out + captured.err
    assert sum(r.name == "edge_worker.ingest.reader" for r in caplog.records) <= 1


# -- privacy ---------------------------------------------------------------------------------


def test_patient_attributes_never_reach_the_header(tmp_path: Path) -> None:
    path = write(tmp_path / "a.dcm", ImageLaterality="L")
    for header in (read_header(path), read_radiograph(path).header):
        text = f"{header} {header!r} {header.public()} {header.extra}"
        for secret in (PATIENT, "Doe", PATIENT_ID, "19700101"):
            assert secret not in text
        assert header.laterality == "L" and header.pixel_spacing_mm == (0.2, 0.2)


# -- accepted files: phantoms, ACR-NEMA, reduced JPEG ------------------------------------------


@pytest.mark.parametrize("window", [True, False], ids=["window", "percentile"])
def test_monochrome1_phantom_is_the_inverse_of_monochrome2(tmp_path: Path, window: bool) -> None:
    voi = {"WindowCenter": 2048, "WindowWidth": 4096} if window else {}
    stored = phantom()
    mono2 = read_radiograph(write(tmp_path / "m2.dcm", stored, **voi)).pixels
    # The same anatomy stored for MONOCHROME1: high attenuation (bone) has low values.
    mono1_stored = (4095 - stored).astype(np.uint16)
    voi1 = {"WindowCenter": 4095 - 2048, "WindowWidth": 4096} if window else {}
    mono1 = read_radiograph(
        write(tmp_path / "m1.dcm", mono1_stored, PhotometricInterpretation="MONOCHROME1", **voi1)
    ).pixels
    assert mono2.dtype == mono1.dtype == np.float32
    bone, tissue = mono2[:, 40].mean(), mono2[:, 5].mean()
    assert bone > tissue + 0.2  # bone bright
    np.testing.assert_allclose(mono1, mono2, atol=2.0 / 4095)


def test_signed_pixels_with_rescale(tmp_path: Path) -> None:
    arr = (phantom().astype(np.int32) - 2048).astype(np.int16)
    path = write(
        tmp_path / "a.dcm",
        arr,
        PixelRepresentation=1,
        RescaleSlope=1,
        RescaleIntercept=2048,
        WindowCenter=2048,
        WindowWidth=4096,
        VOILUTFunction="LINEAR_EXACT",
    )
    pixels = read_radiograph(path).pixels
    np.testing.assert_allclose(pixels, phantom() / 4096.0 + 0.0, atol=1e-6)


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_acr_nema_without_file_meta(
    tmp_path: Path, ts: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "a.dcm", ts=ts, file_meta=False)
    assert path.read_bytes()[128:132] != b"DICM"
    with caplog.at_level(logging.WARNING, logger="edge_worker.ingest.reader"):
        result = read_radiograph(path)
    assert result.pixels.shape == (128, 96)
    assert result.header.transfer_syntax == ts
    assert len(caplog.records) == 1 and "ACR-NEMA" in caplog.records[0].getMessage()


def test_jpeg_baseline_decodes_at_reduced_resolution(tmp_path: Path) -> None:
    image = cv2.GaussianBlur(
        np.random.default_rng(3).integers(0, 256, (1024, 800)).astype(np.uint8), (0, 0), 6
    )
    image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX)
    frame = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    path = write(
        tmp_path / "a.dcm",
        image,
        ts=JPEGBaseline8Bit,
        pixel_data=encapsulate([frame]),
        WindowCenter=127.5,
        WindowWidth=256,
    )
    full = read_radiograph(path)
    assert (full.pixels.shape, full.scale) == ((1024, 800), 1.0)
    quarter = read_radiograph(path, max_side=256)
    assert (quarter.pixels.shape, quarter.scale) == ((256, 200), 0.25)
    half = read_radiograph(path, max_side=300)  # 1/4 would give 256 < 300
    assert (half.pixels.shape, half.scale) == ((512, 400), 0.5)
    reference, factor = working_image(full.pixels, 256)
    assert factor == 0.25
    assert float(np.abs(reference - quarter.pixels).mean()) < 0.01


def test_refused_header_leaves_the_pixels_unread(tmp_path: Path) -> None:
    big = np.zeros((2048, 2560), dtype=np.uint16)  # 10 MB of pixel data behind a CT header
    path = write(tmp_path / "ct.dcm", big, Modality="CT")
    error, peak = rejected_with_peak(path)
    assert error.reason is R.UNSUPPORTED_MODALITY
    assert peak < 2_000_000


@pytest.mark.parametrize(
    "ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]
)
def test_native_transfer_syntaxes_decode_alike(tmp_path: Path, ts: str) -> None:
    reference = read_radiograph(write(tmp_path / "ref.dcm")).pixels
    result = read_radiograph(write(tmp_path / "a.dcm", ts=ts))
    assert result.header.transfer_syntax == ts
    assert np.array_equal(result.pixels, reference)


def test_contradictory_presentation_lut_shape_is_noted(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.dcm",
        Modality="DX",
        SOPClassUID=DX_PRESENTATION,
        PresentationIntentType="FOR PRESENTATION",
        PresentationLUTShape="INVERSE",
    )
    result = read_radiograph(path)
    assert any("Presentation LUT Shape INVERSE" in note for note in result.notes)
    # Polarity follows MONOCHROME2: the bone band stays bright.
    assert result.pixels[:, 40].mean() > result.pixels[:, 5].mean()


def test_missing_decoders_are_unsupported_transfer_syntax(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Unavailable:
        def __init__(self, name: str, why: str) -> None:
            self.name, self.why = name, why

        def missing(self, transfer_syntax: str) -> str:
            return self.why

    table = {
        JPEG2000Lossless: (
            Unavailable("openjpeg", "libopenjp2 not found"),
            Unavailable("pydicom", "pylibjpeg - requires numpy, pylibjpeg and pylibjpeg-openjpeg"),
        )
    }
    monkeypatch.setattr("edge_worker.ingest.decode.DECODERS", table)
    junk = b"\xff\x4f\xff\x51" + b"\0" * 64 + b"\xff\xd9"
    path = write(tmp_path / "a.dcm", ts=JPEG2000Lossless, pixel_data=encapsulate([junk]))
    error = rejected(path)
    assert error.reason is R.UNSUPPORTED_TRANSFER_SYNTAX
    assert "pylibjpeg-openjpeg" in error.detail and JPEG2000Lossless in error.detail
    assert "libopenjp2 not found" in error.detail
