"""The whole-file check that lets the watcher skip its settle wait (edge_worker.ingest.whole).

A wrong "whole" would hand a half-written file to the reader, which would quarantine it as
truncated: so every cut of every encoding must say "not whole", and so must anything the
check cannot prove (no preamble, elements after the pixels).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian
from test_ingest_files import write
from test_ingest_truncation import MAKERS, PIXEL_DATA_TAG, cut_offsets

from edge_worker.ingest.whole import is_whole

SHARED_DICOM = Path(__file__).resolve().parents[2] / "shared" / "data" / "radiographs" / "dicom"


@pytest.mark.parametrize("encoding", sorted(MAKERS))
def test_whole_file_is_whole_and_every_cut_is_not(tmp_path: Path, encoding: str) -> None:
    path = MAKERS[encoding](tmp_path)
    data = path.read_bytes()
    assert is_whole(path)
    pixel_start = data.rindex(PIXEL_DATA_TAG)
    offsets = cut_offsets(len(data), pixel_start, header_stride=7, pixel_cuts=80)
    cut = tmp_path / "cut.dcm"
    called_whole = []
    for offset in offsets:
        cut.write_bytes(data[:offset])
        if is_whole(cut):
            called_whole.append(offset)
    assert not called_whole, f"cut files called whole at offsets {called_whole[:10]}"


@pytest.mark.parametrize("encoding", ["explicit", "implicit", "j2k"])
def test_trailing_padding_is_allowed_other_trailing_bytes_are_not(
    tmp_path: Path, encoding: str
) -> None:
    path = MAKERS[encoding](tmp_path)
    ds = dcmread(path)
    ds.DataSetTrailingPadding = b"\x00" * 64
    padded = tmp_path / "padded.dcm"
    ds.save_as(padded)
    assert dcmread(padded).DataSetTrailingPadding == b"\x00" * 64  # really written after pixels
    assert is_whole(padded)
    data = padded.read_bytes()
    for extra in (b"\x00" * 8, data[-12:]):  # junk, or a second copy of an element's bytes
        grown = tmp_path / "grown.dcm"
        grown.write_bytes(data + extra)
        assert not is_whole(grown)
    (tmp_path / "short.dcm").write_bytes(data[:-1])  # the padding itself cut short
    assert not is_whole(tmp_path / "short.dcm")


def test_what_cannot_be_proved_whole_is_not(tmp_path: Path) -> None:
    no_meta = write(tmp_path / "acr-nema.dcm", file_meta=False, ts=ImplicitVRLittleEndian)
    assert dcmread(no_meta, force=True).PixelData  # a readable file, just without the preamble
    assert not is_whole(no_meta)
    no_pixels = write(tmp_path / "no-pixels.dcm")
    ds = dcmread(no_pixels)
    del ds.PixelData
    ds.save_as(no_pixels)
    assert not is_whole(no_pixels)
    (tmp_path / "text.dcm").write_text("not a radiograph " * 100)
    assert not is_whole(tmp_path / "text.dcm")
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert not is_whole(tmp_path / "empty.dcm")
    assert not is_whole(tmp_path / "missing.dcm")
    assert not is_whole(tmp_path)  # a directory


@pytest.mark.skipif(not SHARED_DICOM.is_dir(), reason="../shared radiographs not present")
def test_real_files_from_other_writers() -> None:
    """Files from modalities and toolkits we did not write: every one with the DICM preamble,
    its Pixel Data at the end (or followed only by trailing padding) must be proved whole."""
    expected = {}
    for path in sorted(SHARED_DICOM.glob("*.dcm")):
        head = path.read_bytes()[:132]
        if head[128:132] != b"DICM":
            expected[path.name] = False
            continue
        ds = dcmread(path)
        after = [e.tag for e in ds if e.tag > 0x7FE00010 and e.tag != 0xFFFCFFFC]
        expected[path.name] = "PixelData" in ds and not after
    got = {name: is_whole(SHARED_DICOM / name) for name in expected}
    assert got == expected
    assert sum(got.values()) >= 15  # most real files take the fast path
