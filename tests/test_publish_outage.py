"""Publisher through broker outages, lost connections and restarts, against a real mosquitto.

The publisher reaches the broker through :class:`TcpProxy`, a loopback TCP relay the test can
cut (reset both sides without an MQTT DISCONNECT), black-hole (swallow what the client sends) or
close to new connections.  Closing it lets the test decide when the publisher may come back,
so a subscriber can resubscribe first on a broker restarted without persistence.
"""

from __future__ import annotations

import json
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Message, Mosquitto, Subscriber, free_port

from edge_worker.publish.mqtt import MqttSettings, Publisher, Topics
from edge_worker.publish.outbox import Outbox

TOPICS = Topics("site1", "room7")
# Reconnect every second so an outage test takes about a second, not a back-off of minutes.
FAST_RECONNECT = {"reconnect_min_delay": 1, "reconnect_max_delay": 1}


class TcpProxy:
    """Relays ``127.0.0.1:port`` to an upstream port on one thread; see the module docstring."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.refusing = False
        self.blackhole = False
        self._commands: queue.Queue[tuple[str, threading.Event]] = queue.Queue()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._sel = selectors.DefaultSelector()
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._sel.register(self._listener, selectors.EVENT_READ)
        self._running = True
        self._thread = threading.Thread(target=self._run, name="test-tcp-proxy")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Reset every relayed connection on both sides (no DISCONNECT, no FIN)."""
        done = threading.Event()
        self._commands.put(("cut", done))
        assert done.wait(5.0), "proxy did not cut"

    def close(self) -> None:
        self._running = False
        self._thread.join(5.0)

    def _run(self) -> None:
        while self._running:
            for key, _ in self._sel.select(timeout=0.02):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                elif sock in self._peers:
                    self._relay(sock)
            while not self._commands.empty():
                _, done = self._commands.get()
                for sock in list(self._peers):
                    self._drop(sock)
                done.set()
        for sock in list(self._peers):
            self._drop(sock)
        self._sel.close()
        self._listener.close()

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        if self.refusing:
            _reset(client)
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=1.0)
        except OSError:
            _reset(client)
            return
        for a, b in ((client, upstream), (upstream, client)):
            self._peers[a] = b
            self._sel.register(a, selectors.EVENT_READ)

    def _relay(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        if self.blackhole:
            return
        try:
            self._peers[sock].sendall(data)
        except OSError:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        if sock not in self._peers:
            return  # already dropped as the other half of its pair
        peer = self._peers.pop(sock)
        del self._peers[peer]
        for s in (sock, peer):
            self._sel.unregister(s)
            _reset(s)


def _reset(sock: socket.socket) -> None:
    # SO_LINGER 0: close() sends RST, as a crashed host or a cut cable would look to the broker.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
def proxy(mosquitto: Mosquitto) -> Iterator[TcpProxy]:
    relay = TcpProxy(mosquitto.port)
    yield relay
    relay.close()


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite"


@pytest.fixture
def make_publisher(outbox_path: Path) -> Iterator[Callable[..., Publisher]]:
    """Started publishers on a fresh Outbox over ``outbox_path``; stopped and closed after."""
    made: list[tuple[Publisher, Outbox]] = []

    def make(url: str, protocol: str = "3.1.1") -> Publisher:
        box = Outbox(outbox_path)
        settings = MqttSettings.from_url(url, protocol=protocol, **FAST_RECONNECT)
        pub = Publisher(settings, TOPICS, box)
        made.append((pub, box))
        pub.start()
        return pub

    yield make
    for pub, box in made:
        pub.stop(timeout=2.0)
        box.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def ids(messages: list[Message]) -> list[str]:
    return [json.loads(m.payload)["id"] for m in messages]


def test_last_will_offline_when_connection_is_lost(
    mosquitto: Mosquitto, proxy: TcpProxy, subscriber: Callable[..., Subscriber],
    make_publisher: Callable[..., Publisher],
) -> None:
    sub = subscriber(mosquitto, TOPICS.availability)
    pub = make_publisher(proxy.url)
    wait_until(lambda: pub.connected, what="connect")
    assert sub.wait_for(TOPICS.availability, 1)[0].payload == b"online"
    proxy.refusing = True
    proxy.cut()
    msgs = sub.wait_for(TOPICS.availability, 2)
    assert msgs[-1].payload == b"offline"  # the broker's last will, not our clean stop
    wait_until(lambda: not pub.connected, what="connected to turn false")
    late = subscriber(mosquitto, TOPICS.availability)
    (msg,) = late.wait_for(TOPICS.availability, 1)
    assert (msg.payload, msg.retain) == (b"offline", True)
    # And back: on reconnect the publisher says online again.
    proxy.refusing = False
    assert late.wait_for(TOPICS.availability, 2, timeout=5.0)[-1].payload == b"online"


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_messages_published_during_broker_outage_arrive_after_restart(
    mosquitto: Mosquitto, proxy: TcpProxy, subscriber: Callable[..., Subscriber],
    make_publisher: Callable[..., Publisher], protocol: str,
) -> None:
    pub = make_publisher(proxy.url, protocol)
    wait_until(lambda: pub.connected, what="connect")
    proxy.refusing = True
    mosquitto.stop()
    wait_until(lambda: not pub.connected, what="the publisher to notice the outage")
    for i in range(20):
        pub.publish("verdict", {"id": f"v{i:02d}"}, key=f"v{i:02d}")
    assert pub.outbox_depth == 20
    mosquitto.start()
    sub = subscriber(mosquitto, TOPICS.verdict)  # subscribed before the publisher may return
    proxy.refusing = False
    msgs = sub.wait_for(TOPICS.verdict, 20, timeout=10.0)
    assert ids(msgs) == [f"v{i:02d}" for i in range(20)]
    assert pub.wait_drained(5.0)
    assert pub.outbox_depth == 0


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_in_flight_messages_resent_in_order_after_lost_connection(
    mosquitto: Mosquitto, proxy: TcpProxy, subscriber: Callable[..., Subscriber],
    make_publisher: Callable[..., Publisher], protocol: str,
) -> None:
    sub = subscriber(mosquitto, TOPICS.verdict)
    pub = make_publisher(proxy.url, protocol)
    wait_until(lambda: pub.connected, what="connect")
    pub.publish("verdict", {"id": "a0"}, key="a0")
    sub.wait_for(TOPICS.verdict, 1)
    assert pub.wait_drained(5.0)
    # Handed to paho but never reaching the broker: no PUBACK, rows must stay.
    proxy.blackhole = True
    for i in range(1, 6):
        pub.publish("verdict", {"id": f"a{i}"}, key=f"a{i}")
    assert not pub.wait_drained(0.3)
    proxy.refusing = True
    proxy.cut()
    proxy.blackhole = False
    wait_until(lambda: not pub.connected, what="disconnect")
    # Stored while disconnected: only in the outbox, not in paho's memory.
    for i in range(6, 9):
        pub.publish("verdict", {"id": f"a{i}"}, key=f"a{i}")
    assert pub.outbox_depth == 8
    proxy.refusing = False
    msgs = sub.wait_for(TOPICS.verdict, 9, timeout=10.0)
    assert pub.wait_drained(5.0)
    assert ids(msgs) == [f"a{i}" for i in range(9)]


def test_outbox_survives_publisher_restart(
    mosquitto: Mosquitto, subscriber: Callable[..., Subscriber], outbox_path: Path,
    make_publisher: Callable[..., Publisher],
) -> None:
    first = make_publisher(mosquitto.url)
    wait_until(lambda: first.connected, what="connect")
    mosquitto.stop()
    wait_until(lambda: not first.connected, what="disconnect")
    for i in range(5):
        first.publish("verdict", {"id": f"r{i}"}, key=f"r{i}")
    first.stop(timeout=2.0)
    with Outbox(outbox_path) as reopened:
        assert reopened.depth() == 5
    mosquitto.start()
    sub = subscriber(mosquitto, TOPICS.verdict)
    second = make_publisher(mosquitto.url)
    msgs = sub.wait_for(TOPICS.verdict, 5)
    assert ids(msgs) == [f"r{i}" for i in range(5)]
    assert second.wait_drained(5.0)
    with Outbox(outbox_path) as reopened:
        assert reopened.depth() == 0


def test_stop_while_broker_unreachable_is_prompt(make_publisher: Callable[..., Publisher]) -> None:
    pub = make_publisher(f"mqtt://127.0.0.1:{free_port()}")
    pub.publish("verdict", {"id": "z"}, key="z")
    started = time.monotonic()
    pub.stop(timeout=2.0)
    assert time.monotonic() - started < 3.0
    assert not pub.connected
