"""The dashboard's rejection sender against a real mosquitto with users and an ACL, and the
review store on SQLite and a real PostgreSQL (tests/review_db.py).

The worker's side is played by this test: a paho client logged in as the station user
subscribes to ``xray/+/dr-1/reject`` and answers on ``.../reject/result`` with a
``xray-qc/reject-result@1`` document.  That is a real broker exchange (no mock); only the
worker's KOS and PACS are absent (the pacs-worker side tests those).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.publish as paho_publish
import pytest

pytest.importorskip("sqlalchemy")

from edge_worker.publish.settings import MqttSettings
from edge_worker.subscribers.dashboard.rejection_sender import RejectionSender
from edge_worker.subscribers.review.rejections import Rejections, RejectPolicy, command_id
from edge_worker.subscribers.review.store import ReviewStore
from tests.conftest import Mosquitto, Subscriber, find_mosquitto, free_port
from tests.review_db import postgres_server, review_url  # noqa: F401
from tests.test_review_rejections import POSITIONING, UNDER, verdict
from tests.test_review_store import add_user

ACL = """user dashboard
topic read xray/#
user review
topic write xray/+/+/reject
topic read xray/+/+/reject/result
user dr-1
topic read xray/+/dr-1/reject
topic write xray/+/dr-1/reject/result
topic write xray/+/dr-1/verdict
"""
TOPIC = "xray/ward-3/dr-1/reject"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """mosquitto with password users ``review`` and ``dr-1`` and the interface's ACL."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto binary not found")
    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate((("review", "rv-secret"), ("dr-1", "st-secret"), ("dashboard", "db-secret"))):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwd), user, password],
                       check=True, capture_output=True, timeout=30)  # fmt: skip
    (tmp_path / "acl").write_text(ACL)
    port = free_port()
    server = Mosquitto(binary, tmp_path, port=port, listener=False, extra_config=(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\nacl_file {tmp_path / 'acl'}\n"))  # fmt: skip
    server.start()
    yield server
    server.stop()


class Worker:
    """The station's side of the interface, on the real broker as user dr-1."""

    def __init__(self, broker: Mosquitto) -> None:
        self.sub = Subscriber(broker.host, broker.port, (TOPIC,),
                              configure=lambda c: c.username_pw_set("dr-1", "st-secret"))  # fmt: skip

    def commands(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.sub.messages(TOPIC)]

    def wait(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.sub.wait_for(TOPIC, n, timeout)]

    def answer(self, command: dict[str, Any], outcome: str, **extra: str) -> None:
        doc = {"schema": "xray-qc/reject-result@1", "id": command["id"], "verdict_id": command["verdict_id"],
               "action": command["action"], "outcome": outcome, **extra}  # fmt: skip
        info = self.sub._client.publish(TOPIC + "/result", json.dumps(doc), qos=1)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.sub.close()


def wait_until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"not true within {timeout} s: {check}")


def confirm_bad(store: ReviewStore, vid: str, flags: list[tuple[str, str]]) -> int:
    v, _ = store.record_verdict(verdict(vid))
    v = store.review_tier_one(v.id, "ann", v.version, "questionable")
    return store.decide_tier_two(v.id, "tom", v.version, "bad", flags).version


def test_confirmed_reject_answered_withdrawn_and_republished(broker: Mosquitto, review_url: str) -> None:  # noqa: F811
    policy = RejectPolicy(retry_s=1.0, retry_max_s=1.0)
    store = ReviewStore(review_url, rejections=policy)
    add_user(store, "ann", "tier1")
    add_user(store, "tom", "tier2")
    rejections = Rejections(store, policy)
    settings = MqttSettings(host=broker.host, port=broker.port, username="review", password="rv-secret")
    sender = RejectionSender(rejections, settings, "xray", tick_s=0.1, client_id="test-review-sender")
    worker = Worker(broker)
    try:
        # Never confirmed: a retake verdict nobody reviewed, one tier one overrode as good.
        store.record_verdict(verdict("00000000-0000-0000-0000-00000000f001"))
        o, _ = store.record_verdict(verdict("00000000-0000-0000-0000-00000000f002"))
        store.review_tier_one(o.id, "ann", 1, "good")
        vid = "00000000-0000-0000-0000-00000000f003"
        version = confirm_bad(store, vid, [UNDER, POSITIONING])
        sender.start()
        [cmd] = worker.wait(1)
        assert cmd["id"] == command_id(vid, "reject", version) and cmd["action"] == "reject"
        assert cmd["reason"] == {"code": "111209", "scheme": "DCM", "meaning": "Positioning"}
        assert (cmd["sop_instance_uid"], cmd["study_instance_uid"], cmd["series_instance_uid"]) == (
            "1.2.3.4.1", "1.2.3.4", "1.2.3.4.0")  # fmt: skip
        assert (cmd["confirmed_by"], cmd["tier"], cmd["review_version"], cmd["schema"]) == ("tom", 2, version, "xray-qc/reject@1")
        worker.answer(cmd, "queued", document_sop_instance_uid="2.25.77")
        wait_until(lambda: rejections.of_verdict(vid)[0].state == "queued")
        assert rejections.of_verdict(vid)[0].document_uid == "2.25.77"
        time.sleep(2.5)  # past the back-off: an answered command is not published again
        assert len(worker.commands()) == 1

        # A later "sent" updates the row; a reversal then writes and publishes a withdraw.
        worker.answer(cmd, "sent", document_sop_instance_uid="2.25.77")
        wait_until(lambda: rejections.of_verdict(vid)[0].state == "sent")
        v = store.reopen(vid, "tom", version)
        v = store.decide_tier_two(vid, "tom", v.version, "good")
        sender.wake()
        withdraw = worker.wait(2)[1]
        assert (withdraw["action"], withdraw["id"], "reason" in withdraw) == ("withdraw", command_id(vid, "withdraw", v.version), False)
        worker.answer(withdraw, "queued")
        wait_until(lambda: rejections.of_verdict(vid)[1].state == "queued")

        # Unanswered: published again with back-off, with the same id, until answered.
        lost = "00000000-0000-0000-0000-00000000f004"
        confirm_bad(store, lost, [("DCM", "111210")])
        sender.wake()
        again = [c for c in worker.wait(4, timeout=15) if c["verdict_id"] == lost]
        assert len(again) >= 2 and len({c["id"] for c in again}) == 1
        assert again[0] == again[1]  # identical content on every re-publish
        worker.answer(again[0], "refused", reason="pacs_not_configured", detail="no PACS at this station")
        wait_until(lambda: rejections.of_verdict(lost)[0].state == "refused")
        c = rejections.of_verdict(lost)[0]
        assert (c.result_reason, c.result_detail) == ("pacs_not_configured", "no PACS at this station")
        # the sender counts a publish after its PUBACK: the answer may be recorded first
        wait_until(lambda: rejections.of_verdict(lost)[0].attempts >= 2)

        # Nothing was ever published for the two unconfirmed verdicts.
        assert {c["verdict_id"] for c in worker.commands()} == {vid, lost}
        assert sender.answers == 4
    finally:
        sender.stop()
        worker.close()
        store.close()


def test_wrong_broker_password_sends_nothing_and_keeps_the_row(broker: Mosquitto, tmp_path: Path) -> None:
    policy = RejectPolicy(retry_s=1.0, retry_max_s=1.0)
    store = ReviewStore(f"sqlite:///{tmp_path / 'r.sqlite3'}", rejections=policy)
    add_user(store, "ann", "tier1")
    add_user(store, "tom", "tier2")
    rejections = Rejections(store, policy)
    settings = MqttSettings(host=broker.host, port=broker.port, username="review", password="wrong")
    sender = RejectionSender(rejections, settings, "xray", tick_s=0.1, client_id="test-review-sender-bad")
    worker = Worker(broker)
    try:
        vid = "00000000-0000-0000-0000-00000000f101"
        confirm_bad(store, vid, [POSITIONING])
        sender.start()
        time.sleep(1.5)
        assert not sender.connected and worker.commands() == []
        [c] = rejections.of_verdict(vid)
        assert (c.state, c.attempts) == ("pending", 0)
    finally:
        sender.stop()
        worker.close()
        store.close()


def test_dashboard_page_confirmation_reaches_the_station(broker: Mosquitto, tmp_path: Path) -> None:
    """The whole wiring: [review] rejections in the dashboard's file, a tier-two final bad
    clicked through the HTTP pages, the command on the station's topic, the answer on the page."""
    from edge_worker.subscribers.dashboard.review_compose import open_review
    from edge_worker.subscribers.dashboard.server import Dashboard
    from tests.review_http import FAST, PASSWORD, Client, config_for

    (tmp_path / "review-pw").write_text("rv-secret\n")
    config = config_for(tmp_path, rejections=True, mqtt_username="review", mqtt_password_file=str(tmp_path / "review-pw"))
    board = MqttSettings(host=broker.host, port=broker.port, username="dashboard", password="db-secret")
    parts = open_review(config, hasher=FAST, retry_s=0.2, settings=board, prefix="xray")
    for name, role in (("ann", "tier1"), ("tom", "tier2")):
        parts.accounts.create_user("setup", name, role, PASSWORD, operator=True)
    dashboard = Dashboard(board, ("127.0.0.1", 0), review=parts)
    worker = Worker(broker)
    try:
        dashboard.start()
        wait_until(lambda: parts.sender is not None and parts.sender.connected)
        wait_until(lambda: dashboard.snapshot()["broker"]["connected"])  # subscribed: the verdict is not missed
        payload = verdict("00000000-0000-0000-0000-00000000f201")
        paho_publish.single("xray/ward-3/dr-1/verdict", json.dumps(payload), qos=1, hostname=broker.host,
                            port=broker.port, auth={"username": "dr-1", "password": "st-secret"})  # fmt: skip
        wait_until(lambda: any(r.id == payload["id"] for r in parts.store.tier_one_queue()))
        vid = payload["id"]
        parts.store.review_tier_one(vid, "ann", 1, "questionable")
        host, port = dashboard.address
        c = Client(host, port)
        csrf = c.sign_in("tom")
        status, _, _ = c.post(f"/review/verdict/{vid}/tier2", {"csrf": csrf, "version": 2, "outcome": "bad",
                                                              "flag": "DCM:111210", "comment": "blurred"})  # fmt: skip
        assert status == 303
        [cmd] = worker.wait(1)
        assert (cmd["verdict_id"], cmd["reason"]["code"], cmd["confirmed_by"]) == (vid, "111210", "tom")
        worker.answer(cmd, "sent", document_sop_instance_uid="2.25.5")
        wait_until(lambda: parts.rejections is not None and parts.rejections.of_verdict(vid)[0].state == "sent")
        text = c.get(f"/review/verdict/{vid}")[2]
        assert 'data-state="sent"' in text and "in PACS" in text and "Motion blur" in text
        assert "review_rejections_answers_total 1" in c.get("/metrics")[2]
    finally:
        dashboard.stop()
        worker.close()
        parts.close()


def test_database_outage_delays_a_command_and_loses_none(broker: Mosquitto, postgres_server: Any) -> None:  # noqa: F811
    """PostgreSQL stopped under a running sender: nothing is published, nothing is lost; back up,
    the command confirmed before the outage goes out and its answer is recorded."""
    url = postgres_server.create_database()
    policy = RejectPolicy(retry_s=1.0, retry_max_s=1.0)
    store = ReviewStore(url, rejections=policy)
    add_user(store, "ann", "tier1")
    add_user(store, "tom", "tier2")
    rejections = Rejections(store, policy)
    settings = MqttSettings(host=broker.host, port=broker.port, username="review", password="rv-secret")
    sender = RejectionSender(rejections, settings, "xray", tick_s=0.1, client_id="test-review-sender-pg")
    worker = Worker(broker)
    vid = "00000000-0000-0000-0000-00000000f301"
    try:
        confirm_bad(store, vid, [POSITIONING])
        postgres_server.halt()
        try:
            sender.start()
            wait_until(lambda: sender.connected)
            time.sleep(1.0)
            assert worker.commands() == []  # the rows cannot be read: nothing goes out, nothing is lost
        finally:
            postgres_server.resume()
        [cmd] = worker.wait(1, timeout=15)
        assert cmd["verdict_id"] == vid and cmd["reason"]["code"] == "111209"
        worker.answer(cmd, "queued")
        wait_until(lambda: rejections.of_verdict(vid)[0].state == "queued")
    finally:
        sender.stop()
        worker.close()
        store.close()


def test_tier_one_confirm_retake_button_with_reject_after_tier_one(broker: Mosquitto, tmp_path: Path) -> None:
    """reject_after = "tier_one": the tier-one form offers "Confirm retake" on a network retake
    only; clicking it with a CID 7011 flag publishes the reject, confirmed by tier one."""
    from edge_worker.subscribers.dashboard.review_compose import open_review
    from edge_worker.subscribers.dashboard.server import Dashboard
    from tests.review_http import FAST, PASSWORD, Client, config_for

    (tmp_path / "review-pw").write_text("rv-secret\n")
    config = config_for(tmp_path, rejections=True, reject_after="tier_one", mqtt_username="review",
                        mqtt_password_file=str(tmp_path / "review-pw"))  # fmt: skip
    board = MqttSettings(host=broker.host, port=broker.port, username="dashboard", password="db-secret")
    parts = open_review(config, hasher=FAST, retry_s=0.2, settings=board, prefix="xray")
    parts.accounts.create_user("setup", "ann", "tier1", PASSWORD, operator=True)
    dashboard = Dashboard(board, ("127.0.0.1", 0), review=parts)
    worker = Worker(broker)
    try:
        dashboard.start()
        retake, _ = parts.store.record_verdict(verdict("00000000-0000-0000-0000-00000000f401"))
        ok, _ = parts.store.record_verdict(verdict("00000000-0000-0000-0000-00000000f402", decision="ok"))
        host, port = dashboard.address
        c = Client(host, port)
        csrf = c.sign_in("ann")
        assert 'id="tier1-retake"' not in c.get(f"/review/verdict/{ok.id}")[2]
        page = c.get(f"/review/verdict/{retake.id}")[2]
        assert 'id="tier1-retake"' in page and 'id="rejection-none"' in page
        status, _, text = c.post(f"/review/verdict/{retake.id}/tier1", {"csrf": csrf, "version": 1, "outcome": "retake",
                                                                       "flag": "PACK:rule_failed"})  # fmt: skip
        assert status == 422 and "CID 7011" in text
        status, _, _ = c.post(f"/review/verdict/{retake.id}/tier1", {"csrf": csrf, "version": 1, "outcome": "retake",
                                                                    "flag": ["DCM:111212", "DCM:111207"]})  # fmt: skip
        assert status == 303
        [cmd] = worker.wait(1)
        assert (cmd["tier"], cmd["confirmed_by"], cmd["reason"]["meaning"]) == (1, "ann", "Over exposed")
        page = c.get(f"/review/verdict/{retake.id}")[2]
        assert "tier one: retake confirmed" in page and 'data-state="pending"' in page
    finally:
        dashboard.stop()
        worker.close()
        parts.close()
