"""What a JPEG, JPEG-LS or JPEG 2000 codestream declares, read before any decoder runs.

A decoder allocates its output from the codestream's own frame header, not from the DICOM
Rows and Columns that the policy checked.  A damaged or hostile file can declare 65535 x
65535 there; reading the size first lets :mod:`edge_worker.ingest.decode` refuse it before
a single pixel is allocated.  The parsers only walk marker segments: no entropy data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from edge_worker.ingest.openjp2 import J2K_SOC_SIZ, JP2_SIGNATURE

#: Start-of-frame markers (ITU-T T.81 Table B.1: C0-CF except DHT C4, JPG C8, DAC CC) and
#: JPEG-LS SOF55 (ITU-T T.87 C.2.2).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
#: Markers without a length field (T.81 B.1.1.3: TEM, RSTn, SOI, EOI).
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})
_SOS, _EOI = 0xDA, 0xD9
#: Segments looked at before giving up (real files have a handful before SOF).
_MAX_SEGMENTS = 256


@dataclass(frozen=True)
class Declared:
    """Frame size and layout as the codestream states it."""

    rows: int
    columns: int
    components: int
    precision: int


def jpeg_frame(data: bytes) -> Declared | None:
    """The SOFn (or JPEG-LS SOF55) of a JPEG stream, or ``None`` when there is none before SOS."""
    if not data.startswith(b"\xff\xd8"):
        return None
    offset = 2
    for _ in range(_MAX_SEGMENTS):
        # Markers may be preceded by any number of 0xFF fill bytes (T.81 B.1.1.2).
        while offset < len(data) and data[offset] != 0xFF:
            offset += 1
        while offset < len(data) and data[offset] == 0xFF:
            offset += 1
        if offset >= len(data):
            return None
        marker = data[offset]
        offset += 1
        if marker in _STANDALONE:
            continue
        if marker in (_SOS, _EOI) or offset + 2 > len(data):
            return None
        (length,) = struct.unpack_from(">H", data, offset)
        if marker in _SOF:
            if length < 8 or offset + 8 > len(data):
                return None
            precision, rows, columns, components = struct.unpack_from(">BHHB", data, offset + 2)
            return Declared(rows, columns, components, precision)
        offset += length
    return None


def _jp2_codestream(data: bytes) -> bytes | None:
    """The contiguous codestream box (``jp2c``) of a JP2 file (ISO/IEC 15444-1 I.5.4)."""
    offset = 0
    for _ in range(_MAX_SEGMENTS):
        if offset + 8 > len(data):
            return None
        length, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if length == 1 and offset + 16 <= len(data):  # XLBox: 64-bit length follows
            (length,) = struct.unpack_from(">Q", data, offset + 8)
            header = 16
        if kind == b"jp2c":
            return data[offset + header : offset + length if length else len(data)]
        if length < header:
            return None
        offset += length
    return None


def j2k_frame(data: bytes) -> Declared | None:
    """The image size in a JPEG 2000 SIZ segment (ISO/IEC 15444-1 A.5.1), or ``None``."""
    if data.startswith(JP2_SIGNATURE):
        inner = _jp2_codestream(data)
        if inner is None:
            return None
        data = inner
    if not data.startswith(J2K_SOC_SIZ) or len(data) < 4 + 38 + 3:
        return None
    x, y, x0, y0 = struct.unpack_from(">IIII", data, 8)
    (components,) = struct.unpack_from(">H", data, 40)
    ssiz = data[42]
    if x <= x0 or y <= y0:
        return Declared(0, 0, components, (ssiz & 0x7F) + 1)
    return Declared(y - y0, x - x0, components, (ssiz & 0x7F) + 1)


def ends_with_eoi(data: bytes) -> bool:
    """True when the stream's last marker is EOI/EOC ``FFD9``, trailing padding allowed.

    Writers pad a fragment to even length with 0x00, some with 0xFF (PS3.5 A.4).
    """
    return data.rstrip(b"\x00\xff").endswith(b"\xff\xd9")
