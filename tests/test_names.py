"""Any name the file system allows is judged or quarantined, and shown safely and reversibly.

Names that are not UTF-8 (modalities, SMB shares), newlines, leading dashes, spaces, ``%`` and
names of 255 bytes go through the real daemon (subprocess) and a real mosquitto: each gets a
verdict or an error whose ``file_name`` maps back to the exact bytes, and a rejected one lies
in the quarantine with a reason record naming it the same way.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Mosquitto, Subscriber

from edge_worker.names import original, original_path, printable
from edge_worker.watching.quarantine import Quarantine
from tests.stations import PhantomStock, Station, wait_until

HOSTILE = [
    b"\xff\xfe.dcm",
    b"caf\xe9 latin-1.dcm",
    b"line\nbreak.dcm",
    b"-rf --help.dcm",
    b" leading and trailing space .dcm",
    b"100% sure.dcm",
    b"tab\there\r.dcm",
    "Röntgen Ä.dcm".encode(),
    b"\xc3",  # a UTF-8 sequence cut short
    b"x" * 251 + b".dcm",  # NAME_MAX: 255 bytes
]


@pytest.mark.parametrize("name", HOSTILE, ids=lambda n: printable(n)[:24])
def test_printable_is_safe_and_round_trips(name: bytes) -> None:
    shown = printable(name)
    assert original(shown) == name
    assert printable(os.fsdecode(name)) == shown  # the same from Python's surrogate form
    assert os.fsencode(original_path(shown)) == name
    shown.encode("utf-8")  # no lone surrogates left
    assert not any(ch in shown for ch in "\n\r\t\x00\x7f")


def test_ordinary_names_are_shown_unchanged() -> None:
    for name in ("1.2.840.113619.2.55.3.dcm", "IMG 0001.dcm", "Röntgen.dcm", "-a.dcm"):
        assert printable(name) == name


def test_quarantine_takes_every_name_and_records_it(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    q = Quarantine(tmp_path / "q")
    for i, name in enumerate(HOSTILE):
        src = os.path.join(os.fsencode(inbox), name)
        with open(src, "wb") as fh:
            fh.write(b"not dicom %d" % i)
        dest = q.put(Path(os.fsdecode(src)), "not_dicom", "test")
        assert dest.read_bytes() == b"not dicom %d" % i
        record = json.loads(dest.with_name(dest.name + ".reason.json").read_text("utf-8"))
        assert original(record["file_name"]) == name
        assert os.fsencode(original_path(record["original_path"])) == src
        assert len(os.fsencode(dest.name + ".reason.json")) <= 255
    assert not os.listdir(inbox)


# -- the real daemon --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> PhantomStock:
    return PhantomStock(tmp_path_factory.mktemp("phantoms"))


@pytest.fixture
def station(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Station]:
    s = Station(tmp_path / "st", mosquitto.url, station="xr-n")
    yield s
    s.close()



def drop_as(source: Path | bytes, watch: Path, name: bytes) -> None:
    """Write ``source`` (a file or bytes) under a hidden name, then rename it in as ``name``."""
    folder = os.fsencode(watch)
    hidden = os.path.join(folder, b".incoming.part")
    if isinstance(source, bytes):
        with open(hidden, "wb") as fh:
            fh.write(source)
    else:
        shutil.copyfile(source, hidden)
    os.replace(hidden, os.path.join(folder, name))


def payloads(sub: Subscriber, station: Station, kind: str) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in sub.messages(f"{station.base}/{kind}")]


def test_every_name_gets_a_verdict_or_a_quarantine_and_round_trips(
    station: Station, mosquitto: Mosquitto, subscriber: Callable[..., Subscriber],
    stock: PhantomStock,
) -> None:
    good = [b"\xff\xfe.dcm", b"line\nbreak.dcm", b"-rf --help.dcm", b" spaced out .dcm",
            b"100% sure.dcm", b"x" * 251 + b".dcm"]  # fmt: skip
    bad = [b"\xfe\xff bad.dcm", b"bad\nname.dcm", b"y" * 251 + b".dcm"]
    sub = subscriber(mosquitto, f"{station.base}/#")
    station.start()
    for seed, name in enumerate(good, start=4100):
        drop_as(stock.path(seed), station.watch, name)
    for i, name in enumerate(bad):  # distinct contents: the same bytes would be one image
        drop_as(b"this is not a DICOM file %d\n" % i * 40, station.watch, name)
    wait_until("a message for every file",
               lambda: len(payloads(sub, station, "verdict")) + len(payloads(sub, station, "error"))
               >= len(good) + len(bad), 60, station)  # fmt: skip
    verdicts = payloads(sub, station, "verdict")
    errors = payloads(sub, station, "error")
    assert sorted(original(str(v["file_name"])) for v in verdicts) == sorted(good)
    assert sorted(original(str(e["file_name"])) for e in errors) == sorted(bad)
    assert {e["reason"] for e in errors} == {"not_dicom"}
    # Each rejected file is in the quarantine, its record naming the original bytes.
    records = [json.loads(p.read_text("utf-8")) for p in station.quarantine.glob("*.reason.json")]
    assert sorted(original(r["file_name"]) for r in records) == sorted(bad)
    assert all(e["quarantined_as"] for e in errors)
    left = sorted(os.listdir(os.fsencode(station.watch)))
    assert left == sorted(good)  # judged files stay; rejected ones moved
    # The log carries the safe form, never a raw newline inside a name.
    log = station.log_text()
    assert "bad%0Aname.dcm" in log and "bad\nname" not in log
    assert station.alive()
    rc, _ = station.terminate()
    assert rc == 0


def test_a_file_that_never_completes_under_a_non_utf8_name_is_reported(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Callable[..., Subscriber],
) -> None:
    station = Station(tmp_path / "st", mosquitto.url, station="xr-e",
                      tables={"watch": {"incomplete_deadline_seconds": 3.0}})  # fmt: skip
    try:
        sub = subscriber(mosquitto, f"{station.base}/#")
        station.start()
        name = b"\xff empty\n.dcm"
        drop_as(b"", station.watch, name)  # stays empty: incomplete after the deadline
        wait_until("the error", lambda: bool(payloads(sub, station, "error")), 30, station)
        (error,) = payloads(sub, station, "error")
        assert error["reason"] == "incomplete_file"
        assert original(str(error["file_name"])) == name
        assert error["quarantined_as"] == "%FF empty%0A.dcm"
        assert os.listdir(os.fsencode(station.watch)) == []
    finally:
        station.close()
