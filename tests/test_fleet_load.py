"""The fleet load test, run tiny: real mosquitto, the real dashboard process, publisher processes.

No timing is asserted (the figures go to BENCHMARKS.md); what is asserted is that nothing was
lost: the board counted every message of every kind the publishers had acknowledged, and the
event stream carried every verdict and every status to its HTTP client.
"""

from __future__ import annotations

from collections import Counter

import pytest

from edge_worker.bench.broker import BenchError, find_mosquitto
from edge_worker.bench.fleet_load import FleetPlan, main, markdown, percentiles, run_fleet_load
from edge_worker.bench.fleet_publisher import SiteGroup, schedule, station_names


def test_the_schedule_compresses_time_by_the_rate_multiplier() -> None:
    group = SiteGroup("127.0.0.1", 1, "xray", ["a", "b"], 5, seconds=60, rate_multiplier=10, seed=3)
    events = schedule(group)
    assert [t for t, *_ in events] == sorted(t for t, *_ in events) and all(0 <= t < 60 for t, *_ in events)
    kinds = Counter((kind, site, station) for _, kind, site, station in events)
    # A status every 30 s real time is one every 3 s: exactly 20 in 60 s, per station.
    assert {kinds["status", s, n] for s in "ab" for n in station_names(5)} == {20}
    # A verdict every 45 s on average: about 13 in 60 s at 10x, per station (10 stations: ~133).
    verdicts = sum(v for (kind, *_), v in kinds.items() if kind == "verdict")
    assert 90 < verdicts < 180
    assert schedule(group) == events  # the seed makes it repeatable


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    values = [n / 1000 for n in range(1, 101)]
    assert percentiles(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None, "max": None}


def test_plans_that_cannot_run_are_refused() -> None:
    with pytest.raises(BenchError, match="at most 500"):
        FleetPlan(sites=101, stations=5).check()
    with pytest.raises(BenchError, match="more than 0"):
        FleetPlan(seconds=0).check()
    assert main(["--sites", "0"]) == 2


@pytest.mark.skipif(find_mosquitto() is None, reason="needs mosquitto (apt install mosquitto)")
@pytest.mark.timeout(120)
def test_a_tiny_fleet_is_seen_whole_by_the_board_and_the_event_stream() -> None:
    report = run_fleet_load(FleetPlan(sites=3, stations=2, seconds=5, publishers=2))
    published = report["published"]
    # Births: each station's retained online and first status; then the schedule played.
    assert published["availability"] == 6 and published["status"] >= 6
    assert published["latest"] == published["verdict"] > 0
    assert report["rate"]["unacked"] == 0
    assert {k: report["board"][k] for k in published} == published
    assert report["board"]["unusable"] == 0 and report["board"]["over_limit"] == 0
    assert report["every_message_counted"] is True
    assert (report["board_stations"], report["board_sites"]) == (6, 3)
    stream = report["stream"]
    assert stream["verdicts"] == published["verdict"] and stream["statuses"] == published["status"]
    assert stream["every_verdict_and_status"] is True
    assert report["latency_ms"]["all"]["p50"] is not None and report["dashboard"]["max_rss_mib"] > 0
    assert "| peak resident memory (VmHWM) |" in markdown(report)
