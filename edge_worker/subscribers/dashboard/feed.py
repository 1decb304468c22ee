"""A read-only MQTT subscription for the dashboard and ``edge-worker tail``.

:class:`MqttFeed` wraps a paho 2.x client: it connects in the background, reconnects by itself
with back-off, subscribes again after every reconnect, and reports its connection state
truthfully: "connected" only once the broker has granted the subscription, "disconnected" at
once when the connection drops.

The session is persistent (MQTT 5 clean start off with a session expiry interval, 3.1.1
clean session off) under a stable client id, so the broker queues the QoS 1 verdicts published
while the subscriber is away (its own restart, a network cut, a broker restart with
persistence) and delivers them when it returns: a verdict drained from an outbox right after a
broker restart is not missed.  Retained messages (availability, latest) arrive again on each
subscribe.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_worker.publish.mqtt import secure
from edge_worker.publish.settings import MqttSettings

log = logging.getLogger(__name__)

#: ``(topic, payload)`` for each message; called on paho's network thread.
MessageHandler = Callable[[str, bytes], None]
#: ``(connected, detail)`` on each change of connection state; called on paho's network thread.
StateHandler = Callable[[bool, str], None]
#: How long the broker keeps a subscriber's session (and queues its messages) while it is away.
DEFAULT_SESSION_EXPIRY_S = 7 * 24 * 3600


class _QuietShutdown(logging.Filter):
    """paho 2.2 logs "Client is not connected" at ERROR once after every clean disconnect (its
    loop runs once more without a socket); our own callbacks report the connection state."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith("Client is not connected"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def default_client_id(purpose: str) -> str:
    """``edge-worker-<purpose>-<host name>``: stable across restarts, so the broker finds the
    session again; two subscribers of one purpose on one host need ``--client-id``."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0]) or "host"
    return f"edge-worker-{purpose}-{host}"[:64]


def station_filters(prefix: str, kinds: Sequence[str] = ("verdict", "error", "availability")) -> list[str]:
    """The topic filters ``<prefix>/+/+/<kind>`` for every site and station."""
    return [f"{prefix}/+/+/{kind}" for kind in kinds]


class MqttFeed:
    """Subscribes to ``filters`` (QoS 1) in a persistent session; every message to ``on_message``.

    ``client_id``: the MQTT client id, stable across restarts (it names the session on the
    broker); None derives :func:`default_client_id` from ``purpose``.  ``session_expiry_s``:
    how long the broker keeps the session while this client is away (MQTT 5; a 3.1.1 broker
    keeps it until its own limit).  :meth:`start` returns at once; :meth:`stop` disconnects
    and joins paho's thread.
    """

    def __init__(
        self,
        settings: MqttSettings,
        filters: Sequence[str],
        on_message: MessageHandler,
        on_state: StateHandler,
        purpose: str = "dashboard",
        client_id: str | None = None,
        session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S,
    ) -> None:
        if session_expiry_s < 1:
            raise ValueError(f"session_expiry_s must be >= 1, got {session_expiry_s}")
        self.settings = settings
        self.filters = list(filters)
        self._on_message_cb = on_message
        self._on_state_cb = on_state
        self._client_id = client_id or default_client_id(purpose)
        self._session_expiry_s = session_expiry_s
        self._client: paho.Client | None = None
        self._lock = threading.Lock()
        self._connected = False
        self._stopping = False
        self._pending_mid: int | None = None

    @property
    def client_id(self) -> str:
        """The MQTT client id (the name of the persistent session)."""
        return self._client_id

    @property
    def connected(self) -> bool:
        """True between the broker granting the subscription and the next disconnect."""
        with self._lock:
            return self._connected

    def start(self) -> None:
        """Start connecting in the background; raises ConfigError if TLS files cannot be loaded."""
        if self._client is not None:
            raise RuntimeError("MqttFeed.start() called twice")
        s = self.settings
        if s.protocol == "5":
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=paho.MQTTv5)
        else:
            client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=paho.MQTTv311, clean_session=False
            )
        paho_log = logging.getLogger(f"{__name__}.paho")
        if not paho_log.filters:
            paho_log.addFilter(_QuietShutdown())
        client.enable_logger(paho_log)
        secure(client, s)
        # A wall screen should come back within seconds of the broker, not after a minute.
        client.reconnect_delay_set(s.reconnect_min_delay, min(s.reconnect_max_delay, 10))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        log.info("MQTT: subscribing to %s on %s as %r", ", ".join(self.filters), s.url, self._client_id)
        if s.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._session_expiry_s
            # False on every connect, the first included: paho's default starts clean once.
            client.connect_async(s.host, s.port, keepalive=s.keepalive, clean_start=False, properties=props)
        else:
            client.connect_async(s.host, s.port, keepalive=s.keepalive)
        client.loop_start()

    def stop(self) -> None:
        """Disconnect and join paho's network thread.  Idempotent."""
        client, self._client = self._client, None
        if client is None:
            return
        with self._lock:
            self._stopping = True
        client.disconnect()
        client.loop_stop()
        self._set_state(False, "stopped")

    def publish(self, topic: str, payload: bytes, timeout: float = 5.0) -> bool:
        """Publish ``payload`` (QoS 1, not retained) on this feed's connection; True once the
        broker acknowledged it within ``timeout`` s, False when not connected or not acknowledged
        (the caller keeps the message and tries again: paho keeps it only in memory)."""
        client = self._client
        if client is None or not self.connected:
            return False
        info = client.publish(topic, payload, qos=1, retain=False)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return False
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):  # the connection went away under us
            return False
        return info.is_published()

    # -- paho callbacks (network thread) -----------------------------------------------------

    def _set_state(self, connected: bool, detail: str) -> None:
        with self._lock:
            changed = self._connected is not connected
            self._connected = connected
        if changed or not connected:
            self._on_state_cb(connected, detail)

    def _on_connect(self, client: paho.Client, userdata: object, flags: Any, reason: ReasonCode, props: Any) -> None:
        if reason.is_failure:
            log.error("MQTT: broker %s refused the connection: %s", self.settings.url, reason)
            self._set_state(False, f"broker refused the connection: {reason}")
            return
        result, mid = client.subscribe([(f, 1) for f in self.filters])
        with self._lock:
            self._pending_mid = mid
        log.debug("MQTT: connected to %s; subscribe sent (rc %s)", self.settings.url, result)

    def _on_subscribe(self, client: paho.Client, userdata: object, mid: int, codes: list[ReasonCode], props: Any) -> None:
        with self._lock:
            expected = mid == self._pending_mid
        if not expected:
            return
        refused = [str(c) for c in codes if c.is_failure]
        if refused:
            log.error("MQTT: broker refused the subscription: %s", ", ".join(refused))
            self._set_state(False, f"subscription refused: {', '.join(refused)}")
            return
        log.info("MQTT: connected to %s and subscribed", self.settings.url)
        self._set_state(True, "connected")

    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        log.warning("MQTT: cannot reach broker %s; retrying", self.settings.url)
        self._set_state(False, "cannot reach the broker; retrying")

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: Any, reason: ReasonCode, props: Any) -> None:
        with self._lock:
            stopping = self._stopping
        if stopping:
            return
        log.warning("MQTT: lost connection to %s (%s); reconnecting", self.settings.url, reason)
        self._set_state(False, f"lost the broker ({reason}); reconnecting")

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        try:
            self._on_message_cb(msg.topic, bytes(msg.payload))
        except Exception:  # paho would drop the connection over it; one bad message must not
            log.exception("MQTT: handling a message on %s failed", msg.topic)
