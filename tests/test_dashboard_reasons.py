"""The dashboard shows verdict@2's coded reasons as sentences and never paints not_judged green."""

from __future__ import annotations

import json
from pathlib import Path

from edge_worker.subscribers.dashboard.state import StationBoard
from edge_worker.subscribers.summary import summary_line

T0 = 1_800_000_000.0
STATIC = Path(__file__).resolve().parents[1] / "edge_worker" / "subscribers" / "dashboard" / "static"


def _verdict(decision: str, reasons: list[dict[str, str]]) -> dict[str, object]:
    return {
        "schema": "xray-qc/verdict@2", "id": "00000000-0000-0000-0000-000000000042",
        "site": "st-a", "station": "xr-03",
        "times": {"file_seen": "2027-01-15T08:00:00.000+00:00", "verdict_made": "2027-01-15T08:00:01.000+00:00"},
        "view": {"label": "PA", "confidence": 0.97, "probabilities": {"AP": 0.03, "PA": 0.97}},
        "quality": None, "decision": decision, "reasons": reasons, "orientation": None,
        "not_for_clinical_use": True, "pack": {"name": "chest-views", "training_data": "real"},
    }  # fmt: skip


def test_a_not_judged_verdict_shows_its_sentences_and_codes() -> None:
    reasons = [{"code": "quality_not_judged", "severity": "not_judged",
                "text": "Pack chest-views checks view and orientation only; quality was not judged."}]  # fmt: skip
    payload = _verdict("not_judged", reasons)
    event = StationBoard().apply("xray/st-a/xr-03/verdict", json.dumps(payload).encode(), T0)
    assert event is not None
    latest = event.data["station"]["latest"]
    assert latest["decision"] == "not_judged"
    assert latest["reasons"] == [reasons[0]["text"]]
    assert latest["reason_codes"] == ["quality_not_judged"]
    line = summary_line("verdict", payload)
    assert line.startswith("NOT JUDGED view PA") and "quality was not judged" in line
    assert "trained on real radiographs" in line


def test_the_page_has_its_own_colour_and_word_for_not_judged() -> None:
    css = (STATIC / "style.css").read_text()
    js = (STATIC / "app.js").read_text()
    assert ".decision-not_judged .decision" in css and "var(--ok)" not in css.split(".decision-not_judged .decision")[1].split("}")[0]
    assert 'not_judged: "NOT JUDGED"' in js
