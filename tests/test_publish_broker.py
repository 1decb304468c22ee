"""The embedded amqtt broker: starts on a free port, carries paho traffic, stops cleanly."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Subscriber, wait_port

from edge_worker.publish.broker import EmbeddedBroker
from edge_worker.publish.mqtt import MqttSettings, Publisher, Topics
from edge_worker.publish.outbox import Outbox

pytest.importorskip("amqtt")


def test_paho_publish_and_receive_through_embedded_broker(
    subscriber: Callable[..., Subscriber],
) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    with EmbeddedBroker() as broker:
        assert broker.port is not None
        sub = subscriber((broker.host, broker.port), "demo/#")
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="demo-pub")
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            info = client.publish("demo/hello", b"hi", qos=1)
            info.wait_for_publish(5.0)
            assert info.is_published()
            (msg,) = sub.wait_for("demo/hello", 1)
            assert (msg.payload, msg.qos) == (b"hi", 1)
        finally:
            client.disconnect()
            client.loop_stop()
        sub.close()
    assert not [t for t in threading.enumerate() if t.name == "edge-worker/amqtt-broker"]


def test_publisher_delivers_through_embedded_broker(
    subscriber: Callable[..., Subscriber], tmp_path: Path
) -> None:
    topics = Topics("demo", "room1")
    with EmbeddedBroker() as broker, Outbox(tmp_path / "outbox.sqlite") as box:
        assert broker.port is not None
        sub = subscriber((broker.host, broker.port), topics.verdict)
        pub = Publisher(MqttSettings("127.0.0.1", broker.port), topics, box)
        pub.start()
        try:
            pub.publish("verdict", {"id": "x"}, key="x")
            (msg,) = sub.wait_for(topics.verdict, 1)
            assert json.loads(msg.payload) == {"id": "x"}
            assert pub.wait_drained(5.0)
        finally:
            pub.stop()
        sub.close()


def test_stop_releases_the_port_and_is_idempotent() -> None:
    broker = EmbeddedBroker()
    port = broker.start()
    assert wait_port("127.0.0.1", port, 2.0)
    with pytest.raises(RuntimeError):
        broker.start()
    broker.stop()
    broker.stop()
    assert not wait_port("127.0.0.1", port, 0.2)
