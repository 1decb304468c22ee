"""The fleet view's state: retained status documents, silent stations, sites (pure, no network),
then the same on a real broker through the dashboard server and its event stream."""

from __future__ import annotations

import json
import time
from typing import Any

import paho.mqtt.publish as paho_publish
import pytest
from test_dashboard_server import EventReader

from edge_worker.cli import main
from edge_worker.errors import ConfigError
from edge_worker.publish.settings import MqttSettings
from edge_worker.service.health import Health, status_document
from edge_worker.subscribers.dashboard.fleet import site_rollup, status_from_document
from edge_worker.subscribers.dashboard.server import Dashboard
from edge_worker.subscribers.dashboard.state import StationBoard

T0 = 1_800_000_000.0
DIGEST = "ab12cd34ef56" + "0" * 52
PACK = {"name": "chest-qc", "version": "1.4.0", "not_for_clinical_use": True, "training_data": "x", "digest": DIGEST}


def status(state: str = "ok", at: float = T0, depth: int = 0, **extra: Any) -> bytes:
    """A status document shaped like edge_worker.service.health.status_document's."""
    doc = {
        "schema": "xray-qc/status@1", "site": "st-a", "station": "xr-01", "state": state,
        "problems": {"publisher": "broker unreachable"} if state == "degraded" else {},
        "backend": "onnxruntime-cpu", "pack": PACK, "outbox_depth": depth, "broker_connected": True,
        "processed": 12, "uptime_s": 30.0, "last_message_at": at - 5, "worker_version": "0.9.0", "at": at,
        **extra,
    }  # fmt: skip
    return json.dumps(doc).encode()


def verdict(n: int, decision: str = "ok") -> bytes:
    return json.dumps({"id": f"00000000-0000-0000-0000-{n:012d}", "decision": decision,
                       "times": {"verdict_made": "2027-01-15T08:00:00+00:00"}}).encode()  # fmt: skip


def only(board: StationBoard, now: float = T0) -> dict[str, Any]:
    [station] = board.snapshot(now)["stations"]
    return station


def connected(board: StationBoard) -> StationBoard:
    board.set_broker(True, "connected", T0)
    return board


def test_a_status_document_shows_pack_backend_outbox_and_problems() -> None:
    board = StationBoard()
    event = board.apply("xray/st-a/xr-01/status", status("degraded", depth=7), T0 + 1)
    assert event is not None and event.name == "station"
    st = event.data["station"]
    assert st["status"] == {
        "state": "degraded", "problems": [{"component": "publisher", "text": "broker unreachable"}],
        "backend": "onnxruntime-cpu", "pack": {"name": "chest-qc", "version": "1.4.0", "digest": DIGEST},
        "outbox_depth": 7, "broker_connected": True, "processed": 12, "uptime_s": 30.0,
        "last_message_at": T0 - 5, "worker_version": "0.9.0", "at": T0, "received": T0 + 1,
    }  # fmt: skip
    assert st["heard"] == T0 + 1 and st["silent"] is False and st["latest"] is None
    # A status next to verdicts keeps both: the tile shows the decision and the pack.
    board.apply("xray/st-a/xr-01/verdict", verdict(1, "retake"), T0 + 2)
    st = only(board)
    assert st["latest"]["decision"] == "retake" and st["status"]["outbox_depth"] == 7


def test_the_daemons_own_status_document_is_read() -> None:
    health = Health()
    health.fail("inference", "backend lost")
    doc = status_document(
        site="st-a", station="xr-01", health=health, backend="onnxruntime-cpu", pack=PACK, outbox_depth=3,
        broker_connected=False, processed=5, started_at=time.time() - 60, last_message_at=None,
    )  # fmt: skip
    parsed = status_from_document(json.loads(json.dumps(doc)), T0)
    assert parsed["state"] == "degraded" and parsed["problems"] == [{"component": "inference", "text": "backend lost"}]
    assert parsed["pack"] == {"name": "chest-qc", "version": "1.4.0", "digest": DIGEST}
    assert parsed["outbox_depth"] == 3 and parsed["broker_connected"] is False and parsed["at"] == doc["at"]


def test_a_status_is_trusted_field_by_field() -> None:
    board = StationBoard()
    odd = status(outbox_depth=-1, backend=["x"], pack={"name": 5, "version": "1", "digest": "<script>"},
                 broker_connected="yes", problems={"a" * 100: 7}, evil="<b>")  # fmt: skip
    board.apply("xray/st-a/xr-01/status", odd, T0)
    st = only(board)["status"]
    assert st["outbox_depth"] is None and st["backend"] is None and st["broker_connected"] is None
    assert st["pack"] == {"name": None, "version": "1", "digest": None}
    assert st["problems"] == [{"component": "a" * 64, "text": ""}] and "evil" not in st
    # No known state: the document says nothing, and is counted as unusable.
    assert board.apply("xray/st-a/xr-02/status", status("fine"), T0) is None
    assert board.apply("xray/st-a/xr-02/status", b"[1, 2]", T0) is None
    assert board.snapshot(T0)["messages"] == {
        "verdict": 0, "error": 0, "availability": 0, "latest": 0, "status": 3, "unusable": 2, "over_limit": 0,
    }  # fmt: skip


def test_a_station_heard_from_no_more_is_flagged_once_and_cleared_by_news() -> None:
    board = connected(StationBoard(silent_after=60))
    board.apply("xray/st-a/xr-01/availability", b"online", T0)
    board.apply("xray/st-a/xr-01/status", status(at=T0), T0)
    assert board.sweep(T0 + 60) == []  # exactly the limit: not yet
    [event] = board.sweep(T0 + 61)
    assert event.data["station"]["silent"] is True and event.data["server_time"] == T0 + 61
    assert board.sweep(T0 + 62) == []  # flagged once, not on every sweep
    assert only(board)["silent"] is True
    event = board.apply("xray/st-a/xr-01/status", status(at=T0 + 61.5), T0 + 63)
    assert event is not None and event.data["station"]["silent"] is False
    assert only(board)["heard"] == T0 + 63


def test_a_redelivered_retained_status_is_no_sign_of_life() -> None:
    board = connected(StationBoard(silent_after=60))
    board.apply("xray/st-a/xr-01/status", status(at=T0), T0)
    # The dashboard resubscribes: the broker hands out the same retained document again.
    board.apply("xray/st-a/xr-01/status", status(at=T0), T0 + 50)
    assert only(board)["heard"] == T0
    assert [e.data["station"]["silent"] for e in board.sweep(T0 + 61)] == [True]


def test_a_station_that_said_offline_is_offline_not_silent() -> None:
    board = connected(StationBoard(silent_after=60))
    board.apply("xray/st-a/xr-01/availability", b"online", T0)
    board.apply("xray/st-a/xr-01/availability", b"offline", T0 + 10)
    assert board.sweep(T0 + 1000) == [] and only(board)["silent"] is False
    # A silent one that then says offline is cleared by that message.
    board.apply("xray/st-a/xr-02/verdict", verdict(1), T0)
    assert len(board.sweep(T0 + 61)) == 1
    event = board.apply("xray/st-a/xr-02/availability", b"offline", T0 + 62)
    assert event is not None and event.data["station"]["silent"] is False


def test_nothing_is_flagged_while_the_dashboard_itself_is_deaf() -> None:
    board = StationBoard(silent_after=60)  # the board's broker link is not up
    board.apply("xray/st-a/xr-01/verdict", verdict(1), T0)
    assert board.sweep(T0 + 1000) == []
    board.set_broker(True, "connected", T0 + 1000)
    assert len(board.sweep(T0 + 1001)) == 1


def test_sites_are_rolled_up_in_the_snapshot() -> None:
    board = connected(StationBoard(silent_after=60))
    board.apply("xray/north/xr-01/availability", b"online", T0)
    board.apply("xray/north/xr-01/status", status("degraded"), T0)
    board.apply("xray/north/xr-02/verdict", verdict(1, "retake"), T0)
    board.apply("xray/south/xr-01/availability", b"offline", T0)
    board.apply("xray/south/xr-02/status", status(), T0 + 100)
    board.sweep(T0 + 100)
    snap = board.snapshot(T0 + 100)
    assert snap["silent_after"] == 60
    assert snap["sites"] == [
        {"site": "north", "stations": 2, "online": 1, "offline": 0, "silent": 2, "degraded": 1, "retake": 1},
        {"site": "south", "stations": 2, "online": 0, "offline": 1, "silent": 0, "degraded": 0, "retake": 0},
    ]
    assert site_rollup([]) == []


def test_a_silent_after_that_is_not_positive_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="silent_after"):
        StationBoard(silent_after=0)
    with pytest.raises(ConfigError, match="silent-after"):
        Dashboard(MqttSettings.from_url("mqtt://127.0.0.1:1"), ("127.0.0.1", 0), silent_after=-1)
    assert main(["dashboard", "--mqtt", "mqtt://127.0.0.1:1", "--silent-after", "0"]) == 2
    assert "--silent-after" in capsys.readouterr().err


def test_the_server_streams_status_and_flags_a_silent_station(mosquitto: Any) -> None:
    dashboard = Dashboard(MqttSettings.from_url(mosquitto.url), ("127.0.0.1", 0), heartbeat_s=0.3, silent_after=0.5)
    dashboard.sweep_s = 0.1
    dashboard.start()
    reader = None
    try:
        deadline = time.monotonic() + 10
        while not dashboard.snapshot()["broker"]["connected"]:
            assert time.monotonic() < deadline, "the dashboard did not subscribe"
            time.sleep(0.05)
        reader = EventReader(*dashboard.address)
        first = reader.next()
        assert first is not None and first[0] == "snapshot" and first[1]["silent_after"] == 0.5
        paho_publish.single("xray/st-a/xr-01/status", status("degraded", at=time.time(), depth=4), qos=1,
                            retain=True, hostname=mosquitto.host, port=mosquitto.port)  # fmt: skip
        events = []
        while not (events and events[-1]["silent"]):
            event = reader.next()
            assert event is not None and event[0] == "station", event
            events.append(event[1]["station"])
        assert events[0]["silent"] is False and events[0]["status"]["state"] == "degraded"
        assert events[0]["status"]["pack"]["digest"] == DIGEST and events[0]["status"]["outbox_depth"] == 4
        assert [e["silent"] for e in events] == [False, True]
        snap = dashboard.snapshot()
        assert snap["sites"][0]["silent"] == 1 and snap["messages"]["status"] == 1
    finally:
        if reader is not None:
            reader.close()
        dashboard.stop()
