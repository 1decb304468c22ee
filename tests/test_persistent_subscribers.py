"""Subscribers that miss nothing: persistent sessions and the retained latest summary.

* The dashboard feed and ``edge-worker tail`` keep a persistent session under a stable client
  id: a verdict published while they were away is delivered when they come back.
* Each station publishes a retained ``<prefix>/<site>/<station>/latest``: a dashboard started
  after the verdicts shows every station's last decision at once (real daemons, real broker).
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.publish as paho_publish
import pytest
from conftest import Mosquitto, Subscriber, find_mosquitto
from stations import PhantomStock, Station

from edge_worker.cli import build_parser
from edge_worker.publish.latest import latest_summary
from edge_worker.publish.settings import MqttSettings
from edge_worker.subscribers.dashboard.feed import MqttFeed, default_client_id, station_filters
from edge_worker.subscribers.dashboard.server import Dashboard
from edge_worker.subscribers.tail import run_tail

VERDICT = {
    "id": "00000000-0000-0000-0000-0000000000a1", "site": "st-a", "station": "xr-01", "decision": "retake",
    "view": {"label": "AP", "confidence": 0.97}, "quality": {"score": 2.81, "grade": 3, "diagnostic": False},
    "times": {"file_seen": "2027-01-15T08:00:00.000+00:00", "verdict_made": "2027-01-15T08:00:01.500+00:00"},
    "reasons": ["quality grade 3 (score 2.81): not diagnostic, retake"], "not_for_clinical_use": True,
    "pack": {"name": "ankle-demo", "version": "1.0.0"},
}  # fmt: skip


def _until(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _schema(name: str) -> jsonschema.Draft202012Validator:
    text = (resources.files("edge_worker") / "schema" / name).read_text()
    return jsonschema.Draft202012Validator(json.loads(text), format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_feed_gets_a_verdict_published_while_it_was_away(mosquitto: Mosquitto, protocol: str) -> None:
    settings = MqttSettings.from_url(mosquitto.url, protocol=protocol)
    got: list[tuple[str, bytes]] = []

    def feed() -> MqttFeed:
        f = MqttFeed(settings, station_filters("xray"), lambda t, p: got.append((t, p)), lambda c, d: None,
                     client_id=f"test-feed-{protocol}")  # fmt: skip
        f.start()
        _until("the subscription", lambda: f.connected, 10)
        return f

    first = feed()
    first.stop()
    paho_publish.single("xray/st-a/xr-01/verdict", json.dumps(VERDICT), qos=1,
                        hostname=mosquitto.host, port=mosquitto.port)  # fmt: skip
    second = feed()
    try:
        _until("the verdict published while away", lambda: got, 10)
    finally:
        second.stop()
    assert got == [("xray/st-a/xr-01/verdict", json.dumps(VERDICT).encode())]


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto that keeps sessions and queued messages across its own restarts."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto binary not found in PATH or /usr/sbin (apt install mosquitto)")
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(binary, tmp_path / "broker", persistence=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_dashboard_gets_a_verdict_drained_right_after_a_broker_restart(persistent_broker: Mosquitto) -> None:
    broker = persistent_broker
    board = Dashboard(MqttSettings.from_url(broker.url), ("127.0.0.1", 0), client_id="test-restart-dashboard")
    board.start()
    try:
        _until("the dashboard subscribed", lambda: board.snapshot()["broker"]["connected"], 10)
        broker.stop()
        broker.start()
        # What an outbox does on reconnect: deliver at once, before the dashboard is back
        # (its reconnect waits at least a second).
        paho_publish.single("xray/st-a/xr-01/verdict", json.dumps(VERDICT), qos=1,
                            hostname=broker.host, port=broker.port)  # fmt: skip
        assert not board.snapshot()["broker"]["connected"]
        station = _until("the verdict on the board",
                         lambda: [s for s in board.snapshot()["stations"] if s["latest"]], 20)  # fmt: skip
    finally:
        board.stop()
    assert station[0]["latest"]["id"] == VERDICT["id"] and station[0]["latest"]["decision"] == "retake"


def test_tail_with_the_same_client_id_prints_what_came_while_away(mosquitto: Mosquitto) -> None:
    settings = MqttSettings.from_url(mosquitto.url)
    paho_publish.single("xray/st-a/xr-01/availability", b"online", qos=1, retain=True,
                        hostname=mosquitto.host, port=mosquitto.port)  # fmt: skip

    def tail_until(needle: str) -> str:
        out, stop = io.StringIO(), threading.Event()
        thread = threading.Thread(target=run_tail, args=(settings,), name="test/tail",
                                  kwargs={"out": out, "stop": stop, "client_id": "test-tail-ward"})  # fmt: skip
        thread.start()
        try:
            _until(f"{needle!r} in tail's output", lambda: needle in out.getvalue(), 10)
        finally:
            stop.set()
            thread.join(10)
        return out.getvalue()

    tail_until("online")  # subscribed (the retained availability arrived)
    paho_publish.single("xray/st-a/xr-01/verdict", json.dumps(VERDICT), qos=1,
                        hostname=mosquitto.host, port=mosquitto.port)  # fmt: skip
    text = tail_until("RETAKE")
    assert "st-a/xr-01" in text and "RETAKE view AP (0.97)" in text


def test_client_ids_are_stable_and_configurable() -> None:
    assert default_client_id("tail") == default_client_id("tail") != default_client_id("dashboard")
    assert default_client_id("tail").startswith("edge-worker-tail-")
    for command in ("tail", "dashboard"):
        args = build_parser().parse_args([command, "--mqtt", "mqtt://127.0.0.1", "--client-id", "ward-3"])
        assert args.client_id == "ward-3"


def test_latest_summary_follows_its_schema() -> None:
    validator = _schema("latest.schema.json")
    summary = latest_summary("verdict", VERDICT)
    validator.validate(summary)
    assert (summary["id"], summary["decision"], summary["view"]) == (VERDICT["id"], "retake", "AP")
    assert summary["quality"] == {"score": 2.81, "grade": 3} and summary["pack"]["version"] == "1.0.0"
    error = {"id": "e1", "site": "st-a", "station": "xr-01", "reason": "not_dicom", "detail": "no DICM",
             "times": {"rejected": "2027-01-15T08:00:02.000+00:00"}}  # fmt: skip
    validator.validate(latest_summary("error", error))
    assert latest_summary("error", error)["decision"] == "rejected"


@pytest.fixture
def stock(tmp_path: Path) -> PhantomStock:
    return PhantomStock(tmp_path / "stock")


@pytest.fixture
def two_stations(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[list[Station]]:
    made = [Station(tmp_path / name, mosquitto.url, site="ward", station=name) for name in ("xr-01", "xr-02")]
    yield made
    for st in made:
        st.close()


def test_a_late_dashboard_shows_each_station_last_decision(
    mosquitto: Mosquitto, two_stations: list[Station], stock: PhantomStock, subscriber: Callable[..., Subscriber]
) -> None:
    for st in two_stations:
        st.start()
    for i, st in enumerate(two_stations):
        for seed in (10 + 2 * i, 11 + 2 * i):
            stock.drop(seed, st.watch)
    for st in two_stations:
        _until(f"{st.station}: two files judged and delivered",
               lambda st=st: len(st.journaled_files()) == 2 and st.outbox_depth() == 0, 90)  # fmt: skip
        rc, _ = st.terminate()  # a clean stop: everything acknowledged is on the broker
        assert rc == 0
    expected: dict[str, dict[str, Any]] = {}
    for st in two_stations:
        made = [json.loads(p) for p in st.journal_messages().values()]
        expected[f"ward/{st.station}"] = max(made, key=lambda m: m["times"]["verdict_made"])

    sub = subscriber(mosquitto, "xray/ward/+/latest")
    validator = _schema("latest.schema.json")
    for key, last in expected.items():
        retained = sub.wait_for(f"xray/{key}/latest")[-1]
        assert retained.retain
        body = json.loads(retained.payload)
        validator.validate(body)
        assert body["id"] == last["id"] and body["decision"] == last["decision"]

    board = Dashboard(MqttSettings.from_url(mosquitto.url), ("127.0.0.1", 0), client_id="test-late-dashboard")

    def shown() -> list[dict[str, Any]] | None:
        found = [s for s in board.snapshot()["stations"] if s["latest"]]
        return found if len(found) == 2 else None

    board.start()
    try:
        stations = _until("both stations' latest decision on the board", shown, 10)
    finally:
        board.stop()
    for s in stations:
        last = expected[s["key"]]
        assert s["latest"]["id"] == last["id"] and s["latest"]["decision"] == last["decision"]
        assert s["latest"]["view"] == last["view"]["label"]
        assert s["online"] is False  # each stopped cleanly


def test_board_takes_a_latest_summary_but_never_over_a_newer_message() -> None:
    from edge_worker.subscribers.dashboard.state import StationBoard

    board = StationBoard()
    summary = latest_summary("verdict", VERDICT)
    event = board.apply("xray/st-a/xr-01/latest", json.dumps(summary).encode(), 1.0)
    assert event is not None
    latest = event.data["station"]["latest"]
    assert (latest["id"], latest["decision"], latest["view"], latest["grade"]) == (VERDICT["id"], "retake", "AP", 3)
    # The full verdict under the same id (redelivered) changes nothing.
    assert board.apply("xray/st-a/xr-01/verdict", json.dumps(VERDICT).encode(), 2.0) is None
    newer = dict(VERDICT, id="00000000-0000-0000-0000-0000000000a2", decision="ok",
                 times={"verdict_made": "2027-01-15T09:00:00.000+00:00"})  # fmt: skip
    assert board.apply("xray/st-a/xr-01/verdict", json.dumps(newer).encode(), 3.0) is not None
    older = dict(summary, id="00000000-0000-0000-0000-0000000000a0", time="2027-01-15T07:00:00.000+00:00")
    assert board.apply("xray/st-a/xr-01/latest", json.dumps(older).encode(), 4.0) is None
    assert board.snapshot(5.0)["stations"][0]["latest"]["decision"] == "ok"
