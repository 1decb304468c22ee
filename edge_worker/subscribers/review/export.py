"""``edge-worker review export``: reviewed images and final labels, ready for ``models`` to retrain.

Writes into an empty folder:

* ``images/<verdict_id>.png``: the review copy (``copies.py``) as the dashboard received it
  (PNG, lossless; a JPEG copy would be decoded and written as PNG);
* ``labels.csv``: :func:`models.data.read_csv`'s layout (``file, view, grade, score,
  rotation_deg, roi_*``; the ROI in the exported image's pixels) plus the review's columns
  (:data:`COLUMNS`);
* ``manifest.json``: counts, the date range, the export's command, the sha256 of labels.csv,
  how the patient key was made, and every verdict skipped with the reason.

What a label is (see ``docs/review-copy.md``): the final decision of tier two (``final_good``,
``final_bad``); with ``tier="any"`` also tier one's ``good`` where the network did not say
retake (status ``good``: nobody disputed it) and tier one's confirmed retake (status
``confirmed_bad``, with ``reject_after = "tier_one"``: a bad).  ``grade`` on the ankle paper's 1-3 scale (1 best):
bad is 3; good keeps the network's grade when it is 1 or 2, and is 2 when the network said 3
(a reviewer who calls it good calls it diagnostic, not flawless); good without a network grade
leaves grade and score empty.  ``score`` is the network's score clipped into the grade's band.

``patient_key``: the worker never publishes the PatientID, so the key is a salted SHA-256 of
the Study Instance UID (one study, one patient; a patient's several studies get several keys,
which a split by key cannot see).  The salt is the file given (keep it, secret, to link
exports) or a random one for this export only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import sqlalchemy as sa

from edge_worker.subscribers.review import db
from edge_worker.subscribers.review.copies import ReviewCopies, ReviewCopy
from edge_worker.subscribers.review.errors import ReviewError
from edge_worker.subscribers.review.store import ReviewRecord, ReviewStore, Status, VerdictRecord

EXPORT_SCHEMA = "xray-qc/review-export@1"
#: The training recipe's columns (models.data), then the review's.
TRAINING_COLUMNS = ("file", "view", "grade", "score", "rotation_deg", "roi_cx", "roi_cy", "roi_w", "roi_h", "roi_angle")
COLUMNS = TRAINING_COLUMNS + ("patient_key", "final", "flags", "reviewer_tier", "reviewed_at", "received_at",
                              "station", "pack_name", "pack_version", "pack_digest", "verdict_id")  # fmt: skip
#: The views models.data.read_csv accepts.
TRAINING_VIEWS = ("AP", "LAT")
TIERS = ("2", "any")
LABELLED = {Status.FINAL_GOOD: ("good", 2), Status.FINAL_BAD: ("bad", 2), Status.GOOD: ("good", 1),
            Status.CONFIRMED_BAD: ("bad", 1)}


class ExportError(ReviewError):
    """The export cannot start: an output folder that is not empty, a bad range or tier."""


@dataclass
class ExportResult:
    """What an export wrote: the rows, the skipped verdicts (id and reason), the manifest."""

    rows: list[dict[str, str]]
    skipped: list[dict[str, str]]
    manifest: dict[str, Any] = field(default_factory=dict)


def grade_and_score(final: str, quality: dict[str, Any] | None) -> tuple[int | None, float | None]:
    """The exported grade and score from the final label and the network's quality (or None)."""
    if final == "bad":
        score = None if not quality else float(quality.get("score", 3.0))
        return 3, 3.0 if score is None else min(3.0, max(2.5, score))
    if not quality or quality.get("grade") not in (1, 2, 3):
        return None, None
    grade = min(int(quality["grade"]), 2)
    score = float(quality.get("score", grade))
    low, high = (1.0, 1.5) if grade == 1 else (1.5, 2.5)
    return grade, round(min(high - 1e-3, max(low, score)), 4)


def patient_key(study_uid: str | None, salt: bytes) -> str:
    """Salted SHA-256 (hex) of the Study Instance UID; empty when the verdict has none."""
    return hashlib.sha256(salt + study_uid.encode()).hexdigest() if study_uid else ""


def _deciding_review(reviews: list[ReviewRecord], status: Status) -> ReviewRecord | None:
    """The review that gave ``status``: the last tier-two decision, or tier one's last good
    (or confirmed retake)."""
    tier, outcome = {Status.GOOD: (1, "good"), Status.CONFIRMED_BAD: (1, "retake")}.get(status, (2, None))
    for review in reversed(reviews):
        if review.tier == tier and review.outcome != "reopen" and outcome in (None, review.outcome):
            return review
    return None


def _png(copy: ReviewCopy) -> bytes:
    if copy.media_type == "image/png":
        return copy.data
    image = cv2.imdecode(np.frombuffer(copy.data, np.uint8), cv2.IMREAD_GRAYSCALE)
    ok, data = (False, None) if image is None else cv2.imencode(".png", image)
    if not ok or data is None:
        raise ValueError("OpenCV could not re-encode a review copy as PNG")
    return data.tobytes()


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _row(record: VerdictRecord, review: ReviewRecord, final: str, tier: int, copy: ReviewCopy,
         salt: bytes) -> dict[str, str]:  # fmt: skip
    p = record.payload
    grade, score = grade_and_score(final, p.get("quality"))
    row = {k: "" for k in COLUMNS}
    rotated = (p.get("roi") or {}).get("rotated")
    if rotated:  # the network's ROI (the box the reviewers saw drawn), in the copy's pixels
        s = copy.scale
        row.update(roi_cx=_fmt(rotated["cx"] * s), roi_cy=_fmt(rotated["cy"] * s), roi_w=_fmt(rotated["width"] * s),
                   roi_h=_fmt(rotated["height"] * s), roi_angle=_fmt(rotated["angle_deg"]))  # fmt: skip
    row.update(
        file=f"images/{record.id}.png", view=record.view, grade="" if grade is None else str(grade),
        score=_fmt(score, 4), patient_key=patient_key(p.get("study_instance_uid"), salt), final=final,
        flags=";".join(f"{scheme}:{code}" for scheme, code in review.flags), reviewer_tier=str(tier),
        reviewed_at=review.created_at.isoformat(), received_at=record.received_at.isoformat(),
        station=record.station, pack_name=record.pack_name, pack_version=record.pack_version,
        pack_digest=record.pack_digest, verdict_id=record.id,
    )  # fmt: skip
    return row


def _verdicts(store: ReviewStore, since: datetime | None, until: datetime | None) -> list[VerdictRecord]:
    t = db.verdicts
    query = sa.select(t).order_by(t.c.received_at, t.c.id)
    if since is not None:
        query = query.where(t.c.received_at >= since)
    if until is not None:
        query = query.where(t.c.received_at < until)
    return [VerdictRecord.from_row(r) for r in store.transaction(lambda c: c.execute(query).all())]


def export(store: ReviewStore, copies: ReviewCopies, out: Path, *, since: datetime | None = None,
           until: datetime | None = None, tier: str = "2", salt_file: Path | None = None,
           command: Sequence[str] = ()) -> ExportResult:  # fmt: skip
    """Export verdicts received in ``[since, until)`` (UTC) into the empty folder ``out``.

    Raises :class:`ExportError` for a non-empty ``out``, a tier not in :data:`TIERS` or
    ``since >= until``; the store's ``StoreUnavailable`` when the database is down.
    """
    if tier not in TIERS:
        raise ExportError(f"tier must be one of {TIERS}, got {tier!r}")
    if since is not None and until is not None and since >= until:
        raise ExportError(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty: an export goes into a new folder")
    salt = salt_file.read_bytes().strip() if salt_file is not None else secrets.token_bytes(32)
    (out / "images").mkdir(parents=True, exist_ok=True)
    result = ExportResult([], [])
    for record in _verdicts(store, since, until):
        skip = _why_not(record, tier)
        review = None
        if skip is None:
            review = _deciding_review(store.reviews_of(record.id), record.status)
            skip = "no review row gives its status" if review is None else None
        copy = copies.get(record.id) if skip is None else None
        if skip is None and copy is None:
            skip = "no review copy was received (or it was pruned)"
        if skip is not None or review is None or copy is None:
            result.skipped.append({"verdict_id": record.id, "status": record.status.value, "reason": skip or ""})
            continue
        final, reviewer_tier = LABELLED[record.status]
        (out / "images" / f"{record.id}.png").write_bytes(_png(copy))
        result.rows.append(_row(record, review, final, reviewer_tier, copy, salt))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(result.rows)
    labels = text.getvalue().encode()
    (out / "labels.csv").write_bytes(labels)
    result.manifest = _manifest(result, labels, since, until, tier, salt_file, command)
    (out / "manifest.json").write_text(json.dumps(result.manifest, indent=2) + "\n")
    return result


def _why_not(record: VerdictRecord, tier: str) -> str | None:
    if record.status not in LABELLED or (tier == "2" and LABELLED[record.status][1] != 2):
        return f"no final label (status {record.status.value}, tier {tier})"
    if record.view not in TRAINING_VIEWS:
        return f"view {record.view!r} is not one the training recipe reads ({', '.join(TRAINING_VIEWS)})"
    return None


def _manifest(result: ExportResult, labels: bytes, since: datetime | None, until: datetime | None, tier: str,
              salt_file: Path | None, command: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    received = sorted(r["received_at"] for r in result.rows)
    finals = [r["final"] for r in result.rows]
    since_text = since.isoformat() if since else None
    until_text = until.isoformat() if until else None
    return {
        "schema": EXPORT_SCHEMA,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": list(command),
        "selection": {"since": since_text, "until": until_text, "by": "received_at", "tier": tier},
        "counts": {
            "exported": len(result.rows),
            "good": finals.count("good"),
            "bad": finals.count("bad"),
            "skipped": len(result.skipped),
        },
        "date_range": {
            "first_received": received[0] if received else None,
            "last_received": received[-1] if received else None,
        },
        "labels_csv_sha256": hashlib.sha256(labels).hexdigest(),
        "patient_key": {
            "of": "study_instance_uid",
            "hash": "sha256(salt + uid)",
            "salt": "file" if salt_file else "random, this export only",
        },
        "grade_rule": "bad: 3; good: the network's grade if 1 or 2, 2 if it said 3, empty without one",
        "skipped": result.skipped,
    }


def parse_date(text: str) -> datetime:
    """An ISO 8601 date or date-time (``2026-12-01``, ``2026-12-01T08:00``); naive means UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ExportError(f"{text!r} is not an ISO 8601 date or date-time") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def run_export(database: str, out: Path, since: str | None, until: str | None, tier: str,
               salt_file: Path | None, command: Sequence[str]) -> int:  # fmt: skip
    """``edge-worker review export``: print one summary line; 0 when something was exported, 1 when
    nothing was (every verdict skipped).  The database password never reaches the manifest."""
    shown = sa.engine.make_url(database).render_as_string(hide_password=True)
    command = [shown if arg == database else arg for arg in command]
    store = ReviewStore(database)
    try:
        # Bounds unused here: the export reads copies, pruning is the dashboard's.
        copies = ReviewCopies(store, max_age_days=36500.0, max_bytes=1 << 62)
        result = export(store, copies, out, since=parse_date(since) if since else None,
                        until=parse_date(until) if until else None, tier=tier, salt_file=salt_file,
                        command=command)  # fmt: skip
    finally:
        store.close()
    counts = result.manifest["counts"]
    print(f"{out}: {counts['exported']} image(s) ({counts['good']} good, {counts['bad']} bad), "
          f"{counts['skipped']} skipped (reasons in manifest.json)")  # fmt: skip
    return 0 if result.rows else 1
