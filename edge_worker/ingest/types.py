"""What the ingest hands to the pipeline: a normalised image and the header facts it needs.

The header carries no patient-identifying attribute (name, ID, birth date): nothing
downstream can leak what it never received.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class IngestPolicy:
    """Limits and choices for reading a file; the defaults suit projection radiography."""

    #: Modalities accepted as projection radiography (DICOM PS3.3 C.7.3.1.1.1).
    modalities: tuple[str, ...] = ("CR", "DX", "RG", "XA", "RF", "PX", "OT")
    #: Accept "For Processing" images (raw detector data, not meant for display)?
    accept_for_processing: bool = False
    #: Largest accepted Rows and Columns, checked before any pixel is allocated.
    max_side: int = 8192
    #: Smallest accepted Rows and Columns: a 2x2 image is no radiograph.
    min_side: int = 64
    #: Largest file read, and largest dataset a Deflated file may inflate to, in MiB.  An
    #: 8192x8192 16-bit image is 128 MiB; the rest is headroom for private data.
    max_file_mib: int = 512
    #: Memory one file's read and decode may take, in MiB: a file predicted to need more
    #: (:func:`edge_worker.ingest.budget.predicted_bytes`) is refused before decoding.
    decode_memory_mib: int = 1024


@dataclass(frozen=True)
class Header:
    """Header facts read before decoding (``stop_before_pixels``)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    body_part: str
    view_position: str
    laterality: str
    rows: int
    columns: int
    bits_stored: int
    photometric: str
    transfer_syntax: str
    pixel_spacing_mm: tuple[float, float] | None
    manufacturer: str
    extra: dict[str, str] = field(default_factory=dict)
    #: Free-text descriptions a site's modality writes (routing reads their keywords).
    study_description: str = ""
    series_description: str = ""
    protocol_name: str = ""
    #: Anatomic Region Sequence (0008,2218), first item: "CODE^SCHEME^Meaning" (empty if absent).
    anatomic_region: str = ""
    #: Exposure Index, Target Exposure Index and Deviation Index (IEC 62494-1; DICOM
    #: (0018,1411)-(0018,1413)), ``None`` where the file does not carry them.
    exposure_index: float | None = None
    target_exposure_index: float | None = None
    deviation_index: float | None = None

    def public(self) -> dict[str, object]:
        """The fields safe to publish in a verdict (no patient identifiers exist here)."""
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "sop_class_uid": self.sop_class_uid,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "modality": self.modality,
            "body_part": self.body_part,
            "view_position": self.view_position,
            "laterality": self.laterality,
            "rows": self.rows,
            "columns": self.columns,
            "bits_stored": self.bits_stored,
            "photometric": self.photometric,
            "transfer_syntax": self.transfer_syntax,
            "pixel_spacing_mm": list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None,
            "manufacturer": self.manufacturer,
        }


@dataclass(frozen=True)
class Radiograph:
    """A decoded radiograph ready for the networks.

    ``pixels`` is 2-D float32 in [0, 1] in display polarity (bone bright), already through the
    grayscale chain (Modality LUT, VOI, MONOCHROME1 inversion).  ``scale`` is the factor from
    stored pixels to ``pixels`` (below 1.0 when the decoder reduced the resolution), so that
    boxes can be reported in the stored image's coordinates.
    """

    header: Header
    pixels: np.ndarray
    scale: float = 1.0
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: Oddities met while reading (no file meta, masked overlay bits, ...), one line each.
    notes: tuple[str, ...] = ()
    #: The decoder that produced the pixels (a name from ``ingest.decoders.DECODERS``).
    decoder: str = ""
    #: sha256 (hex) of the Pixel Data element's value as stored (native bytes, or the
    #: encapsulated fragments): the image's content identity, whatever its UID says.
    pixel_digest: str = ""
