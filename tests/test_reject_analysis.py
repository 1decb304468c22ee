"""Reject analysis over HTTP: /review/rejects and /review/rejects.csv against a seeded store
(tests/reject_seed.py), with a real broker and the dashboard in-process (tests/review_http.py)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("argon2")

from edge_worker.subscribers.review.reject_analysis import CSV_COLUMNS, analyse, period_start
from tests.reject_seed import seed
from tests.review_http import Client, Running, config_for, start_dashboard


@pytest.fixture
def running(mosquitto: Any, tmp_path: Path) -> Iterator[Running]:
    run = start_dashboard(mosquitto, config_for(tmp_path))
    seed(run.parts.store.url)
    yield run
    run.stop()


def _rows(text: str) -> dict[tuple[str, str], dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    return {(r["dimension"], r["key"]): r for r in reader}


def test_csv_numbers_against_the_seeded_store(running: Running) -> None:
    host, port = running.dashboard.address
    c = Client(host, port)
    assert c.get("/review/rejects.csv")[0] == 303  # sign-in first
    c.sign_in("ann")  # tier one may read it
    status, headers, text = c.get("/review/rejects.csv?period=week")
    assert status == 200 and headers["content-type"].startswith("text/csv")
    assert 'filename="rejects-week.csv"' in headers["content-disposition"]
    rows = _rows(text)
    total = rows[("all", "all")]
    assert (total["images"], total["reviewed"], total["network_retakes"], total["confirmed_rejects"]) == ("6", "4", "4", "2")
    assert (total["reject_rate"], total["review_rate"], total["network_retake_rate"]) == ("0.3333", "0.6667", "0.6667")
    assert (total["rejects_in_pacs"], total["rejects_queued"], total["rejects_refused"]) == ("1", "0", "0")
    assert rows[("station", "ward-3/xr-01")]["images"] == "3" and rows[("station", "ward-3/xr-01")]["confirmed_rejects"] == "1"
    assert rows[("station", "ward-3/xr-02")]["reviewed"] == "2"
    assert rows[("period", "2026-11-02")]["images"] == "4" and rows[("period", "2026-11-02")]["reject_rate"] == "0.2500"
    assert rows[("period", "2026-11-09")]["images"] == "2" and rows[("period", "2026-11-09")]["reject_rate"] == "0.5000"
    assert rows[("view", "LAT")]["images"] == "2" and rows[("view", "LAT")]["confirmed_rejects"] == "1"
    assert rows[("pack", "lumbar-demo 1.1")]["reject_rate"] == "1.0000"
    assert rows[("body_part", "(none)")]["images"] == "1"
    positioning, under = rows[("reason", "111209")], rows[("reason", "111211")]
    assert (positioning["label"], positioning["share_of_rejects"], positioning["reject_rate"]) == ("Positioning", "0.5000", "0.1667")
    assert (under["label"], under["rejects_in_pacs"]) == ("Under exposed", "0")  # most specific: not "Image artifact(s)"
    assert ("reason", "111207") not in rows
    # filtered to one station, by month
    rows = _rows(c.get("/review/rejects.csv?period=month&station=ward-3/xr-02")[2])
    assert rows[("all", "all")]["images"] == "3" and rows[("period", "2026-11-01")]["confirmed_rejects"] == "1"
    assert {k for d, k in rows if d == "reason"} == {"111211"}
    assert c.get("/review/rejects.csv?period=year")[0] == 400


def test_page_shows_filters_totals_and_plots(running: Running) -> None:
    host, port = running.dashboard.address
    c = Client(host, port)
    c.sign_in("tom")
    status, _, text = c.get("/review/rejects?period=day&station=ward-3/xr-01")
    assert status == 200
    assert 'id="totals" data-images="3" data-rejects="1" data-retakes="2" data-reviewed="2"' in text
    assert '<option value="ward-3/xr-01" selected>' in text and '<option value="day" selected>' in text
    assert text.count("<svg class=\"bars rates\"") == 6
    assert 'data-series="reject_rate" data-key="111209" data-rate="0.3333"' in text
    assert 'href="/review/rejects.csv?period=day&amp;station=ward-3%2Fxr-01"' in text


def test_period_buckets_and_empty_report() -> None:
    from datetime import UTC, datetime

    sunday = datetime(2026, 11, 8, 23, 59, tzinfo=UTC)
    assert [period_start(sunday, p).isoformat() for p in ("day", "week", "month")] == ["2026-11-08", "2026-11-02", "2026-11-01"]
    report = analyse([], "week")
    assert report.total.images == 0 and report.total.reject_rate is None
    assert report.csv().splitlines()[1].startswith("all,all,every image,0,0,,0,,0,,,")
