"""Reject analysis from the review store: the numbers AAPM Task Group 305 (2023) asks a
department to track, as far as the worker and the review loop know them.

TG-305's core data elements are, per image acquired: the station (the X-ray unit), the body
part and view, the operator and time, whether the image was rejected, and the reject reason
from a fixed list; the figures it asks for are reject rates (rejected / acquired) by unit, body
part, view, reason and period.  Here "acquired" is every verdict the dashboard received (the
worker judges every image its station stores), and:

* **confirmed reject**: a person confirmed the retake: tier two's final ``bad``, or tier one's
  ``retake`` with ``reject_after = "tier_one"`` (status ``final_bad`` / ``confirmed_bad``);
  its reason is the CID 7011 code of its rejection command when there is one, else the one
  :func:`rejections.choose_reason` picks from the deciding review's flags, else
  ``unspecified`` (a final bad with only pack flags, before rejections were on);
* **network retake**: the worker said ``retake`` (whatever review said after);
* **reviewed**: at least one person looked (status other than ``new``);
* **in PACS**: the reject's command was answered ``sent`` (``queued``: at the station's outbox).

Not known here (TG-305 asks for them; say so in a report): the operator (technologist), the
exposure index of rejected images, images deleted at the modality before they were stored.
Every rate carries its numerator and denominator; a group with no images has no rate.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from edge_worker.subscribers.review import db
from edge_worker.subscribers.review.flags import Flag, meaning
from edge_worker.subscribers.review.rejections import choose_reason

PERIODS = ("day", "week", "month")
DIMENSIONS = ("all", "station", "body_part", "view", "pack", "reason", "period")
CONFIRMED = frozenset({"final_bad", "confirmed_bad"})
UNSPECIFIED = "unspecified"
CSV_COLUMNS = ("dimension", "key", "label", "images", "reviewed", "review_rate", "network_retakes",
               "network_retake_rate", "confirmed_rejects", "reject_rate", "share_of_rejects",
               "rejects_in_pacs", "rejects_queued", "rejects_refused", "first_received", "last_received")  # fmt: skip


def period_start(when: datetime, period: str) -> date:
    """The first day (UTC) of the day, ISO week (Monday) or month holding ``when``."""
    day = when.astimezone(UTC).date()
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")


@dataclass(frozen=True)
class Image:
    """One received verdict as reject analysis sees it."""

    verdict_id: str
    station: str  # "<site>/<station>"
    body_part: str
    view: str
    pack: str  # "<name> <version>"
    received_at: datetime
    network_retake: bool
    reviewed: bool
    rejected: bool
    reason: str | None  # a CID 7011 code value, or "unspecified"; None unless rejected
    pacs_state: str | None  # the reject command's state (pending/queued/sent/refused), if any


@dataclass
class Group:
    """Counts of one key of one dimension; rates are ``None`` without images."""

    dimension: str
    key: str
    label: str = ""
    images: int = 0
    reviewed: int = 0
    network_retakes: int = 0
    confirmed_rejects: int = 0
    rejects_in_pacs: int = 0
    rejects_queued: int = 0
    rejects_refused: int = 0
    all_rejects: int = 0  # the denominator of share_of_rejects (every confirmed reject in the report)
    first: datetime | None = None
    last: datetime | None = None

    @staticmethod
    def _rate(n: int, d: int) -> float | None:
        return None if d == 0 else n / d

    @property
    def review_rate(self) -> float | None:
        return self._rate(self.reviewed, self.images)

    @property
    def network_retake_rate(self) -> float | None:
        return self._rate(self.network_retakes, self.images)

    @property
    def reject_rate(self) -> float | None:
        return self._rate(self.confirmed_rejects, self.images)

    @property
    def share_of_rejects(self) -> float | None:
        return self._rate(self.confirmed_rejects, self.all_rejects)

    def add(self, image: Image) -> None:
        self.images += 1
        self.reviewed += image.reviewed
        self.network_retakes += image.network_retake
        if image.rejected:
            self.confirmed_rejects += 1
            self.rejects_in_pacs += image.pacs_state == "sent"
            self.rejects_queued += image.pacs_state == "queued"
            self.rejects_refused += image.pacs_state == "refused"
        self.first = image.received_at if self.first is None else min(self.first, image.received_at)
        self.last = image.received_at if self.last is None else max(self.last, image.received_at)

    def row(self) -> dict[str, str]:
        """The CSV row (:data:`CSV_COLUMNS`): rates as fractions with 4 decimals, "" for none."""
        def fmt(rate: float | None) -> str:
            return "" if rate is None else f"{rate:.4f}"

        return {
            "dimension": self.dimension, "key": self.key, "label": self.label, "images": str(self.images),
            "reviewed": str(self.reviewed), "review_rate": fmt(self.review_rate),
            "network_retakes": str(self.network_retakes), "network_retake_rate": fmt(self.network_retake_rate),
            "confirmed_rejects": str(self.confirmed_rejects), "reject_rate": fmt(self.reject_rate),
            "share_of_rejects": fmt(self.share_of_rejects), "rejects_in_pacs": str(self.rejects_in_pacs),
            "rejects_queued": str(self.rejects_queued), "rejects_refused": str(self.rejects_refused),
            "first_received": self.first.isoformat() if self.first else "",
            "last_received": self.last.isoformat() if self.last else "",
        }  # fmt: skip


@dataclass
class Report:
    """Groups per dimension (:data:`DIMENSIONS`), for ``period`` and the filters applied."""

    period: str
    station: str | None
    groups: dict[str, list[Group]] = field(default_factory=dict)

    @property
    def total(self) -> Group:
        return self.groups["all"][0]

    def rows(self) -> list[dict[str, str]]:
        return [g.row() for d in DIMENSIONS for g in self.groups.get(d, [])]

    def csv(self) -> str:
        """The report as CSV text with a header of :data:`CSV_COLUMNS`."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return out.getvalue()


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def images(store: Any, station: str | None = None, since: datetime | None = None,
           until: datetime | None = None) -> list[Image]:  # fmt: skip
    """Every received verdict (of ``station``, ``"<site>/<station>"``, received in
    ``[since, until)``) with its review outcome and its reject command's state."""
    v, r, j = db.verdicts, db.reviews, db.rejections
    query = sa.select(v.c.id, v.c.site, v.c.station, v.c.view, v.c.pack_name, v.c.pack_version, v.c.decision,
                      v.c.received_at, v.c.status, v.c.payload)  # fmt: skip
    if since is not None:
        query = query.where(v.c.received_at >= since)
    if until is not None:
        query = query.where(v.c.received_at < until)

    def work(conn: sa.Connection) -> tuple[Sequence[Any], Sequence[Any], Sequence[Any]]:
        rows = conn.execute(query.order_by(v.c.received_at, v.c.id)).all()
        reviews = conn.execute(sa.select(r.c.verdict_id, r.c.outcome, r.c.flags).where(r.c.outcome.in_(("bad", "retake")))
                               .order_by(r.c.id)).all()  # fmt: skip
        commands = conn.execute(sa.select(j.c.verdict_id, j.c.reason_code, j.c.state).where(j.c.action == "reject")
                                .order_by(j.c.review_version)).all()  # fmt: skip
        return rows, reviews, commands

    rows, reviews, commands = store.transaction(work)
    flags_of: dict[str, list[Flag]] = {}
    for row in reviews:  # the last confirming review wins
        flags_of[row.verdict_id] = [(f[0], f[1]) for f in row.flags]
    command_of = {c.verdict_id: c for c in commands}  # the newest reject
    out = []
    for row in rows:
        where = f"{row.site}/{row.station}"
        if station is not None and where != station:
            continue
        rejected = row.status in CONFIRMED
        reason: str | None = None
        command = command_of.get(row.id)
        if rejected:
            chosen = choose_reason(flags_of.get(row.id, []))
            reason = command.reason_code if command is not None and command.reason_code else (
                chosen.value if chosen is not None else UNSPECIFIED)  # fmt: skip
        payload = row.payload or {}
        out.append(Image(
            verdict_id=row.id, station=where, body_part=str(payload.get("body_part") or "") or "(none)",
            view=row.view, pack=f"{row.pack_name} {row.pack_version}", received_at=_utc(row.received_at),
            network_retake=row.decision == "retake", reviewed=row.status != "new", rejected=rejected,
            reason=reason, pacs_state=command.state if rejected and command is not None else None,
        ))  # fmt: skip
    return out


def analyse(source: Any | Iterable[Image], period: str = "week", station: str | None = None,
            since: datetime | None = None, until: datetime | None = None) -> Report:  # fmt: skip
    """The report over a store (or a list of :class:`Image`): every dimension, ``period`` buckets.

    The ``reason`` groups count confirmed rejects of each reason; their ``images`` is the
    denominator of the reject rate (all images), so a reason's reject rate is its share of all
    images and ``share_of_rejects`` its share of the rejects.
    """
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    items: Sequence[Image] = list(source) if not hasattr(source, "transaction") else images(source, station, since, until)
    if station is not None:
        items = [i for i in items if i.station == station]
    report = Report(period, station)
    total = Group("all", "all", "every image")
    keyed: dict[str, dict[str, Group]] = defaultdict(dict)
    for image in items:
        total.add(image)
        keys = {"station": image.station, "body_part": image.body_part, "view": image.view, "pack": image.pack,
                "period": period_start(image.received_at, period).isoformat()}  # fmt: skip
        for dimension, key in keys.items():
            keyed[dimension].setdefault(key, Group(dimension, key)).add(image)
    for image in items:
        if image.rejected and image.reason is not None:
            group = keyed["reason"].setdefault(image.reason, Group("reason", image.reason))
            group.confirmed_rejects += 1
            group.rejects_in_pacs += image.pacs_state == "sent"
            group.rejects_queued += image.pacs_state == "queued"
            group.rejects_refused += image.pacs_state == "refused"
            group.first = image.received_at if group.first is None else min(group.first, image.received_at)
            group.last = image.received_at if group.last is None else max(group.last, image.received_at)
    for group in keyed["reason"].values():
        group.images = total.images
        group.label = "no CID 7011 reason given" if group.key == UNSPECIFIED else meaning(("DCM", group.key))
    report.groups["all"] = [total]
    for dimension in DIMENSIONS[1:]:
        report.groups[dimension] = sorted(keyed[dimension].values(), key=lambda g: g.key)
    for groups in report.groups.values():
        for group in groups:
            group.all_rejects = total.confirmed_rejects
    return report
