"""A seeded review store for the reject-analysis tests (HTTP and browser): six verdicts over
two ISO weeks of November 2026, two stations, two views, two pack versions, with the reviews
that confirm two rejects (one answered "sent" by the station, one still pending)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from edge_worker.subscribers.review.rejections import Rejections, RejectPolicy
from edge_worker.subscribers.review.store import ReviewStore
from tests.review_http import verdict

POSITIONING, UNDER, ARTIFACT = ("DCM", "111209"), ("DCM", "111211"), ("DCM", "111207")


def _v(n: int, decision: str, station: str, view: str, body_part: str = "LSPINE", pack_version: str = "1.0") -> dict[str, Any]:
    payload = verdict(n, decision, station)
    payload["view"] = {"label": view, "confidence": 0.97}
    payload["pack"] = dict(payload["pack"], version=pack_version)
    if body_part:
        payload["body_part"] = body_part
    payload.update(sop_instance_uid=f"1.2.826.0.1.{n}", study_instance_uid="1.2.826.0.1", series_instance_uid="1.2.826.0.1.0")
    return payload


def seed(url: str) -> dict[str, str]:
    """Write the six verdicts and their reviews into the database at ``url``; returns ids by name."""
    clock_t = [0.0]
    store = ReviewStore(url, clock=lambda: clock_t[0], rejections=RejectPolicy())
    at = lambda *d: datetime(*d, tzinfo=UTC).timestamp()
    try:
        plan = [  # (n, received, decision, station, view, body part, pack version)
            (901, at(2026, 11, 2, 9), "ok", "xr-01", "AP", "LSPINE", "1.0"),
            (902, at(2026, 11, 2, 10), "retake", "xr-01", "AP", "LSPINE", "1.0"),
            (903, at(2026, 11, 3, 11), "retake", "xr-01", "LAT", "LSPINE", "1.0"),
            (904, at(2026, 11, 4, 12), "retake", "xr-02", "AP", "LSPINE", "1.0"),
            (905, at(2026, 11, 10, 9), "retake", "xr-02", "LAT", "LSPINE", "1.1"),
            (906, at(2026, 11, 11, 9), "ok", "xr-02", "AP", "", "1.0"),
        ]
        ids = {}
        for n, t, decision, station, view, body, version in plan:
            clock_t[0] = t
            record, _ = store.record_verdict(_v(n, decision, station, view, body, version))
            ids[str(n)] = record.id
        clock_t[0] = at(2026, 11, 12, 9)
        store.review_tier_one(ids["901"], "ann", 1, "good")
        v = store.review_tier_one(ids["902"], "ann", 1, "questionable")
        store.decide_tier_two(ids["902"], "tom", v.version, "bad", [POSITIONING])
        v = store.review_tier_one(ids["904"], "ann", 1, "good")  # disputed
        store.decide_tier_two(ids["904"], "tom", v.version, "good")  # override: never rejected
        v = store.review_tier_one(ids["905"], "ben", 1, "questionable")
        store.decide_tier_two(ids["905"], "tom", v.version, "bad", [UNDER, ARTIFACT])
        rejections = Rejections(store, RejectPolicy())
        [sent] = rejections.of_verdict(ids["902"])
        rejections.record_result({"schema": "xray-qc/reject-result@1", "id": sent.id, "action": "reject",
                                  "outcome": "sent", "document_sop_instance_uid": "2.25.4242"})  # fmt: skip
        return ids
    finally:
        store.close()
