"""A file is judged on content that has stopped changing, whatever the writer does.

Real daemon (subprocess), real mosquitto, phantom DICOM files written the way hostile writers
write them: preallocated at full size and filled later, blocks out of order with a hole left,
closed early; and a 50 GiB sparse file that must be refused without being read.  What a
verdict was judged on is checked against ``edge-worker analyze`` of the complete file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import Mosquitto, Subscriber

from edge_worker.ingest.whole import is_whole
from edge_worker.judging.process import PREFIX_BYTES, file_digest
from tests.stations import ROOT, PhantomStock, Station, sop_uid, wait_until


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> PhantomStock:
    return PhantomStock(tmp_path_factory.mktemp("phantoms"))


@pytest.fixture
def stations(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Callable[..., Station]]:
    """Factory of stations, ``stations(settle_seconds=2.0)`` setting their [watch] table."""
    made: list[Station] = []

    def make(**watch: object) -> Station:
        made.append(Station(tmp_path / f"st{len(made)}", mosquitto.url, station="xr-c",
                            tables={"watch": watch}))  # fmt: skip
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture
def station(stations: Callable[..., Station]) -> Station:
    return stations()


def split(path: Path) -> tuple[bytes, bytes]:
    """The file's bytes before its Pixel Data value, and the value (native phantoms end in it)."""
    data = path.read_bytes()
    n = len(pydicom.dcmread(path).PixelData)
    return data[:-n], data[-n:]


def judged_as(payload: dict[str, Any]) -> tuple[Any, ...]:
    """What a verdict says about the pixels; equal only for the same image content."""
    return payload["view"], payload["roi"], payload["quality"], payload["decision"]


def reference(path: Path) -> tuple[Any, ...]:
    """``edge-worker analyze`` of the complete file: the verdict the daemon must reach."""
    out = subprocess.run([sys.executable, "-m", "edge_worker", "analyze", "--json", str(path)],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout  # fmt: skip
    return judged_as(json.loads(out.splitlines()[0]))



def messages(sub: Subscriber, station: Station, kind: str, source: Path | None = None
             ) -> list[dict[str, Any]]:
    """The ``kind`` messages received, only those about the image in ``source`` if given."""
    found = [json.loads(m.payload) for m in sub.messages(f"{station.base}/{kind}")]
    if source is None:
        return found
    uid = sop_uid(source)
    return [p for p in found if p["sop_instance_uid"] == uid]


def flush(sub: Subscriber, station: Station, stock: PhantomStock, seed: int) -> None:
    """Drop a whole file and wait for its verdict: everything handed on before it is judged."""
    stock.drop(seed, station.watch, f"sentinel-{seed}.dcm")
    wait_until("the sentinel's verdict", lambda: bool(messages(sub, station, "verdict", stock.path(seed))),
               30, station)  # fmt: skip


# -- the whole-file check alone ----------------------------------------------------------------


def test_whole_check_refuses_preallocated_and_holed_pixel_data(tmp_path: Path, stock: PhantomStock) -> None:
    head, pixels = split(stock.path(5000))
    path = tmp_path / "f.dcm"
    with path.open("wb") as fh:  # header, then the rest preallocated as zeros
        fh.write(head)
        fh.truncate(len(head) + len(pixels))
    assert not is_whole(path)
    third = len(pixels) // 3
    with path.open("r+b") as fh:  # out of order: the last third first, a hole in the middle
        fh.seek(len(head) + 2 * third)
        fh.write(pixels[2 * third :])
    assert not is_whole(path)
    with path.open("r+b") as fh:
        fh.seek(len(head))
        fh.write(pixels[: 2 * third])
    assert is_whole(path)


class _CountingPath(type(Path())):  # type: ignore[misc]
    """A path whose ``open`` counts the bytes read through it."""

    read_bytes_total = 0

    def open(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        fh = super().open(*args, **kwargs)
        read = fh.read

        def counted(n: int = -1) -> bytes:
            data = read(n)
            _CountingPath.read_bytes_total += len(data)
            return data

        fh.read = counted
        return fh


def test_rejected_file_key_reads_a_bounded_prefix(tmp_path: Path) -> None:
    huge = tmp_path / "huge.bin"
    with huge.open("wb") as fh:
        fh.write(b"x" * 10)
        fh.truncate(50 << 30)
    other = tmp_path / "other.bin"
    with other.open("wb") as fh:  # the same first MiB, another size: another key
        fh.write(b"x" * 10)
        fh.truncate(PREFIX_BYTES + 1)
    _CountingPath.read_bytes_total = 0
    key = file_digest(_CountingPath(huge))
    assert _CountingPath.read_bytes_total == PREFIX_BYTES  # one MiB of the 50 GiB
    assert key != file_digest(other)


# -- the real daemon -----------------------------------------------------------------------------


def test_preallocated_file_filled_at_once_gets_one_verdict_on_its_content(
    station: Station, mosquitto: Mosquitto, subscriber: Callable[..., Subscriber],
    stock: PhantomStock,
) -> None:
    head, pixels = split(stock.path(5001))
    expected = reference(stock.path(5001))
    sub = subscriber(mosquitto, f"{station.base}/#")
    station.start()
    target = station.watch / "prealloc.dcm"
    with target.open("wb") as fh:
        fh.write(head)
        fh.truncate(len(head) + len(pixels))
    # Closed early (a close-write event), then reopened and filled half a second later.
    time.sleep(0.5)
    with target.open("r+b") as fh:
        fh.seek(len(head))
        fh.write(pixels)
    source = stock.path(5001)
    wait_until("a verdict", lambda: bool(messages(sub, station, "verdict", source)), 30, station)
    flush(sub, station, stock, 5101)
    got = messages(sub, station, "verdict", source)
    assert [judged_as(v) for v in got] == [expected]
    assert got[0]["supersedes"] is None
    assert got[0]["file_name"] == "prealloc.dcm"
    assert messages(sub, station, "error") == []


def test_out_of_order_write_with_a_hole_gets_one_verdict_on_its_content(
    stations: Callable[..., Station], mosquitto: Mosquitto, subscriber: Callable[..., Subscriber],
    stock: PhantomStock,
) -> None:
    station = stations(settle_seconds=2.0)
    head, pixels = split(stock.path(5002))
    expected = reference(stock.path(5002))
    sub = subscriber(mosquitto, f"{station.base}/#")
    station.start()
    target = station.watch / "holes.dcm"
    third = len(pixels) // 3
    with target.open("wb") as fh:  # header and the last third: the right size, a hole inside
        fh.write(head)
        fh.seek(len(head) + 2 * third)
        fh.write(pixels[2 * third :])
    time.sleep(0.5)  # a network share that pauses, then the writer comes back for the middle
    with target.open("r+b") as fh:
        fh.seek(len(head))
        fh.write(pixels[: 2 * third])
    source = stock.path(5002)
    wait_until("a verdict", lambda: bool(messages(sub, station, "verdict", source)), 30, station)
    flush(sub, station, stock, 5102)
    got = messages(sub, station, "verdict", source)
    assert [judged_as(v) for v in got] == [expected]
    assert messages(sub, station, "error") == []


def test_content_that_changes_after_its_verdict_is_judged_again_and_supersedes(
    station: Station, mosquitto: Mosquitto, subscriber: Callable[..., Subscriber],
    stock: PhantomStock,
) -> None:
    """The worst writer: preallocates, closes, and comes back only after a verdict was sent."""
    head, pixels = split(stock.path(5003))
    expected = reference(stock.path(5003))
    sub = subscriber(mosquitto, f"{station.base}/#")
    station.start()
    target = station.watch / "late.dcm"
    with target.open("wb") as fh:
        fh.write(head)
        fh.truncate(len(head) + len(pixels))
    source = stock.path(5003)
    wait_until("the verdict on the zeros", lambda: bool(messages(sub, station, "verdict", source)),
               30, station)  # fmt: skip
    with target.open("r+b") as fh:
        fh.seek(len(head))
        fh.write(pixels)
    wait_until("a second verdict", lambda: len(messages(sub, station, "verdict", source)) >= 2,
               30, station)  # fmt: skip
    flush(sub, station, stock, 5103)
    first, second = messages(sub, station, "verdict", source)
    assert judged_as(first) != expected  # judged on the zeros: the writer's fault, not ours
    assert judged_as(second) == expected
    assert first["supersedes"] is None
    assert second["supersedes"] == first["id"] != second["id"]
    assert second["sop_instance_uid"] == first["sop_instance_uid"]


def test_huge_sparse_file_is_refused_unread_and_the_next_file_is_judged(
    station: Station, mosquitto: Mosquitto, subscriber: Callable[..., Subscriber],
    stock: PhantomStock,
) -> None:
    head, _ = split(stock.path(5004))
    sub = subscriber(mosquitto, f"{station.base}/#")
    station.start()
    hidden = station.watch / ".huge.part"
    with hidden.open("wb") as fh:  # a DICOM header, then 50 GiB of nothing
        fh.write(head)
        fh.truncate(50 << 30)
    os.replace(hidden, station.watch / "huge.dcm")
    t0 = time.monotonic()
    stock.drop(5104, station.watch, "after.dcm")
    # The huge file is not proved whole (it ends in zeros) and settles; the small one behind it
    # is; both must be through the judge while the huge one would still be hashing.
    wait_until("the error on the huge file and the verdict on the file after it",
               lambda: bool(messages(sub, station, "verdict", stock.path(5104))
                            and messages(sub, station, "error")), 30, station)  # fmt: skip
    after_s = time.monotonic() - t0
    errors = messages(sub, station, "error")
    assert [e["reason"] for e in errors] == ["too_large"]
    assert errors[0]["quarantined_as"] == "huge.dcm"
    print(f"[sparse 50 GiB] refused and the next file judged, both within {after_s:.2f} s")


def test_fingerprint_sees_content_that_changed_under_the_same_size_and_mtime(tmp_path: Path) -> None:
    from edge_worker.watching.stillness import fingerprint

    path = tmp_path / "f.bin"
    with path.open("wb") as fh:  # preallocated: the tail not yet written
        fh.write(b"head" * 1000)
        fh.truncate(1 << 20)
    st = path.stat()
    before = fingerprint(str(path))
    assert before is not None and before[1]  # the zero tail is noticed
    with path.open("r+b") as fh:
        fh.seek((1 << 20) - 10)
        fh.write(b"filled in!")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # a copier that keeps the mtime
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    after = fingerprint(str(path))
    assert after is not None and after[0] != before[0] and not after[1]


def test_journal_remembers_the_last_message_per_path_across_reopen(tmp_path: Path) -> None:
    from edge_worker.publish.journal import Journal

    journal = Journal(tmp_path / "j.sqlite3")
    assert journal.last_message("a/%FF.dcm") is None
    journal.set_last_message("a/%FF.dcm", "id-1", "verdict", "1.2.3")
    journal.set_last_message("a/%FF.dcm", "id-2", "verdict", "1.2.3")
    journal.set_last_message("b.dcm", "id-3", "error", None)
    journal.close()
    journal = Journal(tmp_path / "j.sqlite3")
    assert journal.last_message("a/%FF.dcm") == ("id-2", "verdict", "1.2.3")
    assert journal.last_message("b.dcm") == ("id-3", "error", None)
    journal.close()
