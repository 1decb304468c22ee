"""Key Object Selection documents for a person's confirmed rejection (and its revocation).

A reject command (``xray-qc/reject@1``, sent by the review side only after a reviewer confirmed
a retake) becomes a KOS (TID 2010) titled "Rejected for Quality Reasons" (113001, DCM) with the
confirmed CID 7011 reason as the Document Title Modifier (113011, DCM; a HAS CONCEPT MOD item,
PS3.16 TID 2010 row 2), the reviewer as the person observer, referencing the image.  This is
the IHE IOCM "Rejection Note" a PACS acts on by hiding the image.

Reversal: DICOM and IHE IOCM define no standard object that revokes a rejection.  Some archives
have a proprietary title for it (dcm4chee: ``REVOKE_REJECTION``, ``99DCM4CHEE``, "Restore
rejected Instances"); where ``[pacs] revoke_code`` names one, :func:`build_revocation` makes a KOS
with that title referencing the image.  Otherwise nothing is sent and the worker says the image
must be restored in the PACS by hand (see ``docs/pacs.md``).

UIDs are derived from the command id: a command re-sent by the review side makes an identical
object.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ObserverContext,
    PersonObserverIdentifyingAttributes,
)
from highdicom.sr.enum import RelationshipTypeValues
from pydicom import Dataset
from pydicom.sr.codedict import codes

from edge_worker.pacs.sr import MANUFACTURER, PacsObjectError, derived_uid, fix_times, source_header

#: CID 7011 "Rejected for Quality Reasons" (PS3.16): the reasons a reviewer may confirm.
CID_7011 = {
    "111207": "Image artifact(s)", "111208": "Grid artifact(s)", "111209": "Positioning",
    "111210": "Motion blur", "111211": "Under exposed", "111212": "Over exposed", "111213": "No image",
    "111214": "Detector artifact(s)", "111215": "Artifact(s) other than grid or detector artifact(s)",
    "111216": "Mechanical failure", "111217": "Electrical failure", "111218": "Software failure",
    "111219": "Inappropriate image processing", "111220": "Other failure", "111221": "Unknown failure",
    "113026": "Double exposure",
}  # fmt: skip


def reason_code(reason: Any) -> CodedConcept:
    """The command's reason as a CID 7011 concept; :class:`PacsObjectError` (``invalid_command``)
    for one outside CID 7011 (the meaning is ours, from the standard, not the sender's)."""
    if not isinstance(reason, dict) or reason.get("scheme") != "DCM" or str(reason.get("code")) not in CID_7011:
        raise PacsObjectError("invalid_command", f"reason {reason!r} is not a CID 7011 code")
    code = str(reason["code"])
    return CodedConcept(code, "DCM", CID_7011[code])


def parse_code(text: str) -> CodedConcept:
    """``CODE^SCHEME^Meaning`` (the ``[pacs] revoke_code`` form) as a concept; ValueError if malformed."""
    parts = text.split("^")
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise ValueError(f"{text!r} is not CODE^SCHEME^Meaning")
    return CodedConcept(parts[0].strip(), parts[1].strip(), parts[2].strip()[:64])


def _document(command: dict[str, Any], source: Dataset, title: CodedConcept,
              modifier: CodedConcept | None, description: str) -> KeyObjectSelectionDocument:  # fmt: skip
    source = source_header(source)
    cid = str(command["id"])
    try:
        when = datetime.fromisoformat(str(command["confirmed_at"]))
    except (KeyError, ValueError) as exc:
        raise PacsObjectError("invalid_command", f"confirmed_at: {exc}") from exc
    name = str(command.get("confirmed_by") or "reviewer")
    name = name if "^" in name else f"{name}^"  # a user name is one component (PS3.5 6.2.1.2)
    person = ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=PersonObserverIdentifyingAttributes(name=name),
    )  # fmt: skip
    content = KeyObjectSelection(document_title=title, referenced_objects=[source],
                                 observer_person_context=person, description=description[:1024])  # fmt: skip
    if modifier is not None:
        item = CodeContentItem(name=codes.DCM.DocumentTitleModifier, value=modifier,
                               relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD)  # fmt: skip
        content[0].ContentSequence.insert(0, item)
    doc = KeyObjectSelectionDocument(
        evidence=[source], content=content,
        series_instance_uid=derived_uid("kos-series", cid), series_number=9902,
        sop_instance_uid=derived_uid("kos", cid), instance_number=1, manufacturer=MANUFACTURER,
        content_date=when.date(), content_time=when.time(),
    )  # fmt: skip
    fix_times(doc, when)
    return doc


def build_rejection(command: dict[str, Any], source: Dataset) -> KeyObjectSelectionDocument:
    """The "Rejected for Quality Reasons" KOS of a confirmed ``reject`` command."""
    reason = reason_code(command.get("reason"))
    who = command.get("confirmed_by") or "a reviewer"
    return _document(command, source, CodedConcept.from_code(codes.DCM.RejectedForQualityReasons), reason,
                     f"Retake confirmed by {who} (tier {command.get('tier')}): {reason.meaning}")  # fmt: skip


def build_revocation(command: dict[str, Any], source: Dataset, title: CodedConcept) -> KeyObjectSelectionDocument:
    """A KOS titled with the PACS's own revoke-rejection code (``[pacs] revoke_code``)."""
    who = command.get("confirmed_by") or "a reviewer"
    return _document(command, source, title, None, f"Rejection withdrawn by {who} (tier {command.get('tier')})")
