"""The dashboard server on a real broker: the event stream, the JSON snapshot, the page, stop."""

from __future__ import annotations

import http.client
import json
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.publish as paho_publish
import pytest
from conftest import free_port

from edge_worker.cli import main
from edge_worker.errors import ConfigError
from edge_worker.publish.settings import MqttSettings
from edge_worker.subscribers.dashboard.server import Dashboard, _Hub, parse_listen


def _publish(broker: Any, topic: str, payload: bytes, retain: bool = False) -> None:
    # publish.single runs its network loop in this thread: nothing is left running.
    paho_publish.single(topic, payload, qos=1, retain=retain, hostname=broker.host, port=broker.port)


def _verdict(n: int, decision: str) -> bytes:
    return json.dumps({
        "id": f"00000000-0000-0000-0000-{n:012d}", "decision": decision,
        "times": {"verdict_made": "2027-01-15T08:00:00+00:00"}, "quality": {"score": 1.2, "grade": 1},
        "view": {"label": "LAT", "confidence": 0.9}, "reasons": ["fine"], "not_for_clinical_use": True,
    }).encode()  # fmt: skip


def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return value


class EventReader:
    """A minimal server-sent-events client on http.client: one event per :meth:`next` call."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=10)
        self.conn.request("GET", "/events")
        self.response = self.conn.getresponse()
        self.retry: int | None = None

    def next(self, skip_heartbeats: bool = True) -> tuple[str, dict[str, Any]] | None:
        """The next event as ``(name, data)``; None when the server closed the stream."""
        name, data = "message", ""
        while True:
            line = self.response.readline()
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if text.startswith("retry:"):
                self.retry = int(text[6:])
            elif text.startswith("event:"):
                name = text[6:].strip()
            elif text.startswith("data:"):
                data += text[5:].strip()
            elif text == "" and data:
                if skip_heartbeats and name == "heartbeat":
                    name, data = "message", ""
                    continue
                return name, json.loads(data)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def dashboard(mosquitto: Any) -> Iterator[Dashboard]:
    board = Dashboard(MqttSettings.from_url(mosquitto.url), ("127.0.0.1", 0), heartbeat_s=0.3)
    board.start()
    _until(lambda: board.snapshot()["broker"]["connected"], 10, "the dashboard to subscribe")
    yield board
    board.stop()


def test_event_stream_snapshot_then_live_changes(dashboard: Dashboard, mosquitto: Any) -> None:
    _publish(mosquitto, "xray/st-a/xr-01/availability", b"online", retain=True)
    _until(lambda: dashboard.snapshot()["stations"], 5, "the availability message")
    host, port = dashboard.address
    reader = EventReader(host, port)
    try:
        assert reader.response.status == 200
        assert reader.response.getheader("Content-Type") == "text/event-stream"
        event = reader.next()
        assert event is not None
        name, snap = event
        assert name == "snapshot" and reader.retry == 2000
        assert snap["broker"]["connected"] is True
        assert [(s["key"], s["online"]) for s in snap["stations"]] == [("st-a/xr-01", True)]

        _publish(mosquitto, "xray/st-a/xr-01/verdict", _verdict(1, "retake"))
        event = reader.next()
        assert event is not None and event[0] == "station"
        assert event[1]["station"]["latest"]["decision"] == "retake"

        # Idle: heartbeats keep coming, with the server's clock.
        beat = reader.next(skip_heartbeats=False)
        assert beat is not None and beat[0] == "heartbeat" and beat[1]["server_time"] > 0

        # The broker goes away and comes back: both are events; the subscription is renewed.
        mosquitto.stop()
        event = reader.next()
        assert event is not None and event[0] == "broker" and event[1]["broker"]["connected"] is False
        mosquitto.start()
        while True:
            event = reader.next()
            assert event is not None and event[0] == "broker"
            if event[1]["broker"]["connected"]:
                break
        _publish(mosquitto, "xray/st-a/xr-02/verdict", _verdict(2, "ok"))
        event = reader.next()
        assert event is not None and event[1]["station"]["key"] == "st-a/xr-02"
        assert dashboard.streams == 1

        # Stopping the dashboard ends the stream (the browser will reconnect by itself).
        dashboard.stop()
        rest = []
        while (event := reader.next()) is not None:
            rest.append(event)
        assert all(name == "broker" and not data["broker"]["connected"] for name, data in rest), rest
    finally:
        reader.close()


def test_snapshot_page_and_headers(dashboard: Dashboard, mosquitto: Any) -> None:
    _publish(mosquitto, "xray/st-a/xr-01/verdict", _verdict(1, "ok"))
    _until(lambda: dashboard.snapshot()["stations"], 5, "the verdict")
    host, port = dashboard.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/api/stations")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type") == "application/json"
        snap = json.loads(resp.read())
        assert snap["stations"][0]["latest"]["decision"] == "ok"

        for path, kind, marker in (("/", "text/html", b"app.js"), ("/app.js", "text/javascript", b"EventSource"),
                                   ("/style.css", "text/css", b"--retake")):  # fmt: skip
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200 and resp.getheader("Content-Type", "").startswith(kind)
            assert marker in body
            assert "default-src 'self'" in resp.getheader("Content-Security-Policy", "")
            assert resp.getheader("X-Content-Type-Options") == "nosniff"

        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", "/../etc/passwd")
        assert conn.getresponse().status == 404
    finally:
        conn.close()


def test_stop_without_a_broker_does_not_hang() -> None:
    board = Dashboard(MqttSettings.from_url(f"mqtt://127.0.0.1:{free_port()}"), ("127.0.0.1", 0))
    board.start()
    time.sleep(0.3)
    assert board.snapshot()["broker"]["connected"] is False
    t = time.monotonic()
    board.stop()
    assert time.monotonic() - t < 5


def test_an_address_in_use_is_a_config_error() -> None:
    first = Dashboard(MqttSettings.from_url(f"mqtt://127.0.0.1:{free_port()}"), ("127.0.0.1", 0))
    first.start()
    try:
        second = Dashboard(MqttSettings.from_url(f"mqtt://127.0.0.1:{free_port()}"), first.address)
        with pytest.raises(ConfigError, match="cannot listen"):
            second.start()
        second.stop()
    finally:
        first.stop()


def test_a_stream_that_does_not_read_is_closed() -> None:
    hub = _Hub(depth=2)
    slow, fast = hub.subscribe(), hub.subscribe()
    for n in range(3):
        hub.publish(n)
        fast.get_nowait()
    assert len(hub) == 1  # the slow one was dropped ...
    items = []
    while True:
        try:
            items.append(slow.get_nowait())
        except queue.Empty:
            break
    assert len(items) == 1 and items[0] is not None and not isinstance(items[0], int)  # ... with the sentinel
    # Once the server is stopping, a stream that connects late is closed at once.
    hub.close_all()
    late = hub.subscribe()
    assert late.get_nowait() is items[0] and len(hub) == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:9000", ("::1", 9000))],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8080", "host:", ":8080", "host:99999", "host:http"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(text)


def test_cli_refuses_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--mqtt", "http://broker"]) == 2
    assert "mqtt://" in capsys.readouterr().err
    assert main(["dashboard", "--mqtt", "mqtt://127.0.0.1:1", "--listen", "nowhere"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
