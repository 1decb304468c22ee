"""The decode budget: what one file's read and decode may cost, checked before it starts.

A compressed file of a few kilobytes can declare an image whose decode needs gigabytes, and
agree with its own DICOM header while doing so (the codestream checks of
:mod:`edge_worker.ingest.decode` then pass).  :func:`check` predicts the allocations of the
read and decode from the header alone and refuses, with ``decode_budget_exceeded``, a file
predicted to need more than ``IngestPolicy.decode_memory_mib``: before any pixel buffer exists.

The prediction counts the pixel buffers only, and assumes the codec decodes at full size
(a JPEG 2000 stream may hold fewer wavelet levels than the reduction wanted).  What it cannot
see (a codestream's tiles, code-blocks and layers, which OpenJPEG allocates from marker
segments) is bounded during the decode by the isolated decode process
(:mod:`edge_worker.ingest.sandbox`), whose memory is limited to the same budget.

Measured on 3000x2400 16-bit phantoms (BENCHMARKS.md "## Decode budget"): the real peak is
35-70 MiB, the prediction 80-200 MiB: the prediction errs on the safe side.
"""

from __future__ import annotations

import math

from pydicom.uid import HTJ2K, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, JPEG2000Lossless

from edge_worker.errors import Rejection, RejectReason
from edge_worker.ingest.types import Header

#: Copies of the file's bytes alive during a read: the bounded read, the dataset parsed from
#: it, and the Pixel Data value (or the joined codestream) taken out of the dataset.
FILE_COPIES = 3
#: Bytes per pixel the grayscale chain holds at the size it works on: the stored values as
#: int32 or float32 in box_reduce, and the float32 result.
GRAYSCALE_BYTES = 8
#: Words OpenJPEG decodes into: one int32 per sample, before the copy into the stored type.
_J2K_WORD = 4
_J2K = frozenset({JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K})


def predicted_bytes(header: Header, file_bytes: int, reduce: int) -> int:
    """Bytes the read and decode of a file of ``file_bytes`` with ``header`` may allocate.

    ``reduce`` is the reduction wanted (a power of two; the grayscale chain works at that
    size).  The codec is assumed to decode at full size: an upper bound, not an estimate.
    """
    pixels = header.rows * header.columns
    allocated = int(header.extra.get("bits_allocated", "16"))
    samples = int(header.extra.get("samples_per_pixel", "1"))
    stored = max(1, math.ceil(allocated / 8)) * samples
    # The decoder's own buffer and the stored array it returns (pydicom's arrays are copies).
    codec = pixels * ((_J2K_WORD if header.transfer_syntax in _J2K else stored) + stored)
    reduced = math.ceil(header.rows / reduce) * math.ceil(header.columns / reduce)
    return FILE_COPIES * file_bytes + codec + pixels * 4 + reduced * GRAYSCALE_BYTES


def check(header: Header, file_bytes: int, reduce: int, budget_mib: int) -> None:
    """Raise DECODE_BUDGET when :func:`predicted_bytes` exceeds ``budget_mib`` MiB."""
    need = predicted_bytes(header, file_bytes, reduce)
    if need > budget_mib << 20:
        raise Rejection(
            RejectReason.DECODE_BUDGET,
            f"decoding {header.rows}x{header.columns} would need about {need >> 20} MiB, "
            f"more than the {budget_mib} MiB budget (ingest.decode_memory_mib)",
        )


def is_memory_failure(exc: BaseException) -> bool:
    """True for a decoder failure that means the memory ran out (MemoryError, OpenJPEG's
    "Not enough memory ...", libjpeg's "Insufficient memory", "out of memory")."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("not enough memory", "insufficient memory", "out of memory",
                                   "cannot allocate memory", "bad_alloc"))  # fmt: skip
