"""Rejection commands: the review side's half of "rejections only after a person".

A Key Object Selection "Rejected for Quality Reasons" (DICOM PS3.3 KOS, IHE IOCM) makes a PACS
hide an image, so the worker only ever makes one when the review store says a person confirmed
the retake.  This module keeps those commands as rows of ``review_rejections``:

* :func:`after_review` is called by the store inside the SAME transaction as the review that
  confirms a retake (tier two's final ``bad``; with ``reject_after = "tier_one"`` also tier
  one's ``retake``) and writes one ``reject``; a tier-two final ``good`` of a verdict whose
  reject stands writes a ``withdraw`` (IHE IOCM: a second KOS, titled "Revoke Rejected for
  Quality Reasons" by the worker).  Nothing else ever writes a command, so a verdict nobody
  confirmed can never produce one, however long it waits.
* :class:`Rejections` is what the sender (``dashboard/rejection_sender.py``) and the pages use:
  the commands due for (re-)publishing, their JSON documents (``xray-qc/reject@1``), and the
  worker's answers (``xray-qc/reject-result@1``).

The reason is one CID 7011 code chosen by :func:`choose_reason` from the reviewer's flags: the
most specific one (the generic "Image artifact(s)", "Other failure" and "Unknown failure" only
when nothing else was chosen), the first in the standard's order among equals.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa

from edge_worker.subscribers.review import db
from edge_worker.subscribers.review.flags import CID_7011, DCM, Code, Flag

log = logging.getLogger(__name__)

SCHEMA = "xray-qc/reject@1"
RESULT_SCHEMA = "xray-qc/reject-result@1"
#: The namespace of command ids: uuid5(NAMESPACE, "<verdict id>|<action>|<review version>").
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/xray-qc/edge-worker/reject")
#: CID 7011 codes that say least; chosen only when the reviewer picked nothing more specific.
GENERIC = frozenset({"111207", "111220", "111221"})  # Image artifact(s), Other failure, Unknown failure
STATES = ("pending", "queued", "sent", "refused", "cancelled")
OUTCOMES = ("queued", "sent", "refused")
_ORDER = {c.value: i for i, c in enumerate(CID_7011)}
_BY_VALUE = {c.value: c for c in CID_7011}

RejectAfter = Literal["tier_two", "tier_one"]


@dataclass(frozen=True)
class RejectPolicy:
    """When a confirmation becomes a command; ``retry_s``..``retry_max_s``: re-publish back-off."""

    after: RejectAfter = "tier_two"
    retry_s: float = 30.0
    retry_max_s: float = 3600.0

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th publish before the next one (doubling)."""
        return float(min(self.retry_max_s, self.retry_s * 2 ** max(attempts - 1, 0)))


def command_id(verdict_id: str, action: str, review_version: int) -> str:
    """One id per confirmation: the same on every re-publish (the worker acts on it once)."""
    return str(uuid.uuid5(NAMESPACE, f"{verdict_id}|{action}|{review_version}"))


def choose_reason(flags: Iterable[Flag]) -> Code | None:
    """The CID 7011 code a reject carries: the most specific DCM flag, then the standard's order."""
    codes = [_BY_VALUE[v] for s, v in flags if s == DCM and v in _BY_VALUE]
    if not codes:
        return None
    return min(codes, key=lambda c: (c.value in GENERIC, _ORDER[c.value]))


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else (value if value.tzinfo is not None else value.replace(tzinfo=UTC))


@dataclass(frozen=True)
class Command:
    """One row of ``review_rejections``, with where it goes (the verdict's site and station)."""

    id: str
    verdict_id: str
    action: str
    reason_code: str | None
    confirmed_by: str
    tier: int
    review_version: int
    confirmed_at: datetime
    state: str
    result_reason: str | None
    result_detail: str | None
    document_uid: str | None
    attempts: int
    last_sent_at: datetime | None
    next_attempt_at: datetime
    site: str
    station: str
    uids: Mapping[str, str]

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> Command:
        m = row._mapping
        payload = m["payload"] or {}
        uids = {k: str(payload[k]) for k in ("sop_instance_uid", "study_instance_uid", "series_instance_uid")
                if payload.get(k)}  # fmt: skip
        return cls(
            id=m["id"], verdict_id=m["verdict_id"], action=m["action"], reason_code=m["reason_code"],
            confirmed_by=m["confirmed_by"], tier=m["tier"], review_version=m["review_version"],
            confirmed_at=_utc(m["confirmed_at"]), state=m["state"], result_reason=m["result_reason"],  # type: ignore[arg-type]
            result_detail=m["result_detail"], document_uid=m["document_uid"], attempts=m["attempts"],
            last_sent_at=_utc(m["last_sent_at"]), next_attempt_at=_utc(m["next_attempt_at"]),  # type: ignore[arg-type]
            site=m["site"], station=m["station"], uids=uids,
        )  # fmt: skip

    def topic(self, prefix: str) -> str:
        """``<prefix>/<site>/<station>/reject``: the verdict's own station."""
        return f"{prefix}/{self.site}/{self.station}/reject"

    def document(self) -> dict[str, Any]:
        """The command as ``xray-qc/reject@1`` JSON (reason only on a reject)."""
        doc: dict[str, Any] = {
            "schema": SCHEMA, "id": self.id, "action": self.action, "verdict_id": self.verdict_id,
            **self.uids, "confirmed_by": self.confirmed_by, "tier": self.tier,
            "confirmed_at": self.confirmed_at.isoformat().replace("+00:00", "Z"),
            "review_version": self.review_version,
        }  # fmt: skip
        if self.action == "reject" and self.reason_code is not None:
            code = _BY_VALUE[self.reason_code]
            doc["reason"] = {"code": code.value, "scheme": code.scheme, "meaning": code.meaning}
        return doc


def _joined() -> sa.Select[Any]:
    r, v = db.rejections, db.verdicts
    return sa.select(r, v.c.site, v.c.station, v.c.payload).join(v, v.c.id == r.c.verdict_id)


def _latest(conn: sa.Connection, verdict_id: str, action: str | None = None,
            before_version: int | None = None) -> Command | None:  # fmt: skip
    r = db.rejections
    query = _joined().where(r.c.verdict_id == verdict_id)
    if action is not None:
        query = query.where(r.c.action == action)
    if before_version is not None:
        query = query.where(r.c.review_version < before_version)
    row = conn.execute(query.order_by(r.c.review_version.desc()).limit(1)).first()
    return None if row is None else Command.from_row(row)


def standing_reject(conn: sa.Connection, verdict_id: str) -> Command | None:
    """The verdict's reject that stands (its newest command is a reject not refused), else None."""
    last = _latest(conn, verdict_id)
    return last if last is not None and last.action == "reject" and last.state != "refused" else None


def after_review(conn: sa.Connection, now: datetime, verdict_id: str, review_version: int, *, tier: int,
                 user: str, outcome: str, flags: Iterable[Flag]) -> Command | None:  # fmt: skip
    """Write the command a review implies, on the review's own transaction ``conn``.

    ``outcome``: ``bad`` (tier two) or ``retake`` (tier one, when the policy allows it, checked
    by the store) confirm a retake: a ``reject`` unless one already stands.  Tier two's
    ``good`` on a verdict whose reject stands: a ``withdraw``.  Anything else: nothing.
    Returns the command written, or None.
    """
    standing = standing_reject(conn, verdict_id)
    values: dict[str, Any] = {"verdict_id": verdict_id, "confirmed_by": user, "tier": tier,
                              "review_version": review_version, "confirmed_at": now, "state": "pending",
                              "attempts": 0, "next_attempt_at": now}  # fmt: skip
    if outcome in ("bad", "retake"):
        if standing is not None:
            return None  # already asked for; a second KOS would say the same
        code = choose_reason(flags)
        if code is None:
            raise ValueError("a confirmed retake needs a CID 7011 flag (the store checks this first)")
        values.update(id=command_id(verdict_id, "reject", review_version), action="reject",
                      reason_scheme=code.scheme, reason_code=code.value)  # fmt: skip
    elif tier == 2 and outcome == "good" and standing is not None:
        values.update(id=command_id(verdict_id, "withdraw", review_version), action="withdraw")
    else:
        return None
    conn.execute(sa.insert(db.rejections).values(**values))
    return Command.from_row(conn.execute(_joined().where(db.rejections.c.id == values["id"])).one())


@dataclass(frozen=True)
class Answer:
    """What :meth:`Rejections.record_result` did: ``recorded`` False with ``why`` when ignored."""

    recorded: bool
    why: str = ""


class Rejections:
    """The commands in ``store`` (a :class:`ReviewStore`): due ones, answers, one verdict's."""

    def __init__(self, store: Any, policy: RejectPolicy) -> None:
        self.store = store
        self.policy = policy

    def of_verdict(self, verdict_id: str) -> list[Command]:
        """Every command of one verdict, oldest first (the verdict page shows them)."""
        query = _joined().where(db.rejections.c.verdict_id == verdict_id).order_by(db.rejections.c.review_version)
        return [Command.from_row(r) for r in self.store.transaction(lambda c: c.execute(query).all())]

    def all(self) -> list[Command]:
        """Every command, oldest first."""
        query = _joined().order_by(db.rejections.c.confirmed_at, db.rejections.c.id)
        return [Command.from_row(r) for r in self.store.transaction(lambda c: c.execute(query).all())]

    def due(self, limit: int = 100) -> list[Command]:
        """Pending commands whose next attempt has come.  A withdraw waits until its reject was
        answered queued or sent (a withdraw of nothing would be wrong); one whose reject was
        refused is cancelled here."""
        r = db.rejections
        now = self.store.now()

        def work(conn: sa.Connection) -> list[Command]:
            rows = conn.execute(_joined().where(r.c.state == "pending", r.c.next_attempt_at <= now)
                                .order_by(r.c.next_attempt_at, r.c.id).limit(limit)).all()  # fmt: skip
            out = []
            for row in rows:
                command = Command.from_row(row)
                if command.action == "withdraw":
                    reject = _latest(conn, command.verdict_id, "reject", command.review_version)
                    if reject is None or reject.state == "refused":
                        conn.execute(sa.update(r).where(r.c.id == command.id).values(
                            state="cancelled", result_reason="reject_refused", answered_at=now,
                            result_detail="the reject was refused by the worker: nothing to withdraw"))  # fmt: skip
                        continue
                    if reject.state == "pending":
                        continue
                out.append(command)
            return out

        return list(self.store.transaction(work))

    def published(self, command_id: str) -> None:
        """The broker took one publish of ``command_id``: count it, schedule the next."""
        r = db.rejections
        now = self.store.now()

        def work(conn: sa.Connection) -> None:
            attempts = conn.execute(sa.select(r.c.attempts).where(r.c.id == command_id)).scalar_one() + 1
            conn.execute(sa.update(r).where(r.c.id == command_id).values(
                attempts=attempts, last_sent_at=now,
                next_attempt_at=now + timedelta(seconds=self.policy.backoff(attempts))))  # fmt: skip

        self.store.transaction(work)

    def record_result(self, doc: Mapping[str, Any]) -> Answer:
        """Keep a worker's ``xray-qc/reject-result@1`` answer.  ``queued`` never overrides
        ``sent`` (answers may cross); an unknown id, action mismatch or bad outcome is ignored
        with the reason (and logged)."""
        r = db.rejections
        if doc.get("schema") != RESULT_SCHEMA or not isinstance(doc.get("id"), str):
            return Answer(False, "not a reject-result@1 document")
        outcome = doc.get("outcome")
        if outcome not in OUTCOMES:
            return Answer(False, f"unknown outcome {outcome!r}")
        now = self.store.now()

        def work(conn: sa.Connection) -> Answer:
            row = conn.execute(sa.select(r.c.action, r.c.state, r.c.verdict_id).where(r.c.id == doc["id"])).first()
            if row is None:
                return Answer(False, f"no command {doc['id']}")
            if doc.get("action") not in (None, row.action):
                return Answer(False, f"command {doc['id']} is a {row.action}, the answer says {doc.get('action')}")
            if outcome == "queued" and row.state == "sent":
                return Answer(False, "already sent; a late queued changes nothing")
            conn.execute(sa.update(r).where(r.c.id == doc["id"]).values(
                state=outcome, answered_at=now,
                result_reason=str(doc["reason"])[:50] if doc.get("reason") else None,
                result_detail=str(doc["detail"]) if doc.get("detail") else None,
                document_uid=str(doc["document_sop_instance_uid"])[:64] if doc.get("document_sop_instance_uid") else None,
            ))  # fmt: skip
            self.store.audit(conn, "worker", f"{row.action}_result", row.verdict_id, "done",
                             {"id": doc["id"], "outcome": outcome, "reason": doc.get("reason")}, {"state": row.state})  # fmt: skip
            return Answer(True)

        answer: Answer = self.store.transaction(work)
        if not answer.recorded:
            log.warning("review: reject result ignored: %s", answer.why)
        return answer
