"""A derived image (a ``derive`` stage's output) as a DICOM Secondary Capture in the source's study.

PS3.3 A.8 (SC Image IOD): the new object keeps the source's Patient and Study modules (same
Study Instance UID, so a PACS files it with the radiograph), gets its own Series and SOP
Instance UIDs, and points back at the source twice: Referenced Image Sequence (0008,1140) and
Source Image Sequence (0008,2112) (C.7.6.1.1.4, how a derived image names what it came from).
Image Type is DERIVED\\SECONDARY, Derivation Description says what made it, and Image Comments
and Series Description carry the warning the stage's training demands ("synthetic-trained, not
for diagnosis" for bone suppression).

UIDs derive from the source SOP Instance UID, the pack digest and the stage, so judging the
same image again with the same pack rewrites the same object instead of adding a twin.
highdicom is not installed here; pydicom builds the dataset from the IOD's modules by hand.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: Patient and Study attributes copied from the source when it has them.
COPIED = ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
          "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
          "ReferringPhysicianName", "StudyDescription")  # fmt: skip
#: Image Comments (LT) of a stage trained on synthetic data.
SYNTHETIC_WARNING = "synthetic-trained, not for diagnosis"


@dataclass(frozen=True)
class Written:
    """A derived object on disk: its path and its new UIDs."""

    path: Path
    sop_instance_uid: str
    series_instance_uid: str


def build(source: Dataset, image: np.ndarray, stage: str, description: str, pack: str,
          pack_digest: str, training_data: str) -> Dataset:  # fmt: skip
    """The Secondary Capture dataset of ``image`` (2-D float in [0, 1], MONOCHROME2, 8 bits).

    ``source``: the radiograph's header (``stop_before_pixels`` is enough); ``stage`` and
    ``description``: the derive stage and what its image is (the Series Description, an LO of
    at most 64 characters); ``pack``: "name version"; ``training_data``: the stage's training
    data kind (``synthetic...`` adds :data:`SYNTHETIC_WARNING` to the comments).  Raises
    ValueError for an image that is not 2-D or a source without a SOP Instance UID.
    """
    pixels = np.asarray(image)
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"a derived image is one 2-D plane, got shape {pixels.shape}")
    source_uid = str(source.get("SOPInstanceUID", ""))
    if not source_uid:
        raise ValueError("the source has no SOP Instance UID to reference")

    def uid(kind: str) -> UID:
        return UID(generate_uid(entropy_srcs=["edge-worker-derived", source_uid, pack_digest, stage, kind]))

    now = _dt.datetime.now(_dt.UTC)
    ds = Dataset()
    for keyword in COPIED:
        element = source.data_element(keyword) if keyword in source else None
        if element is not None:
            setattr(ds, keyword, element.value)
    sop_uid = uid("sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SECONDARY_CAPTURE)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = uid("series")
    ds.SeriesNumber = int(source.get("SeriesNumber") or 0) + 1000
    ds.InstanceNumber = 1
    ds.Modality = "OT"  # a derived picture, not an acquisition of the source's modality
    ds.ConversionType = "WSD"  # workstation (PS3.3 C.8.6.1)
    ds.SeriesDescription = description[:64]
    ds.ContentDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.SeriesTime = now.strftime("%H%M%S")
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = f"{description} by stage {stage} of pack {pack}"[:1024]
    comments = [f"Derived by the edge worker, pack {pack}, stage {stage}: {description}."]
    if training_data.startswith("synthetic"):
        comments.insert(0, f"{SYNTHETIC_WARNING.upper()}: trained on synthetic phantoms only.")
    ds.ImageComments = " ".join(comments)
    ds.BurnedInAnnotation = "NO"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.get("SOPClassUID", "")
    reference.ReferencedSOPInstanceUID = source_uid
    ds.ReferencedImageSequence = Sequence([reference])
    origin = Dataset()
    origin.ReferencedSOPClassUID = reference.ReferencedSOPClassUID
    origin.ReferencedSOPInstanceUID = source_uid
    ds.SourceImageSequence = Sequence([origin])
    if "PatientOrientation" in source:
        ds.PatientOrientation = source.PatientOrientation
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).tobytes()
    return ds


def write(source_path: Path, folder: Path, image: np.ndarray, stage: str, description: str,
          pack: str, pack_digest: str, training_data: str) -> Written:  # fmt: skip
    """Build the Secondary Capture of ``image`` for the file at ``source_path`` and write it
    into ``folder`` as ``<new SOP Instance UID>.dcm`` (temporary name, then rename).

    Raises OSError when the source cannot be read or the folder written, ValueError as
    :func:`build` does (and pydicom's errors for a source that is not DICOM).
    """
    source = dcmread(source_path, stop_before_pixels=True)
    ds = build(source, image, stage, description, pack, pack_digest, training_data)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    tmp = folder / f".{ds.SOPInstanceUID}.dcm.tmp"
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return Written(path, str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID))
