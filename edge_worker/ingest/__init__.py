"""DICOM ingest: read the header, validate it against the policy, decode and normalise.

Public entry points: :func:`read_header` and :func:`read_radiograph`.  Both raise only
:class:`edge_worker.errors.Rejection`; the daemon quarantines the file with its reason.
"""

from __future__ import annotations

from edge_worker.ingest.reader import read_header, read_radiograph
from edge_worker.ingest.types import Header, IngestPolicy, Radiograph

__all__ = ["Header", "IngestPolicy", "Radiograph", "read_header", "read_radiograph"]
