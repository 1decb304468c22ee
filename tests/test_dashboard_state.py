"""The dashboard's station board: MQTT messages in, snapshot and events out (pure, no network)."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import pytest

from edge_worker.subscribers.dashboard.state import (
    MAX_HEATMAP_CHARS,
    MAX_TEXT,
    MAX_THUMBNAIL_CHARS,
    StationBoard,
)

T0 = 1_800_000_000.0
PNG = "data:image/png;base64,iVBORw0KGgo="


def verdict(n: int, decision: str = "ok", station: str = "xr-01", **extra: Any) -> bytes:
    """A verdict payload shaped like edge_worker.publish.verdict.build_verdict's (the fields the page uses)."""
    payload = {
        "schema": "xray-qc/verdict@1",
        "id": f"00000000-0000-0000-0000-{n:012d}",
        "site": "st-a",
        "station": station,
        "times": {"file_seen": "2027-01-15T08:00:00.000+00:00", "verdict_made": "2027-01-15T08:00:01.500+00:00"},
        "view": {"label": "AP", "confidence": 0.98, "probabilities": {"AP": 0.98, "LAT": 0.02}},
        "quality": {"score": 2.8 if decision == "retake" else 1.2, "grade": 3 if decision == "retake" else 1, "diagnostic": decision != "retake"},
        "decision": decision,
        "reasons": [f"reason for {decision}", "second reason"],
        "orientation": {"angle_deg": 92.0, "suggested_rotation_deg": 90, "confidence": 0.9},
        "not_for_clinical_use": True,
        **extra,
    }  # fmt: skip
    return json.dumps(payload).encode()


def error(n: int) -> bytes:
    return json.dumps({
        "schema": "xray-qc/error@1", "id": f"eeeeeeee-0000-0000-0000-{n:012d}", "reason": "not_dicom",
        "detail": "no DICM preamble", "times": {"file_seen": "x", "rejected": "2027-01-15T08:00:02+00:00"},
    }).encode()  # fmt: skip


def station(board: StationBoard, key: str) -> dict[str, Any]:
    return next(s for s in board.snapshot(T0)["stations"] if s["key"] == key)


def test_a_verdict_becomes_the_latest_and_an_event() -> None:
    board = StationBoard()
    event = board.apply("xray/st-a/xr-01/verdict", verdict(1, "retake", thumbnail=PNG), T0)
    assert event is not None and event.name == "station"
    latest = event.data["station"]["latest"]
    assert latest["decision"] == "retake" and latest["grade"] == 3 and latest["score"] == 2.8
    assert latest["view"] == "AP" and latest["rotate_deg"] == 90 and latest["not_for_clinical_use"] is True
    assert latest["thumbnail"] == PNG
    # "Time since" counts from when the verdict was made, not from when it reached us.
    assert latest["at"] == datetime.fromisoformat("2027-01-15T08:00:01.500+00:00").timestamp()
    assert latest["received"] == T0
    snap = board.snapshot(T0 + 5)
    assert snap["server_time"] == T0 + 5
    assert [s["key"] for s in snap["stations"]] == ["st-a/xr-01"]
    assert snap["stations"][0]["online"] is None  # no availability message yet: unknown, not online
    # The picture rides only on the latest verdict, not on the history entries.
    assert "thumbnail" not in snap["stations"][0]["history"][0]


def test_history_is_bounded_and_ordered_oldest_first() -> None:
    board = StationBoard(history=3)
    for n in range(5):
        board.apply("xray/st-a/xr-01/verdict", verdict(n, "ok" if n % 2 else "review"), T0 + n)
    st = station(board, "st-a/xr-01")
    assert [h["id"][-1] for h in st["history"]] == ["2", "3", "4"]
    assert st["latest"]["id"].endswith("4") and st["last_message"] == T0 + 4


def test_a_redelivered_verdict_is_dropped() -> None:
    board = StationBoard()
    assert board.apply("xray/st-a/xr-01/verdict", verdict(7), T0) is not None
    assert board.apply("xray/st-a/xr-01/verdict", verdict(7), T0 + 1) is None
    assert len(station(board, "st-a/xr-01")["history"]) == 1


def test_availability_changes_only() -> None:
    board = StationBoard()
    first = board.apply("xray/st-a/xr-02/availability", b"online", T0)
    assert first is not None and first.data["station"]["online"] is True
    assert board.apply("xray/st-a/xr-02/availability", b"online", T0 + 1) is None  # retained, again
    offline = board.apply("xray/st-a/xr-02/availability", b"offline", T0 + 2)
    assert offline is not None
    st = offline.data["station"]
    assert st["online"] is False and st["online_since"] == T0 + 2 and st["latest"] is None


def test_an_error_shows_as_rejected() -> None:
    board = StationBoard()
    event = board.apply("xray/st-a/xr-01/error", error(1), T0)
    assert event is not None
    latest = event.data["station"]["latest"]
    assert latest["decision"] == "rejected" and latest["reason"] == "not_dicom" and latest["kind"] == "error"


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("xray/st-a/xr-01/verdict", b"not json"),
        ("xray/st-a/xr-01/verdict", b"[1, 2]"),
        ("xray/st-a/xr-01/verdict", b"\xff\xfe"),
        ("xray/st-a/xr-01/verdict", verdict(1, "maybe")),
        ("xray/st-a/xr-01/error", b"{}"),
        ("xray/st-a/xr-01/availability", b"sleeping"),
        ("xray/st-a/xr-01/status", b"{}"),
        ("other/st-a/xr-01/verdict", verdict(1)),
        ("xray/st-a/verdict", verdict(1)),
    ],
)
def test_unusable_messages_change_nothing(topic: str, payload: bytes, caplog: pytest.LogCaptureFixture) -> None:
    board = StationBoard()
    with caplog.at_level(logging.DEBUG, logger="edge_worker.subscribers.dashboard.state"):
        assert board.apply(topic, payload, T0) is None
    assert board.snapshot(T0)["stations"] == []


def test_fields_are_copied_not_passed_through() -> None:
    """A publisher cannot push arbitrary data (or a non-PNG picture) through to the browser."""
    board = StationBoard()
    payload = json.loads(verdict(1, extra_field="<script>", thumbnail="javascript:alert(1)"))
    payload["reasons"] = ["<b>r</b>", 5, "x" * (MAX_TEXT + 200)]
    event = board.apply("xray/st-a/xr-01/verdict", json.dumps(payload).encode(), T0)
    assert event is not None
    latest = event.data["station"]["latest"]
    assert "extra_field" not in latest and latest["thumbnail"] is None
    assert latest["reasons"][0] == "<b>r</b>" and len(latest["reasons"]) == 2 and len(latest["reasons"][1]) == MAX_TEXT
    huge = verdict(2, thumbnail=PNG + "A" * MAX_THUMBNAIL_CHARS)
    event = board.apply("xray/st-a/xr-01/verdict", huge, T0)
    assert event is not None and event.data["station"]["latest"]["thumbnail"] is None


def test_prefix_with_several_levels_and_station_bound() -> None:
    board = StationBoard(prefix="hosp/xray", max_stations=2)
    assert board.apply("hosp/xray/st-a/xr-01/availability", b"online", T0) is not None
    assert board.apply("xray/st-a/xr-01/availability", b"online", T0) is None
    assert board.apply("hosp/xray/st-b/xr-01/availability", b"online", T0) is not None
    assert board.apply("hosp/xray/st-c/xr-01/availability", b"online", T0) is None  # bound reached
    assert [s["key"] for s in board.snapshot(T0)["stations"]] == ["st-a/xr-01", "st-b/xr-01"]


def test_broker_state_events() -> None:
    board = StationBoard()
    assert board.snapshot(T0)["broker"]["connected"] is False
    up = board.set_broker(True, "connected", T0)
    assert up is not None and up.name == "broker" and up.data["broker"] == {"connected": True, "since": T0, "detail": "connected"}
    assert board.set_broker(True, "connected", T0 + 1) is None
    down = board.set_broker(False, "lost the broker", T0 + 2)
    assert down is not None and down.data["broker"]["since"] == T0 + 2
    # The same outage with a new detail keeps its start time.
    again = board.set_broker(False, "cannot reach the broker; retrying", T0 + 3)
    assert again is not None and again.data["broker"]["since"] == T0 + 2


def test_snapshot_is_json_and_sorted() -> None:
    board = StationBoard()
    for name in ("xr-03", "xr-01", "xr-02"):
        board.apply(f"xray/st-a/{name}/verdict", verdict(int(name[-1]), station=name), T0)
    snap = board.snapshot(T0)
    assert [s["station"] for s in snap["stations"]] == ["xr-01", "xr-02", "xr-03"]
    json.dumps(snap, allow_nan=False)


def test_the_first_heatmap_rides_on_a_whole_image_thumbnail_only(caplog: pytest.LogCaptureFixture) -> None:
    heat = "data:image/png;base64,HEAT"
    maps = {"PA": {"stage": "view_cam", "peak": 1.0, "overlay": heat}, "AP": {"overlay": PNG}}
    board = StationBoard()
    whole = board.apply("xray/st-a/xr-01/verdict", verdict(1, thumbnail=PNG, roi=None, heatmaps=maps), T0)
    assert whole is not None and whole.data["station"]["latest"]["heatmap"] == {"label": "PA", "overlay": heat}
    assert "heatmap" not in whole.data["station"]["history"][0]
    # An ROI crop is not the frame the overlay covers; no thumbnail, nothing to draw it on.
    boxed = board.apply("xray/st-a/xr-01/verdict", verdict(2, thumbnail=PNG, heatmaps=maps,
                                                           roi={"found": True, "box": [1, 2, 30, 40]}), T0)  # fmt: skip
    assert boxed is not None and boxed.data["station"]["latest"]["heatmap"] is None
    bare = board.apply("xray/st-a/xr-01/verdict", verdict(3, heatmaps=maps), T0)
    assert bare is not None and bare.data["station"]["latest"]["heatmap"] is None
    # A map without an overlay is skipped; a huge overlay or a foreign URL is never passed on.
    only_ap = {"PA": {"stage": "view_cam"}, "AP": {"overlay": heat}}
    later = board.apply("xray/st-a/xr-01/verdict", verdict(4, thumbnail=PNG, heatmaps=only_ap), T0)
    assert later is not None and later.data["station"]["latest"]["heatmap"] == {"label": "AP", "overlay": heat}
    huge = {"PA": {"overlay": "data:image/png;base64," + "A" * MAX_HEATMAP_CHARS}}
    with caplog.at_level(logging.WARNING):
        big = board.apply("xray/st-a/xr-01/verdict", verdict(5, thumbnail=PNG, heatmaps=huge), T0)
    assert big is not None and big.data["station"]["latest"]["heatmap"] is None
    assert "heatmap overlay" in caplog.text
    other = board.apply("xray/st-a/xr-01/verdict", verdict(6, thumbnail=PNG, heatmaps={"PA": {"overlay": "javascript:x"}}), T0)
    assert other is not None and other.data["station"]["latest"]["heatmap"] is None
    # A research stage's map (paper 004's finding classifier) never reaches the ward tile,
    # even listed first: the view's map does.
    research = {"COVID-19": {"stage": "finding_cam", "research_only": True, "overlay": heat + "R"},
                "PA": {"stage": "view_cam", "research_only": False, "overlay": heat}}
    both = board.apply("xray/st-a/xr-01/verdict", verdict(7, thumbnail=PNG, heatmaps=research), T0)
    assert both is not None and both.data["station"]["latest"]["heatmap"] == {"label": "PA", "overlay": heat}
    alone = {"COVID-19": research["COVID-19"]}
    only = board.apply("xray/st-a/xr-01/verdict", verdict(8, thumbnail=PNG, heatmaps=alone), T0)
    assert only is not None and only.data["station"]["latest"]["heatmap"] is None
