"""Rejection commands in the review store (SQLite and a real PostgreSQL, tests/review_db.py):
written only with a person's confirmation, in the same transaction, withdrawn on a reversal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")

import sqlalchemy as sa

from edge_worker.subscribers.review import db, rejections
from edge_worker.subscribers.review.errors import RuleViolation, StoreUnavailable
from edge_worker.subscribers.review.flags import CID_7011
from edge_worker.subscribers.review.rejections import (
    Rejections,
    RejectPolicy,
    choose_reason,
    command_id,
)
from edge_worker.subscribers.review.store import ReviewStore, Status
from tests.review_db import postgres_server, review_url  # noqa: F401
from tests.test_review_store import add_user

POSITIONING = ("DCM", "111209")
UNDER = ("DCM", "111211")
ARTIFACT = ("DCM", "111207")


def verdict(vid: str, decision: str = "retake") -> dict[str, Any]:
    return {
        "id": vid, "site": "ward-3", "station": "dr-1", "decision": decision,
        "sop_instance_uid": "1.2.3.4.1", "study_instance_uid": "1.2.3.4", "series_instance_uid": "1.2.3.4.0",
        "pack": {"name": "lumbar-demo", "version": "1.0", "digest": "a" * 64},
        "view": {"label": "AP"},
        "reasons": [{"code": "rule_failed", "severity": "retake", "text": "t", "rule": "ap_spinous_centred"}],
    }  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def open_store(url: str, clock: Clock, after: str = "tier_two") -> ReviewStore:
    return ReviewStore(url, clock=clock, rejections=RejectPolicy(after=after, retry_s=30, retry_max_s=240))  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(review_url: str, clock: Clock) -> Iterator[ReviewStore]:  # noqa: F811
    s = open_store(review_url, clock)
    for name, role in (("ann", "tier1"), ("tom", "tier2")):
        add_user(s, name, role)
    yield s
    s.close()


def rows(store: ReviewStore) -> list[Any]:
    with store.engine.connect() as c:
        return list(c.execute(sa.select(db.rejections).order_by(db.rejections.c.review_version)).all())


def test_reason_rule_most_specific_then_standard_order() -> None:
    assert choose_reason([ARTIFACT, UNDER, POSITIONING]).value == "111209"  # type: ignore[union-attr]
    assert choose_reason([ARTIFACT, ("DCM", "111221")]).value == "111207"  # type: ignore[union-attr]
    assert choose_reason([("PACK", "rule_failed")]) is None
    assert [c.value for c in CID_7011].index("111209") < [c.value for c in CID_7011].index("111211")


def test_final_bad_writes_exactly_one_reject_in_the_same_transaction(store: ReviewStore) -> None:
    v, _ = store.record_verdict(verdict("00000000-0000-0000-0000-0000000000a1"))
    v = store.review_tier_one(v.id, "ann", 1, "questionable", [UNDER])
    assert rows(store) == []  # tier one's questionable confirms nothing
    v = store.decide_tier_two(v.id, "tom", 2, "bad", [UNDER, POSITIONING, ("PACK", "ap_spinous_centred")])
    [row] = rows(store)
    assert (row.action, row.reason_scheme, row.reason_code, row.confirmed_by, row.tier, row.state) == (
        "reject", "DCM", "111209", "tom", 2, "pending")  # fmt: skip
    assert row.id == command_id(v.id, "reject", 3) and row.review_version == v.version == 3
    [command] = Rejections(store, store.rejections).due()  # type: ignore[arg-type]
    doc = command.document()
    assert doc["reason"] == {"code": "111209", "scheme": "DCM", "meaning": "Positioning"}
    assert (doc["sop_instance_uid"], doc["study_instance_uid"], doc["series_instance_uid"]) == ("1.2.3.4.1", "1.2.3.4", "1.2.3.4.0")
    assert command.topic("xray") == "xray/ward-3/dr-1/reject"
    # reopen and final bad again: the reject stands, nothing new
    v = store.reopen(v.id, "tom", 3)
    store.decide_tier_two(v.id, "tom", 4, "bad", [POSITIONING])
    assert len(rows(store)) == 1


def test_failed_decision_writes_no_command(store: ReviewStore, monkeypatch: pytest.MonkeyPatch) -> None:
    v, _ = store.record_verdict(verdict("00000000-0000-0000-0000-0000000000a2"))
    v = store.review_tier_one(v.id, "ann", 1, "questionable")
    with pytest.raises(RuleViolation, match="CID 7011"):
        store.decide_tier_two(v.id, "tom", 2, "bad", [("PACK", "ap_spinous_centred")])
    # A command write that fails (the database refuses the row) takes the decision with it.
    real = rejections.after_review

    def failing(conn: sa.Connection, *args: Any, **kwargs: Any) -> Any:
        real(conn, *args, **kwargs)
        conn.execute(sa.text("SELECT * FROM no_such_table"))

    monkeypatch.setattr(rejections, "after_review", failing)
    with pytest.raises((sa.exc.DatabaseError, StoreUnavailable)):  # SQLite: OperationalError
        store.decide_tier_two(v.id, "tom", 2, "bad", [POSITIONING])
    assert rows(store) == [] and store.get(v.id).status == Status.QUESTIONABLE
    assert [r.outcome for r in store.reviews_of(v.id)] == ["questionable"]


def test_unconfirmed_verdicts_never_produce_one(review_url: str, clock: Clock) -> None:  # noqa: F811
    store = open_store(review_url, clock)
    add_user(store, "ann", "tier1")
    ids = [f"00000000-0000-0000-0000-0000000001{i:02d}" for i in range(4)]
    for vid in ids:
        store.record_verdict(verdict(vid))
    # tier one's override (good on a retake) and questionable confirm nothing
    store.review_tier_one(ids[0], "ann", 1, "good")
    store.review_tier_one(ids[1], "ann", 1, "questionable", [POSITIONING])
    with pytest.raises(RuleViolation, match="reject_after"):
        store.review_tier_one(ids[2], "ann", 1, "retake", [POSITIONING])
    for _ in range(3):  # time passes, the store is opened again (a restart), the sender asks
        clock.t += 30 * 24 * 3600
        store.close()
        store = open_store(review_url, clock)
        assert Rejections(store, store.rejections).due() == []  # type: ignore[arg-type]
    assert rows(store) == []
    store.close()


def test_tier_one_retake_with_reject_after_tier_one(review_url: str, clock: Clock) -> None:  # noqa: F811
    store = open_store(review_url, clock, after="tier_one")
    add_user(store, "ann", "tier1")
    ok, _ = store.record_verdict(verdict("00000000-0000-0000-0000-0000000002a1", decision="ok"))
    with pytest.raises(RuleViolation, match="only a network retake"):
        store.review_tier_one(ok.id, "ann", 1, "retake", [POSITIONING])
    v, _ = store.record_verdict(verdict("00000000-0000-0000-0000-0000000002a2"))
    with pytest.raises(RuleViolation, match="CID 7011"):
        store.review_tier_one(v.id, "ann", 1, "retake", [("PACK", "rule_failed")])
    v = store.review_tier_one(v.id, "ann", 1, "retake", [UNDER])
    assert v.status == Status.CONFIRMED_BAD
    [row] = rows(store)
    assert (row.action, row.reason_code, row.tier, row.confirmed_by) == ("reject", "111211", 1, "ann")
    with pytest.raises(RuleViolation, match="tier two has this image"):
        store.review_tier_one(v.id, "ann", 2, "good")
    # For retraining, tier one's confirmed retake is a bad label with --tier any, none with --tier 2.
    from edge_worker.subscribers.review.export import LABELLED, _deciding_review, _why_not

    record = store.get(v.id)
    assert LABELLED[record.status] == ("bad", 1)
    assert _why_not(record, "any") is None and _why_not(record, "2") is not None
    deciding = _deciding_review(store.reviews_of(v.id), record.status)
    assert deciding is not None and (deciding.tier, deciding.outcome) == (1, "retake")
    store.close()


def test_reversal_writes_a_withdraw_sent_only_after_the_reject_was_answered(store: ReviewStore) -> None:
    rej = Rejections(store, store.rejections)  # type: ignore[arg-type]
    v, _ = store.record_verdict(verdict("00000000-0000-0000-0000-0000000003a1"))
    v = store.review_tier_one(v.id, "ann", 1, "questionable")
    v = store.decide_tier_two(v.id, "tom", 2, "bad", [POSITIONING])
    v = store.reopen(v.id, "tom", 3, "looked again")
    v = store.decide_tier_two(v.id, "tom", 4, "good")
    reject, withdraw = rows(store)
    assert (withdraw.action, withdraw.reason_code, withdraw.id) == ("withdraw", None, command_id(v.id, "withdraw", 5))
    assert [c.action for c in rej.due()] == ["reject"]  # the withdraw waits for the reject's answer
    assert rej.record_result({"schema": "xray-qc/reject-result@1", "id": reject.id, "action": "reject",
                              "outcome": "queued", "document_sop_instance_uid": "2.25.1"}).recorded  # fmt: skip
    assert [c.action for c in rej.due()] == ["withdraw"]
    assert "withdraw" not in (c.get("reason") for c in [rej.due()[0].document()])
    assert "reason" not in rej.due()[0].document()


def test_withdraw_of_a_refused_reject_is_cancelled_and_override_writes_nothing(store: ReviewStore) -> None:
    rej = Rejections(store, store.rejections)  # type: ignore[arg-type]
    never, _ = store.record_verdict(verdict("00000000-0000-0000-0000-0000000004a0"))
    never = store.review_tier_one(never.id, "ann", 1, "good")  # disputed
    store.decide_tier_two(never.id, "tom", 2, "good")  # override of a verdict never rejected
    assert rows(store) == []
    v, _ = store.record_verdict(verdict("00000000-0000-0000-0000-0000000004a1"))
    v = store.review_tier_one(v.id, "ann", 1, "questionable")
    v = store.decide_tier_two(v.id, "tom", 2, "bad", [POSITIONING])
    reject_id = rows(store)[0].id
    assert rej.record_result({"schema": "xray-qc/reject-result@1", "id": reject_id, "action": "reject",
                              "outcome": "refused", "reason": "pacs_not_configured", "detail": "no PACS"}).recorded  # fmt: skip
    v = store.reopen(v.id, "tom", 3)
    store.decide_tier_two(v.id, "tom", 4, "good")
    assert [r.action for r in rows(store)] == ["reject"]  # a refused reject stands for nothing
    [command] = rej.of_verdict(v.id)
    assert (command.state, command.result_reason, command.result_detail) == ("refused", "pacs_not_configured", "no PACS")


def test_results_back_off_and_late_answers(store: ReviewStore, clock: Clock) -> None:
    rej = Rejections(store, store.rejections)  # type: ignore[arg-type]
    v, _ = store.record_verdict(verdict("00000000-0000-0000-0000-0000000005a1"))
    v = store.review_tier_one(v.id, "ann", 1, "questionable")
    store.decide_tier_two(v.id, "tom", 2, "bad", [POSITIONING])
    [command] = rej.due()
    waits = []
    for _ in range(5):
        rej.published(command.id)
        assert rej.due() == []
        [row] = rows(store)
        waits.append((row.next_attempt_at.replace(tzinfo=None) - row.last_sent_at.replace(tzinfo=None)).total_seconds())
        clock.t += waits[-1]
        assert [c.id for c in rej.due()] == [command.id]  # the same id each time
    assert waits == [30, 60, 120, 240, 240]
    result = {"schema": "xray-qc/reject-result@1", "id": command.id, "action": "reject"}
    assert rej.record_result({**result, "outcome": "sent", "document_sop_instance_uid": "2.25.9"}).recorded
    assert not rej.record_result({**result, "outcome": "queued"}).recorded  # crossed answers: sent stays
    assert not rej.record_result({**result, "action": "withdraw", "outcome": "sent"}).recorded
    assert not rej.record_result({**result, "id": "nope", "outcome": "sent"}).recorded
    [row] = rows(store)
    assert (row.state, row.document_uid, row.attempts) == ("sent", "2.25.9", 5)
    assert rej.due() == []
    assert [a["action"] for a in store.audit_log(v.id)][-1] == "reject_result"


def test_config_rejections_need_a_broker_user_and_a_known_tier(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_worker.errors import ConfigError
    from edge_worker.subscribers.dashboard.config import parse

    with pytest.raises(ConfigError, match=r":2: review.rejections needs mqtt_username"):
        parse("[review]\nrejections = true\n")
    with pytest.raises(ConfigError, match="reject_after"):
        parse('[review]\nreject_after = "tier_three"\n')
    (tmp_path / "pw").write_text("s3cret\n")
    config = parse(f'[review]\nrejections = true\nmqtt_username = "review"\nmqtt_password_file = "{tmp_path / "pw"}"\n')
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert (config.review.reject_after, config.mqtt_password()) == ("tier_two", "s3cret")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "review-mqtt-password").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert config.mqtt_password() == "from-systemd"
