"""One DICOM Structured Report per verdict: TID 1500 Measurement Report, built by highdicom.

The report (Comprehensive 3D SR, the IOD highdicom builds TID 1500 into) holds one TID 1501
"Measurements and Qualitative Evaluations" group: the decision, the view, the quality grade and
score, the orientation, each reason and each rule result of the verdict, with the pack as the
Algorithm Identification (TID 4019: name, version, and its digest as an algorithm parameter).
The judged image is referenced by its UIDs (image library and the group's source image); the
report goes into the image's study with a new series.

Identity follows the verdict: the series and SOP Instance UIDs are derived from the verdict id
(``2.25`` UUID-derived UIDs, PS3.5 B.2) and every date and time in the object comes from the
verdict, never from the clock, so the same verdict always gives the same bytes.

Codes: DCM and SCT where the standard has them (Imaging Measurement Report, Image View, Yes/No,
Device); our own concepts (decision, reason codes, rule codes, grades) are in the private coding
scheme ``99XRAYQC``, declared in the object's Coding Scheme Identification Sequence and in
``docs/pacs.md``.
"""

from __future__ import annotations

import io
import uuid
from datetime import datetime
from typing import Any

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom import Dataset
from pydicom.sr.codedict import codes

from edge_worker import __version__
from edge_worker.errors import EdgeWorkerError

#: The private coding scheme of our own concepts (PS3.3 C.12.1.1.2: "99" designators are private).
SCHEME = "99XRAYQC"
SCHEME_NAME = "edge-worker radiograph quality control"
MANUFACTURER = "edge-worker (open source)"
#: Attributes of the source image kept to reference it later (SR now, KOS after a confirmation):
#: the patient and study modules the PACS files the object under, and the image's identity.
SOURCE_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "IssuerOfPatientID",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "Modality",
    "InstitutionName", "SpecificCharacterSet", "Rows", "Columns", "SamplesPerPixel",
    "PixelRepresentation", "NumberOfFrames", "PatientOrientation", "ImagerPixelSpacing",
)  # fmt: skip
_NAMESPACE = uuid.UUID("0b7e7c55-5a0e-4d1e-8f3c-2f1f6c9d4a21")
_UNITLESS = CodedConcept("1", "UCUM", "no units")
_DEGREE = CodedConcept("deg", "UCUM", "degree")
_DECISIONS = {
    "ok": "Accepted: no retake needed",
    "retake": "Retake advised",
    "review": "A person to decide",
    "not_judged": "Not judged",
}


class PacsObjectError(EdgeWorkerError):
    """No DICOM object can be made for this verdict or command; ``reason`` is a typed code
    (``no_study_uid``, ``no_sop_uid``, ``unreadable_source``, ``invalid_verdict``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def private(code: str, meaning: str) -> CodedConcept:
    """A concept of our private scheme (a code over 16 characters becomes a Long Code Value)."""
    return CodedConcept(code, SCHEME, meaning[:64])


def derived_uid(*parts: str) -> str:
    """A UID from a name-based UUID of ``parts`` (PS3.5 B.2 ``2.25.<int>``): the same parts, the
    same UID (pydicom's ``generate_uid(prefix=None)`` is random whatever its entropy sources)."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, '|'.join(parts)).int}"


def source_header(ds: Dataset) -> Dataset:
    """What is kept of the source image (read with ``stop_before_pixels``) to reference it:
    :data:`SOURCE_KEYWORDS`.  Raises :class:`PacsObjectError` without Study or SOP Instance UID."""
    if not str(getattr(ds, "StudyInstanceUID", "") or ""):
        raise PacsObjectError("no_study_uid", "the image has no Study Instance UID: a PACS cannot file "
                              "an object in its study")  # fmt: skip
    if not str(getattr(ds, "SOPInstanceUID", "") or "") or not str(getattr(ds, "SOPClassUID", "") or ""):
        raise PacsObjectError("no_sop_uid", "the image has no SOP Class or Instance UID to reference")
    kept = Dataset()
    for keyword in SOURCE_KEYWORDS:
        if keyword in ds:
            kept[keyword] = ds[keyword]
    return kept


def coding_scheme() -> hd.coding_schemes.CodingSchemeIdentificationItem:
    """The declaration of :data:`SCHEME` carried by every object we make."""
    return hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=SCHEME, name=SCHEME_NAME, responsible_organization="edge-worker project",
    )  # fmt: skip


def _when(verdict: dict[str, Any]) -> datetime:
    try:
        return datetime.fromisoformat(str(verdict["times"]["verdict_made"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise PacsObjectError("invalid_verdict", f"no verdict_made time: {exc}") from exc


def _evaluations(verdict: dict[str, Any]) -> tuple[list[QualitativeEvaluation], list[Measurement]]:
    """The verdict's findings as TID 1501 qualitative evaluations and measurements."""
    evals = [QualitativeEvaluation(
        private("QC-DECISION", "Quality control decision"),
        private(str(verdict["decision"]), _DECISIONS.get(str(verdict["decision"]), str(verdict["decision"]))),
    )]  # fmt: skip
    measures: list[Measurement] = []
    view = verdict.get("view") or {}
    if view.get("label"):
        evals.append(QualitativeEvaluation(codes.DCM.ImageView, private(f"VIEW-{view['label']}", f"{view['label']} view")))
        measures.append(Measurement(private("VIEW-CONFIDENCE", "View confidence"), float(view["confidence"]), _UNITLESS))
    quality = verdict.get("quality")
    if quality:
        grade = quality["grade"]
        evals.append(QualitativeEvaluation(private("QUALITY-GRADE", "Image quality grade"),
                                           private(f"GRADE-{grade}", f"Quality grade {grade}")))  # fmt: skip
        measures.append(Measurement(private("QUALITY-SCORE", "Image quality score"), float(quality["score"]), _UNITLESS))
        evals.append(QualitativeEvaluation(private("DIAGNOSTIC", "Diagnostic quality"),
                                           codes.SCT.Yes if quality["diagnostic"] else codes.SCT.No))  # fmt: skip
    orientation = verdict.get("orientation")
    if orientation:
        measures.append(Measurement(private("ORIENT-ANGLE", "Orientation angle"), float(orientation["angle_deg"]), _DEGREE))
        measures.append(Measurement(private("ORIENT-TURN", "Suggested rotation"),
                                    float(orientation["suggested_rotation_deg"]), _DEGREE))  # fmt: skip
    for reason in verdict.get("reasons") or []:
        code = str(reason["code"])
        evals.append(QualitativeEvaluation(private("QC-REASON", "Quality control reason"),
                                           private(code, code.replace("_", " "))))  # fmt: skip
    for rule in verdict.get("rules") or []:
        code = str(rule["code"])
        evals.append(QualitativeEvaluation(private(f"RULE-{code}", f"Rule {rule.get('measure') or code}"),
                                           private(f"RULE-{rule['status']}", f"Rule {rule['status']}")))  # fmt: skip
        if rule.get("value") is not None:
            measures.append(Measurement(private(f"MEASURE-{code}", str(rule.get("measure") or code)),
                                        float(rule["value"]), _UNITLESS))  # fmt: skip
    pack = verdict.get("pack") or {}
    if pack.get("not_for_clinical_use"):
        evals.append(QualitativeEvaluation(
            private("TRAINING-DATA", "Model training data"),
            private(f"DATA-{pack.get('training_data', 'unknown')}",
                    f"{pack.get('training_data', 'unknown')}: not for clinical use"),
        ))  # fmt: skip
    return evals, measures


def build_report(verdict: dict[str, Any], source: Dataset, *, station: str) -> Comprehensive3DSR:
    """The TID 1500 report of ``verdict`` about ``source`` (see :func:`source_header`).

    Raises :class:`PacsObjectError` when the source has no Study Instance UID or the verdict
    lacks what the report needs, or names another image than ``source``.
    """
    source = source_header(source)
    vid = str(verdict.get("id") or "")
    if not vid or str(verdict.get("sop_instance_uid")) != str(source.SOPInstanceUID):
        raise PacsObjectError("invalid_verdict", "the verdict has no id or is about another image")
    when = _when(verdict)
    pack = verdict.get("pack") or {}
    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", station), name=f"edge-worker {station}"[:64],
            manufacturer_name=MANUFACTURER, model_name=str(pack.get("name", ""))[:64],
        ),
    )  # fmt: skip
    try:
        evals, measures = _evaluations(verdict)
    except (KeyError, TypeError, ValueError) as exc:
        raise PacsObjectError("invalid_verdict", f"the verdict lacks {exc}") from exc
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=derived_uid("tracking", vid), identifier=f"verdict {vid}"),
        finding_type=private("IMAGE-QC", "Radiograph quality control"),
        algorithm_id=AlgorithmIdentification(
            name=str(pack.get("name", "unknown"))[:64], version=str(pack.get("version", "unknown"))[:64],
            parameters=[f"pack digest sha256:{pack.get('digest', '')}", f"edge-worker {verdict.get('worker_version', __version__)}",
                        f"backend {verdict.get('backend', '')}"],
        ),
        measurements=measures, qualitative_evaluations=evals,
        source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
    )  # fmt: skip
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=device),
        procedure_reported=CodedConcept("363679005", "SCT", "Imaging"),
        imaging_measurements=[group], referenced_images=[source] if _describable(source) else None,
    )  # fmt: skip
    synthetic = " (NOT FOR CLINICAL USE)" if pack.get("not_for_clinical_use") else ""
    sr = Comprehensive3DSR(
        evidence=[source], content=report[0],
        series_instance_uid=derived_uid("sr-series", vid), series_number=9901,
        sop_instance_uid=derived_uid("sr", vid), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=True,
        series_description=f"X-ray QC verdict{synthetic}"[:64],
        software_versions=f"edge-worker {verdict.get('worker_version', __version__)}"[:64],
        coding_schemes=[coding_scheme()], content_date=when.date(), content_time=when.time(),
        series_date=when.date(), series_time=when.time(),
    )  # fmt: skip
    fix_times(sr, when)
    return sr


def _describable(source: Dataset) -> bool:
    """Whether highdicom can describe a projection image in the image library (TID 1600 needs
    its Patient Orientation and Imager Pixel Spacing); without, the library stays empty and the
    group's source image is the reference."""
    cross = str(getattr(source, "Modality", "")) in ("CT", "MR", "PT")
    orientation, spacing = source.get("PatientOrientation"), source.get("ImagerPixelSpacing")
    return cross or (orientation is not None and len(orientation) == 2 and spacing is not None
                     and len(spacing) == 2)  # fmt: skip


def fix_times(ds: Dataset, when: datetime) -> None:
    """highdicom stamps the instance creation with the clock; the verdict's time keeps the bytes
    of a re-made object identical."""
    ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = when.strftime("%H%M%S.%f")
    for item in ds.get("ContributingEquipmentSequence") or []:
        if "ContributionDateTime" in item:
            item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S.%f")


def encode(ds: Dataset) -> bytes:
    """The object as a DICOM Part 10 file (what a C-STORE sends and Orthanc stores)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
