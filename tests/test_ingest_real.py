"""The ingest on the 20 real DICOM files in ../shared/data/radiographs/dicom.

``OUTCOMES`` states what must happen to every file under the default policy: accepted with
its shape, or rejected with a reason.  The table must cover the folder exactly, so a file
added there fails here until someone decides its outcome.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from edge_worker.errors import Rejection, RejectReason
from edge_worker.ingest import IngestPolicy, Radiograph, read_header, read_radiograph
from edge_worker.pipeline.preprocess import WORKING_MAX_SIDE, working_image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "radiographs"
DICOM = DATA / "dicom"
if not DICOM.is_dir():
    pytest.skip(f"real radiographs not found at {DICOM}", allow_module_level=True)

pytestmark = pytest.mark.shared

R = RejectReason
#: file -> (rows, columns) when accepted, or the RejectReason when rejected.
OUTCOMES: dict[str, tuple[int, int] | RejectReason] = {
    # ACR-NEMA: no file meta, no transfer syntax; read as implicit VR little endian.
    "fodicom_CR-MONO1-10-chest.dcm": (440, 440),
    # Dental panoramic CR with a Modality LUT Sequence, JPEG lossless SV1, MONOCHROME1.
    "fodicom_CR-ModalitySequenceLUT.dcm": (1576, 1976),
    # XA is an accepted modality, but this is a 96-frame cine run.
    "fodicom_HasFragmentSequence.dcm": R.MULTI_FRAME,
    # MG is not in the default modalities.
    "fodicom_OutOfBoundsOverlay.dcm": R.UNSUPPORTED_MODALITY,
    "highdicom_dx_image.dcm": (169, 211),
    "nhsx_nih_cxr14_DX.dcm": (1024, 1024),
    "openrem_DX-Im-Carestream_DRX.dcm": R.NO_PIXEL_DATA,
    # DX For Processing and 2x2: the policy refusal is reported first (TOO_SMALL when
    # For Processing is accepted, see test_for_processing_2x2_is_too_small_when_allowed).
    "openrem_DX-Im-GE_XR220-2.dcm": R.FOR_PROCESSING,
    # Digitised mammogram stored as Modality RG (accepted), lossy JPEG 2000.
    "wg04_MG1_J2KI.dcm": (4664, 3064),
    # JPEG Extended 12-bit (Process 4): pylibjpeg-libjpeg reports a misplaced marker,
    # libjpeg-turbo (imagecodecs) decodes it.
    "wg04_MG1_JPLY.dcm": (4664, 3064),
    "wg04_RG2_J2KI.dcm": (2140, 1760),
    "wg04_RG2_J2KR.dcm": (2140, 1760),
    "wg04_RG2_JLSL.dcm": (2140, 1760),
    "wg04_RG2_RLE.dcm": (2140, 1760),
    "wg04_RG3_J2KR.dcm": (1760, 1760),
    "wg04_RG3_JLSN.dcm": (1760, 1760),
    "wg04_RG3_JPLL.dcm": (1760, 1760),
    "wg04_RG3_JPLY.dcm": (1760, 1760),
    "wg04_RG3_RLE.dcm": (1760, 1760),
    "wg04_RG3_UNC.dcm": (1760, 1760),
}
ACCEPTED = sorted(name for name, outcome in OUTCOMES.items() if isinstance(outcome, tuple))
REJECTED = sorted(name for name, outcome in OUTCOMES.items() if isinstance(outcome, RejectReason))


@cache
def radiograph(name: str) -> Radiograph:
    """Each file is decoded once per module run: the whole module stays within seconds."""
    return read_radiograph(DICOM / name)


@pytest.fixture(autouse=True, scope="module")
def _release_decoded_images() -> Iterator[None]:
    yield
    radiograph.cache_clear()


def test_the_table_covers_the_folder_exactly() -> None:
    assert sorted(p.name for p in DICOM.glob("*.dcm")) == sorted(OUTCOMES)


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_files_give_unit_float32_of_the_declared_shape(name: str) -> None:
    result = radiograph(name)
    assert result.pixels.shape == OUTCOMES[name]
    assert result.pixels.dtype == np.float32
    assert float(result.pixels.min()) >= 0.0 and float(result.pixels.max()) <= 1.0
    assert float(result.pixels.std()) > 0.05  # not flat: the window found the anatomy
    assert result.scale == 1.0
    assert (result.header.rows, result.header.columns) == OUTCOMES[name]


@pytest.mark.parametrize("name", REJECTED)
def test_rejected_files_name_their_reason(name: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG), pytest.raises(Rejection) as info:
        read_radiograph(DICOM / name)
    assert info.value.reason is OUTCOMES[name]
    assert info.value.detail
    assert "Traceback" not in caplog.text  # pydicom's LOGGER.exception is swallowed


def test_header_only_rejections_need_no_decode() -> None:
    for name, outcome in OUTCOMES.items():
        if outcome in (R.MULTI_FRAME, R.UNSUPPORTED_MODALITY, R.FOR_PROCESSING):
            with pytest.raises(Rejection) as info:
                read_header(DICOM / name)
            assert info.value.reason is outcome
    header = read_header(DICOM / "openrem_DX-Im-Carestream_DRX.dcm")  # pixels are not looked at
    assert (header.rows, header.columns, header.modality) == (3032, 2520, "CR")


def test_policy_decides_mammography_and_for_processing() -> None:
    with_mg = IngestPolicy(modalities=(*IngestPolicy().modalities, "MG"))
    result = read_radiograph(DICOM / "fodicom_OutOfBoundsOverlay.dcm", policy=with_mg)
    assert result.pixels.shape == (788, 1318)
    with pytest.raises(Rejection) as info:
        read_radiograph(
            DICOM / "openrem_DX-Im-GE_XR220-2.dcm", IngestPolicy(accept_for_processing=True)
        )
    assert info.value.reason is R.TOO_SMALL


def test_acr_nema_file_is_read_as_implicit_little_endian() -> None:
    result = radiograph("fodicom_CR-MONO1-10-chest.dcm")
    assert result.header.transfer_syntax == "1.2.840.10008.1.2"
    assert result.header.extra["file_meta"] == "absent"
    assert any("ACR-NEMA" in note for note in result.notes)


@pytest.mark.parametrize(
    ("name", "bright", "dark"),
    [
        # (rows, columns) fractions: spine against lung on two chests, tibia against air.
        ("fodicom_CR-MONO1-10-chest.dcm", (0.35, 0.5, 0.46, 0.54), (0.35, 0.5, 0.18, 0.3)),
        ("nhsx_nih_cxr14_DX.dcm", (0.35, 0.5, 0.46, 0.54), (0.35, 0.5, 0.22, 0.34)),
        ("wg04_RG3_UNC.dcm", (0.45, 0.55, 0.48, 0.54), (0.45, 0.55, 0.3, 0.36)),
    ],
)
def test_bone_is_bright(name: str, bright: tuple[float, ...], dark: tuple[float, ...]) -> None:
    pixels = radiograph(name).pixels
    h, w = pixels.shape

    def mean(box: tuple[float, ...]) -> float:
        y0, y1, x0, x1 = box
        return float(pixels[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)].mean())

    assert mean(bright) > mean(dark) + 0.25


@pytest.mark.parametrize("name", ["wg04_RG3_UNC.dcm", "wg04_RG2_RLE.dcm"])
def test_polarity_follows_photometric_interpretation(name: str) -> None:
    # MONOCHROME1 (RG3): a higher stored value is darker on display; MONOCHROME2 (RG2): brighter.
    import pydicom

    ds = pydicom.dcmread(DICOM / name)
    stored = ds.pixel_array[::8, ::8].astype(np.float64).ravel()
    shown = radiograph(name).pixels[::8, ::8].astype(np.float64).ravel()
    corr = np.corrcoef(stored, shown)[0, 1]
    assert corr < -0.9 if ds.PhotometricInterpretation == "MONOCHROME1" else corr > 0.9


@pytest.mark.parametrize(
    ("lossless", "lossy"),
    [
        (
            ["wg04_RG3_UNC.dcm", "wg04_RG3_J2KR.dcm", "wg04_RG3_JPLL.dcm", "wg04_RG3_RLE.dcm"],
            ["wg04_RG3_JLSN.dcm", "wg04_RG3_JPLY.dcm"],
        ),
        (["wg04_RG2_J2KR.dcm", "wg04_RG2_JLSL.dcm", "wg04_RG2_RLE.dcm"], ["wg04_RG2_J2KI.dcm"]),
        # Two lossy encodings of one mammogram: compared with each other.
        (["wg04_MG1_J2KI.dcm"], ["wg04_MG1_JPLY.dcm"]),
    ],
)
def test_encodings_of_one_image_agree(lossless: list[str], lossy: list[str]) -> None:
    reference = radiograph(lossless[0]).pixels
    for name in lossless[1:]:
        assert np.array_equal(radiograph(name).pixels, reference), name
    for name in lossy:
        diff = np.abs(radiograph(name).pixels - reference)
        assert float(diff.mean()) < 0.01 and float(np.percentile(diff, 99)) < 0.05, name


def test_public_header_of_a_real_file_carries_no_patient_attributes() -> None:
    import pydicom

    ds = pydicom.dcmread(DICOM / "openrem_DX-Im-Carestream_DRX.dcm", stop_before_pixels=True)
    header = read_header(DICOM / "openrem_DX-Im-Carestream_DRX.dcm")
    text = str(header) + str(header.public())
    for keyword in ("PatientName", "PatientID"):
        value = str(ds.get(keyword, "")).strip()
        assert value and value not in text


@pytest.mark.parametrize("name", ACCEPTED)
def test_reduced_reads_keep_the_working_size_and_report_their_scale(name: str) -> None:
    full = radiograph(name)
    reduced = read_radiograph(DICOM / name, max_side=WORKING_MAX_SIDE)
    factor = round(1 / reduced.scale)
    assert reduced.scale == 1 / factor
    assert reduced.pixels.shape == tuple(math.ceil(side / factor) for side in full.pixels.shape)
    assert max(reduced.pixels.shape) >= min(WORKING_MAX_SIDE, max(full.pixels.shape))
    # Reduced decoding is a low-pass like the area resize that follows: same working image.
    a, _ = working_image(full.pixels)
    b, _ = working_image(reduced.pixels)
    assert a.shape == b.shape
    diff = np.abs(a - b)
    assert float(diff.mean()) < 0.01 and float(np.percentile(diff, 99)) < 0.06, name


@pytest.mark.parametrize(
    ("name", "factor"),
    [
        ("wg04_RG3_J2KR.dcm", 2),  # 1760 / 4 = 440 would fall below 512
        ("wg04_RG2_J2KR.dcm", 4),
        ("wg04_RG2_J2KI.dcm", 4),
        ("wg04_MG1_J2KI.dcm", 8),
    ],
)
def test_jpeg2000_is_decoded_at_reduced_resolution(name: str, factor: int) -> None:
    reduced = read_radiograph(DICOM / name, max_side=WORKING_MAX_SIDE)
    assert (reduced.decoder, reduced.scale) == ("openjpeg", 1 / factor)


@pytest.mark.skipif(importlib.util.find_spec("imagecodecs") is None, reason="needs imagecodecs")
@pytest.mark.parametrize(
    ("name", "decoder"),
    [
        ("wg04_RG3_UNC.dcm", "pydicom"),
        ("wg04_RG3_RLE.dcm", "pydicom/pylibjpeg"),
        ("wg04_RG3_JPLL.dcm", "imagecodecs.jpeg8_decode"),
        ("wg04_RG3_JPLY.dcm", "imagecodecs.jpeg8_decode"),
        ("wg04_RG2_JLSL.dcm", "imagecodecs.jpegls_decode"),
        ("wg04_RG3_J2KR.dcm", "openjpeg"),
    ],
)
def test_the_fastest_decoder_is_chosen(name: str, decoder: str) -> None:
    result = radiograph(name)
    assert result.decoder == decoder
    assert not any("decoded by" in note for note in result.notes)  # no fallback was needed
