"""Acting on a reject command (``xray-qc/reject@1``) and answering it (``xray-qc/reject-result@1``).

:func:`act` is the whole decision, given the PACS outbox: a ``reject`` for a verdict whose image
header is kept becomes a KOS stored in the outbox (``queued``); a ``withdraw`` becomes a
revoke-rejection KOS where the PACS has a code for it, cancels a rejection that has not been
sent yet, or is refused ``revoke_unsupported`` (DICOM has no standard revocation: the image must
be restored in the PACS by hand).  An id acted on before is answered with its current state and
nothing new is made.  Nothing here makes a KOS without a command: the worker never rejects on
its own.
"""

from __future__ import annotations

import json
from typing import Any

from highdicom.sr import CodedConcept
from pydicom import Dataset

from edge_worker.pacs.kos import build_rejection, build_revocation
from edge_worker.pacs.outbox import PacsOutbox
from edge_worker.pacs.sr import PacsObjectError, encode

COMMAND_SCHEMA = "xray-qc/reject@1"
RESULT_SCHEMA = "xray-qc/reject-result@1"
_REQUIRED = ("id", "action", "verdict_id", "sop_instance_uid", "study_instance_uid", "series_instance_uid",
             "confirmed_by", "confirmed_at")  # fmt: skip


def result(command: dict[str, Any] | None, outcome: str, reason: str = "", detail: str = "",
           document_uid: str | None = None) -> dict[str, Any]:  # fmt: skip
    """An ``xray-qc/reject-result@1`` payload."""
    c = command or {}
    return {
        "schema": RESULT_SCHEMA, "id": c.get("id") if isinstance(c.get("id"), str) else None,
        "verdict_id": c.get("verdict_id") if isinstance(c.get("verdict_id"), str) else None,
        "action": c.get("action") if c.get("action") in ("reject", "withdraw") else None,
        "outcome": outcome, "reason": reason, "detail": detail, "document_sop_instance_uid": document_uid,
    }  # fmt: skip


def parse(payload: bytes) -> dict[str, Any]:
    """The command in ``payload``; :class:`PacsObjectError` (``invalid_command``) when it is not
    a well-formed ``xray-qc/reject@1`` (the error carries what could be read, for the answer)."""
    try:
        doc = json.loads(payload)
    except ValueError as exc:
        raise PacsObjectError("invalid_command", f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise PacsObjectError("invalid_command", "not a JSON object")
    missing = [k for k in _REQUIRED if not isinstance(doc.get(k), str) or not doc[k]]
    problems = []
    if doc.get("schema") != COMMAND_SCHEMA:
        problems.append(f"schema is not {COMMAND_SCHEMA}")
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if doc.get("action") not in ("reject", "withdraw"):
        problems.append("action is not reject or withdraw")
    if doc.get("tier") not in (1, 2):
        problems.append("tier is not 1 or 2")
    if problems:
        err = PacsObjectError("invalid_command", "; ".join(problems))
        err.command = doc  # type: ignore[attr-defined]
        raise err
    return doc


def current(outbox: PacsOutbox, command: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """The answer to a command id seen before: its object's state now (queued -> sent)."""
    key = stored.get("key")
    if not key:
        return result(command, "refused", str(stored.get("reason", "")), str(stored.get("detail", "")))
    state = outbox.state(str(key))
    if state is None:
        return result(command, "refused", "source_gone", "the object of this command is no longer known")
    if state[0] == "cancelled":  # a rejection withdrawn before it was sent
        if command.get("action") == "reject":
            return result(command, "refused", "withdrawn", "withdrawn before it reached the PACS; never sent", state[1])
        return result(command, "sent", "cancelled", str(stored.get("detail", "")), state[1])
    outcome = "sent" if state[0] == "sent" else "queued"
    return result(command, outcome, "", str(stored.get("detail", "")), state[1])


def act(outbox: PacsOutbox, command: dict[str, Any], revoke_code: CodedConcept | None) -> dict[str, Any]:
    """Act on a parsed command once and return its answer (see the module docstring)."""
    stored = outbox.command(str(command["id"]))
    if stored is not None:
        return current(outbox, command, stored)
    try:
        answer, key = _act(outbox, command, revoke_code)
    except PacsObjectError as exc:
        answer, key = result(command, "refused", exc.reason, exc.detail), None
    outbox.remember_command(str(command["id"]), {"key": key, "reason": answer["reason"], "detail": answer["detail"]})
    return answer


def _act(outbox: PacsOutbox, command: dict[str, Any], revoke_code: CodedConcept | None) -> tuple[dict[str, Any], str | None]:
    vid, cid = str(command["verdict_id"]), str(command["id"])
    header = outbox.source(vid)
    if header is None:
        raise PacsObjectError("source_gone", f"nothing is known on this station of verdict {vid}'s image")
    source = Dataset.from_json(header)
    if str(source.SOPInstanceUID) != command["sop_instance_uid"]:
        raise PacsObjectError("invalid_command", f"verdict {vid} is about another image than {command['sop_instance_uid']}")
    latest = outbox.latest_for(vid, ("kos", "revoke"))
    if command["action"] == "reject":
        if latest is not None and latest[1] == "kos" and latest[2] != "cancelled":
            return result(command, "refused", "already_done", "this image's rejection is already "
                          f"{'sent' if latest[2] == 'sent' else 'queued'}", latest[3]), None  # fmt: skip
        doc = build_rejection(command, source)
        kind, detail = "kos", "Rejected for Quality Reasons (113001)"
    else:
        if latest is None or latest[1] != "kos" or latest[2] == "cancelled":
            raise PacsObjectError("nothing_to_withdraw", "no rejection of this image was made: nothing to withdraw")
        if latest[2] == "pending" and outbox.cancel(latest[0]):
            return result(command, "sent", "cancelled", "the rejection had not reached the PACS; it is "
                          "cancelled and never sent", latest[3]), latest[0]  # fmt: skip
        if revoke_code is None:
            raise PacsObjectError("revoke_unsupported", "DICOM has no standard revocation of a rejection: "
                                  f"restore image {command['sop_instance_uid']} in the PACS by hand")  # fmt: skip
        doc = build_revocation(command, source, revoke_code)
        kind, detail = "revoke", f"revoke-rejection KOS ({revoke_code.value}, {revoke_code.scheme_designator})"
    key = f"{kind}:{cid}"
    outbox.put(key, kind, vid, str(doc.SOPInstanceUID), encode(doc))
    return result(command, "queued", "", detail, str(doc.SOPInstanceUID)), key
