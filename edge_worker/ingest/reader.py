"""File -> :class:`Header` or :class:`Radiograph`; every failure becomes a :class:`Rejection`.

The header is parsed and validated (``stop_before_pixels=True``) before the rest of the
file is read, so a refused file costs a header parse.  pydicom's warnings and its decoder log records
(which carry tracebacks) are captured while we work and reported as one warning per odd
file through this module's logger.

``warnings.catch_warnings`` is process-global: warnings raised by other threads while a
file is read here are captured too (Python < 3.14 has no per-thread filters).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom.dataset import Dataset

from edge_worker.errors import Rejection, RejectReason
from edge_worker.ingest import budget
from edge_worker.ingest import decode as _decode
from edge_worker.ingest.grayscale import meta_from_dataset, normalise
from edge_worker.ingest.header import (
    header_from_dataset,
    oddities,
    open_dataset,
    validate_header,
)
from edge_worker.ingest.source import BoundedReader, check_inflated_size
from edge_worker.ingest.types import Header, IngestPolicy, Radiograph

logger = logging.getLogger(__name__)

_DEFAULT_POLICY = IngestPolicy()
#: Loggers pydicom writes to; filters do not apply to records propagating from children,
#: so each one needs its own (pydicom/pixels/decoders/base.py logs with ``__name__``).
_PYDICOM_LOGGERS = ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils")


class _Capture(logging.Filter):
    """Swallows pydicom's log records (``LOGGER.exception`` prints tracebacks) into notes."""

    def __init__(self, notes: list[str]) -> None:
        super().__init__()
        self.notes = notes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            self.notes.append(record.getMessage().splitlines()[0][:300])
        return False


@contextmanager
def _quiet(notes: list[str]) -> Iterator[None]:
    """Collect pydicom warnings and log records into ``notes`` instead of printing them."""
    loggers = [logging.getLogger(name) for name in _PYDICOM_LOGGERS]
    capture = _Capture(notes)
    for each in loggers:
        each.addFilter(capture)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for each in loggers:
            each.removeFilter(capture)
        notes.extend(str(w.message).splitlines()[0][:300] for w in caught)


def _report(
    path: str | os.PathLike[str], notes: list[str], level: int = logging.WARNING
) -> tuple[str, ...]:
    """Log one line for an odd file; returns the de-duplicated notes."""
    unique = tuple(dict.fromkeys(notes))
    if unique:
        logger.log(level, "%s: %s", Path(path).name, "; ".join(unique))
    return unique


#: Attribute set on a :class:`Rejection` raised after the header was parsed: the file's SOP
#: Instance UID (or ``None``), so that a caller needs no second read to key the error.
SOP_UID_ATTRIBUTE = "sop_instance_uid"


@contextmanager
def _open(path: str | os.PathLike[str], policy: IngestPolicy) -> Iterator[BoundedReader]:
    """Open ``path`` for a bounded read; TOO_LARGE beyond ``policy.max_file_mib``."""
    limit = policy.max_file_mib << 20
    with open(path, "rb") as raw:
        size = os.fstat(raw.fileno()).st_size
        if size > limit:
            raise Rejection(
                RejectReason.TOO_LARGE,
                f"file of {size >> 20} MiB exceeds {policy.max_file_mib} MiB",
            )
        fp = BoundedReader(raw, size)
        check_inflated_size(fp, limit)
        yield fp


def _unexpected(exc: Exception, reason: RejectReason) -> Rejection:
    """Wrap an exception we did not anticipate, keeping its type and message."""
    return Rejection(reason, f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500])


def _keyed(rejection: Rejection, header: Header | None) -> Rejection:
    """Attach the header's SOP Instance UID (see :data:`SOP_UID_ATTRIBUTE`)."""
    if header is not None:
        setattr(rejection, SOP_UID_ATTRIBUTE, header.sop_instance_uid or None)
    return rejection


def _header(fp: BoundedReader, policy: IngestPolicy, notes: list[str]) -> Header:
    """Parse the header from ``fp`` and validate it; raises :class:`Rejection`."""
    ds, _ = open_dataset(fp, stop_before_pixels=True, notes=notes)
    header = header_from_dataset(ds)
    try:
        validate_header(header, policy)
        _decode.check_transfer_syntax(header.transfer_syntax)
    except Rejection as rejection:
        raise _keyed(rejection, header)
    notes.extend(oddities(header))
    return header


def read_header(path: str | os.PathLike[str], policy: IngestPolicy = _DEFAULT_POLICY) -> Header:
    """Read and validate the header of the DICOM file at ``path`` without touching pixels.

    Returns the :class:`Header` (no patient identifiers).  Raises :class:`Rejection` for a
    file that is not DICOM, unreadable, or refused by ``policy``; never another exception.
    """
    notes: list[str] = []
    # DEBUG here: callers go on to read_radiograph, which logs the same oddities as a warning.
    try:
        with _quiet(notes), _open(path, policy) as fp:
            header = _header(fp, policy, notes)
    except Rejection:
        _report(path, notes, logging.DEBUG)
        raise
    except Exception as exc:
        _report(path, notes, logging.DEBUG)
        raise _unexpected(exc, RejectReason.UNREADABLE) from exc
    _report(path, notes, logging.DEBUG)
    return header


def _pixel_digest(ds: Dataset) -> str:
    """sha256 of the Pixel Data value as stored; sizes are already checked against the policy."""
    raw = ds.get("PixelData")
    return hashlib.sha256(raw if isinstance(raw, (bytes, bytearray)) else b"").hexdigest()


def read_radiograph(
    path: str | os.PathLike[str],
    policy: IngestPolicy = _DEFAULT_POLICY,
    max_side: int | None = None,
) -> Radiograph:
    """Read, validate, decode and normalise the radiograph at ``path``.

    ``max_side`` reduces the image by the largest power of two that keeps its long side >=
    ``max_side``: in the codec where it can (JPEG 2000 and HTJ2K at 1/2^r, 8-bit JPEG at
    1/2, 1/4, 1/8), else by averaging stored values before the grayscale chain.  The final
    resize is the caller's (``edge_worker.pipeline.preprocess.working_image``).  Returns a
    :class:`Radiograph` whose pixels are 2-D float32 in [0, 1], bone bright, and whose
    ``scale`` is output / stored size.  Raises :class:`Rejection` (and nothing else) when the
    file cannot be judged; once the header is parsed the rejection carries the SOP Instance
    UID as ``sop_instance_uid`` (:data:`SOP_UID_ATTRIBUTE`).
    """
    notes: list[str] = []
    timings: dict[str, float] = {}
    start = time.perf_counter()
    stage = "read"
    header: Header | None = None
    try:
        with _quiet(notes):
            with _open(path, policy) as fp:
                stage = "header"
                header = _header(fp, policy, notes)
                timings["header_ms"] = (time.perf_counter() - start) * 1000
                reduce = _decode.reduction_factor(header.rows, header.columns, max_side)
                budget.check(header, fp.size, reduce, policy.decode_memory_mib)
                # The header parse stops where (7FE0,0010) begins, unless the file ended.
                pixel_start = fp.tell() if fp.tell() < fp.size else None
                # Only an accepted header gets the rest read.  The full parse runs on an
                # in-memory copy, so nothing it reads can outlive this bounded file.
                fp.seek(0)
                data = fp.read()
            stage = "pixels"
            ds, parse_warnings = open_dataset(
                BoundedReader(io.BytesIO(data)),
                stop_before_pixels=False,
                notes=notes,
                pixel_start=pixel_start,
            )
            frame = _decode.pixel_frame(ds, header, data, parse_warnings)
            del data
            pixel_digest = _pixel_digest(ds)
            stage = "decode"
            t0 = time.perf_counter()
            decoded = _decode.decode(ds, header, frame, max_side, notes)
            timings["decode_ms"] = (time.perf_counter() - t0) * 1000
            stage = "grayscale"
            t0 = time.perf_counter()
            pixels = normalise(decoded.stored, meta_from_dataset(ds), reduce=decoded.left)
            timings["grayscale_ms"] = (time.perf_counter() - t0) * 1000
    except Rejection as rejection:
        _report(path, notes)
        raise _keyed(rejection, header)
    except Exception as exc:
        _report(path, notes)
        if budget.is_memory_failure(exc):
            reason = RejectReason.DECODE_BUDGET
        elif stage in ("decode", "grayscale"):
            reason = RejectReason.DECODE_FAILED
        else:
            reason = RejectReason.UNREADABLE
        raise _keyed(_unexpected(exc, reason), header) from exc
    timings["total_ms"] = (time.perf_counter() - start) * 1000
    return Radiograph(
        header=header,
        pixels=pixels,
        scale=decoded.scale / decoded.left,
        timings_ms=timings,
        notes=_report(path, notes),
        decoder=decoded.decoder,
        pixel_digest=pixel_digest,
    )
