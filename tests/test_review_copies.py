"""The dashboard's review copies on SQLite and on a real PostgreSQL server (tests/review_db.py)."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import cv2
import numpy as np
import pytest

pytest.importorskip("sqlalchemy")

from edge_worker.publish.review_copy import build_review_copy
from edge_worker.subscribers.review.copies import ReviewCopies, ReviewCopy
from edge_worker.subscribers.review.store import ReviewStore
from tests.review_db import postgres_server, review_url  # noqa: F401

VID = "00000000-0000-0000-0000-0000000000{:02d}"


class Clock:
    def __init__(self) -> None:
        self.t = 1_780_000_000.0

    def __call__(self) -> float:
        return self.t


def png(width: int = 300, height: int = 200, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width), dtype=np.uint8)
    ok, out = cv2.imencode(".png", image)
    assert ok
    return out.tobytes()


def payload(n: int = 1, image: bytes | None = None, **override: Any) -> bytes:
    data = png(seed=n) if image is None else image
    doc = build_review_copy(verdict_id=VID.format(n), site="ward-3", station="dr-1", media_type="image/png",
                            width=300, height=200, scale=0.25, data=data)  # fmt: skip
    doc.update(override)
    return json.dumps(doc).encode()


@pytest.fixture
def store(review_url: str) -> Any:  # noqa: F811
    s = ReviewStore(review_url, clock=Clock())
    yield s
    s.close()


def test_accept_keeps_the_copy_and_get_gives_it_back(store: ReviewStore) -> None:
    copies = ReviewCopies(store, max_age_days=30, max_bytes=10_000_000)
    assert copies.accept(payload(1)) == VID.format(1)
    got = copies.get(VID.format(1))
    assert got == ReviewCopy(png(seed=1), "image/png", 300, 200, 0.25)
    decoded = cv2.imdecode(np.frombuffer(got.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (200, 300)
    assert copies.get(VID.format(2)) is None


def test_accept_is_idempotent_and_keeps_the_first(
    store: ReviewStore, caplog: pytest.LogCaptureFixture
) -> None:
    copies = ReviewCopies(store, max_age_days=30, max_bytes=10_000_000)
    assert copies.accept(payload(1)) == VID.format(1)
    assert copies.accept(payload(1)) == VID.format(1)  # a redelivery
    with caplog.at_level(logging.WARNING):
        assert copies.accept(payload(1, image=png(seed=9))) is None
    assert "different copy" in caplog.text
    assert copies.get(VID.format(1)).data == png(seed=1)  # type: ignore[union-attr]


def test_a_copy_before_its_verdict_is_kept(store: ReviewStore) -> None:
    copies = ReviewCopies(store, max_age_days=30, max_bytes=10_000_000)
    assert copies.accept(payload(3)) == VID.format(3)
    verdict = {"id": VID.format(3), "site": "ward-3", "station": "dr-1", "decision": "ok",
               "pack": {"name": "p", "version": "1", "digest": "a" * 64}, "view": {"label": "AP"}, "reasons": []}  # fmt: skip
    store.record_verdict(verdict)
    assert copies.get(VID.format(3)) is not None


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (b"not json", "not JSON"),
        (payload(1, schema="xray-qc/review-copy@0"), "schema"),
        (payload(1, sha256="0" * 64), "sha256 does not match"),
        (payload(1, width=301), "the payload says 301x200"),
        (payload(1, scale=1.5), "never enlarged"),
        (payload(1, verdict_id="../etc"), "verdict_id"),
        (payload(1, extra=1), "unknown ['extra']"),
        (payload(1, image=b"\x89PNG not really"), "does not decode"),
        (payload(1, data="@@@"), "base64"),
    ],
)
def test_accept_refuses_bad_payloads_with_a_reason(store: ReviewStore, caplog: pytest.LogCaptureFixture,
                                                   bad: bytes, why: str) -> None:  # fmt: skip
    copies = ReviewCopies(store, max_age_days=30, max_bytes=10_000_000)
    with caplog.at_level(logging.WARNING):
        assert copies.accept(bad) is None
    assert why in caplog.text
    assert copies.get(VID.format(1)) is None


def test_a_copy_over_the_store_size_is_refused(
    store: ReviewStore, caplog: pytest.LogCaptureFixture
) -> None:
    copies = ReviewCopies(store, max_age_days=30, max_bytes=1000)
    with caplog.at_level(logging.WARNING):
        assert copies.accept(payload(1)) is None
    assert "over the store's 1000" in caplog.text


def test_prune_by_age_then_total_size_oldest_first(store: ReviewStore) -> None:
    clock: Clock = store.clock  # type: ignore[assignment]
    size = len(png(seed=1))
    copies = ReviewCopies(store, max_age_days=2, max_bytes=3 * size + size // 2)
    for n in range(1, 7):
        assert copies.accept(payload(n)) == VID.format(n)
        clock.t += 12 * 3600.0  # copies 12 h apart: 1 is 3 days old at the end, 6 is 12 h
    assert copies.prune() == 3  # 1 (3 d) and 2 (2.5 d) by age, then 3: only three fit
    kept = [n for n in range(1, 7) if copies.get(VID.format(n)) is not None]
    assert kept == [4, 5, 6]
    assert copies.prune() == 0


def test_bounds_must_be_positive(store: ReviewStore) -> None:
    with pytest.raises(ValueError):
        ReviewCopies(store, max_age_days=0, max_bytes=1)
    with pytest.raises(ValueError):
        ReviewCopies(store, max_age_days=1, max_bytes=0)


def test_payload_data_is_base64_of_the_image() -> None:
    doc = json.loads(payload(1))
    assert base64.b64decode(doc["data"]) == png(seed=1)
