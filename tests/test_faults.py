"""Fault tests with real processes: a real mosquitto, the real daemon as a subprocess.

(a) the broker stopped and restarted three times during a stream of files: every verdict
    arrives; (b) the daemon killed with SIGKILL mid-stream and restarted three times: every file
    gets its verdict and no id ever arrives with two different contents; (c) SIGTERM drains the
    work in flight and exits 0 within service.stop_timeout_seconds; (d) a quarantine that cannot
    take files and an outbox that is full: a clear health failure, the daemon keeps running,
    no input file is lost, and everything is processed once the condition clears.

Each test prints one figure line ("verdicts sent N, received M, distinct ids K, conflicting
contents 0"); with ``EDGE_WORKER_FAULT_FIGURES=FILE`` the lines are also appended to FILE.
Images are 512-pixel phantoms so that a stream costs seconds.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Mosquitto, Subscriber, find_mosquitto, free_port

from tests.stations import PhantomStock, Station, by_id, sop_uid, summary, wait_until


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> PhantomStock:
    return PhantomStock(tmp_path_factory.mktemp("phantoms"))


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto that keeps sessions and queued messages across its own restarts."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto binary not found in PATH or /usr/sbin (apt install mosquitto)")
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = Mosquitto(binary, workdir, persistence=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()



def verdicts(sub: Subscriber, station: Station) -> list[bytes]:
    return [m.payload for m in sub.messages(f"{station.base}/verdict")]


def assert_every_file_judged(watch: Path, names: list[str], received: list[bytes]) -> None:
    uids = {json.loads(p)["sop_instance_uid"] for p in received}
    missing = [n for n in names if sop_uid(watch / n) not in uids]
    assert not missing, f"no verdict for {missing}"


# -- (a) broker outages -----------------------------------------------------------------------


def test_broker_restarted_three_times_every_verdict_arrives(
    tmp_path: Path,
    persistent_broker: Mosquitto,
    subscriber: Callable[..., Subscriber],
    stations: Callable[..., Station],
    stock: PhantomStock,
) -> None:
    broker = persistent_broker
    station = stations(tmp_path / "st", broker.url, station="xr-a")
    # A persistent session on a persistent broker: verdicts the broker accepts while this
    # subscriber is reconnecting are queued for it, even across the broker's restart.
    sub = subscriber(broker, f"{station.base}/#", persistent=True)
    station.start()
    names: list[str] = []
    seed = 1000
    held = []
    for outage in range(3):
        for _ in range(3):  # broker up
            names.append(stock.drop(seed, station.watch))
            seed += 1
            time.sleep(0.15)
        broker.stop()
        down_at = time.monotonic()
        for _ in range(4):  # broker down: the daemon keeps judging into its outbox
            names.append(stock.drop(seed, station.watch))
            seed += 1
            time.sleep(0.15)
        wait_until("the verdicts made during the outage to wait in the outbox",
                   lambda: station.outbox_depth() >= 4, 30, station)  # fmt: skip
        held.append(station.outbox_depth())
        time.sleep(max(0.0, 2.5 - (time.monotonic() - down_at)))
        assert station.alive(), station.log_tail()
        broker.start()
        # The stream goes on while the daemon reconnects and empties its outbox.
        deadline = time.monotonic() + 45
        while station.outbox_depth() > 0:
            assert time.monotonic() < deadline, f"outbox not emptied after the restart\n{station.log_tail()}"
            names.append(stock.drop(seed, station.watch))
            seed += 1
            time.sleep(0.5)
    for _ in range(3):
        names.append(stock.drop(seed, station.watch))
        seed += 1
    wait_until(f"{len(names)} distinct verdicts",
               lambda: len(by_id(verdicts(sub, station))) >= len(names), 60, station)  # fmt: skip
    time.sleep(1.0)  # let duplicates, if any, arrive
    wait_until("an empty outbox", lambda: station.outbox_depth() == 0, 20, station)
    received = verdicts(sub, station)
    made = station.journal_messages()
    summary("a: broker stopped 3x", len(made), received, f"; outbox held {held} during the outages")
    assert_every_file_judged(station.watch, names, received)
    assert len(by_id(received)) == len(names) == len(made)
    assert all(len(v) == 1 for v in by_id(received).values()), "an id arrived with two contents"
    assert min(held) >= 4  # the outbox, not the broker, held what was judged during each outage
    rc, _ = station.terminate()
    assert rc == 0


# -- (b) SIGKILL ------------------------------------------------------------------------------


def test_daemon_killed_three_times_every_file_judged_same_content(
    tmp_path: Path,
    mosquitto: Mosquitto,
    subscriber: Callable[..., Subscriber],
    stations: Callable[..., Station],
    stock: PhantomStock,
) -> None:
    station = stations(tmp_path / "st", mosquitto.url, station="xr-b")
    sub = subscriber(mosquitto, f"{station.base}/#")
    station.start()
    names: list[str] = []
    seed = 2000
    for kill in range(3):
        # A burst, then SIGKILL while the daemon is busy with it.
        for _ in range(8):
            names.append(stock.drop(seed, station.watch))
            seed += 1
        before = len(verdicts(sub, station))
        wait_until("a verdict from the burst", lambda b=before: len(verdicts(sub, station)) > b,  # type: ignore[misc]
                   30, station)  # fmt: skip
        station.kill()
        station.start()
    for _ in range(4):
        names.append(stock.drop(seed, station.watch))
        seed += 1
    wait_until(f"{len(names)} distinct verdicts",
               lambda: len(by_id(verdicts(sub, station))) >= len(names), 90, station)  # fmt: skip
    wait_until("an empty outbox", lambda: station.outbox_depth() == 0, 20, station)
    time.sleep(1.0)
    received = verdicts(sub, station)
    made = station.journal_messages()
    summary("b: SIGKILL 3x", len(made), received)
    assert_every_file_judged(station.watch, names, received)
    ids = by_id(received)
    assert len(ids) == len(names) == len(made)
    conflicting = {k: len(v) for k, v in ids.items() if len(v) > 1}
    assert not conflicting, f"ids received with different contents: {conflicting}"
    # What arrived is what the journal holds: one content per id, ever.
    for k, v in ids.items():
        assert json.loads(next(iter(v))) == json.loads(made[k])
    assert station.journaled_files() == set(names)
    rc, _ = station.terminate()
    assert rc == 0


# -- (c) SIGTERM ------------------------------------------------------------------------------

STOP_TIMEOUT_S = 3.0
STOP_MARGIN_S = 5.0  # interpreter shutdown and the last broker round trip


def test_sigterm_drains_work_in_flight_and_exits_in_time(
    tmp_path: Path,
    mosquitto: Mosquitto,
    subscriber: Callable[..., Subscriber],
    stations: Callable[..., Station],
    stock: PhantomStock,
) -> None:
    station = stations(
        tmp_path / "st", mosquitto.url, station="xr-c",
        tables={"service": {"stop_timeout_seconds": STOP_TIMEOUT_S}},
    )  # fmt: skip
    sub = subscriber(mosquitto, f"{station.base}/#")
    station.start()
    names = [stock.drop(3000 + i, station.watch) for i in range(40)]
    wait_until("the first verdict", lambda: len(verdicts(sub, station)) >= 1, 30, station)
    before = len(verdicts(sub, station))
    rc, took = station.terminate()
    delivered = verdicts(sub, station)
    judged = station.journaled_files()
    line = summary(
        "c: SIGTERM", len(station.journal_messages()), delivered,
        f"; exit {rc} after {took:.2f} s (limit {STOP_TIMEOUT_S:g} s + {STOP_MARGIN_S:g} s); "
        f"{len(delivered) - before} verdicts drained after SIGTERM, "
        f"{len(names) - len(judged)} of {len(names)} files left unjudged in the folder",
    )  # fmt: skip
    assert rc == 0, station.log_tail()
    assert took <= STOP_TIMEOUT_S + STOP_MARGIN_S, line
    wait_until("availability offline",
               lambda: sub.messages(f"{station.base}/availability")[-1].payload == b"offline", 10)  # fmt: skip
    # Every file marked done had its verdict delivered before the exit; the others are still
    # in the folder, unmarked, for the next start.
    assert_every_file_judged(station.watch, sorted(judged), delivered)
    assert all((station.watch / n).is_file() for n in names)
    assert station.outbox_depth() == 0
    station.start()
    wait_until(f"{len(names)} distinct verdicts after the restart",
               lambda: len(by_id(verdicts(sub, station))) >= len(names), 60, station)  # fmt: skip
    received = verdicts(sub, station)
    summary("c: SIGTERM, after the restart", len(station.journal_messages()), received)
    assert_every_file_judged(station.watch, names, received)
    assert all(len(v) == 1 for v in by_id(received).values())
    rc, _ = station.terminate()
    assert rc == 0


# -- (d) a full disk --------------------------------------------------------------------------


def _metrics(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def _last_status(sub: Subscriber, station: Station) -> dict[str, object]:
    msgs = sub.messages(f"{station.base}/status")
    return json.loads(msgs[-1].payload) if msgs else {}


def test_quarantine_unusable_is_a_health_failure_and_files_wait(
    tmp_path: Path,
    mosquitto: Mosquitto,
    subscriber: Callable[..., Subscriber],
    stations: Callable[..., Station],
    stock: PhantomStock,
) -> None:
    port = free_port()
    station = stations(
        tmp_path / "st", mosquitto.url, station="xr-d1",
        tables={"service": {"metrics_listen": f"127.0.0.1:{port}"}},
    )  # fmt: skip
    # Where the quarantine folder should be, a file: nothing can be created there (a full or
    # read-only disk fails the same way, with a different errno).
    station.quarantine.write_text("not a folder\n")
    sub = subscriber(mosquitto, f"{station.base}/#")
    station.start()
    bad = []
    for i in range(2):
        name = f"bad-{i}.dcm"
        (station.watch / f".{name}.part").write_bytes(b"not a radiograph\n" * (50 + i))
        (station.watch / f".{name}.part").rename(station.watch / name)
        bad.append(name)
    good = [stock.drop(4000, station.watch)]
    errors = sub.wait_for(f"{station.base}/error", 2, timeout=30)
    sub.wait_for(f"{station.base}/verdict", 1, timeout=30)
    assert all(json.loads(m.payload)["quarantined_as"] is None for m in errors)
    wait_until("a degraded status naming the quarantine",
               lambda: "quarantine" in _last_status(sub, station).get("problems", {}), 10, station)  # type: ignore[operator]
    problem = _last_status(sub, station)["problems"]["quarantine"]  # type: ignore[index]
    assert str(station.quarantine) in problem, problem
    assert "edge_worker_healthy 0" in _metrics(port)
    assert station.alive()
    assert all((station.watch / n).is_file() for n in bad + good)  # nothing lost
    # The condition clears: the waiting files move into the quarantine, health recovers.
    station.quarantine.unlink()
    wait_until("the rejected files in the quarantine",
               lambda: all((station.quarantine / n).is_file() for n in bad), 15, station)  # fmt: skip
    for n in bad:
        assert not (station.watch / n).exists()
        assert json.loads((station.quarantine / f"{n}.reason.json").read_text())["reason"] == "not_dicom"
    wait_until("an ok status", lambda: _last_status(sub, station).get("state") == "ok", 10, station)
    assert "edge_worker_healthy 1" in _metrics(port)
    messages = [m.payload for m in errors] + verdicts(sub, station)
    summary("d: quarantine unusable", len(station.journal_messages()), messages,
            f"; {len(bad)} rejected files kept in the watch folder, then quarantined")  # fmt: skip
    assert len(by_id(messages)) == 3
    rc, _ = station.terminate()
    assert rc == 0


def test_outbox_full_is_a_health_failure_and_nothing_is_lost(
    tmp_path: Path,
    persistent_broker: Mosquitto,
    subscriber: Callable[..., Subscriber],
    stations: Callable[..., Station],
    stock: PhantomStock,
) -> None:
    broker = persistent_broker
    port = free_port()
    limit = 10
    station = stations(
        tmp_path / "st", broker.url, station="xr-d2",
        tables={"state": {"outbox_max_messages": limit},
                "service": {"metrics_listen": f"127.0.0.1:{port}"}},
    )  # fmt: skip
    sub = subscriber(broker, f"{station.base}/#", persistent=True)
    station.start()
    broker.stop()
    names = [stock.drop(5000 + i, station.watch) for i in range(limit + 4)]
    wait_until("a full outbox", lambda: station.outbox_depth() >= limit, 30, station)
    wait_until("the outbox failure in the log", lambda: "outbox full" in station.log_text(), 15, station)
    wait_until("the health failure in the metrics",
               lambda: "edge_worker_healthy 0" in _metrics(port), 15, station)  # fmt: skip
    body = _metrics(port)
    assert f"edge_worker_outbox_depth {limit}" in body and "edge_worker_broker_connected 0" in body
    assert station.alive()
    # A restart while the outbox is still full and the broker still away: no crash loop.
    rc, _ = station.terminate()
    assert rc == 0
    station.start()
    time.sleep(1.5)
    assert station.alive(), station.log_tail()
    assert station.outbox_depth() == limit
    unjudged = set(names) - station.journaled_files()
    assert len(unjudged) == 4 and all((station.watch / n).is_file() for n in unjudged)
    # The broker returns: the status says what happened, then everything is delivered.
    broker.start()
    wait_until(f"{len(names)} distinct verdicts",
               lambda: len(by_id(verdicts(sub, station))) >= len(names), 60, station)  # fmt: skip
    wait_until("every file marked done", lambda: station.journaled_files() == set(names), 30, station)
    wait_until("an ok status", lambda: _last_status(sub, station).get("state") == "ok", 15, station)
    statuses = [json.loads(m.payload) for m in sub.messages(f"{station.base}/status")]
    received = verdicts(sub, station)
    assert all(len(v) == 1 for v in by_id(received).values())
    assert "edge_worker_healthy 1" in _metrics(port)
    degraded = [s["problems"] for s in statuses if s.get("state") == "degraded"]
    assert any("outbox" in p for p in degraded), statuses
    summary("d: outbox full", len(station.journal_messages()), received,
            f"; limit {limit}, {len(unjudged)} files waited in the folder; "
            f"degraded statuses named {sorted({k for p in degraded for k in p})}")  # fmt: skip
    rc, _ = station.terminate()
    assert rc == 0


# -- (e) a file written in pieces -------------------------------------------------------------


def test_whole_file_is_judged_at_once_and_a_half_written_one_waits(
    tmp_path: Path,
    mosquitto: Mosquitto,
    subscriber: Callable[..., Subscriber],
    stations: Callable[..., Station],
    stock: PhantomStock,
) -> None:
    """With a settle time far beyond the waits here, only the whole-file check can let a file
    through: a whole one is judged; one whose writer closed it half-way is left alone until
    the rest arrives, then judged once (never quarantined as truncated)."""
    station = stations(tmp_path / "st", mosquitto.url, station="xr-w",
                       tables={"watch": {"settle_seconds": 60.0,
                                         "incomplete_deadline_seconds": 300.0}})  # fmt: skip
    sub = subscriber(mosquitto, f"{station.base}/#")
    station.start()
    whole = stock.path(3001).read_bytes()
    (station.watch / "whole.dcm").write_bytes(whole)  # one open, write, close
    wait_until("the whole file's verdict", lambda: len(verdicts(sub, station)) == 1, 30, station)
    halves = stock.path(3002).read_bytes()
    target = station.watch / "halves.dcm"
    target.write_bytes(halves[: len(halves) // 2])  # closed half-way
    time.sleep(2.0)
    assert len(verdicts(sub, station)) == 1, "a half-written file was judged"
    with target.open("ab") as fh:
        fh.write(halves[len(halves) // 2 :])
    wait_until("the second verdict", lambda: len(verdicts(sub, station)) == 2, 30, station)
    time.sleep(0.5)
    uids = [json.loads(p)["sop_instance_uid"] for p in verdicts(sub, station)]
    assert uids == [sop_uid(stock.path(3001)), sop_uid(stock.path(3002))]
    assert sub.messages(f"{station.base}/error") == []
    assert not station.quarantine.exists() or not any(station.quarantine.iterdir())
