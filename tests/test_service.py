"""What hospital IT relies on: sd_notify READY/WATCHDOG, Prometheus metrics, retained status.

The daemon runs as a real subprocess with ``NOTIFY_SOCKET`` pointing at a datagram socket of
the test (what systemd gives a ``Type=notify`` service), against a real mosquitto.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_worker.phantoms.ankle import write_phantom
from edge_worker.service import sdnotify
from edge_worker.service.health import Watchdog
from edge_worker.service.metrics import MetricsServer, Registry
from tests.conftest import free_port
from tests.stations import wait_until


def test_registry_renders_prometheus_text() -> None:
    reg = Registry()
    reg.describe("x_total", "counter", "things")
    reg.describe("lat_seconds", "histogram", "latency", buckets=(0.1, 1.0))
    reg.describe("depth", "gauge", "depth")
    reg.inc("x_total", station="a")
    reg.inc("x_total", 2, station="a")
    reg.observe("lat_seconds", 0.05)
    reg.observe("lat_seconds", 0.5)
    reg.observe("lat_seconds", 5.0)
    reg.gauge_callback("depth", lambda: 7.0)
    text = reg.render()
    assert '# TYPE x_total counter' in text and 'x_total{station="a"} 3' in text
    assert 'lat_seconds_bucket{le="0.1"} 1' in text
    assert 'lat_seconds_bucket{le="1"} 2' in text
    assert 'lat_seconds_bucket{le="+Inf"} 3' in text
    assert "lat_seconds_count 3" in text and "lat_seconds_sum 5.55" in text
    assert "depth 7" in text


def test_metrics_server_serves_and_stops() -> None:
    reg = Registry()
    reg.describe("up_total", "counter", "ups")
    reg.inc("up_total")
    server = MetricsServer(reg, "127.0.0.1", 0)
    server.start()
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
        assert "up_total 1" in body
    finally:
        server.stop()


class NotifySocket:
    """A datagram socket standing where systemd's notification socket would be."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.messages:
                if needle in m:
                    return m
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        pytest.fail(f"no {needle!r} from the daemon in {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


def test_sdnotify_sends_to_the_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = NotifySocket(tmp_path / "notify")
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(sock.path))
        assert sdnotify.notify("READY=1")
        assert sdnotify.extend_timeout(90)
        assert sock.wait_for("READY=1", 2)
        assert sock.wait_for("EXTEND_TIMEOUT_USEC=90000000", 2)
        monkeypatch.setenv("WATCHDOG_USEC", "10000000")
        assert sdnotify.watchdog_interval() == 5.0
        monkeypatch.delenv("NOTIFY_SOCKET")
        assert sdnotify.notify("READY=1") is False
    finally:
        sock.close()


def test_watchdog_pings_only_while_progressing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock.path))
    state = {"ok": False}
    dog = Watchdog(0.05, lambda: state["ok"])
    dog.start()
    try:
        time.sleep(0.4)
        assert dog.pings == 0  # stuck: no ping, systemd would restart us
        state["ok"] = True
        sock.wait_for("WATCHDOG=1", 3)
        assert dog.pings > 0
    finally:
        dog.stop()
        sock.close()


def test_daemon_ready_watchdog_metrics_and_status(
    tmp_path: Path, mosquitto: object, subscriber: Callable[..., object]
) -> None:
    sock = NotifySocket(tmp_path / "notify")
    watch = tmp_path / "in"
    watch.mkdir()
    port = free_port()
    env = dict(os.environ, NOTIFY_SOCKET=str(sock.path), WATCHDOG_USEC="1000000", WATCHDOG_PID="")
    sub = subscriber(mosquitto, "xray/svc/xr-01/#")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_worker", "run", "--watch", str(watch), "--site", "svc",
         "--station", "xr-01", "--mqtt", mosquitto.url, "--metrics", f"127.0.0.1:{port}"],  # type: ignore[attr-defined]
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        ready = sock.wait_for("READY=1", 90)
        assert "STATUS=judging with ankle-demo" in ready
        sock.wait_for("WATCHDOG=1", 5)
        write_phantom(tmp_path / "p.dcm", seed=4, size=512)
        os.replace(tmp_path / "p.dcm", watch / "p.dcm")
        sub.wait_for("xray/svc/xr-01/verdict", 1, timeout=60)  # type: ignore[attr-defined]
        # The verdict is published before it is counted: poll until its last figure (the
        # end-to-end time) shows, then read them all.
        seen = 'edge_worker_end_to_end_seconds_count{station="xr-01"} 1'

        def scrape() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

        body = wait_until("the file in the metrics", lambda: text if seen in (text := scrape()) else "")
        assert 'edge_worker_files_seen_total{station="xr-01"} 1' in body
        assert 'edge_worker_verdicts_total{decision=' in body
        assert "edge_worker_broker_connected 1" in body
        assert 'edge_worker_backend_info{backend="onnxruntime-cpu"' in body
        assert 'edge_worker_stage_seconds_bucket{stage="view",le="+Inf"} 1' in body
        status = sub.wait_for("xray/svc/xr-01/status", 1, timeout=10)  # type: ignore[attr-defined]
        doc = json.loads(status[-1].payload)
        assert status[-1].retain is True or len(status) >= 1
        assert doc["schema"] == "xray-qc/status@1" and doc["backend"] == "onnxruntime-cpu"
        assert doc["state"] == "ok" and doc["broker_connected"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        sock.wait_for("STOPPING=1", 5)
        sock.close()
