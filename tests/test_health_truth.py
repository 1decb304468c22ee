"""Health that tells the truth about the broker, with the real daemon as a subprocess.

* A listener that accepts TCP and never sends a CONNACK: not connected, unhealthy, with a reason.
* A real mosquitto frozen with SIGSTOP: unhealthy within 1.5 keepalive intervals, the reason
  says how long the broker has been silent; SIGCONT: healthy again.
* A clean stop leaves the retained status saying ``stopped`` and availability ``offline``.

The broker's state cannot be read over MQTT while it is frozen, so these tests read the daemon's
Prometheus endpoint (``service.metrics_listen``) and its log.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Mosquitto, Subscriber, free_port
from stations import Station

from edge_worker.publish.liveness import Liveness, silence_limit

KEEPALIVE = 5


def test_silence_limit_sits_between_a_ping_and_one_and_a_half_keepalives() -> None:
    for keepalive in (4, 5, 10, 30, 60):
        # paho pings within keepalive + 1 s of the last packet; the answer takes milliseconds.
        assert keepalive + 1.0 < silence_limit(keepalive) <= 1.5 * keepalive


def test_liveness_reports_silence_once_and_a_listener_without_connack() -> None:
    live = Liveness(5, now=100.0)
    assert live.waiting(103.0) is None  # a keepalive's grace while the first connection is made
    live.socket_opened()
    assert live.waiting(106.0) == "TCP connected, waiting for the CONNACK (gives up after 5 s)"
    assert live.gave_up_waiting() is True and live.gave_up_waiting() is False
    live.socket_closed()
    assert live.waiting(107.0) == "not connected yet"
    live.socket_opened()
    live.connack(200.0)
    assert live.silent(205.0) is None  # a ping is due, not late
    text = live.silent(207.0)
    assert text is not None and text.startswith("broker silent for 7 s (keepalive 5 s)")
    assert live.silent(230.0) == text  # one silence, one text (health logs it once)
    live.heard(231.0)
    assert live.silent(231.5) is None and live.silence_s(232.0) == 1.0
    assert live.next_check(231.0, connected=True) == 1.0
    assert abs(live.next_check(237.0, connected=True) - 0.55) < 1e-9


def metrics(port: int) -> dict[str, float]:
    """The daemon's unlabelled gauges, name -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+) (-?[0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def wait_metrics(port: int, want: dict[str, float], timeout: float, station: Station) -> float:
    """Poll until every gauge in ``want`` has its value; return when (monotonic), or fail."""
    deadline = time.monotonic() + timeout
    seen: dict[str, float] = {}
    while time.monotonic() < deadline:
        try:
            seen = metrics(port)
        except OSError:
            seen = {}
        if all(seen.get(k) == v for k, v in want.items()):
            return time.monotonic()
        time.sleep(0.1)
    pytest.fail(f"metrics never reached {want} within {timeout} s (last {seen}):\n{station.log_tail()}")


class SilentListener(threading.Thread):
    """Accepts TCP connections, reads what comes and never answers: a broker without CONNACK."""

    def __init__(self) -> None:
        super().__init__(name="test/silent-listener")
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.stop_event = threading.Event()
        self.accepted = 0
        self._conns: list[socket.socket] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                pass
            else:
                conn.setblocking(False)
                self._conns.append(conn)
                self.accepted += 1
            for conn in self._conns:
                try:
                    conn.recv(65536)
                except (BlockingIOError, OSError):
                    pass

    def close(self) -> None:
        self.stop_event.set()
        self.join(5)
        for conn in self._conns:
            conn.close()
        self.sock.close()


@pytest.fixture
def station_factory(tmp_path: Path) -> Iterator[Callable[..., Station]]:
    made: list[Station] = []

    def make(url: str, metrics_port: int, name: str = "st") -> Station:
        st = Station(
            tmp_path / name, url, site="truth",
            tables={"mqtt": {"keepalive": KEEPALIVE, "protocol": "5"},
                    "service": {"metrics_listen": f"127.0.0.1:{metrics_port}"}},
        )  # fmt: skip
        made.append(st)
        return st

    yield make
    for st in made:
        st.close()


def test_listener_without_connack_is_not_connected_with_a_reason(
    station_factory: Callable[..., Station],
) -> None:
    listener = SilentListener()
    listener.start()
    try:
        port = free_port()
        station = station_factory(f"mqtt://127.0.0.1:{listener.port}", port)
        station.start()
        ready = time.monotonic()
        # Past the first keepalive (the grace for a connection being made) and one check.
        unhealthy = wait_metrics(port, {"edge_worker_broker_connected": 0.0, "edge_worker_healthy": 0.0},
                                 3 * KEEPALIVE, station)  # fmt: skip
        found = re.search(r"health: broker: (mqtt://\S+): (.*)", station.log_text())
        assert found, station.log_tail()
        assert "CONNACK" in found.group(2), found.group(2)
        assert listener.accepted >= 1
        print(f"[no CONNACK] unhealthy {unhealthy - ready:.1f} s after READY (keepalive {KEEPALIVE} s): "
              f"{found.group(2)}", flush=True)  # fmt: skip
        assert metrics(port)["edge_worker_broker_connected"] == 0.0
    finally:
        listener.close()


def test_frozen_broker_is_unhealthy_within_one_and_a_half_keepalives_and_stop_says_stopped(
    mosquitto: Mosquitto, station_factory: Callable[..., Station], subscriber: Callable[..., Subscriber]
) -> None:
    port = free_port()
    station = station_factory(mosquitto.url, port)
    station.start()
    wait_metrics(port, {"edge_worker_broker_connected": 1.0, "edge_worker_healthy": 1.0}, 20, station)
    pid = mosquitto._proc.pid  # type: ignore[union-attr]  # the fixture's own process
    signal_sent = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        detected = wait_metrics(
            port, {"edge_worker_broker_connected": 0.0, "edge_worker_healthy": 0.0}, 1.5 * KEEPALIVE + 1.0, station
        )
        found = re.search(r"broker silent for (\d+) s \(keepalive (\d+) s\)", station.log_text())
        assert found, station.log_tail()
        silent_s, keepalive = int(found.group(1)), int(found.group(2))
        assert keepalive == KEEPALIVE
        assert KEEPALIVE < silent_s <= 1.5 * KEEPALIVE
        print(f"[frozen broker] unhealthy {detected - signal_sent:.1f} s after SIGSTOP "
              f"(keepalive {KEEPALIVE} s; reason: silent for {silent_s} s)", flush=True)  # fmt: skip
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_metrics(port, {"edge_worker_broker_connected": 1.0, "edge_worker_healthy": 1.0}, 6 * KEEPALIVE, station)

    rc, _ = station.terminate()
    assert rc == 0
    sub = subscriber(mosquitto, f"{station.base}/status", f"{station.base}/availability")
    status = json.loads(sub.wait_for(f"{station.base}/status")[-1].payload)
    assert status["state"] == "stopped", status
    assert sub.wait_for(f"{station.base}/availability")[-1].payload == b"offline"
