"""How often people agreed with the network: per tier, per pack version, station, view and
reason code, with counts; over the last N reviews with an alert under a set level; and the
same as Prometheus text lines.

Agreement: the network's ``ok`` is agreed with by tier one's ``good`` and tier two's ``good``;
its ``retake`` by tier one's ``questionable`` and tier two's ``bad``.  A verdict the network
left to a person (``review``, ``not_judged``) has no opinion to agree with and is not counted.
Per verdict the latest review of each tier counts (a reopening is no review).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import sqlalchemy as sa

from edge_worker.subscribers.review import db
from edge_worker.subscribers.review.store import ReviewStore, network_opinion

DIMENSIONS = ("pack", "station", "view", "reason")
_AGREES = {(1, "good"): "good", (1, "questionable"): "bad", (1, "retake"): "bad", (2, "good"): "good", (2, "bad"): "bad"}


@dataclass(frozen=True)
class Agreement:
    """``agreed`` of ``reviewed`` reviews of ``tier`` agreed with the network, for ``key`` of
    ``dimension`` (``pack`` keys are ``name@version``)."""

    tier: int
    dimension: str
    key: str
    reviewed: int
    agreed: int

    @property
    def rate(self) -> float | None:
        return None if self.reviewed == 0 else self.agreed / self.reviewed


@dataclass(frozen=True)
class Recent:
    """Agreement of ``tier`` over its last ``window`` reviews; ``alert`` when under ``level``."""

    tier: int
    window: int
    reviewed: int
    agreed: int
    level: float

    @property
    def rate(self) -> float | None:
        return None if self.reviewed == 0 else self.agreed / self.reviewed

    @property
    def alert(self) -> bool:
        return self.rate is not None and self.rate < self.level


def _rows(store: ReviewStore) -> list[sa.Row]:  # type: ignore[type-arg]
    v, r = db.verdicts, db.reviews
    query = (
        sa.select(r.c.id, r.c.verdict_id, r.c.tier, r.c.outcome, v.c.decision, v.c.pack_name,
                  v.c.pack_version, v.c.station, v.c.view, v.c.reason_codes)
        .join(v, v.c.id == r.c.verdict_id).where(r.c.outcome != "reopen").order_by(r.c.id)
    )  # fmt: skip
    return list(store.transaction(lambda c: c.execute(query).all()))


def _judged(rows: list[sa.Row]) -> list[tuple[sa.Row, bool]]:  # type: ignore[type-arg]
    out = []
    for row in rows:
        opinion = network_opinion(row.decision)
        if opinion is not None:
            out.append((row, _AGREES.get((row.tier, row.outcome)) == opinion))
    return out


def agreement(store: ReviewStore) -> list[Agreement]:
    """Per tier and dimension key, the latest review of each verdict against the network."""
    latest: dict[tuple[str, int], sa.Row] = {}  # type: ignore[type-arg]
    for row in _rows(store):
        latest[(row.verdict_id, row.tier)] = row  # ordered by id: the last one wins
    counts: dict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row, agreed in _judged(list(latest.values())):
        keys = [("pack", f"{row.pack_name}@{row.pack_version}"), ("station", row.station), ("view", row.view)]
        keys += [("reason", code) for code in row.reason_codes]
        for dimension, key in keys:
            c = counts[(row.tier, dimension, key)]
            c[0] += 1
            c[1] += int(agreed)
    return [Agreement(t, d, k, n, a) for (t, d, k), (n, a) in sorted(counts.items())]


def recent(store: ReviewStore, tier: int, window: int = 100, level: float = 0.8) -> Recent:
    """Agreement over the tier's last ``window`` reviews (each review counts, not each verdict)."""
    judged = [(row, ok) for row, ok in _judged(_rows(store)) if row.tier == tier][-window:]
    return Recent(tier, window, len(judged), sum(ok for _, ok in judged), level)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus(store: ReviewStore, window: int = 100, level: float = 0.8) -> str:
    """The agreement figures in the Prometheus text exposition format."""
    lines = [
        "# HELP review_agreement_reviews Reviews compared with the network's decision.",
        "# TYPE review_agreement_reviews gauge",
        "# HELP review_agreement_agreed Reviews that agreed with the network's decision.",
        "# TYPE review_agreement_agreed gauge",
    ]
    for a in agreement(store):
        labels = f'tier="{a.tier}",dimension="{a.dimension}",key="{_label(a.key)}"'
        lines.append(f"review_agreement_reviews{{{labels}}} {a.reviewed}")
        lines.append(f"review_agreement_agreed{{{labels}}} {a.agreed}")
    lines += [
        "# HELP review_agreement_recent_ratio Agreement over the last reviews of the tier.",
        "# TYPE review_agreement_recent_ratio gauge",
        "# HELP review_agreement_alert 1 when recent agreement is under the configured level.",
        "# TYPE review_agreement_alert gauge",
    ]
    for tier in (1, 2):
        r = recent(store, tier, window, level)
        if r.rate is not None:
            lines.append(f'review_agreement_recent_ratio{{tier="{tier}",window="{window}"}} {r.rate:.4f}')
        lines.append(f'review_agreement_alert{{tier="{tier}"}} {int(r.alert)}')
    return "\n".join(lines) + "\n"
