"""State that heals, and a state disk that is refused by name.

* An outbox or journal damaged on disk (pages in the middle overwritten with garbage, the file
  truncated mid-page, the header destroyed) is moved aside with its ``-wal``/``-shm``, the rows
  SQLite can still read are copied in order into a fresh file, and the store works on.
* A sound file is never moved, and an error that is not damage (a read-only disk) is raised,
  not healed: healing it would throw away a sound database.
* The real daemon, started on a damaged outbox and a damaged journal full of undelivered
  verdicts, sets them aside, delivers every recovered verdict to a real mosquitto, reports the
  damage in its retained status, and judges a new file.
* A state folder on a tiny, a full or a read-only filesystem (a real tmpfs mount): the daemon
  exits 2 before loading any model, with a message naming the folder and its free space.

Mount tests need root (``mount -t tmpfs``) and skip with the reason where it is refused.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Mosquitto, Subscriber

from edge_worker.publish.journal import Journal
from edge_worker.publish.outbox import Outbox
from tests.stations import PhantomStock, Station, sop_uid

PAGE = 4096
PAD = "x" * 1500  # about a third of a page per row: 300 rows span some 120 pages


def _damage(path: Path, how: str) -> None:
    """Damage an SQLite file the way a power loss or a bad disk does."""
    size = path.stat().st_size
    assert size > 60 * PAGE, f"{path.name} too small to damage in the middle ({size} bytes)"
    with path.open("r+b") as fh:
        if how == "garbage":  # three pages in the middle overwritten
            fh.seek((size // PAGE // 2) * PAGE)
            fh.write(random.Random(7).randbytes(3 * PAGE))
        elif how == "truncated":  # cut mid-page, half the file gone
            fh.truncate(size // 2 + 1234)
        elif how == "header":  # the first page's header destroyed: "not a database"
            fh.write(random.Random(8).randbytes(100))
        else:
            raise ValueError(how)


def _damaged_copies(folder: Path, name: str) -> list[str]:
    """The set-aside copies of ``name`` (their -wal and -shm not counted)."""
    return sorted(
        p.name for p in folder.iterdir()
        if p.name.startswith(f"{name}.damaged-") and not p.name.endswith(("-wal", "-shm"))
    )  # fmt: skip


def _fill_outbox(path: Path, n: int, topic: str = "t/verdict") -> list[str]:
    keys = [f"ob-{i:03d}" for i in range(n)]
    with Outbox(path, max_rows=10_000) as outbox:
        for key in keys:
            outbox.put(topic, json.dumps({"id": key, "pad": PAD}).encode(), key=key)
    return keys


def _fill_journal(path: Path, n: int, queued_every: int = 0) -> list[str]:
    ids = [f"jr-{i:03d}" for i in range(n)]
    journal = Journal(path)
    for i, message_id in enumerate(ids):
        journal.remember(message_id, "verdict", {"id": message_id, "pad": PAD})
        if queued_every and i % queued_every == 0:
            journal.mark_queued(f"img-{i}.dcm|1|1", message_id, "verdict")
    journal.close()
    return ids


# -- the stores alone ---------------------------------------------------------------------------


@pytest.mark.parametrize(("how", "at_least"), [("garbage", 280), ("truncated", 100), ("header", 0)])
def test_damaged_outbox_is_set_aside_and_its_readable_rows_kept_in_order(
    tmp_path: Path, how: str, at_least: int
) -> None:
    path = tmp_path / "outbox.sqlite3"
    keys = _fill_outbox(path, 300)
    _damage(path, how)
    outbox = Outbox(path, max_rows=10_000)
    try:
        assert outbox.damage is not None
        (moved,) = _damaged_copies(tmp_path, "outbox.sqlite3")
        assert re.fullmatch(r"outbox\.sqlite3\.damaged-\d{8}T\d{6}Z", moved), moved
        assert outbox.damage.moved_to.name == moved
        pending = [e.key for e in outbox.pending(limit=1000)]
        assert len(pending) >= at_least
        assert outbox.damage.recovered == {"outbox": len(pending)}
        # Every row kept is one that was put, in the order it was put, with its payload.
        assert pending == [k for k in keys if k in set(pending)]
        for entry in outbox.pending(limit=1000):
            assert json.loads(entry.payload) == {"id": entry.key, "pad": PAD}
        assert outbox.put("t/verdict", b"{}", key="after").created
        assert f"recovered {len(pending)} outbox row(s)" in outbox.damage.describe()
    finally:
        outbox.close()
    with Outbox(path) as again:  # the fresh file is sound: nothing more is moved
        assert again.damage is None and again.depth() == len(pending) + 1
    assert len(_damaged_copies(tmp_path, "outbox.sqlite3")) == 1


@pytest.mark.parametrize(("how", "at_least"), [("garbage", 280), ("truncated", 100)])
def test_damaged_journal_keeps_readable_messages_and_processed_files(
    tmp_path: Path, how: str, at_least: int
) -> None:
    path = tmp_path / "journal.sqlite3"
    ids = _fill_journal(path, 300, queued_every=3)
    _damage(path, how)
    journal = Journal(path)
    try:
        assert journal.damage is not None
        assert _damaged_copies(tmp_path, "journal.sqlite3")
        unqueued = journal.unqueued()
        kept = [m for m, _, _ in unqueued]
        assert kept == [i for n, i in enumerate(ids) if n % 3 and i in set(kept)]
        assert all(payload == {"id": m, "pad": PAD} for m, _, payload in unqueued)
        recovered = journal.damage.recovered
        assert recovered["messages"] >= at_least
        # The files marked done that are still readable are not judged again.
        assert journal.count() == recovered["processed"]
        if recovered["processed"]:
            assert journal.seen("img-0.dcm|1|1") == "jr-000"
        assert journal.remember("new", "verdict", {"id": "new"}) == {"id": "new"}
    finally:
        journal.close()


def test_sound_state_is_not_moved(tmp_path: Path) -> None:
    _fill_outbox(tmp_path / "outbox.sqlite3", 80)
    _fill_journal(tmp_path / "journal.sqlite3", 80)
    with Outbox(tmp_path / "outbox.sqlite3") as outbox:
        assert outbox.damage is None and outbox.depth() == 80
    journal = Journal(tmp_path / "journal.sqlite3")
    assert journal.damage is None and len(journal.unqueued()) == 80
    journal.close()
    assert not [p for p in tmp_path.iterdir() if ".damaged-" in p.name]


# -- tmpfs mounts -------------------------------------------------------------------------------


@pytest.fixture
def tmpfs() -> Iterator[Callable[..., Path]]:
    """Factory ``tmpfs(folder, size="1M")``: a real tmpfs mounted there; unmounted after."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str = "1M") -> Path:
        if shutil.which("mount") is None or shutil.which("umount") is None:
            pytest.skip("no mount/umount binaries here")
        folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _remount_read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def _fill_up(folder: Path) -> None:
    with (folder / "filler").open("wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass


def test_read_only_disk_is_an_error_not_damage(tmp_path: Path, tmpfs: Callable[..., Path]) -> None:
    folder = tmpfs(tmp_path / "ro", "8M")
    _fill_outbox(folder / "outbox.sqlite3", 20)
    _remount_read_only(folder)
    with pytest.raises(Exception) as err:
        Outbox(folder / "outbox.sqlite3")
    assert "readonly" in str(err.value).lower() or "unable to open" in str(err.value).lower()
    assert (folder / "outbox.sqlite3").exists() and not _damaged_copies(folder, "outbox.sqlite3")


# -- the real daemon ----------------------------------------------------------------------------


def _last_status(sub: Subscriber, station: Station) -> dict[str, object]:
    msgs = sub.messages(f"{station.base}/status")
    return json.loads(msgs[-1].payload) if msgs else {}


def test_daemon_heals_damaged_state_and_delivers_what_it_recovered(
    tmp_path: Path,
    mosquitto: Mosquitto,
    subscriber: Callable[..., Subscriber],
    stations: Callable[..., Station],
) -> None:
    station = stations(tmp_path / "st", mosquitto.url, station="xr-heal")
    station.state.mkdir(parents=True)
    put = _fill_outbox(station.state / "outbox.sqlite3", 200, topic=f"{station.base}/verdict")
    made = _fill_journal(station.state / "journal.sqlite3", 200)  # none handed to the outbox
    _damage(station.state / "outbox.sqlite3", "garbage")
    _damage(station.state / "journal.sqlite3", "truncated")
    sub = subscriber(mosquitto, f"{station.base}/#")
    station.start()

    assert _damaged_copies(station.state, "outbox.sqlite3") and _damaged_copies(station.state, "journal.sqlite3")
    status = _wait_status(sub, station)
    problem = str(status["problems"]["state_damaged"])  # type: ignore[index]
    from_outbox = int(re.search(r"recovered (\d+) outbox row", problem).group(1))  # type: ignore[union-attr]
    from_journal = int(re.search(r"(\d+) messages row", problem).group(1))  # type: ignore[union-attr]
    assert from_outbox >= 190 and from_journal >= 60, problem
    print(f"[state-heal] recovered outbox {from_outbox}/200 (3 garbage pages), journal "
          f"{from_journal}/200 (truncated mid-page at half)", flush=True)  # fmt: skip
    assert status["state"] == "degraded"

    messages = sub.wait_for(f"{station.base}/verdict", from_outbox + from_journal, timeout=60)
    ids = [json.loads(m.payload)["id"] for m in messages]
    got_outbox = [i for i in ids if i.startswith("ob-")]
    got_journal = [i for i in ids if i.startswith("jr-")]
    assert len(set(got_outbox)) == from_outbox and set(got_outbox) <= set(put)
    assert len(set(got_journal)) == from_journal and set(got_journal) <= set(made)
    # The outbox's recovered rows go out in the order they were first stored.
    assert sorted(set(got_outbox)) == [i for i in dict.fromkeys(got_outbox)]

    stock = PhantomStock(tmp_path / "phantoms")
    uid = sop_uid(stock.path(7))
    stock.drop(7, station.watch)
    after = sub.wait_for(f"{station.base}/verdict", from_outbox + from_journal + 1, timeout=90)
    assert uid in {json.loads(m.payload).get("sop_instance_uid") for m in after}, station.log_tail()
    assert station.alive()
    log = station.log_text()
    assert "moved aside as outbox.sqlite3.damaged-" in log and "moved aside as journal.sqlite3.damaged-" in log
    assert "Traceback" not in log
    deadline = time.monotonic() + 30  # the last PUBACK may still be on its way
    while station.outbox_depth() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert station.outbox_depth() == 0, station.log_tail()


def _wait_status(sub: Subscriber, station: Station, timeout: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = _last_status(sub, station)
        if "state_damaged" in doc.get("problems", {}):  # type: ignore[operator]
            return doc
        time.sleep(0.1)
    pytest.fail(f"no status naming state_damaged within {timeout} s:\n{station.log_tail()}")


@pytest.mark.parametrize("disk", ["tiny", "full", "read-only"])
def test_unusable_state_disk_is_refused_by_name_before_any_model(
    tmp_path: Path, mosquitto: Mosquitto, stations: Callable[..., Station], tmpfs: Callable[..., Path], disk: str
) -> None:
    station = stations(tmp_path / "st", mosquitto.url, station="xr-disk")
    tmpfs(station.state, "1M")
    if disk == "full":
        _fill_up(station.state)
    elif disk == "read-only":
        _remount_read_only(station.state)
    station.start(wait_ready=None)
    assert station.proc is not None
    rc = station.proc.wait(60)
    log = station.log_text()
    assert rc == 2, log
    assert "Traceback" not in log
    (line,) = [x for x in log.splitlines() if x.startswith("edge-worker run: ")]
    assert "state.folder" in line and str(station.state) in line and re.search(r"\d\.\d MiB free", line), line
    if disk == "tiny":
        assert "below state.min_free_mb = 64 MiB" in line, line
    elif disk == "full":
        assert "No space left on device" in line and "0.0 MiB free" in line, line
    else:
        assert "Read-only file system" in line, line
    assert not (station.state / "engines").exists()  # refused before the optimised-model cache
