"""The shipped broker ACL (systemd/mosquitto/acl) for confirmed rejections, on a real mosquitto.

The review server (user ``review``) may publish a station's ``reject`` and read its
``reject/result``; the station reads only its own ``reject`` and writes its own result; the
read-only ``dashboard`` user cannot publish a rejection.  Broker and certificates as in
tests/test_security.py (the example mosquitto.conf, TLS, passwords).
"""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.test_security import PASSWORDS, SITE, example_broker
from tests.test_security import pki as pki_fixture  # noqa: F401  (a throw-away CA and certificates)

USERS = {**PASSWORDS, "review": "pw-review-Secret"}


class Client:
    """An MQTT 5 client over TLS as ``user``, recording messages and PUBACK reason codes."""

    def __init__(self, port: int, ca: str, user: str, topics: tuple[str, ...] = ()) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.acks: dict[int, Any] = {}
        self._cond = threading.Condition()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"acl-{user}", protocol=paho.MQTTv5)
        self.c.tls_set(ca_certs=ca)
        self.c.username_pw_set(user, USERS[user])
        ready = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics]) if topics else ready.set()
        self.c.on_subscribe = lambda c, u, mid, rcs, p: ready.set()
        self.c.on_message = self._message
        self.c.on_publish = self._ack
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        assert ready.wait(10), f"{user} not connected/subscribed"

    def _message(self, c: Any, u: Any, m: Any) -> None:
        with self._cond:
            self.messages.append((m.topic, bytes(m.payload)))
            self._cond.notify_all()

    def _ack(self, c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        with self._cond:
            self.acks[mid] = reason
            self._cond.notify_all()

    def publish(self, topic: str) -> bool:
        """Publish QoS 1; True when the broker acknowledged it without refusing."""
        info = self.c.publish(topic, b'{"acl": true}', qos=1)
        with self._cond:
            assert self._cond.wait_for(lambda: info.mid in self.acks, 10)
            return not self.acks[info.mid].is_failure

    def wait_message(self, topic: str, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(t == topic for t, _ in self.messages), timeout)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_reject_topics_in_the_shipped_acl(tmp_path: Any, request: pytest.FixtureRequest) -> None:
    pki = request.getfixturevalue("pki_fixture")
    broker = example_broker(tmp_path / "broker", pki, client_certs=False, users=USERS)
    base = f"xray/{SITE}/xr-01"
    clients: list[Client] = []
    try:
        station = Client(broker.port, pki["ca.crt"], "xr-01", (f"{base}/reject",))
        other = Client(broker.port, pki["ca.crt"], "xr-02", (f"{base}/reject",))
        review = Client(broker.port, pki["ca.crt"], "review", (f"{base}/reject/result",))
        dash = Client(broker.port, pki["ca.crt"], "dashboard")
        clients += [station, other, review, dash]
        assert review.publish(f"{base}/reject")
        assert station.wait_message(f"{base}/reject")
        assert station.publish(f"{base}/reject/result")
        assert review.wait_message(f"{base}/reject/result")
        assert not dash.publish(f"{base}/reject")  # read-only stays read-only
        assert not station.publish(f"{base}/reject")  # a station never rejects on its own
        assert not other.publish(f"{base}/reject/result")  # nor answers for another station
        assert not other.wait_message(f"{base}/reject", timeout=1.0)  # nor reads its commands
        assert not review.publish(f"{base}/verdict")  # the review server writes no verdicts
    finally:
        for c in clients:
            c.close()
        broker.stop()
