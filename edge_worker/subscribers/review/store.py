"""The review store: verdicts the dashboard received, and the two tiers' reviews of them.

MIQA's rules (paper 002), applied to radiographs:

* tier one (role ``tier1``, or ``tier2``) marks a received image ``good`` or ``questionable``,
  with flags and a comment, until tier two takes it;
* tier two (role ``tier2``) makes the final decision, ``good`` or ``bad`` (bad needs at least one
  flag), only for images in its queue: questionable ones, disputed ones (tier one said good where
  the network said ``retake``) and reopened ones; tier two may reopen any image.

With rejections on (``rejections=RejectPolicy(...)``, ``rejections.py``) the review that
confirms a retake writes the rejection command in its own transaction: tier two's final
``bad`` (it then needs a CID 7011 flag), and with ``after="tier_one"`` also tier one's
``retake`` (a third tier-one outcome, only on a network ``retake`` and with a CID 7011 flag;
status ``confirmed_bad``, out of tier one's hands, tier two may reopen it).

Every change names the verdict version it saw; a stale version is refused with
:class:`Conflict`, which carries the change that came first.  Every change and every refusal
writes an audit row in the same transaction.  A database that cannot be reached raises
:class:`StoreUnavailable` and nothing is half-written.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from edge_worker.subscribers.review import db, rejections
from edge_worker.subscribers.review.errors import (
    Conflict,
    NotAllowed,
    Refused,
    ReviewError,
    RuleViolation,
    StoreUnavailable,
    UnknownVerdict,
)
from edge_worker.subscribers.review.flags import DCM, Flag, pack_codes_of, validate_flags
from edge_worker.subscribers.review.rejections import RejectPolicy

T = TypeVar("T")
DEFAULT_URL = "sqlite:///review.sqlite3"


class Status(enum.StrEnum):
    """Where review of a verdict stands."""

    NEW = "new"  # received, nobody has looked
    GOOD = "good"  # tier one: good, and the network did not say retake
    QUESTIONABLE = "questionable"  # tier one: questionable -> tier two
    DISPUTED = "disputed"  # tier one: good where the network said retake -> tier two
    REOPENED = "reopened"  # tier two took it back -> tier two
    FINAL_GOOD = "final_good"
    FINAL_BAD = "final_bad"
    CONFIRMED_BAD = "confirmed_bad"  # tier one confirmed the network's retake (reject_after = tier_one)


TIER_TWO_QUEUE = frozenset({Status.QUESTIONABLE, Status.DISPUTED, Status.REOPENED})
TIER_ONE_OPEN = frozenset({Status.NEW, Status.GOOD, Status.QUESTIONABLE, Status.DISPUTED})

#: Who may do what (roles of review_users).  Admins manage users (auth.py), never review.
ROLES: dict[str, frozenset[str]] = {
    "tier_one": frozenset({"tier1", "tier2"}),
    "tier_two": frozenset({"tier2"}),
    "reopen": frozenset({"tier2"}),
    "read": frozenset({"tier1", "tier2", "admin"}),
    "manage_users": frozenset({"admin"}),
}


class InvalidVerdict(ReviewError):
    """A payload that is not a verdict (caller mistake: the dashboard passed something else)."""


def network_opinion(decision: str) -> str | None:
    """The network's opinion in review terms: ``ok`` -> good, ``retake`` -> bad, else none."""
    return {"ok": "good", "retake": "bad"}.get(decision)


def _utc(value: datetime) -> datetime:
    # SQLite gives back naive datetimes for DateTime(timezone=True); they were written as UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class VerdictRecord:
    """A received verdict and where its review stands (``version`` for the next change)."""

    id: str
    site: str
    station: str
    pack_name: str
    pack_version: str
    pack_digest: str
    view: str
    decision: str
    reason_codes: tuple[str, ...]
    received_at: datetime
    status: Status
    version: int
    payload: dict[str, Any]

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> VerdictRecord:
        m = row._mapping
        return cls(
            id=m["id"], site=m["site"], station=m["station"], pack_name=m["pack_name"],
            pack_version=m["pack_version"], pack_digest=m["pack_digest"], view=m["view"],
            decision=m["decision"], reason_codes=tuple(m["reason_codes"]),
            received_at=_utc(m["received_at"]), status=Status(m["status"]),
            version=m["version"], payload=m["payload"],
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """The row without its payload, JSON-ready (the audit's "before")."""
        return {"status": self.status.value, "version": self.version, "decision": self.decision}


@dataclass(frozen=True)
class ReviewRecord:
    """One human change: a tier-one or tier-two review, or a reopening (``outcome="reopen"``)."""

    id: int
    verdict_id: str
    tier: int
    user: str
    outcome: str
    flags: tuple[Flag, ...]
    comment: str
    created_at: datetime
    version: int

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> ReviewRecord:
        m = row._mapping
        return cls(
            id=m["id"], verdict_id=m["verdict_id"], tier=m["tier"], user=m["user_name"],
            outcome=m["outcome"], flags=tuple((f[0], f[1]) for f in m["flags"]),
            comment=m["comment"], created_at=_utc(m["created_at"]), version=m["version"],
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flags"] = [list(f) for f in self.flags]
        d["created_at"] = self.created_at.isoformat()
        return d


class ReviewStore:
    """Typed operations on the review database at ``url`` (upgraded to the newest migration).

    ``clock`` gives POSIX seconds (tests pass their own).  ``rejections``: None (off) or when
    confirmations become rejection commands (see the module docstring).
    """

    def __init__(self, url: str = DEFAULT_URL, *, clock: Callable[[], float] = time.time,
                 rejections: RejectPolicy | None = None) -> None:  # fmt: skip
        self.url = url
        self.clock = clock
        self.rejections = rejections
        self.engine: Engine = db.open_engine(url)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), tz=UTC)

    # -- plumbing ---------------------------------------------------------------------------

    def transaction(self, work: Callable[[sa.Connection], T]) -> T:
        """Run ``work`` in one transaction; a lost or refused database is :class:`StoreUnavailable`."""
        try:
            with self.engine.begin() as conn:
                return work(conn)
        except db.UNAVAILABLE as exc:
            raise StoreUnavailable(f"review database unavailable: {getattr(exc, 'orig', exc)}") from exc

    def audit(self, conn: sa.Connection, actor: str, action: str, verdict_id: str | None,
              outcome: str, detail: Mapping[str, Any], before: Any) -> None:  # fmt: skip
        """Append one audit row on ``conn`` (inside the caller's transaction)."""
        conn.execute(sa.insert(db.audit).values(
            at=self.now(), actor=actor, action=action, verdict_id=verdict_id,
            outcome=outcome, detail=dict(detail), before=before,
        ))  # fmt: skip

    def _change(self, action: str, actor: str, verdict_id: str, detail: dict[str, Any],
                work: Callable[[sa.Connection, VerdictRecord], T]) -> T:  # fmt: skip
        """One audited change of a verdict: ``work`` returns the result or raises :class:`Refused`.

        A refusal is audited and committed, then raised; anything else rolls back everything.
        """
        refusal: list[Refused] = []

        def run(conn: sa.Connection) -> T | None:
            row = conn.execute(sa.select(db.verdicts).where(db.verdicts.c.id == verdict_id)).first()
            record = None if row is None else VerdictRecord.from_row(row)
            try:
                if record is None:
                    raise UnknownVerdict(f"no verdict {verdict_id} was received")
                result = work(conn, record)
            except Refused as exc:
                why = dict(detail, why=str(exc))
                if isinstance(exc, Conflict):
                    why["earlier"] = exc.earlier
                self.audit(conn, actor, action, verdict_id, f"refused:{exc.code}", why,
                           None if record is None else record.summary())  # fmt: skip
                refusal.append(exc)
                return None
            self.audit(conn, actor, action, verdict_id, "done", detail, record.summary())
            return result

        result = self.transaction(run)
        if refusal:
            raise refusal[0]
        return result  # type: ignore[return-value]

    def _role(self, conn: sa.Connection, user: str, operation: str) -> str:
        row = conn.execute(
            sa.select(db.users.c.role, db.users.c.disabled).where(db.users.c.name == user)
        ).first()
        if row is None or row.disabled:
            raise NotAllowed(f"no active user {user!r}")
        if row.role not in ROLES[operation]:
            raise NotAllowed(f"{user!r} ({row.role}) may not {operation.replace('_', ' ')}")
        return str(row.role)

    def _last_change(self, conn: sa.Connection, verdict_id: str) -> dict[str, Any] | None:
        row = conn.execute(
            sa.select(db.reviews).where(db.reviews.c.verdict_id == verdict_id)
            .order_by(db.reviews.c.id.desc()).limit(1)
        ).first()  # fmt: skip
        return None if row is None else ReviewRecord.from_row(row).as_dict()

    def _apply(self, conn: sa.Connection, record: VerdictRecord, seen_version: int, *, tier: int,
               user: str, outcome: str, flags: tuple[Flag, ...], comment: str, status: Status) -> VerdictRecord:  # fmt: skip
        """Raise the version from ``seen_version`` (or refuse with Conflict) and add the review row."""
        if record.version != seen_version:
            raise Conflict(record.id, seen_version, record.version, self._last_change(conn, record.id))
        # The WHERE on version closes the race between the read above and this write.
        done = conn.execute(
            sa.update(db.verdicts)
            .where(db.verdicts.c.id == record.id, db.verdicts.c.version == seen_version)
            .values(status=status.value, version=seen_version + 1)
        )  # fmt: skip
        if done.rowcount != 1:
            current = conn.execute(
                sa.select(db.verdicts.c.version).where(db.verdicts.c.id == record.id)
            ).scalar_one()
            raise Conflict(record.id, seen_version, current, self._last_change(conn, record.id))
        conn.execute(sa.insert(db.reviews).values(
            verdict_id=record.id, tier=tier, user_name=user, outcome=outcome,
            flags=[list(f) for f in flags], comment=comment, created_at=self.now(),
            version=seen_version + 1,
        ))  # fmt: skip
        row = conn.execute(sa.select(db.verdicts).where(db.verdicts.c.id == record.id)).one()
        return VerdictRecord.from_row(row)

    # -- verdicts ---------------------------------------------------------------------------

    def record_verdict(self, payload: Mapping[str, Any]) -> tuple[VerdictRecord, bool]:
        """Keep a verdict the dashboard received; ``(record, True)`` when new, ``False`` when the
        id was already there (a redelivery: nothing changes).  Raises :class:`InvalidVerdict`."""
        try:
            pack = payload["pack"]
            values: dict[str, Any] = {
                "id": str(payload["id"]), "site": str(payload["site"]), "station": str(payload["station"]),
                "pack_name": str(pack["name"]), "pack_version": str(pack["version"]),
                "pack_digest": str(pack["digest"]), "view": "SERIES" if "series" in payload else str(payload["view"]["label"]),
                "decision": str(payload["decision"]),
                "reason_codes": sorted({str(r["code"]) for r in payload["reasons"]}),
            }  # fmt: skip
        except (KeyError, TypeError) as exc:
            raise InvalidVerdict(f"not a verdict payload: missing {exc}") from exc

        def run(conn: sa.Connection) -> tuple[VerdictRecord, bool]:
            table = db.verdicts
            row = conn.execute(sa.select(table).where(table.c.id == values["id"])).first()
            if row is not None:
                return VerdictRecord.from_row(row), False
            conn.execute(sa.insert(table).values(
                **values, received_at=self.now(), payload=dict(payload),
                status=Status.NEW.value, version=1,
            ))  # fmt: skip
            self.audit(conn, "dashboard", "receive", values["id"], "done", {"decision": values["decision"]}, None)
            return VerdictRecord.from_row(conn.execute(sa.select(table).where(table.c.id == values["id"])).one()), True

        try:
            return self.transaction(run)
        except sa.exc.IntegrityError:
            # Two receivers raced on the same id: the other one stored it.
            return self.get(values["id"]), False

    def get(self, verdict_id: str) -> VerdictRecord:
        """The verdict with ``verdict_id``; raises :class:`UnknownVerdict` (not audited: a read)."""
        row = self.transaction(
            lambda c: c.execute(sa.select(db.verdicts).where(db.verdicts.c.id == verdict_id)).first()
        )
        if row is None:
            raise UnknownVerdict(f"no verdict {verdict_id} was received")
        return VerdictRecord.from_row(row)

    def reviews_of(self, verdict_id: str) -> list[ReviewRecord]:
        """Every human change of one verdict, oldest first."""
        rows = self.transaction(lambda c: c.execute(
            sa.select(db.reviews).where(db.reviews.c.verdict_id == verdict_id).order_by(db.reviews.c.id)
        ).all())  # fmt: skip
        return [ReviewRecord.from_row(r) for r in rows]

    def queue(self, statuses: Iterable[Status], limit: int = 100) -> list[VerdictRecord]:
        """Verdicts in ``statuses``, oldest received first."""
        wanted = [s.value for s in statuses]
        rows = self.transaction(lambda c: c.execute(
            sa.select(db.verdicts).where(db.verdicts.c.status.in_(wanted))
            .order_by(db.verdicts.c.received_at, db.verdicts.c.id).limit(limit)
        ).all())  # fmt: skip
        return [VerdictRecord.from_row(r) for r in rows]

    def tier_one_queue(self, limit: int = 100) -> list[VerdictRecord]:
        """Images nobody has reviewed yet."""
        return self.queue([Status.NEW], limit)

    def tier_two_queue(self, limit: int = 100) -> list[VerdictRecord]:
        """Images waiting for tier two: questionable, disputed, reopened."""
        return self.queue(TIER_TWO_QUEUE, limit)

    def audit_log(self, verdict_id: str | None = None) -> list[dict[str, Any]]:
        """Audit rows (of one verdict, or all), oldest first, as dicts."""
        query = sa.select(db.audit).order_by(db.audit.c.id)
        if verdict_id is not None:
            query = query.where(db.audit.c.verdict_id == verdict_id)
        rows = self.transaction(lambda c: c.execute(query).all())
        return [dict(r._mapping, at=_utc(r.at)) for r in rows]

    # -- the tiers --------------------------------------------------------------------------

    def review_tier_one(self, verdict_id: str, user: str, seen_version: int, outcome: str,
                        flags: Iterable[Any] = (), comment: str = "") -> VerdictRecord:  # fmt: skip
        """Tier one: ``good`` or ``questionable`` (or ``retake`` with ``reject_after = "tier_one"``,
        see the module docstring).  A ``good`` on a network ``retake`` is a dispute and goes to
        tier two.  Refused once tier two has the image (reopened or final)."""
        detail = {"outcome": outcome, "flags": [list(f) for f in flags], "comment": comment, "seen_version": seen_version}

        def work(conn: sa.Connection, record: VerdictRecord) -> VerdictRecord:
            self._role(conn, user, "tier_one")
            if outcome not in ("good", "questionable", "retake"):
                raise RuleViolation(f"tier one marks good or questionable, not {outcome!r}")
            checked = validate_flags(flags, pack_codes_of(record.payload))
            if outcome == "retake":
                self._check_tier_one_retake(record, checked)
            if record.status not in TIER_ONE_OPEN:
                if record.version != seen_version:
                    raise Conflict(record.id, seen_version, record.version, self._last_change(conn, record.id))
                raise RuleViolation(f"tier two has this image ({record.status.value})")
            if outcome == "retake":
                status = Status.CONFIRMED_BAD
            elif outcome == "questionable":
                status = Status.QUESTIONABLE
            elif network_opinion(record.decision) == "bad":
                status = Status.DISPUTED
            else:
                status = Status.GOOD
            new = self._apply(conn, record, seen_version, tier=1, user=user, outcome=outcome,
                              flags=checked, comment=comment, status=status)  # fmt: skip
            if outcome == "retake":
                rejections.after_review(conn, self.now(), record.id, new.version, tier=1, user=user,
                                        outcome=outcome, flags=checked)  # fmt: skip
            return new

        return self._change("tier_one", user, verdict_id, detail, work)

    def _check_tier_one_retake(self, record: VerdictRecord, flags: tuple[Flag, ...]) -> None:
        if self.rejections is None or self.rejections.after != "tier_one":
            raise RuleViolation('tier one confirms a retake only with [review] reject_after = "tier_one"')
        if network_opinion(record.decision) != "bad":
            raise RuleViolation(f"tier one confirms only a network retake; the network said {record.decision}")
        if not any(s == DCM for s, _ in flags):
            raise RuleViolation("confirming a retake needs a CID 7011 flag (the reason the PACS is given)")

    def decide_tier_two(self, verdict_id: str, user: str, seen_version: int, outcome: str,
                        flags: Iterable[Any] = (), comment: str = "") -> VerdictRecord:  # fmt: skip
        """Tier two's final ``good`` or ``bad`` (bad needs a flag), for images in its queue."""
        detail = {"outcome": outcome, "flags": [list(f) for f in flags], "comment": comment, "seen_version": seen_version}

        def work(conn: sa.Connection, record: VerdictRecord) -> VerdictRecord:
            self._role(conn, user, "tier_two")
            if outcome not in ("good", "bad"):
                raise RuleViolation(f"tier two decides good or bad, not {outcome!r}")
            checked = validate_flags(flags, pack_codes_of(record.payload))
            if outcome == "bad" and not checked:
                raise RuleViolation("bad needs at least one flag")
            if outcome == "bad" and self.rejections is not None and not any(s == DCM for s, _ in checked):
                raise RuleViolation("bad needs a CID 7011 flag here: it is the reason the PACS is given")
            if record.version != seen_version:
                raise Conflict(record.id, seen_version, record.version, self._last_change(conn, record.id))
            if record.status not in TIER_TWO_QUEUE:
                raise RuleViolation(
                    f"not in tier two's queue ({record.status.value}): only questionable, disputed "
                    "or reopened images; reopen it first"
                )
            status = Status.FINAL_GOOD if outcome == "good" else Status.FINAL_BAD
            new = self._apply(conn, record, seen_version, tier=2, user=user, outcome=outcome,
                              flags=checked, comment=comment, status=status)  # fmt: skip
            if self.rejections is not None:
                # The same transaction: the decision and its command exist together or not at all.
                rejections.after_review(conn, self.now(), record.id, new.version, tier=2, user=user,
                                        outcome=outcome, flags=checked)  # fmt: skip
            return new

        return self._change("tier_two", user, verdict_id, detail, work)

    def reopen(self, verdict_id: str, user: str, seen_version: int, comment: str = "") -> VerdictRecord:
        """Tier two takes any image (even a final one) back into its queue."""
        detail = {"comment": comment, "seen_version": seen_version}

        def work(conn: sa.Connection, record: VerdictRecord) -> VerdictRecord:
            self._role(conn, user, "reopen")
            if record.version != seen_version:
                raise Conflict(record.id, seen_version, record.version, self._last_change(conn, record.id))
            if record.status == Status.REOPENED:
                raise RuleViolation("already reopened")
            return self._apply(conn, record, seen_version, tier=2, user=user, outcome="reopen",
                               flags=(), comment=comment, status=Status.REOPENED)  # fmt: skip

        return self._change("reopen", user, verdict_id, detail, work)
