"""Agreement with the network per tier and dimension, recent window and alert, Prometheus text."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("sqlalchemy")

from edge_worker.subscribers.review import agreement as ag
from edge_worker.subscribers.review.store import ReviewStore
from tests.review_db import postgres_server, review_url  # noqa: F401
from tests.test_review_store import add_user, verdict


@pytest.fixture
def store(review_url: str) -> Any:  # noqa: F811
    s = ReviewStore(review_url)
    add_user(s, "ann", "tier1")
    add_user(s, "tom", "tier2")
    yield s
    s.close()


def test_agreement_counts_recent_alert_and_prometheus(store: ReviewStore) -> None:
    ids = [f"00000000-0000-0000-0000-00000000000{i}" for i in range(4)]
    store.record_verdict(verdict(ids[0], "ok"))
    store.record_verdict(verdict(ids[1], "retake"))
    store.record_verdict(verdict(ids[2], "retake"))
    store.record_verdict(verdict(ids[3], "review"))  # no network opinion: not counted
    store.review_tier_one(ids[0], "ann", 1, "good")  # agrees
    store.review_tier_one(ids[1], "ann", 1, "questionable")  # agrees
    store.review_tier_one(ids[2], "ann", 1, "good")  # disagrees -> disputed
    store.review_tier_one(ids[3], "ann", 1, "good")
    store.decide_tier_two(ids[2], "tom", 2, "good")  # disagrees with retake
    rows = {(a.tier, a.dimension, a.key): a for a in ag.agreement(store)}
    t1 = rows[(1, "station", "dr-1")]
    assert (t1.reviewed, t1.agreed) == (3, 2)
    assert rows[(1, "pack", "lumbar-demo@1.0")].reviewed == 3
    assert rows[(1, "reason", "rule_failed")].reviewed == 3
    assert (rows[(2, "view", "AP")].reviewed, rows[(2, "view", "AP")].agreed) == (1, 0)
    r1 = ag.recent(store, 1, window=2, level=0.8)
    assert (r1.reviewed, r1.agreed, r1.alert) == (2, 1, True)
    assert not ag.recent(store, 1, window=10, level=0.5).alert
    text = ag.prometheus(store, window=10, level=0.8)
    assert 'review_agreement_reviews{tier="1",dimension="station",key="dr-1"} 3' in text
    assert 'review_agreement_alert{tier="2"} 1' in text
    assert 'review_agreement_recent_ratio{tier="1",window="10"} 0.6667' in text
