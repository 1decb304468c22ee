"""One rooted error hierarchy with two channels.

* Caller and configuration mistakes (a bad config key, a pack whose checksum does not
  match, a backend that is not installed) raise subclasses of :class:`EdgeWorkerError`
  early, before the daemon reports ready.
* Expected runtime conditions (a file that is not DICOM, a truncated pixel stream) are
  :class:`Rejection` values carrying a :class:`RejectReason`.  The daemon turns them into a
  quarantine entry and an error message; it never dies on them.
"""

from __future__ import annotations

import enum


class EdgeWorkerError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(EdgeWorkerError):
    """The configuration (file or flags) is invalid; the message names the key and line."""


class PackError(EdgeWorkerError):
    """A model pack is missing, malformed, or fails its integrity check."""


class BackendError(EdgeWorkerError):
    """No inference backend could be created; the message lists every failure."""


class RejectReason(str, enum.Enum):
    """Why an input file produced no verdict.  The values are stable: dashboards key on them."""

    NOT_DICOM = "not_dicom"
    UNREADABLE = "unreadable"
    NO_PIXEL_DATA = "no_pixel_data"
    TRUNCATED_PIXEL_DATA = "truncated_pixel_data"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    DECODE_FAILED = "decode_failed"
    FOR_PROCESSING = "for_processing"
    MULTI_FRAME = "multi_frame"
    UNSUPPORTED_MODALITY = "unsupported_modality"
    UNSUPPORTED_PHOTOMETRIC = "unsupported_photometric"
    TOO_LARGE = "too_large"
    TOO_SMALL = "too_small"
    INCOMPLETE_FILE = "incomplete_file"
    NO_PACK_FOR_BODY_PART = "no_pack_for_body_part"
    INFERENCE_FAILED = "inference_failed"
    #: The decode would need, or took, more memory or time than ``[ingest] decode_memory_mib``
    #: and ``decode_timeout_seconds`` allow (refused before, or stopped during, the decode).
    DECODE_BUDGET = "decode_budget_exceeded"
    #: The worker died twice while judging this file (a crash loop broken by quarantine).
    CRASHED_WORKER = "crashed_worker"
    #: An MR series (edge_worker.watching.series): the count headers say more images than came.
    SERIES_INCOMPLETE = "series_incomplete"
    #: A gap in the slice positions along the normal: a slice inside the volume never came.
    SLICE_MISSING = "slice_missing"
    #: Two slices of one series at the same position along the normal.
    POSITIONS_DUPLICATED = "positions_duplicated"
    #: The slices of one series differ in Image Orientation (Patient).
    ORIENTATION_INCONSISTENT = "orientation_inconsistent"
    #: The distances between neighbouring slices differ (no regular grid to tile).
    SPACING_IRREGULAR = "spacing_irregular"
    #: A series still incomplete ``[series] max_wait_seconds`` after its first file.
    SERIES_TIMEOUT = "series_timeout"
    #: The volume (or its resampled copy) exceeds ``[series] max_voxels`` / the stage's memory.
    VOLUME_TOO_LARGE = "volume_too_large"
    #: Files under one Series Instance UID that cannot be one volume (sizes, frames of
    #: reference, single- and multi-frame files mixed).
    SERIES_MIXED = "series_mixed"


class Rejection(EdgeWorkerError):
    """An input the worker cannot judge, with a typed reason and a human-readable detail.

    It is an exception so that deep decode code can raise it, but the daemon treats it as a
    value: it is caught at the file boundary, quarantined and published, never re-raised.
    """

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail

    def as_dict(self) -> dict[str, str]:
        """The rejection as the JSON-ready ``{"reason": ..., "detail": ...}`` pair."""
        return {"reason": self.reason.value, "detail": self.detail}
