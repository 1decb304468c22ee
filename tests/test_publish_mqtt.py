"""Publisher against a real mosquitto: delivery, availability, idempotence, a full outbox."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Mosquitto, Subscriber, find_mosquitto

from edge_worker.errors import EdgeWorkerError
from edge_worker.publish.mqtt import MqttSettings, PayloadError, Publisher, Topics
from edge_worker.publish.outbox import Outbox, OutboxFull

TOPICS = Topics("site1", "room3")
MakePublisher = Callable[..., Publisher]


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite")
    yield box
    box.close()


@pytest.fixture
def make_publisher(outbox: Outbox) -> Iterator[MakePublisher]:
    """Factory for started publishers on the test outbox; all are stopped at teardown."""
    made: list[Publisher] = []

    def make(url: str, box: Outbox | None = None, **overrides: object) -> Publisher:
        settings = MqttSettings.from_url(url, **overrides)
        pub = Publisher(settings, TOPICS, box or outbox)
        made.append(pub)
        pub.start()
        return pub

    yield make
    for pub in made:
        pub.stop()


@pytest.fixture
def custom_mosquitto(tmp_path: Path) -> Iterator[Callable[[str], Mosquitto]]:
    """Factory for brokers with extra config lines (ACLs, no anonymous access)."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto binary not found in PATH or /usr/sbin (apt install mosquitto)")
    made: list[Mosquitto] = []

    def make(extra_config: str) -> Mosquitto:
        workdir = tmp_path / f"broker{len(made)}"
        workdir.mkdir()
        broker = Mosquitto(binary, workdir, extra_config=extra_config)
        made.append(broker)
        broker.start()
        return broker

    yield make
    for broker in made:
        broker.stop()


def wait_connected(pub: Publisher, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pub.connected:
        assert time.monotonic() < deadline, "publisher did not connect"
        time.sleep(0.01)


def test_verdict_delivered_with_topic_qos_payload(
    mosquitto: Mosquitto, subscriber: Callable[..., Subscriber], make_publisher: MakePublisher
) -> None:
    sub = subscriber(mosquitto, "xray/#")
    pub = make_publisher(mosquitto.url)  # MQTT 3.1.1, the default
    payload = {"id": "1.2.3.4", "type": "new", "ok": True, "score": 0.93, "note": "côté"}
    assert pub.publish("verdict", payload, key="1.2.3.4") is True
    (msg,) = sub.wait_for("xray/site1/room3/verdict", 1)
    assert json.loads(msg.payload) == payload
    assert msg.qos == 1
    assert msg.retain is False
    assert pub.wait_drained(5.0)
    assert pub.outbox_depth == 0


def test_error_kind_goes_to_error_topic(
    mosquitto: Mosquitto, subscriber: Callable[..., Subscriber], make_publisher: MakePublisher
) -> None:
    sub = subscriber(mosquitto, TOPICS.error)
    pub = make_publisher(mosquitto.url, protocol="5")
    pub.publish("error", {"id": "9.9", "reason": "not_dicom"}, key="9.9")
    (msg,) = sub.wait_for(TOPICS.error, 1)
    assert json.loads(msg.payload)["reason"] == "not_dicom"
    assert pub.wait_drained(5.0)


def test_bad_kind_and_payload_are_caller_errors(outbox: Outbox) -> None:
    pub = Publisher(MqttSettings("127.0.0.1"), TOPICS, outbox)  # never started: no network
    with pytest.raises(PayloadError, match="kind"):
        pub.publish("status", {}, key="k")
    with pytest.raises(PayloadError, match="strict JSON"):
        pub.publish("verdict", {"score": float("nan")}, key="k")
    with pytest.raises(EdgeWorkerError):
        pub.publish("verdict", {"when": object()}, key="k")
    assert outbox.depth() == 0


def test_availability_online_retained_then_offline_after_stop(
    mosquitto: Mosquitto, subscriber: Callable[..., Subscriber], make_publisher: MakePublisher
) -> None:
    pub = make_publisher(mosquitto.url)
    wait_connected(pub)
    # A subscriber arriving later sees the retained state.
    late = subscriber(mosquitto, TOPICS.availability)
    (msg,) = late.wait_for(TOPICS.availability, 1)
    assert (msg.payload, msg.retain, msg.qos) == (b"online", True, 1)
    pub.stop()
    assert not pub.connected
    msgs = late.wait_for(TOPICS.availability, 2)
    assert msgs[-1].payload == b"offline"
    after = subscriber(mosquitto, TOPICS.availability)
    (msg,) = after.wait_for(TOPICS.availability, 1)
    assert (msg.payload, msg.retain) == (b"offline", True)


def test_status_is_retained_and_republished(
    mosquitto: Mosquitto, subscriber: Callable[..., Subscriber], make_publisher: MakePublisher
) -> None:
    pub = make_publisher(mosquitto.url)
    pub.set_status({"state": "ready"})  # before the connection exists: sent on connect
    wait_connected(pub)
    first = subscriber(mosquitto, TOPICS.status)
    # Under load this subscriber may be in place before the status is published, and then gets
    # it live (retain flag 0); once it has the message the broker holds it, so a later
    # subscriber must get it as a retained message.
    first.wait_for(TOPICS.status, 1)
    late = subscriber(mosquitto, TOPICS.status)
    (msg,) = late.wait_for(TOPICS.status, 1)
    assert (json.loads(msg.payload), msg.retain) == ({"state": "ready"}, True)


def test_status_function_is_rebuilt_on_every_connect(
    mosquitto: Mosquitto, subscriber: Callable[..., Subscriber], outbox: Outbox
) -> None:
    pub = Publisher(MqttSettings.from_url(mosquitto.url), TOPICS, outbox)
    pub.set_status(lambda: {"broker_connected": pub.connected})  # not connected yet: not sent
    sub = subscriber(mosquitto, TOPICS.status)
    pub.start()
    try:
        (msg,) = sub.wait_for(TOPICS.status, 1)
        assert json.loads(msg.payload) == {"broker_connected": True}
        with pytest.raises(PayloadError):
            pub.set_status({"load": float("inf")})
    finally:
        pub.stop()


def test_connected_false_when_broker_unreachable(outbox: Outbox) -> None:
    from conftest import free_port

    pub = Publisher(MqttSettings("127.0.0.1", free_port()), TOPICS, outbox)
    pub.start()
    try:
        pub.publish("verdict", {"id": "a"}, key="a")
        assert not pub.wait_drained(0.3)
        assert not pub.connected
        assert pub.outbox_depth == 1
    finally:
        pub.stop(timeout=2.0)
    assert outbox.depth() == 1


def test_same_key_is_stored_and_sent_once(
    mosquitto: Mosquitto, subscriber: Callable[..., Subscriber], outbox: Outbox,
    make_publisher: MakePublisher,
) -> None:
    sub = subscriber(mosquitto, TOPICS.verdict)
    pub = Publisher(MqttSettings.from_url(mosquitto.url), TOPICS, outbox)
    # Queue before starting so both calls hit the outbox while the first is still pending.
    assert pub.publish("verdict", {"id": "k1", "v": 1}, key="k1") is True
    assert pub.publish("verdict", {"id": "k1", "v": 2}, key="k1") is False
    assert outbox.depth() == 1
    pub.start()
    try:
        assert pub.wait_drained(5.0)
        pub.publish("verdict", {"id": "k2"}, key="k2")
        msgs = sub.wait_for(TOPICS.verdict, 2)
    finally:
        pub.stop()
    assert [json.loads(m.payload) for m in msgs] == [{"id": "k1", "v": 1}, {"id": "k2"}]


def test_full_outbox_refuses_new_messages_and_keeps_old(
    mosquitto: Mosquitto, subscriber: Callable[..., Subscriber], tmp_path: Path
) -> None:
    box = Outbox(tmp_path / "small.sqlite", max_rows=3)
    try:
        pub = Publisher(MqttSettings.from_url(mosquitto.url), TOPICS, box)
        for i in range(3):
            pub.publish("verdict", {"id": str(i)}, key=str(i))
        with pytest.raises(OutboxFull) as info:
            pub.publish("verdict", {"id": "3"}, key="3")
        assert (info.value.depth, info.value.max_rows) == (3, 3)
        # A retry of a pending key is not a new row, so it is accepted even when full.
        assert pub.publish("verdict", {"id": "0"}, key="0") is False
        sub = subscriber(mosquitto, TOPICS.verdict)
        pub.start()
        try:
            assert pub.wait_drained(5.0)
            got = [json.loads(m.payload)["id"] for m in sub.wait_for(TOPICS.verdict, 3)]
            assert got == ["0", "1", "2"]
            # Once drained there is room again.
            assert pub.publish("verdict", {"id": "3"}, key="3") is True
            assert pub.wait_drained(5.0)
        finally:
            pub.stop()
    finally:
        box.close()


@pytest.mark.broker
def test_refused_connection_is_not_connected(
    custom_mosquitto: Callable[[str], Mosquitto], make_publisher: MakePublisher
) -> None:
    broker = custom_mosquitto("allow_anonymous false\n")
    pub = make_publisher(broker.url)
    deadline = time.monotonic() + 5.0
    while pub.last_error is None:
        assert time.monotonic() < deadline, "no refusal reported"
        time.sleep(0.01)
    assert "refused" in pub.last_error
    assert not pub.connected


@pytest.mark.broker
def test_message_refused_by_acl_stays_in_outbox(
    custom_mosquitto: Callable[[str], Mosquitto], outbox: Outbox, make_publisher: MakePublisher,
    tmp_path: Path,
) -> None:
    acl = tmp_path / "acl"
    acl.write_text(f"topic readwrite {TOPICS.availability}\ntopic read xray/#\n")
    broker = custom_mosquitto(f"acl_file {acl}\n")
    pub = make_publisher(broker.url, protocol="5")  # the PUBACK carries "not authorised"
    wait_connected(pub)
    pub.publish("verdict", {"id": "denied"}, key="denied")
    deadline = time.monotonic() + 5.0
    while pub.last_error is None:
        assert time.monotonic() < deadline, "no refusal reported"
        time.sleep(0.01)
    assert "refused" in pub.last_error
    assert pub.connected
    assert [e.key for e in outbox.pending()] == ["denied"]  # never dropped
