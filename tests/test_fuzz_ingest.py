"""Fuzzing the ingest: damaged DICOM files end as a Rejection, in bounded time and memory.

    python -m tests.test_fuzz_ingest --cases 5000      # the long run (= tests/fuzz_harness.py)
    python -m pytest tests/test_fuzz_ingest.py           # a fast subset (250 cases)
    python -m pytest tests/test_fuzz_ingest.py --runslow # also 5,000 cases (FUZZ_CASES=N)

A case is a seed file and a mutation, both drawn from ``default_rng([seed, index])``, so any
case replays from its index (``tests/fuzz_harness.py --replay N --dump DIR`` writes its bytes).
Seeds are phantoms from :func:`edge_worker.phantoms.ankle.make_dataset` in every encoding this
machine can write, plus the real files in ``../shared/data/radiographs/dicom`` when present.
Cases run in a worker subprocess that ``tests/fuzz_harness.py`` (the harness) watches from outside:

* *escape*: read_radiograph raised something other than Rejection;
* *hang*: no answer within the time limit (5 s); the worker is killed and restarted;
* *crash*: the worker died (a decoder's segfault or abort would kill the daemon too);
* *memory*: the worker runs under RLIMIT_AS (its size after start-up + 2 GiB), and a
  rejection mentioning MemoryError or bad_alloc means a size check came too late;
* *bad output*: an accepted image that is not 2-D float32 in [0, 1] of the implied size.
"""

from __future__ import annotations

import importlib.util
import io
import os
import struct
import sys
import warnings
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from edge_worker.phantoms.ankle import make_dataset

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "radiographs" / "dicom"
PIXEL_TAG = b"\xe0\x7f\x10\x00"
ITEM, SEQ_END = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
#: US attributes whose value sizes every allocation: (group, element).
US_TAGS = [(0x0028, 0x0010), (0x0028, 0x0011), (0x0028, 0x0100), (0x0028, 0x0101),
           (0x0028, 0x0102), (0x0028, 0x0103), (0x0028, 0x0002), (0x0028, 0x0006)]  # fmt: skip
US_VALUES = [0, 1, 2, 7, 8, 12, 15, 16, 17, 24, 32, 33, 64, 255, 4096, 8192, 8193, 32768, 65535]
TEXT_EDITS: list[tuple[str, list[object]]] = [
    ("NumberOfFrames", ["0", "-1", "2", "999999999", "1e9", "abc", ""]),
    ("PhotometricInterpretation", ["", "RGB", "PALETTE COLOR", "MONOCHROME3", "YBR_FULL"]),
    ("WindowCenter", ["0", "nan", "1e309", "-1e308", ["1", "x"], "abc"]),
    ("WindowWidth", ["0", "-1", "0.5", "nan", "inf", "1e-300"]),
    ("RescaleSlope", ["0", "inf", "-1e300", "nan", "x"]),
    ("RescaleIntercept", ["1e308", "-inf", "nan"]),
    ("VOILUTFunction", ["SIGMOID", "LINEAR_EXACT", "BOGUS", ""]),
    ("PixelPaddingValue", [0, 65535, 32768]),
    ("Modality", ["", "CT", "DX\\CR"]),
    ("SOPClassUID", ["", "1.2.840.10008.5.1.4.1.1.1.1.1", "x" * 64]),
]
LUT_DESCRIPTORS = [[0, 0, 16], [1, 0, 16], [4096, 65535, 40], [65535, 0, 0], [16, 8, 8], [2, 0, 1]]
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.201", "1.2.3", "", "\x00" * 8,
]  # fmt: skip
Mutator = Callable[[np.random.Generator, bytes], bytes]


# -- seeds ----------------------------------------------------------------------------------


def _save(ds: pydicom.Dataset, ts: str | None = None, **kwargs: object) -> bytes:
    copy = deepcopy(ds)  # Dataset.copy() shares elements: setting a value would leak back
    if ts is not None:
        copy.file_meta.TransferSyntaxUID = UID(ts)
    buffer = io.BytesIO()
    copy.save_as(buffer, **kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()


def _encapsulated(ds: pydicom.Dataset, ts: str, frame: bytes | bytearray, **attrs: object) -> bytes:
    copy = deepcopy(ds)
    copy.file_meta.TransferSyntaxUID = UID(ts)
    for key, value in attrs.items():
        setattr(copy, key, value)
    copy.PixelData = encapsulate([bytes(frame)])
    copy["PixelData"].VR, copy["PixelData"].is_undefined_length = "OB", True
    return _save(copy, enforce_file_format=True)


def phantom_seeds() -> dict[str, bytes]:
    """Small phantoms in every encoding pydicom, OpenCV and (if installed) imagecodecs write."""
    ds, _ = make_dataset(11, size=256, bits_stored=12)
    pixels = ds.pixel_array
    seeds = {
        "explicit": _save(ds, enforce_file_format=True),
        "implicit": _save(ds, ImplicitVRLittleEndian, enforce_file_format=True),
        "big-endian": _save(ds, ExplicitVRBigEndian, enforce_file_format=True),
        "deflated": _save(ds, DeflatedExplicitVRLittleEndian, enforce_file_format=True),
    }
    acr = deepcopy(ds)
    del acr.file_meta
    seeds["acr-nema"] = _save(acr, implicit_vr=True, little_endian=True)
    mono1, _ = make_dataset(12, size=320, photometric="MONOCHROME1", bits_stored=14)
    lut = pydicom.Dataset()
    lut.LUTDescriptor, lut.LUTData = [4096, 0, 12], np.arange(4096, dtype="<u2").tobytes()
    mono1.VOILUTSequence = pydicom.Sequence([lut])
    seeds["mono1-voi-lut"] = _save(mono1, enforce_file_format=True)
    for name, ts, ratio in (("rle", RLELossless, None), ("j2k", JPEG2000Lossless, None),
                            ("j2k-lossy", JPEG2000, [20.0])):  # fmt: skip
        copy = deepcopy(ds)
        copy.compress(ts, encoding_plugin="pylibjpeg", j2k_cr=ratio)
        seeds[name] = _save(copy, enforce_file_format=True)
    eight = (pixels >> 4).astype(np.uint8)
    frame = cv2.imencode(".jpg", eight, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    seeds["jpeg-baseline"] = _encapsulated(
        ds, JPEGBaseline8Bit, frame, BitsAllocated=8, BitsStored=8, HighBit=7,
        WindowCenter="127.5", WindowWidth="256",
    )  # fmt: skip
    try:
        import imagecodecs
    except ImportError:
        return seeds
    seeds["jpeg-lossless"] = _encapsulated(
        ds,
        "1.2.840.10008.1.2.4.70",
        imagecodecs.jpeg8_encode(pixels, lossless=True, bitspersample=12),
    )
    seeds["jpeg-ls"] = _encapsulated(
        ds, "1.2.840.10008.1.2.4.80", imagecodecs.jpegls_encode(pixels)
    )
    seeds["htj2k"] = _encapsulated(
        ds, "1.2.840.10008.1.2.4.201", imagecodecs.htj2k_encode(pixels, reversible=True)
    )
    return seeds


def seeds(shared: bool, max_bytes: int | None = None) -> list[tuple[str, bytes]]:
    """Phantoms, then the shared real files (no larger than ``max_bytes``), sorted by name."""
    found = sorted(phantom_seeds().items())
    if shared and SHARED.is_dir():
        for path in sorted(SHARED.glob("*.dcm")):
            if max_bytes is None or path.stat().st_size <= max_bytes:
                found.append((path.name, path.read_bytes()))
    return found


# -- mutations ------------------------------------------------------------------------------


def _pixel_start(data: bytes | bytearray) -> int:
    at = data.rfind(PIXEL_TAG)
    return at if at >= 0 else len(data)


def _find(data: bytes | bytearray, tag: tuple[int, int]) -> int:
    """Offset of the element ``tag`` (little endian) before the pixel data, or -1."""
    return data.find(struct.pack("<HH", *tag), 128, _pixel_start(data))


def _meta_end(data: bytes) -> int:
    """Where the dataset after the file meta begins (132 + group 0002), 0 without meta."""
    from edge_worker.ingest.source import meta_transfer_syntax

    found = meta_transfer_syntax(data[:65536])
    return found[1] if found else 0


def bit_flips(rng: np.random.Generator, data: bytes) -> bytes:
    out = bytearray(data)
    top = _pixel_start(data) + 16 if rng.random() < 0.6 else len(data)
    for _ in range(int(rng.integers(1, 33))):
        at = int(rng.integers(0, max(1, min(top, len(out)))))
        out[at] ^= 1 << int(rng.integers(8))
    return bytes(out)


def truncate(rng: np.random.Generator, data: bytes) -> bytes:
    top = _pixel_start(data) + 16 if rng.random() < 0.3 else len(data)
    return data[: int(rng.integers(0, max(1, min(top, len(data)))))]


def random_span(rng: np.random.Generator, data: bytes) -> bytes:
    out = bytearray(data)
    size = int(rng.integers(1, 4097))
    at = int(rng.integers(0, max(1, len(out) - 1)))
    out[at : at + size] = rng.bytes(min(size, len(out) - at))
    return bytes(out)


def random_file(rng: np.random.Generator, data: bytes) -> bytes:
    body = rng.bytes(int(rng.integers(0, 65536)))
    return data[: _meta_end(data)] + body if rng.random() < 0.5 else body


def huge_us(rng: np.random.Generator, data: bytes) -> bytes:
    """Rows, Columns, Bits Allocated/Stored, High Bit, ... set to an extreme value."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        tag = US_TAGS[int(rng.integers(len(US_TAGS)))]
        at = _find(out, tag)
        if at < 0:
            continue
        value_at = at + 8  # explicit "US" + 2-byte length, or implicit 4-byte length
        value = US_VALUES[int(rng.integers(len(US_VALUES)))]
        struct.pack_into("<H", out, value_at, value)
    return bytes(out)


def text_edit(rng: np.random.Generator, data: bytes) -> bytes:
    """An attribute rewritten through pydicom: odd strings, and absurd LUT descriptors."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if rng.random() < 0.3:
        item = pydicom.Dataset()
        item.LUTDescriptor = LUT_DESCRIPTORS[int(rng.integers(len(LUT_DESCRIPTORS)))]
        item.LUTData = rng.integers(0, 65536, int(rng.integers(0, 64))).astype("<u2").tobytes()
        setattr(ds, ("VOILUTSequence", "ModalityLUTSequence")[int(rng.integers(2))], [item])
    else:
        keyword, values = TEXT_EDITS[int(rng.integers(len(TEXT_EDITS)))]
        setattr(ds, keyword, values[int(rng.integers(len(values)))])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def bad_vr(rng: np.random.Generator, data: bytes) -> bytes:
    """The VR of an explicit-VR element replaced (SQ, UN, OB, nonsense)."""
    out = bytearray(data)
    top = _pixel_start(data) + 6
    places = [
        m
        for m in range(132, top - 6, 2)
        if out[m + 4 : m + 6].isalpha() and out[m + 4 : m + 6].isupper()
    ]
    for _ in range(int(rng.integers(1, 3))):
        if places:
            at = places[int(rng.integers(len(places)))]
            out[at + 4 : at + 6] = [b"SQ", b"UN", b"OB", b"ZZ", b"\0\0", b"UT", rng.bytes(2)][
                int(rng.integers(7))
            ]
    return bytes(out)


def deep_sequence(rng: np.random.Generator, data: bytes) -> bytes:
    """A (0040,0275) sequence nested 10 to 20,000 deep, inserted at the dataset's start."""
    depth = int([10, 200, 2000, 20000][int(rng.integers(4))])
    at = _meta_end(data)
    explicit = data[at + 4 : at + 6].isalpha()
    tag = struct.pack("<HH", 0x0040, 0x0275)
    head = tag + (b"SQ\0\0" if explicit else b"")
    if rng.random() < 0.5:  # undefined lengths: items and sequences closed by delimiters
        opening = head + b"\xff\xff\xff\xff" + ITEM + b"\xff\xff\xff\xff"
        closing = b"\xfe\xff\x0d\xe0\0\0\0\0" + SEQ_END
        nested = opening * depth + closing * depth
    else:
        nested = b""
        for _ in range(depth):
            item = ITEM + struct.pack("<I", len(nested)) + nested
            nested = head + struct.pack("<I", len(item)) + item
    return data[:at] + nested + data[at:]


def wrong_transfer_syntax(rng: np.random.Generator, data: bytes) -> bytes:
    """The file meta's Transfer Syntax UID replaced; the group length is fixed or not."""
    end = _meta_end(data)
    at = data.find(b"\x02\x00\x10\x00UI", 132, end) if end else -1
    if at < 0:
        return bit_flips(rng, data)
    (length,) = struct.unpack_from("<H", data, at + 6)
    uid = TRANSFER_SYNTAXES[int(rng.integers(len(TRANSFER_SYNTAXES)))].encode("latin-1")
    uid += b"\0" * (len(uid) % 2)
    out = bytearray(data[:at] + data[at : at + 6] + struct.pack("<H", len(uid)) + uid)
    out += data[at + 8 + length :]
    if rng.random() < 0.7 and out[132:140] == b"\x02\x00\x00\x00UL\x04\x00":
        (group_length,) = struct.unpack_from("<I", out, 140)
        struct.pack_into("<I", out, 140, group_length + len(uid) - length)
    return bytes(out)


def fragments(rng: np.random.Generator, data: bytes) -> bytes:
    """Encapsulated pixel data with an absurd offset table, item length, split or extra item.

    The first fragment stands for the frame: where a frame spans several, the rest is lost.
    """
    start = data.rfind(PIXEL_TAG + b"OB\0\0\xff\xff\xff\xff")
    if start < 0:
        return truncate(rng, data)
    bot = start + 12
    (bot_length,) = struct.unpack_from("<I", data, bot + 4)
    first = bot + 8 + bot_length
    choice = int(rng.integers(4))
    if choice == 0:  # a Basic Offset Table of absurd offsets
        table = (
            rng.integers(0, 2**32, int(rng.integers(1, 64)), dtype=np.uint64)
            .astype("<u4")
            .tobytes()
        )
        return data[:bot] + ITEM + struct.pack("<I", len(table)) + table + data[first:]
    if choice == 1:  # the first fragment's length made absurd
        length = [0xFFFFFFFE, 0x7FFFFFFF, len(data), 1, 0][int(rng.integers(5))]
        return data[: first + 4] + struct.pack("<I", length) + data[first + 8 :]
    (frame_length,) = struct.unpack_from("<I", data, first + 4)
    frame = data[first + 8 : first + 8 + frame_length]
    if choice == 2:  # the frame split into many fragments (even lengths)
        cuts = sorted({int(c) & ~1 for c in rng.integers(0, len(frame), int(rng.integers(1, 50)))})
        parts = [frame[a:b] for a, b in zip([0, *cuts], [*cuts, len(frame)]) if b > a]
    else:  # empty and junk fragments around the frame
        parts = [b"", frame, rng.bytes(int(rng.integers(0, 64)) * 2)]
    items = b"".join(ITEM + struct.pack("<I", len(p)) + p for p in parts)
    return data[:first] + items + SEQ_END


def codestream(rng: np.random.Generator, data: bytes) -> bytes:
    """Bytes flipped inside the codestream, mostly in its marker segments (the headers)."""
    start = data.rfind(PIXEL_TAG + b"OB\0\0\xff\xff\xff\xff")
    if start < 0:
        return random_span(rng, data)
    (bot_length,) = struct.unpack_from("<I", data, start + 16)
    first = start + 20 + bot_length + 8
    out = bytearray(data)
    span = 400 if rng.random() < 0.7 else len(data) - first
    for _ in range(int(rng.integers(1, 17))):
        at = first + int(rng.integers(0, max(1, min(span, len(data) - first - 8))))
        out[at] = int(rng.integers(256))
    return bytes(out)


def coherent_size(rng: np.random.Generator, data: bytes) -> bytes:
    """Rows/Columns and the codestream's SOF/SIZ changed alike: decoders see a consistent lie.

    Sizes reach the policy's limit (8192), so each decoder allocates what it may at most.
    """
    rows, columns = [(8192, 8192), (8192, 64), (64, 8192), (4096, 4096), (8193, 8193)][
        int(rng.integers(5))
    ]
    out = bytearray(data)
    for tag, value in (((0x0028, 0x0010), rows), ((0x0028, 0x0011), columns)):
        at = _find(out, tag)
        if at >= 0:
            struct.pack_into("<H", out, at + 8, value)
    start = data.rfind(PIXEL_TAG + b"OB\0\0\xff\xff\xff\xff")
    if start < 0:
        return bytes(out)
    stream = start + 20 + struct.unpack_from("<I", data, start + 16)[0] + 8
    if out[stream : stream + 4] == b"\xff\x4f\xff\x51":  # SIZ: image and tile size
        struct.pack_into(">IIII", out, stream + 8, columns, rows, 0, 0)
        struct.pack_into(">II", out, stream + 24, columns, rows)
        return bytes(out)
    for marker in range(0xC0, 0xD0):
        at = out.find(bytes([0xFF, marker]), stream, stream + 4096)
        if at >= 0 and marker not in (0xC4, 0xC8, 0xCC):
            struct.pack_into(">HH", out, at + 5, rows, columns)
            break
    at = out.find(b"\xff\xf7", stream, stream + 4096)  # JPEG-LS SOF55
    if at >= 0:
        struct.pack_into(">HH", out, at + 5, rows, columns)
    return bytes(out)


def splice(rng: np.random.Generator, data: bytes, other: bytes) -> bytes:
    """This file's header with another file's pixel data."""
    return data[: _pixel_start(data)] + other[_pixel_start(other) :]


MUTATORS: dict[str, Mutator] = {
    "bit_flips": bit_flips, "truncate": truncate, "random_span": random_span,
    "random_file": random_file, "huge_us": huge_us, "text_edit": text_edit, "bad_vr": bad_vr,
    "deep_sequence": deep_sequence, "wrong_transfer_syntax": wrong_transfer_syntax,
    "fragments": fragments, "codestream": codestream, "coherent_size": coherent_size,
}  # fmt: skip


def make_case(
    corpus: list[tuple[str, bytes]], seed: int, index: int, full_share: float = 0.1
) -> tuple[str, bytes, int | None]:
    """Case ``index``: ``("seed/mutation", bytes, max_side)``, the same for the same inputs.

    ``max_side`` is 512, as the daemon reads, except for a ``full_share`` of full-size reads.
    """
    rng = np.random.default_rng([seed, index])
    name, data = corpus[int(rng.integers(len(corpus)))]
    kinds = [*MUTATORS, "splice"]
    kind = kinds[int(rng.integers(len(kinds)))]
    max_side = None if rng.random() < full_share else 512
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the values set on purpose
            if kind == "splice":
                mutated = splice(rng, data, corpus[int(rng.integers(len(corpus)))][1])
            else:
                mutated = MUTATORS[kind](rng, data)
    except Exception as exc:  # noqa: BLE001 - a mutation pydicom cannot write: flip bits instead
        kind = f"{kind}->bit_flips({type(exc).__name__})"
        mutated = bit_flips(rng, data)
    return f"{name}/{kind}", mutated, max_side


# -- tests ------------------------------------------------------------------------------------


def harness() -> ModuleType:
    """``tests/fuzz_harness.py``, the long run's harness, loaded by path as a script."""
    spec = importlib.util.spec_from_file_location(
        "edge_worker_fuzz_harness", ROOT / "tests" / "fuzz_harness.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(summary: dict[str, Any]) -> None:
    failures = summary["failures"]
    assert not failures, f"{len(failures)} failing cases, first: {failures[:5]}"


def test_fuzz_fast_subset() -> None:
    # Shared files up to 1.1 MB and the daemon's reduced reads only keep this under 20 s
    # even on a loaded box; the long run takes every file and 10 % full-size reads.
    summary = harness().run(
        cases=250, seed=1, shared=True, max_seed_bytes=1_100_000, full_share=0.0
    )
    _check(summary)
    assert summary["cases"] == 250 and summary["max_ms"] < 5000


@pytest.mark.slow
def test_fuzz_long_run() -> None:
    _check(harness().run(cases=int(os.environ.get("FUZZ_CASES", "5000")), seed=2, shared=True))


if __name__ == "__main__":
    sys.exit(harness().main())
