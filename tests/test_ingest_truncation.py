"""Files cut short at many offsets are refused, never decoded as noise (issue 3, item 4).

The watcher waits for close-write and a stable size, but a writer can still stop half-way
(a crash, a full disk).  Every cut of a valid file must be a :class:`Rejection`; a cut
inside the Pixel Data element must say TRUNCATED_PIXEL_DATA, whatever the encoding.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from test_ingest_files import phantom, write

from edge_worker.errors import Rejection, RejectReason
from edge_worker.ingest import read_radiograph

R = RejectReason
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
HAS_IMAGECODECS = importlib.util.find_spec("imagecodecs") is not None


def _native(tmp: Path, ts: str) -> Path:
    return write(tmp / "native.dcm", phantom(), ts=ts)


def _compressed(tmp: Path, ts: str) -> Path:
    path = write(tmp / "source.dcm", phantom())
    ds = dcmread(path)
    ds.compress(ts, encoding_plugin="pylibjpeg")
    ds.save_as(path)
    return path


def _baseline(tmp: Path) -> Path:
    image = phantom(128, 96, 8)
    frame = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    return write(tmp / "jpeg.dcm", image, ts=JPEGBaseline8Bit, pixel_data=encapsulate([frame]))


def _imagecodecs(tmp: Path, ts: str) -> Path:
    import imagecodecs

    arr = phantom()
    if ts == JPEGLSLossless:
        frame = imagecodecs.jpegls_encode(arr, level=0)
    else:
        frame = imagecodecs.jpeg8_encode(arr, lossless=True, predictor=1, bitspersample=12)
    return write(tmp / "ic.dcm", arr, ts=ts, pixel_data=encapsulate([frame]))


MAKERS: dict[str, Callable[[Path], Path]] = {
    "explicit": lambda tmp: _native(tmp, ExplicitVRLittleEndian),
    "implicit": lambda tmp: _native(tmp, ImplicitVRLittleEndian),
    "rle": lambda tmp: _compressed(tmp, RLELossless),
    "j2k": lambda tmp: _compressed(tmp, JPEG2000Lossless),
    "jpeg-baseline": _baseline,
}
if HAS_IMAGECODECS:
    MAKERS["jpeg-lossless"] = lambda tmp: _imagecodecs(tmp, JPEGLosslessSV1)
    MAKERS["jpeg-ls"] = lambda tmp: _imagecodecs(tmp, JPEGLSLossless)


def cut_offsets(size: int, pixel_start: int, header_stride: int, pixel_cuts: int) -> list[int]:
    """Offsets to cut at: the header every ``header_stride`` bytes, the pixels at
    ``pixel_cuts`` even steps, every byte of the Pixel Data element's own header, and every
    one of the last 16 bytes."""
    header = [*range(0, pixel_start + 16, header_stride), *range(pixel_start, pixel_start + 16)]
    pixels = np.linspace(pixel_start, size - 1, pixel_cuts).astype(int)
    return sorted({*header, *pixels.tolist(), *range(max(0, size - 16), size)})


def outcomes(path: Path, offsets: list[int], tmp: Path) -> dict[int, RejectReason | str]:
    """Cut ``path`` at each offset and read it: offset -> rejection reason, or "accepted"."""
    data = path.read_bytes()
    cut = tmp / "cut.dcm"
    result: dict[int, RejectReason | str] = {}
    for offset in offsets:
        cut.write_bytes(data[:offset])
        try:
            read_radiograph(cut)
            result[offset] = "accepted"
        except Rejection as rejection:
            result[offset] = rejection.reason
    return result


@pytest.mark.parametrize("encoding", sorted(MAKERS))
def test_every_cut_is_refused_and_pixel_cuts_say_truncated(tmp_path: Path, encoding: str) -> None:
    path = MAKERS[encoding](tmp_path)
    data = path.read_bytes()
    assert read_radiograph(path).pixels.shape[0] == 128  # the uncut file is fine
    pixel_start = data.rindex(PIXEL_DATA_TAG)
    offsets = cut_offsets(len(data), pixel_start, header_stride=3, pixel_cuts=60)
    seen = outcomes(path, offsets, tmp_path)
    accepted = [offset for offset, outcome in seen.items() if outcome == "accepted"]
    assert not accepted, f"cut files accepted at offsets {accepted[:10]}"
    # Cut exactly before the Pixel Data tag, the file is whole but has no pixels.
    inside = {o: r for o, r in seen.items() if o > pixel_start}
    wrong = {o: r for o, r in inside.items() if r is not R.TRUNCATED_PIXEL_DATA}
    assert not wrong, f"{len(wrong)} pixel cuts not TRUNCATED_PIXEL_DATA: {Counter(wrong.values())}"
    assert seen[pixel_start] is R.NO_PIXEL_DATA


def test_header_cuts_name_a_reason_an_operator_understands(tmp_path: Path) -> None:
    path = MAKERS["explicit"](tmp_path)
    data = path.read_bytes()
    pixel_start = data.rindex(PIXEL_DATA_TAG)
    seen = outcomes(path, list(range(pixel_start)), tmp_path)
    reasons = Counter(seen.values())
    assert "accepted" not in reasons
    # Inside the preamble or file meta: not DICOM or unreadable.  Later cuts fall inside an
    # element (UNREADABLE, "ends inside element") or between elements, where the file reads
    # as a header without pixels or without the attributes that follow.
    assert set(reasons) <= {
        R.NOT_DICOM,
        R.UNREADABLE,
        R.NO_PIXEL_DATA,
        R.UNSUPPORTED_MODALITY,
        R.UNSUPPORTED_PHOTOMETRIC,
    }, reasons
    assert reasons[R.UNREADABLE] > reasons[R.NO_PIXEL_DATA] + reasons[R.UNSUPPORTED_PHOTOMETRIC]


def test_a_cut_inside_an_element_names_the_element(tmp_path: Path) -> None:
    path = MAKERS["explicit"](tmp_path)
    data = path.read_bytes()
    at = data.index(b"\x08\x00\x18\x00")  # (0008,0018) SOP Instance UID
    (tmp_path / "cut.dcm").write_bytes(data[: at + 8 + 5])
    with pytest.raises(Rejection) as info:
        read_radiograph(tmp_path / "cut.dcm")
    assert info.value.reason is R.UNREADABLE
    assert "(0008,0018)" in info.value.detail and "cut short" in info.value.detail
