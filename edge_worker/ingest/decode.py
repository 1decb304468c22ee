"""Check that the pixel data is whole, then decode it with the codec its transfer syntax needs.

One explicit table maps each transfer syntax to a :class:`Codec`.  Decoding goes through
pydicom's decoder for that syntax (which tries each installed plugin and reports every
failure), except where a codec can decode at reduced resolution: 8-bit JPEG (process 1)
through libjpeg-turbo's DCT scaling in OpenCV.  pylibjpeg-openjpeg 2.6 exposes no
``reduce`` parameter, so JPEG 2000 is always decoded at full size.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from edge_worker.errors import Rejection, RejectReason
from edge_worker.ingest.header import EOF_BEFORE_DELIMITER, ts_label
from edge_worker.ingest.types import Header


@dataclass(frozen=True)
class Codec:
    """How one transfer syntax is decoded."""

    #: pydicom ``decoding_plugin``; "" lets pydicom try every installed plugin in turn.
    plugin: str = ""
    #: The stream ends with an EOI/EOC marker ``FFD9`` (JPEG, JPEG-LS and JPEG 2000 all do).
    ends_ffd9: bool = True
    #: Can be decoded at 1/2, 1/4 or 1/8 scale (DCT scaling; 8-bit only, see module doc).
    reducible: bool = False


NATIVE = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    }
)
CODECS: dict[str, Codec] = {
    "1.2.840.10008.1.2.5": Codec(ends_ffd9=False),  # RLE Lossless
    "1.2.840.10008.1.2.4.50": Codec(reducible=True),  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": Codec(),  # JPEG Extended (Process 2 and 4)
    "1.2.840.10008.1.2.4.57": Codec(),  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": Codec(),  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": Codec(),  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": Codec(),  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": Codec(),  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": Codec(),  # JPEG 2000
    "1.2.840.10008.1.2.4.201": Codec(),  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": Codec(),  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": Codec(),  # HTJ2K
}


def check_transfer_syntax(uid: str) -> None:
    """Raise UNSUPPORTED_TRANSFER_SYNTAX unless ``uid`` is native or has a working decoder."""
    if uid in NATIVE:
        return
    if uid not in CODECS:
        raise Rejection(
            RejectReason.UNSUPPORTED_TRANSFER_SYNTAX, f"{ts_label(uid)} is not decoded here"
        )
    decoder = get_decoder(UID(uid))
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise Rejection(
            RejectReason.UNSUPPORTED_TRANSFER_SYNTAX,
            f"{ts_label(uid)}: no decoding plugin installed ({missing})",
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


def check_pixel_data(
    ds: Dataset, header: Header, parse_warnings: list[str], notes: list[str]
) -> None:
    """Raise NO_PIXEL_DATA or TRUNCATED_PIXEL_DATA unless the pixel stream is complete.

    Native data must hold Rows x Columns x Bits Allocated; encapsulated data must be framed
    to its end with at least one non-empty fragment.  A missing EOI marker is only noted.
    """
    if "PixelData" not in ds:
        if any(EOF_BEFORE_DELIMITER in w for w in parse_warnings):
            raise Rejection(
                RejectReason.TRUNCATED_PIXEL_DATA,
                "encapsulated Pixel Data ends before its sequence delimiter (file cut short)",
            )
        other = [kw for kw in ("FloatPixelData", "DoubleFloatPixelData") if kw in ds]
        detail = (
            f"only {other[0]}, which is not a radiograph" if other else "no (7FE0,0010) Pixel Data"
        )
        raise Rejection(RejectReason.NO_PIXEL_DATA, detail)
    value = ds.PixelData
    if header.transfer_syntax in NATIVE:
        need = expected_native_length(header)
        if len(value) < need:
            raise Rejection(
                RejectReason.TRUNCATED_PIXEL_DATA,
                f"{len(value)} bytes of Pixel Data, {header.rows}x{header.columns} needs {need}",
            )
        return
    frames = [f for f in fragments(value) if f]
    if not frames:
        raise Rejection(RejectReason.NO_PIXEL_DATA, "encapsulated Pixel Data holds no fragment")
    codec = CODECS.get(header.transfer_syntax, Codec())
    if codec.ends_ffd9 and b"\xff\xd9" not in frames[-1][-3:]:
        notes.append("last fragment does not end with an FFD9 end-of-image marker")


def reduction_factor(rows: int, columns: int, max_side: int | None) -> int:
    """The largest of 1, 2, 4, 8 that keeps the long side at or above ``max_side``."""
    if not max_side or max_side <= 0:
        return 1
    factor = 1
    while factor < 8 and max(rows, columns) / (factor * 2) >= max_side:
        factor *= 2
    return factor


def _decode_reduced_jpeg(frame: bytes, header: Header, factor: int) -> np.ndarray | None:
    """8-bit JPEG decoded at ``1/factor`` scale by libjpeg-turbo, or ``None`` if it cannot."""
    import cv2  # lazily: only this path needs OpenCV's codecs

    flags = {
        2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
        4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
        8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
    }[factor] | cv2.IMREAD_IGNORE_ORIENTATION
    arr = cv2.imdecode(np.frombuffer(frame, dtype=np.uint8), flags)
    shape = (math.ceil(header.rows / factor), math.ceil(header.columns / factor))
    if arr is None or arr.shape != shape:
        return None
    return arr


def decode(
    ds: Dataset, header: Header, max_side: int | None, notes: list[str]
) -> tuple[np.ndarray, float]:
    """Decode the single frame; returns ``(stored values, scale)``, scale = output / stored.

    Raises DECODE_FAILED naming the transfer syntax and every plugin's error.
    """
    uid = header.transfer_syntax
    codec = CODECS.get(uid)
    factor = reduction_factor(header.rows, header.columns, max_side)
    if codec is not None and codec.reducible and factor > 1 and header.bits_stored <= 8:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        reduced = _decode_reduced_jpeg(frame, header, factor)
        if reduced is not None:
            return reduced, 1.0 / factor
        notes.append("reduced JPEG decode failed; decoded at full size")
    try:
        arr, _ = get_decoder(UID(uid)).as_array(
            ds, index=0, raw=True, decoding_plugin=codec.plugin if codec else ""
        )
    except Exception as exc:
        message = " ".join(str(exc).split())
        raise Rejection(RejectReason.DECODE_FAILED, f"{ts_label(uid)}: {message}") from exc
    if arr.shape != (header.rows, header.columns):
        raise Rejection(
            RejectReason.DECODE_FAILED,
            f"{ts_label(uid)}: decoded shape {arr.shape}, header says "
            f"{header.rows}x{header.columns}",
        )
    return arr, 1.0
