"""The file's bytes as pydicom reads them: bounded reads, a deflate guard, and cut files.

pydicom parses what it is given and says little when the bytes run out: a value cut short is
stored short, an element header cut short ends the dataset quietly.  A file still being
written (or left half-written by a crashed sender) must not pass for a complete one, so the
parse goes through :class:`BoundedReader`, which notices every read the file could not fill,
and :func:`cut_rejection` turns what it saw into a rejection that says where the file ends.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian

from edge_worker.errors import Rejection, RejectReason

#: Explicit VRs with a 4-byte length (PS3.5 Table 7.1-1); the file meta is always explicit LE.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})  # fmt: skip
_PIXEL_DATA_TAG = 0x7FE00010
_PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # little, big endian
_UNDEFINED = 0xFFFFFFFF


class BoundedReader:
    """A read-only file whose reads never ask for more than the file holds.

    pydicom reads an element's value with ``fp.read(length)``, and CPython's file objects
    allocate ``length`` bytes before reading: a corrupt length of 0xFFFFFFF0 would cost
    4 GiB.  Clamping each request to the bytes left makes a corrupt length cost nothing.
    ``short_read`` records the first read the file could only partly fill, as
    ``(position, got, wanted)``: that is where a cut file ends.
    """

    def __init__(self, raw: BinaryIO, size: int | None = None) -> None:
        self._raw = raw
        self._pos = raw.tell()
        self._size = raw.seek(0, io.SEEK_END) if size is None else size
        raw.seek(self._pos)
        self.name = getattr(raw, "name", "")
        self.short_read: tuple[int, int, int] | None = None
        self.empty_read_at: int | None = None

    @property
    def size(self) -> int:
        return self._size

    def read(self, size: int | None = -1) -> bytes:
        left = max(0, self._size - self._pos)
        wanted = left if size is None or size < 0 else size
        data = self._raw.read(min(wanted, left))
        # An empty read at the very end is how a complete file ends; a partial one is a cut.
        if 0 < len(data) < wanted and self.short_read is None:
            self.short_read = (self._pos, len(data), wanted)
        elif not data and wanted > 0:
            self.empty_read_at = self._pos  # a cut exactly on a field boundary looks like this
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = self._raw.seek(offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos


def meta_transfer_syntax(head: bytes) -> tuple[str, int] | None:
    """The Transfer Syntax UID in a Part 10 file meta group, and the offset where it ends.

    ``head`` is the start of the file.  ``None`` without ``DICM`` or a readable group 0002.
    """
    if head[128:132] != b"DICM":
        return None
    offset, uid = 132, None
    while offset + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, offset)
        if group != 0x0002:
            break
        vr = head[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            if offset + 12 > len(head):
                return None
            (length,) = struct.unpack_from("<I", head, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", head, offset + 6)
            start = offset + 8
        if start + length > len(head):
            return None
        if element == 0x0010:
            uid = head[start : start + length].rstrip(b"\0 ").decode("ascii", "replace")
        offset = start + length
    return (uid, offset) if uid is not None else None


def check_inflated_size(fp: BoundedReader, limit: int) -> None:
    """Refuse a Deflated Explicit VR file whose dataset inflates beyond ``limit`` bytes.

    pydicom inflates the whole dataset in memory before parsing (PS3.5 A.5), even for
    ``stop_before_pixels``: a few MB of zeros deflate to a few KB, so without this a small
    file could claim gigabytes.  Inflates in bounded chunks and discards them; rewinds ``fp``.
    """
    head = fp.read(1 << 16)
    found = meta_transfer_syntax(head)
    if found is None or found[0] != DeflatedExplicitVRLittleEndian:
        fp.seek(0)
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    fp.seek(found[1])
    try:
        while not inflater.eof and (chunk := fp.read(1 << 20)):
            while chunk and not inflater.eof:
                total += len(inflater.decompress(chunk, 1 << 22))
                if total > limit:
                    raise Rejection(
                        RejectReason.TOO_LARGE,
                        f"the deflated dataset inflates beyond {limit >> 20} MiB",
                    )
                chunk = inflater.unconsumed_tail
    except zlib.error as exc:
        raise Rejection(RejectReason.UNREADABLE, f"deflated dataset: zlib: {exc}") from exc
    finally:
        fp.seek(0)


def _cut_element(ds: Dataset, depth: int = 0) -> tuple[int, int, int] | None:
    """``(tag, present, declared)`` when the dataset's last element is shorter than declared.

    The last element (descending into the last item of a trailing sequence) is where a cut
    file shows it; naming it makes the rejection readable.
    """
    last = None
    for last in ds.elements():
        pass
    if last is None or depth > 32:
        return None
    if isinstance(last, RawDataElement):
        value, length = last.value, last.length
        if length != _UNDEFINED and isinstance(value, bytes) and len(value) < length:
            return int(last.tag), len(value), length
        return None
    if isinstance(last.value, Sequence) and len(last.value):
        return _cut_element(last.value[-1], depth + 1)
    return None


def _in_pixel_header(fp: BoundedReader, at: int) -> bool:
    """True when a read at ``at`` fell inside the (7FE0,0010) element's tag, VR or length.

    That header is at most 12 bytes (explicit VR, OB/OW); the tag, or the start of it, is
    then found at most 8 bytes before ``at`` or begins at ``at`` and runs to the end.
    """
    here, short, empty = fp.tell(), fp.short_read, fp.empty_read_at
    start = max(0, at - 8)
    fp.seek(start)
    window = fp.read(at - start + 4)
    # This look-back may itself run off the end: it must not count as another cut.
    fp.seek(here)
    fp.short_read, fp.empty_read_at = short, empty
    for tag in _PIXEL_TAGS:
        found = window.find(tag)
        if 0 <= found <= at - start or (
            window[at - start :] and tag.startswith(window[at - start :])
        ):
            return True
    return False


def cut_rejection(
    fp: BoundedReader, ds: Dataset | None, pixel_start: int | None, short_reads: bool
) -> Rejection | None:
    """The rejection for a file that ends early, or ``None`` when nothing shows a cut.

    A value shorter than its declared length always shows a cut.  A partly filled read
    (:attr:`BoundedReader.short_read`) only counts when ``short_reads``: pydicom also reads
    past the end of complete files while it looks for a delimiter, so callers pass True
    only when the parse failed or found no Pixel Data.  ``pixel_start`` is where the Pixel
    Data element begins (from the header parse), when known: a cut there or later is
    TRUNCATED_PIXEL_DATA, a cut before it UNREADABLE.
    """

    def reason(at: int) -> RejectReason:
        past = pixel_start is not None and at >= pixel_start
        return RejectReason.TRUNCATED_PIXEL_DATA if past else RejectReason.UNREADABLE

    cut = _cut_element(ds) if ds is not None else None
    if cut is not None:
        tag, present, declared = cut
        return Rejection(
            RejectReason.TRUNCATED_PIXEL_DATA if tag == _PIXEL_DATA_TAG else reason(fp.size),
            f"the file ends inside element ({tag >> 16:04X},{tag & 0xFFFF:04X}): {present} of "
            f"{declared} bytes (cut short, or still being written)",
        )
    # Nothing left where the Pixel Data element's own tag, VR or length should be: a complete
    # file never ends there, so the cut is in the pixel data.
    empty = fp.empty_read_at
    if short_reads and fp.short_read is None and empty is not None and _in_pixel_header(fp, empty):
        return Rejection(
            RejectReason.TRUNCATED_PIXEL_DATA,
            f"the file ends inside the Pixel Data header at byte {fp.size} (cut short, or "
            "still being written)",
        )
    if not short_reads or fp.short_read is None:
        return None
    at, got, wanted = fp.short_read
    if reason(at) is RejectReason.TRUNCATED_PIXEL_DATA or _in_pixel_header(fp, at):
        return Rejection(
            RejectReason.TRUNCATED_PIXEL_DATA,
            f"the file ends inside the Pixel Data at byte {fp.size} (cut short, or still "
            "being written)",
        )
    return Rejection(
        RejectReason.UNREADABLE,
        f"the file ends inside an element at byte {at}: {got} of {wanted} bytes (cut short, "
        "or still being written)",
    )
