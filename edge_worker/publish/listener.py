"""The station's inbound side: a second paho client that receives its command topics.

A client of its own (client id ``<station client id>-cmd``), so the publisher's clean,
outbox-driven session stays as it is, while this one keeps a **persistent session** (MQTT 5:
clean start off and a session expiry; 3.1.1: clean session off): QoS 1 commands published
while the station is away are queued by the broker and delivered when it returns.  Topics are
(re)subscribed at QoS 1 on every CONNACK.

Messages are handed, one at a time and in arrival order, to ``handle(topic, payload)`` on a
thread of this module (``edge-worker/commands``), never on paho's network thread: installing a
pack copies folders, and paho must keep answering pings meanwhile.  The queue is bounded; when
it is full, paho's thread waits (the broker then holds the rest in the session).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_worker.publish.mqtt import secure
from edge_worker.publish.settings import MqttSettings

log = logging.getLogger(__name__)

#: How long the broker keeps the session (and queued commands) of a station that is away.
SESSION_EXPIRY_S = 7 * 86_400
QUEUE_SIZE = 64
_STOP = object()


class Listener:
    """Subscribes ``topics`` (QoS 1, persistent session) and hands each message to ``handle``."""

    def __init__(self, settings: MqttSettings, client_id: str, topics: list[str],
                 handle: Callable[[str, bytes], None]) -> None:  # fmt: skip
        self.settings, self.client_id, self.topics = settings, client_id, list(topics)
        self._handle = handle
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_SIZE)
        self._stopping = threading.Event()
        self.subscribed = threading.Event()  # set at each SUBACK, cleared at each disconnect
        #: A refusal by the broker (connection or subscription), for health; an outage is not one
        #: (the publisher reports that), and the next good CONNACK and SUBACK clear it.
        self.problem: str | None = None
        self._client: paho.Client | None = None
        self._thread = threading.Thread(target=self._loop, name="edge-worker/commands", daemon=True)

    def start(self) -> None:
        """Connect in the background and start handing messages on."""
        s = self.settings
        if s.protocol == "5":
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5)
        else:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 protocol=paho.MQTTv311, clean_session=False)  # fmt: skip
        secure(client, s)
        client.reconnect_delay_set(s.reconnect_min_delay, s.reconnect_max_delay)
        client.suppress_exceptions = True
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        self._thread.start()
        if s.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            client.connect_async(s.host, s.port, keepalive=s.keepalive, clean_start=False, properties=props)
        else:
            client.connect_async(s.host, s.port, keepalive=s.keepalive)
        client.loop_start()

    def stop(self) -> None:
        """Disconnect (the session stays on the broker), finish the message in hand, join."""
        self._stopping.set()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass  # the loop sees _stopping after the message in hand
        if self._thread.is_alive():
            self._thread.join(30.0)

    # -- paho callbacks (paho's network thread) ---------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason: ReasonCode,
                    props: object) -> None:  # fmt: skip
        if reason.is_failure:
            self.problem = f"connection refused: {reason}"
            log.error("commands: broker %s refused the connection: %s", self.settings.url, reason)
            return
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client: paho.Client, userdata: object, mid: int, reasons: list[ReasonCode],
                      props: object) -> None:  # fmt: skip
        refused = [f"{t}: {r}" for t, r in zip(self.topics, reasons) if r.is_failure]
        if refused:  # an ACL without the station's read right: say so, once per connection
            self.problem = f"subscription refused: {'; '.join(refused)}"
            log.error("commands: %s", self.problem)
        else:
            self.problem = None
        self.subscribed.set()
        log.info("commands: listening on %s", ", ".join(self.topics))

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: object, reason: ReasonCode,
                       props: object) -> None:  # fmt: skip
        self.subscribed.clear()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        item = (message.topic, bytes(message.payload))
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # -- handing on -------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP or self._stopping.is_set():
                return
            assert isinstance(item, tuple)
            topic, payload = item
            try:
                self._handle(topic, payload)
            except Exception:  # a command must never end the listener; the handler reports
                log.exception("commands: handling a message on %s failed", topic)
