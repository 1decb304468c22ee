"""``edge-worker tail``: one line per verdict, error and availability change."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import paho.mqtt.publish as paho_publish
import pytest

from edge_worker.cli import main
from edge_worker.publish.settings import MqttSettings
from edge_worker.subscribers.tail import TailFormatter, run_tail

T0 = 1_800_000_000.0
VERDICT = {
    "id": "00000000-0000-0000-0000-000000000001", "decision": "retake",
    "view": {"label": "AP", "confidence": 0.97}, "quality": {"score": 2.81, "grade": 3, "diagnostic": False},
    "orientation": {"angle_deg": 3.0, "suggested_rotation_deg": 0, "confidence": 0.9},
    "reasons": ["quality grade 3 (score 2.81): not diagnostic, retake"], "not_for_clinical_use": True,
}  # fmt: skip
ERROR = {"id": "e1", "reason": "not_dicom", "detail": "no DICM preamble"}


def _publish(broker: Any, topic: str, payload: bytes, retain: bool = False) -> None:
    paho_publish.single(topic, payload, qos=1, retain=retain, hostname=broker.host, port=broker.port)


def test_text_lines() -> None:
    f = TailFormatter()
    line = f.line("xray/st-a/xr-01/verdict", json.dumps(VERDICT).encode(), T0)
    assert line is not None
    assert "st-a/xr-01" in line and "RETAKE view AP (0.97), quality 2.81 (grade 3)" in line
    assert "not for clinical use" in line
    line = f.line("xray/st-a/xr-01/error", json.dumps(ERROR).encode(), T0)
    assert line is not None and line.endswith("REJECTED not_dicom: no DICM preamble")


def test_availability_prints_changes_only() -> None:
    f = TailFormatter()
    first = f.line("xray/st-a/xr-01/availability", b"online", T0)
    assert first is not None and first.endswith("online")
    assert f.line("xray/st-a/xr-01/availability", b"online", T0) is None
    off = f.line("xray/st-a/xr-01/availability", b"offline", T0)
    assert off is not None and off.endswith("OFFLINE")
    assert f.line("xray/st-a/xr-02/availability", b"online", T0) is not None  # per station


def test_odd_messages() -> None:
    f = TailFormatter(prefix="hosp/xray")
    assert f.line("xray/st-a/xr-01/verdict", b"{}", T0) is None  # another prefix
    assert f.line("hosp/xray/st-a/verdict", b"{}", T0) is None  # a level missing
    assert f.line("hosp/xray/st-a/xr-01/status", b"{}", T0) is None  # not ours, whatever the broker says
    line = f.line("hosp/xray/st-a/xr-01/verdict", b"{not json", T0)
    assert line is not None and "unreadable verdict" in line
    line = f.line("hosp/xray/st-a/xr-01/verdict", b'{"decision": "ok"}', T0)
    assert line is not None and "unreadable verdict (KeyError" in line


def test_json_lines() -> None:
    f = TailFormatter(as_json=True)
    line = f.line("xray/st-a/xr-01/verdict", json.dumps(VERDICT).encode(), T0)
    assert line is not None and "\n" not in line
    record = json.loads(line)
    assert record["site"] == "st-a" and record["station"] == "xr-01" and record["kind"] == "verdict"
    assert record["payload"] == VERDICT and record["topic"] == "xray/st-a/xr-01/verdict"
    avail = f.line("xray/st-a/xr-01/availability", b"offline", T0)
    assert avail is not None and json.loads(avail)["payload"] == "offline"


def test_run_tail_on_a_real_broker(mosquitto: Any) -> None:
    _publish(mosquitto, "xray/st-a/xr-01/availability", b"online", retain=True)
    out = io.StringIO()
    stop = threading.Event()
    thread = threading.Thread(
        target=run_tail, args=(MqttSettings.from_url(mosquitto.url),), kwargs={"out": out, "stop": stop},
        name="edge-worker/test-tail",
    )  # fmt: skip
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while "online" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
        _publish(mosquitto, "xray/st-a/xr-01/verdict", json.dumps(VERDICT).encode())
        _publish(mosquitto, "xray/st-a/xr-01/status", b"{}")  # not tailed
        _publish(mosquitto, "xray/st-a/xr-01/error", json.dumps(ERROR).encode())
        while out.getvalue().count("\n") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].endswith("online") and "RETAKE" in lines[1] and "REJECTED" in lines[2]


def test_the_command_prints_json_until_sigterm(mosquitto: Any) -> None:
    _publish(mosquitto, "xray/st-a/xr-09/availability", b"online", retain=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_worker", "tail", "--mqtt", mosquitto.url, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # the retained availability, on subscribe
        assert first["station"] == "xr-09" and first["payload"] == "online"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_cli_refuses_a_bad_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", "--mqtt", "tcp://broker:1883"]) == 2
    assert "scheme must be mqtt:// or mqtts://" in capsys.readouterr().err
