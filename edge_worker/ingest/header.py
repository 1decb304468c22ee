"""Open a DICOM dataset, build the :class:`Header` and check it against the policy.

Everything here works on the header alone (``stop_before_pixels=True``), so a file that the
policy refuses is never decoded and a huge declared image is never allocated.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from edge_worker.errors import Rejection, RejectReason
from edge_worker.ingest.source import BoundedReader, cut_rejection
from edge_worker.ingest.types import Header, IngestPolicy

#: SOP classes whose instances are raw detector data (PS3.4 B.5, "For Processing").
FOR_PROCESSING_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.3.1": "Digital Intra-Oral X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.13.1.5": "Breast Projection X-Ray Image Storage - For Processing",
}
SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")
#: pydicom's warning when an encapsulated (undefined-length) element runs into end of file.
EOF_BEFORE_DELIMITER = "End of file reached before delimiter"
#: Groups a dataset without file meta may plausibly start with (PS3.5 7.1; ACR-NEMA files
#: start with command group 0000 or identifying group 0008).
_PLAUSIBLE_FIRST_GROUPS = (0x0000, 0x0002, 0x0008)


def ts_label(uid: str) -> str:
    """``"Name (uid)"`` for a transfer syntax or SOP class UID, for rejection details."""
    name = UID(uid).name if uid else ""
    return f"{name} ({uid})" if name and name != uid else f"unknown ({uid or 'none'})"


def _looks_like_dicom(ds: Dataset) -> bool:
    """A forced read gives garbage tags for non-DICOM bytes; real datasets start sanely."""
    tags = list(ds.keys())
    if not tags or tags[0].group not in _PLAUSIBLE_FIRST_GROUPS:
        return False
    return any(kw in ds for kw in ("SOPClassUID", "Modality", "Rows"))


def open_dataset(
    fp: BoundedReader,
    *,
    stop_before_pixels: bool,
    notes: list[str],
    pixel_start: int | None = None,
) -> tuple[Dataset, list[str]]:
    """Parse a dataset from ``fp``; returns it with the warnings pydicom raised while parsing.

    A file without the ``DICM`` preamble is read again with ``force=True`` and accepted when
    it looks like DICOM (ACR-NEMA style); its transfer syntax is then set from the encoding
    pydicom detected.  Raises :class:`Rejection` NOT_DICOM, or UNREADABLE /
    TRUNCATED_PIXEL_DATA for a file that ends early (:func:`source.cut_rejection`; a cut at
    or after ``pixel_start`` is in the Pixel Data).
    """
    fp.short_read = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            fp.seek(0)
            fp.short_read = None
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels, force=True)
                plausible = _looks_like_dicom(ds)
            except Exception:  # noqa: BLE001 - any failure of a forced read means "not DICOM"
                plausible = False
            if not plausible:
                raise Rejection(
                    RejectReason.NOT_DICOM, "no DICM preamble and the content is not a dataset"
                ) from None
            notes.append("no file meta information (ACR-NEMA style)")
        except Exception as exc:
            cut = cut_rejection(fp, None, pixel_start, short_reads=True)
            raise cut or Rejection(RejectReason.UNREADABLE, f"{type(exc).__name__}: {exc}") from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if implicit is not False:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = (
                ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
            )
        notes.append(f"no transfer syntax; assumed {ts_label(ds.file_meta.TransferSyntaxUID)}")
    # A full parse that found no Pixel Data may have stopped at a cut element header.
    short_reads = not stop_before_pixels and "PixelData" not in ds
    cut = cut_rejection(fp, ds, pixel_start, short_reads)
    if cut is not None:
        raise cut
    return ds, [str(w.message) for w in caught]


def _text(ds: Dataset, keyword: str) -> str:
    """An element's value as a stripped string ("" when absent); multi-values joined by ``\\``."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(ds: Dataset, keyword: str, default: int = 0) -> int:
    """An integer element (first value), ``default`` when absent or empty."""
    value: Any = ds.get(keyword)
    if value is None or value == "":
        return default
    if not isinstance(value, (int, float, str)):
        value = value[0]
    return int(value)


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    """Pixel Spacing, else Imager Pixel Spacing (at the detector, C.8.11.4.1.1), in mm."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            try:
                row, col = float(value[0]), float(value[1])
            except (TypeError, ValueError):
                continue
            if row > 0 and col > 0:
                return row, col
    return None


def _float(ds: Dataset, keyword: str) -> float | None:
    """A decimal element's first value, ``None`` when absent, empty or not a finite number."""
    value: Any = ds.get(keyword)
    if value is None or value == "":
        return None
    if not isinstance(value, (int, float, str)):
        try:
            value = value[0]
        except (IndexError, TypeError):
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _anatomic_region(ds: Dataset) -> str:
    """The first Anatomic Region Sequence item as ``CODE^SCHEME^Meaning`` ("" when absent)."""
    seq = ds.get("AnatomicRegionSequence")
    if not seq:
        return ""
    try:
        item = seq[0]
    except (IndexError, TypeError):
        return ""
    parts = (_text(item, "CodeValue"), _text(item, "CodingSchemeDesignator"), _text(item, "CodeMeaning"))
    return "^".join(parts) if any(parts) else ""


def header_from_dataset(ds: Dataset) -> Header:
    """The :class:`Header` of a parsed dataset.  Patient attributes are never copied."""
    ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
    extra = {
        "transfer_syntax_name": UID(ts).name if ts else "",
        "presentation_intent_type": _text(ds, "PresentationIntentType"),
        "presentation_lut_shape": _text(ds, "PresentationLUTShape").upper(),
        "image_type": _text(ds, "ImageType"),
        "number_of_frames": str(_int(ds, "NumberOfFrames", 1)),
        "samples_per_pixel": str(_int(ds, "SamplesPerPixel", 1)),
        "bits_allocated": str(_int(ds, "BitsAllocated")),
        "pixel_representation": str(_int(ds, "PixelRepresentation")),
        "file_meta": "present" if "MediaStorageSOPClassUID" in ds.file_meta else "absent",
    }
    return Header(
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        modality=_text(ds, "Modality").upper(),
        body_part=_text(ds, "BodyPartExamined").upper(),
        view_position=_text(ds, "ViewPosition").upper(),
        laterality=(_text(ds, "ImageLaterality") or _text(ds, "Laterality")).upper(),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        bits_stored=_int(ds, "BitsStored", _int(ds, "BitsAllocated")),
        photometric=_text(ds, "PhotometricInterpretation").upper(),
        transfer_syntax=ts,
        pixel_spacing_mm=_spacing(ds),
        manufacturer=_text(ds, "Manufacturer"),
        extra=extra,
        study_description=_text(ds, "StudyDescription"),
        series_description=_text(ds, "SeriesDescription"),
        protocol_name=_text(ds, "ProtocolName"),
        anatomic_region=_anatomic_region(ds),
        exposure_index=_float(ds, "ExposureIndex"),
        target_exposure_index=_float(ds, "TargetExposureIndex"),
        deviation_index=_float(ds, "DeviationIndex"),
    )


def oddities(header: Header) -> list[str]:
    """Non-fatal inconsistencies worth one log line (the image is still read)."""
    notes = []
    shape = header.extra.get("presentation_lut_shape", "")
    expected = {"MONOCHROME1": "INVERSE", "MONOCHROME2": "IDENTITY"}.get(header.photometric)
    if shape and expected and shape != expected:
        # C.8.11.6.1.2: INVERSE goes with MONOCHROME1 only; the Photometric Interpretation is
        # what the pixel values mean, so it decides the polarity.
        notes.append(
            f"Presentation LUT Shape {shape} with {header.photometric}; polarity from the latter"
        )
    return notes


def validate_header(header: Header, policy: IngestPolicy) -> None:
    """Raise :class:`Rejection` when the header alone rules the file out.

    Order: modality, For Processing, frames, photometric/sample layout, bit depth, size.
    Policy refusals come first so the reason names what an operator can change.
    """
    if header.modality not in policy.modalities:
        raise Rejection(
            RejectReason.UNSUPPORTED_MODALITY,
            f"modality {header.modality or '(none)'!r} is not one of {', '.join(policy.modalities)}",
        )
    intent = header.extra.get("presentation_intent_type", "")
    if not policy.accept_for_processing:
        if intent == "FOR PROCESSING":
            raise Rejection(
                RejectReason.FOR_PROCESSING, "Presentation Intent Type is FOR PROCESSING"
            )
        if header.sop_class_uid in FOR_PROCESSING_SOP_CLASSES:
            raise Rejection(
                RejectReason.FOR_PROCESSING,
                f"SOP class {FOR_PROCESSING_SOP_CLASSES[header.sop_class_uid]} "
                f"({header.sop_class_uid})",
            )
    frames = int(header.extra.get("number_of_frames", "1"))
    if frames != 1:
        raise Rejection(RejectReason.MULTI_FRAME, f"Number of Frames is {frames}, expected 1")
    samples = int(header.extra.get("samples_per_pixel", "1"))
    if header.photometric not in SUPPORTED_PHOTOMETRIC or samples != 1:
        raise Rejection(
            RejectReason.UNSUPPORTED_PHOTOMETRIC,
            f"Photometric Interpretation {header.photometric or '(none)'!r} with "
            f"{samples} sample(s) per pixel; only single-sample MONOCHROME1/2 is read",
        )
    if header.rows <= 0 or header.columns <= 0:
        raise Rejection(RejectReason.NO_PIXEL_DATA, "no Rows/Columns: not an image")
    allocated = int(header.extra.get("bits_allocated", "0"))
    if allocated not in (8, 16, 32) or not 0 < header.bits_stored <= allocated:
        raise Rejection(
            RejectReason.UNSUPPORTED_PHOTOMETRIC,
            f"Bits Allocated {allocated} / Bits Stored {header.bits_stored} is not supported",
        )
    size = f"{header.rows}x{header.columns}"
    if max(header.rows, header.columns) > policy.max_side:
        raise Rejection(RejectReason.TOO_LARGE, f"{size} exceeds the limit of {policy.max_side}")
    if min(header.rows, header.columns) < policy.min_side:
        raise Rejection(RejectReason.TOO_SMALL, f"{size} is below the minimum of {policy.min_side}")
