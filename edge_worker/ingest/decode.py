"""Check that the pixel data is whole, then decode it through the decoder table.

:func:`pixel_frame` refuses what must not reach a decoder: pixel data missing or cut short,
and codestreams whose own frame header disagrees with the DICOM header (the decoder would
allocate what the codestream declares, not what the policy allowed).  :func:`decode` then
tries each decoder of :data:`edge_worker.ingest.decoders.DECODERS` in turn.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
)

from edge_worker.errors import Rejection, RejectReason
from edge_worker.ingest.budget import is_memory_failure
from edge_worker.ingest.codestream import Declared, ends_with_eoi, j2k_frame, jpeg_frame
from edge_worker.ingest.decoders import DECODERS, MAX_FACTOR, NATIVE, Declined, Frame
from edge_worker.ingest.header import EOF_BEFORE_DELIMITER, ts_label
from edge_worker.ingest.types import Header

#: The codestreams whose frame header is checked against the DICOM header and which must
#: end with an FFD9 marker (T.81 EOI, T.87 EOI, ISO/IEC 15444-1 EOC).
JPEG_FAMILY = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1})
JPEG_LS = frozenset({JPEGLSLossless, JPEGLSNearLossless})
JPEG_2000 = frozenset({JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K})
CHECKED = JPEG_FAMILY | JPEG_LS | JPEG_2000
#: The Sequence Delimitation Item (PS3.5 7.5.2) that closes encapsulated Pixel Data.
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def check_transfer_syntax(uid: str) -> None:
    """Raise UNSUPPORTED_TRANSFER_SYNTAX unless ``uid`` has at least one usable decoder."""
    decoders = DECODERS.get(uid)
    if decoders is None:
        raise Rejection(
            RejectReason.UNSUPPORTED_TRANSFER_SYNTAX, f"{ts_label(uid)} is not decoded here"
        )
    missing = [(decoder.name, decoder.missing(uid)) for decoder in decoders]
    if all(why for _, why in missing):
        raise Rejection(
            RejectReason.UNSUPPORTED_TRANSFER_SYNTAX,
            f"{ts_label(uid)}: no decoder installed ("
            + "; ".join(f"{name}: {why}" for name, why in missing)
            + ")",
        )


def expected_native_length(header: Header) -> int:
    """Bytes a native single-frame image needs (PS3.5 8.1.1; 1-bit data is packed)."""
    allocated = int(header.extra.get("bits_allocated", "16"))
    frames = int(header.extra.get("number_of_frames", "1"))
    samples = int(header.extra.get("samples_per_pixel", "1"))
    return math.ceil(header.rows * header.columns * samples * frames * allocated / 8)


def fragments(value: bytes) -> list[bytes]:
    """The fragments of encapsulated Pixel Data (PS3.5 A.4), Basic Offset Table excluded.

    Raises TRUNCATED_PIXEL_DATA when an item runs past the end, UNREADABLE on a bad item tag.
    """
    items: list[bytes] = []
    offset = 0
    while offset + 8 <= len(value):
        group, element, length = struct.unpack_from("<HHI", value, offset)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000):
            raise Rejection(
                RejectReason.UNREADABLE,
                f"encapsulated Pixel Data has tag ({group:04X},{element:04X}) where an item "
                f"tag belongs, at byte {offset}",
            )
        offset += 8
        if length == 0xFFFFFFFF or offset + length > len(value):
            raise Rejection(
                RejectReason.TRUNCATED_PIXEL_DATA,
                f"item {len(items)} declares {length} bytes, {len(value) - offset} remain",
            )
        items.append(value[offset : offset + length])
        offset += length
    else:
        if offset != len(value):
            raise Rejection(
                RejectReason.TRUNCATED_PIXEL_DATA,
                f"encapsulated Pixel Data ends inside an item header at byte {offset}",
            )
    return items[1:]


def _check_delimited(ds: Dataset, source: bytes) -> None:
    """Refuse encapsulated Pixel Data not followed by its Sequence Delimitation Item.

    pydicom accepts a file cut inside the delimiter once the delimiter's tag is there; the
    fragments are then whole, but the writer had not finished.
    """
    raw = ds.get_item("PixelData")
    tell, value = getattr(raw, "value_tell", None), getattr(raw, "value", None)
    if tell is None or not isinstance(value, bytes):
        return
    end = tell + len(value)
    if source[end : end + 8] != _SEQUENCE_DELIMITER:
        raise Rejection(
            RejectReason.TRUNCATED_PIXEL_DATA,
            "encapsulated Pixel Data is not closed by its sequence delimiter (cut short)",
        )


def _declared(uid: str, data: bytes) -> Declared | None:
    return j2k_frame(data) if uid in JPEG_2000 else jpeg_frame(data)


def check_codestream(data: bytes, header: Header) -> None:
    """Refuse a codestream whose frame header disagrees with the DICOM header, or a cut one.

    Runs before any decoder, so no decoder allocates a size the policy did not check.
    """
    uid = header.transfer_syntax
    label = ts_label(uid)
    if uid not in CHECKED:
        return  # RLE: the segment header holds no size; pylibjpeg-rle uses Rows/Columns
    declared = _declared(uid, data)
    if declared is None:
        raise Rejection(
            RejectReason.DECODE_FAILED, f"{label}: no frame header (SOF/SIZ) in the codestream"
        )
    if (declared.rows, declared.columns) != (header.rows, header.columns):
        raise Rejection(
            RejectReason.DECODE_FAILED,
            f"{label}: the codestream is {declared.rows}x{declared.columns}, the header "
            f"says {header.rows}x{header.columns}",
        )
    if declared.components != 1:
        raise Rejection(
            RejectReason.DECODE_FAILED,
            f"{label}: the codestream has {declared.components} components, expected 1",
        )
    if not ends_with_eoi(data):
        # Every real file we have ends its stream with FFD9 (some pad a byte after it).
        # Without it the stream was cut: libjpeg(-turbo) would fill the rest with grey,
        # CharLS takes seconds to give up, OpenJPEG fails with "Stream too short".
        raise Rejection(
            RejectReason.TRUNCATED_PIXEL_DATA,
            f"{label}: the codestream ends without its end marker (FFD9): cut short",
        )


def pixel_frame(ds: Dataset, header: Header, source: bytes, parse_warnings: list[str]) -> bytes:
    """The single frame's codestream (``b""`` for native data) once the data is known whole.

    ``ds`` was parsed from ``source``, the file's bytes.  Raises NO_PIXEL_DATA,
    TRUNCATED_PIXEL_DATA (native data shorter than Rows x Columns x Bits Allocated, an item
    past the end, a file ending before a delimiter, a codestream without its end marker) or
    DECODE_FAILED (the codestream's own size or layout disagrees with the header).
    """
    if any(EOF_BEFORE_DELIMITER in w for w in parse_warnings):
        raise Rejection(
            RejectReason.TRUNCATED_PIXEL_DATA,
            "the file ends before a sequence or Pixel Data delimiter (cut short)",
        )
    if "PixelData" not in ds:
        other = [kw for kw in ("FloatPixelData", "DoubleFloatPixelData") if kw in ds]
        detail = (
            f"only {other[0]}, which is not a radiograph" if other else "no (7FE0,0010) Pixel Data"
        )
        raise Rejection(RejectReason.NO_PIXEL_DATA, detail)
    if header.transfer_syntax not in NATIVE:
        _check_delimited(ds, source)  # before .PixelData converts the raw element
    value = ds.PixelData
    if header.transfer_syntax in NATIVE:
        need = expected_native_length(header)
        if len(value) < need:
            raise Rejection(
                RejectReason.TRUNCATED_PIXEL_DATA,
                f"{len(value)} bytes of Pixel Data, {header.rows}x{header.columns} needs {need}",
            )
        return b""
    parts = [f for f in fragments(value) if f]
    if not parts:
        raise Rejection(RejectReason.NO_PIXEL_DATA, "encapsulated Pixel Data holds no fragment")
    # One frame: every fragment belongs to it (PS3.5 A.4, a frame may span fragments).
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    check_codestream(data, header)
    return data


def reduction_factor(rows: int, columns: int, max_side: int | None) -> int:
    """The largest power of two that keeps the long side at or above ``max_side``."""
    if not max_side or max_side <= 0:
        return 1
    factor = 1
    while factor < MAX_FACTOR and max(rows, columns) / (factor * 2) >= max_side:
        factor *= 2
    return factor


@dataclass(frozen=True)
class Decoded:
    """Stored values, the scale from stored pixels to them, and the decoder that made them.

    ``left`` is the part of the wanted reduction the codec could not do; the grayscale
    chain does it by area averaging (:func:`grayscale.box_reduce`).
    """

    stored: np.ndarray
    scale: float
    decoder: str
    left: int = 1


def _shape_problem(arr: np.ndarray, frame: Frame, factor: int) -> str | None:
    """Why a decoder's output cannot be the frame at ``1/factor`` scale, or None."""
    if factor < 1 or factor > frame.factor or factor & (factor - 1):
        return f"reported an impossible reduction 1/{factor}"
    want = (math.ceil(frame.rows / factor), math.ceil(frame.columns / factor))
    got = tuple(arr.shape)
    # A JPEG 2000 image offset can move a reduced size by one pixel (ISO/IEC 15444-1 B.5).
    slack = 1 if factor > 1 else 0
    if len(got) != 2 or any(abs(g - w) > slack for g, w in zip(got, want)):
        return f"decoded shape {got}, expected {want[0]}x{want[1]}"
    if arr.dtype.kind not in "ui":
        return f"decoded to {arr.dtype}, expected integers"
    return None


def _as_stored(arr: np.ndarray, header: Header) -> np.ndarray:
    """Give the array the signedness of Pixel Representation (a view, same bits).

    JPEG-LS cannot record signedness and JPEG 2000 may disagree with the header; the low
    Bits Stored bits are the stored value either way (:func:`grayscale.stored_values`).
    """
    signed = header.extra.get("pixel_representation") == "1"
    if (arr.dtype.kind == "i") != signed:
        return arr.view(f"{'i' if signed else 'u'}{arr.dtype.itemsize}")
    return arr


def decode(
    ds: Dataset, header: Header, data: bytes, max_side: int | None, notes: list[str]
) -> Decoded:
    """Decode the single frame, at reduced size when ``max_side`` allows and a codec can.

    ``data`` is the codestream from :func:`pixel_frame`.  Raises DECODE_FAILED naming the
    transfer syntax and every decoder's failure.
    """
    uid = header.transfer_syntax
    frame = Frame(
        ds=ds,
        transfer_syntax=uid,
        data=data,
        rows=header.rows,
        columns=header.columns,
        bits_allocated=int(header.extra.get("bits_allocated", "16")),
        factor=reduction_factor(header.rows, header.columns, max_side),
    )
    failed: list[str] = []
    unavailable: list[str] = []
    for decoder in DECODERS.get(uid, ()):
        why = decoder.missing(uid)
        if why:
            unavailable.append(f"{decoder.name} unavailable ({why})")
            continue
        try:
            arr, factor = decoder.decode(frame)
        except Declined:
            continue
        except BaseException as exc:
            # pylibjpeg-rle is Rust: a panic arrives as pyo3's PanicException, which derives
            # from BaseException so that "except Exception" cannot swallow it.  Here it is one
            # decoder's failure like any other; interrupts and exits still propagate.
            if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                raise
            if is_memory_failure(exc):
                # The next decoder would allocate the same: the budget, not the data, failed.
                raise Rejection(
                    RejectReason.DECODE_BUDGET,
                    f"{ts_label(uid)}: {decoder.name} ran out of memory: "
                    f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:1000],
                ) from exc
            failed.append(f"{decoder.name}: {type(exc).__name__}: {' '.join(str(exc).split())}")
            if decoder.final:
                break
            continue
        problem = _shape_problem(arr, frame, factor)
        if problem:
            failed.append(f"{decoder.name}: {problem}")
            continue
        if failed:
            notes.append(f"decoded by {decoder.name} after " + "; ".join(failed))
        return Decoded(_as_stored(arr, header), 1.0 / factor, decoder.name, frame.factor // factor)
    detail = "; ".join(failed + unavailable) or "no decoder"
    raise Rejection(RejectReason.DECODE_FAILED, f"{ts_label(uid)}: {detail}"[:1000])
