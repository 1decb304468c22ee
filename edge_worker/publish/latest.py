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


def _text(reason: Any) -> str:
    """A reason's sentence (verdict@2 reasons are objects)."""
    return str(reason.get("text", reason.get("code", ""))) if isinstance(reason, dict) else str(reason)


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
            # The sentences (a ward screen shows them) and the codes (a subscriber keys on them).
            "reasons": [_text(r) for r in payload.get("reasons") or []],
            "reason_codes": [r["code"] for r in payload.get("reasons") or [] if isinstance(r, dict)],
            "view": view.get("label"),
            "quality": {"score": quality["score"], "grade": quality["grade"]} if quality else None,
            "time": times.get("verdict_made"),
            "pack": (
                {"name": pack["name"], "version": pack["version"], "digest": pack.get("digest", "")}
                if pack else None
            ),
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
        "reason_codes": [],
        "view": None,
        "quality": None,
        "time": times.get("rejected"),
        "pack": None,
        "not_for_clinical_use": False,
        "reason": reason,
        "detail": payload.get("detail"),
    }
