"""The retained latest-verdict summary: ``<prefix>/<site>/<station>/latest``.

A dashboard that starts late, or after the broker lost its sessions, subscribes and at once
gets every station's last decision from these retained messages, without waiting for the next
exposure.  One pure function turns a verdict or error payload into the summary
(schema ``xray-qc/latest@1``, see ``edge_worker/schema/latest.schema.json``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["LATEST_SCHEMA", "REJECTED", "latest_summary"]

LATEST_SCHEMA = "xray-qc/latest@1"
#: The decision an error (a rejected file) is summarised as.
REJECTED = "rejected"


def latest_summary(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The summary of one ``"verdict"`` or ``"error"`` payload (as published).

    Carries the message id (to match the full message), decision, reasons, view label,
    quality score and grade, the time the verdict (or rejection) was made and the pack; no
    thumbnail and nothing else from the image.  Raises ``KeyError`` when a required field
    (``id``, ``site``, ``station``, a verdict's ``decision``) is missing.
    """
    times = payload.get("times") or {}
    if kind == "verdict":
        quality = payload.get("quality") or None
        pack = payload.get("pack") or None
        view = payload.get("view") or {}
        return {
            "schema": LATEST_SCHEMA,
            "id": payload["id"],
            "kind": "verdict",
            "site": payload["site"],
            "station": payload["station"],
            "decision": payload["decision"],
            "reasons": list(payload.get("reasons") or []),
            "view": view.get("label"),
            "quality": {"score": quality["score"], "grade": quality["grade"]} if quality else None,
            "time": times.get("verdict_made"),
            "pack": {"name": pack["name"], "version": pack["version"]} if pack else None,
            "not_for_clinical_use": bool(payload.get("not_for_clinical_use", False)),
        }
    reason = payload.get("reason")
    return {
        "schema": LATEST_SCHEMA,
        "id": payload["id"],
        "kind": "error",
        "site": payload["site"],
        "station": payload["station"],
        "decision": REJECTED,
        "reasons": [f"file rejected: {reason}"],
        "view": None,
        "quality": None,
        "time": times.get("rejected"),
        "pack": None,
        "not_for_clinical_use": False,
        "reason": reason,
        "detail": payload.get("detail"),
    }
