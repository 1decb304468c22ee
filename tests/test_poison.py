"""Poison files: a file that kills the worker is retried once, then quarantined, and the
crash loop (systemd restarts, the same file, killed again) ends.

The death is real: the daemon subprocess SIGKILLs itself when it starts judging a file whose
name begins with ``poison`` (what the kernel's OOM killer does under ``MemoryMax``).  The hook
is a ``sitecustomize`` module put on the daemon's ``PYTHONPATH`` by the test; the product
code has no test switch.  Each restart is the test's, as systemd's ``Restart=on-failure``.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Mosquitto, Subscriber

from edge_worker.publish.journal import Journal
from tests.stations import ROOT, PhantomStock, Station

_HOOK = '''
import os, signal, sys
if "edge_worker.ingest.sandbox" not in sys.orig_argv:
    sys.path.insert(0, {root!r})
    from edge_worker.judging import process

    _read = process.Judge._read

    def _read_or_die(self, path, seen_at):
        if path.name.startswith("poison"):
            os.kill(os.getpid(), signal.SIGKILL)
        return _read(self, path, seen_at)

    process.Judge._read = _read_or_die
'''


@pytest.fixture
def station(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Station]:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(_HOOK.format(root=str(ROOT))))
    s = Station(tmp_path / "station", mosquitto.url, env={"PYTHONPATH": str(hook)})
    try:
        yield s
    finally:
        s.close()


def test_journal_counts_a_strike_per_death_and_forgets_what_finished(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    journal.begin(["a|1|1", "b|1|1", "c|1|1"])  # one batch, then the worker dies
    journal.close()
    journal = Journal(path)
    assert journal.crashed() == {"a|1|1": 1, "b|1|1": 1, "c|1|1": 1}
    assert journal.crashed() == {"a|1|1": 1, "b|1|1": 1, "c|1|1": 1}  # nothing ran since
    journal.begin(["a|1|1"])
    journal.end(["a|1|1"])  # judged alone: innocent
    journal.begin(["b|1|1"])  # judged alone, and the worker dies again
    journal.close()
    journal = Journal(path)
    journal.mark_queued("c|1|1", "m", "verdict")  # its message was stored before the death
    assert journal.crashed() == {"b|1|1": 2}
    assert journal.strikes(["a|1|1", "b|1|1", "d|1|1"]) == {"b|1|1": 2}
    journal.close()


def run_until_it_stays_up(station: Station, sub: Subscriber, done: Callable[[], bool]) -> int:
    """Start the daemon, restarting it after each death, until ``done()``; returns the deaths."""
    deaths = 0
    deadline = time.monotonic() + 600
    station.start()
    while not done():
        assert time.monotonic() < deadline, f"not settled after 600 s:\n{station.log_tail()}"
        assert station.proc is not None
        if station.proc.poll() is not None:
            assert station.proc.returncode == -9, station.log_tail()
            deaths += 1
            assert deaths <= 4, f"still dying after {deaths} restarts:\n{station.log_tail()}"
            station.start()
            continue
        try:
            station.proc.wait(0.2)  # a death ends the wait at once
        except subprocess.TimeoutExpired:
            pass
    return deaths


def payloads(sub: Subscriber, station: Station, kind: str) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in sub.messages(f"{station.base}/{kind}")]


def test_a_poison_file_is_retried_once_then_quarantined(
    station: Station, mosquitto: Mosquitto, subscriber: Callable[..., Subscriber], tmp_path: Path
) -> None:
    stock = PhantomStock(tmp_path / "stock", size=512)
    sub = subscriber(mosquitto, f"{station.base}/verdict", f"{station.base}/error")
    stock.drop(1, station.watch, "poison-1.dcm")
    deaths = run_until_it_stays_up(
        station, sub, lambda: bool(sub.messages(f"{station.base}/error"))
    )
    assert deaths == 2  # judged, died; judged again alone, died; quarantined at the next start
    (error,) = payloads(sub, station, "error")
    assert error["reason"] == "crashed_worker"
    assert "died 2 times" in str(error["detail"])
    assert (station.quarantine / str(error["quarantined_as"])).is_file()
    assert not (station.watch / "poison-1.dcm").exists()
    # The station judges what comes next.
    stock.drop(2, station.watch, "after.dcm")
    sub.wait_for(f"{station.base}/verdict", 1, timeout=120)
    assert station.alive() and station.starts == 3


def test_a_batch_that_died_does_not_condemn_its_other_files(
    station: Station, mosquitto: Mosquitto, subscriber: Callable[..., Subscriber], tmp_path: Path
) -> None:
    stock = PhantomStock(tmp_path / "stock", size=512)
    sub = subscriber(mosquitto, f"{station.base}/verdict", f"{station.base}/error")
    # Waiting in the folder before the start: the reconcile hands them on together (a batch).
    for seed, name in ((3, "a.dcm"), (4, "poison-4.dcm"), (5, "b.dcm"), (6, "c.dcm")):
        stock.drop(seed, station.watch, name)

    def settled() -> bool:
        return len(sub.messages(f"{station.base}/verdict")) >= 3 and bool(
            sub.messages(f"{station.base}/error")
        )

    deaths = run_until_it_stays_up(station, sub, settled)
    assert deaths == 2
    (error,) = payloads(sub, station, "error")
    assert error["reason"] == "crashed_worker"
    assert str(error["quarantined_as"]).startswith("poison-4")
    assert len({v["id"] for v in payloads(sub, station, "verdict")}) == 3
    assert "judging it again, alone" in station.log_text()
    assert station.alive()
