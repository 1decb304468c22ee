"""The review store's rules on SQLite and on a real PostgreSQL server (tests/review_db.py)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")

import sqlalchemy as sa

from edge_worker.subscribers.review import db
from edge_worker.subscribers.review.errors import (
    Conflict,
    InvalidFlags,
    NotAllowed,
    RuleViolation,
    StoreUnavailable,
    UnknownVerdict,
)
from edge_worker.subscribers.review.store import ReviewStore, Status
from tests.review_db import postgres_server, review_url  # noqa: F401

POSITIONING = ("DCM", "111209")


def verdict(vid: str = "00000000-0000-0000-0000-000000000001", decision: str = "ok") -> dict[str, Any]:
    return {
        "id": vid, "site": "ward-3", "station": "dr-1", "decision": decision,
        "pack": {"name": "lumbar-demo", "version": "1.0", "digest": "a" * 64},
        "view": {"label": "AP"},
        "reasons": [{"code": "rule_failed", "severity": "retake", "text": "t", "rule": "ap_spinous_centred"}],
    }  # fmt: skip


def add_user(store: ReviewStore, name: str, role: str) -> None:
    with store.engine.begin() as c:
        c.execute(sa.insert(db.users).values(name=name, role=role, password_hash="-",
                                             created_at=datetime.now(UTC), disabled=False))  # fmt: skip


@pytest.fixture
def store(review_url: str) -> Any:  # noqa: F811
    s = ReviewStore(review_url)
    add_user(s, "ann", "tier1")
    add_user(s, "ben", "tier1")
    add_user(s, "tom", "tier2")
    add_user(s, "tia", "tier2")
    add_user(s, "root", "admin")
    yield s
    s.close()


def test_record_is_idempotent_by_id(store: ReviewStore) -> None:
    first, new = store.record_verdict(verdict())
    again, new2 = store.record_verdict(verdict(decision="retake"))
    assert new and not new2
    assert again.decision == "ok" and again.version == 1 and again.status == Status.NEW
    assert [r["action"] for r in store.audit_log()] == ["receive"]
    assert store.tier_one_queue()[0].id == first.id


def test_tier_one_good_and_questionable(store: ReviewStore) -> None:
    v, _ = store.record_verdict(verdict())
    v = store.review_tier_one(v.id, "ann", 1, "good", comment="fine")
    assert v.status == Status.GOOD and v.version == 2
    v = store.review_tier_one(v.id, "ben", 2, "questionable", [POSITIONING])
    assert v.status == Status.QUESTIONABLE and store.tier_two_queue()[0].id == v.id
    assert [r.outcome for r in store.reviews_of(v.id)] == ["good", "questionable"]


def test_tier_one_good_on_retake_is_disputed(store: ReviewStore) -> None:
    v, _ = store.record_verdict(verdict(decision="retake"))
    v = store.review_tier_one(v.id, "ann", 1, "good")
    assert v.status == Status.DISPUTED and [x.id for x in store.tier_two_queue()] == [v.id]


def test_tier_two_only_for_its_queue_until_reopened(store: ReviewStore) -> None:
    v, _ = store.record_verdict(verdict())
    v = store.review_tier_one(v.id, "ann", 1, "good")
    with pytest.raises(RuleViolation):
        store.decide_tier_two(v.id, "tom", 2, "bad", [POSITIONING])
    v = store.reopen(v.id, "tom", 2, "spot check")
    assert v.status == Status.REOPENED
    v = store.decide_tier_two(v.id, "tom", 3, "bad", [POSITIONING])
    assert v.status == Status.FINAL_BAD
    with pytest.raises(RuleViolation):  # tier one cannot change a final decision
        store.review_tier_one(v.id, "ann", 4, "good")
    v = store.reopen(v.id, "tia", 4)
    assert v.status == Status.REOPENED and v.version == 5


def test_bad_needs_a_flag_and_flags_are_checked(store: ReviewStore) -> None:
    v, _ = store.record_verdict(verdict())
    v = store.review_tier_one(v.id, "ann", 1, "questionable")
    with pytest.raises(RuleViolation, match="flag"):
        store.decide_tier_two(v.id, "tom", 2, "bad")
    with pytest.raises(InvalidFlags):
        store.decide_tier_two(v.id, "tom", 2, "bad", [("DCM", "999999")])
    with pytest.raises(InvalidFlags):  # a pack code the verdict does not name
        store.decide_tier_two(v.id, "tom", 2, "bad", [("PACK", "no_such_rule")])
    v = store.decide_tier_two(v.id, "tom", 2, "bad", [("PACK", "ap_spinous_centred")])
    assert v.status == Status.FINAL_BAD
    assert store.reviews_of(v.id)[-1].flags == (("PACK", "ap_spinous_centred"),)


def test_roles_are_enforced_and_refusals_audited(store: ReviewStore) -> None:
    v, _ = store.record_verdict(verdict())
    with pytest.raises(NotAllowed):
        store.review_tier_one(v.id, "root", 1, "good")
    with pytest.raises(NotAllowed):
        store.reopen(v.id, "ann", 1)
    with pytest.raises(NotAllowed):
        store.review_tier_one(v.id, "nobody", 1, "good")
    with pytest.raises(RuleViolation):
        store.review_tier_one(v.id, "ann", 1, "bad")
    outcomes = [r["outcome"] for r in store.audit_log(v.id)]
    assert outcomes == ["done", "refused:not_allowed", "refused:not_allowed", "refused:not_allowed",
                        "refused:rule_violation"]  # fmt: skip
    assert store.get(v.id).version == 1


def test_unknown_verdict_is_typed_and_audited(store: ReviewStore) -> None:
    with pytest.raises(UnknownVerdict):
        store.review_tier_one("never-received", "ann", 1, "good")
    with pytest.raises(UnknownVerdict):
        store.get("never-received")
    assert store.audit_log("never-received")[0]["outcome"] == "refused:unknown_verdict"


def test_later_reviewer_gets_conflict_with_the_earlier_change(store: ReviewStore) -> None:
    v, _ = store.record_verdict(verdict())
    store.review_tier_one(v.id, "ann", 1, "good", comment="first")
    with pytest.raises(Conflict) as caught:
        store.review_tier_one(v.id, "ben", 1, "questionable", comment="second")
    c = caught.value
    assert c.current_version == 2 and c.earlier is not None
    assert c.earlier["user"] == "ann" and c.earlier["comment"] == "first"
    assert store.get(v.id).status == Status.GOOD  # nothing changed
    assert store.audit_log(v.id)[-1]["outcome"] == "refused:conflict"
    v = store.review_tier_one(v.id, "ben", c.current_version, "questionable")  # confirmed
    assert v.status == Status.QUESTIONABLE and v.version == 3


def test_simultaneous_reviewers_exactly_one_wins(store: ReviewStore) -> None:
    v, _ = store.record_verdict(verdict())
    barrier = threading.Barrier(4)
    results: list[str] = []

    def act(user: str) -> None:
        barrier.wait()
        try:
            store.review_tier_one(v.id, user, 1, "questionable", comment=user)
            results.append("ok")
        except Conflict:
            results.append("conflict")

    threads = [threading.Thread(target=act, args=(u,)) for u in ("ann", "ben", "tom", "tia")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["conflict"] * 3 + ["ok"]
    assert store.get(v.id).version == 2 and len(store.reviews_of(v.id)) == 1


def test_failure_mid_transaction_writes_nothing(store: ReviewStore) -> None:
    v, _ = store.record_verdict(verdict())
    before = len(store.audit_log())

    def fail_on_audit(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO REVIEW_AUDIT"):
            raise sa.exc.OperationalError(statement, {}, Exception("connection lost"))

    sa.event.listen(store.engine, "before_cursor_execute", fail_on_audit)
    try:
        with pytest.raises(StoreUnavailable):
            store.review_tier_one(v.id, "ann", 1, "good")
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", fail_on_audit)
    assert store.get(v.id).version == 1 and store.reviews_of(v.id) == []
    assert len(store.audit_log()) == before


def test_database_down_is_store_unavailable(tmp_path: Any) -> None:
    with pytest.raises(StoreUnavailable):
        ReviewStore(f"sqlite:///{tmp_path}/no/such/folder/review.sqlite3")
    with pytest.raises(StoreUnavailable):  # nothing listens on port 1
        ReviewStore("postgresql+psycopg://postgres@127.0.0.1:1/x")
