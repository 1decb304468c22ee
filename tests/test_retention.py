"""Retention: judged files leave the watch folder, archive and quarantine stay bounded.

The selection functions are tested alone on values; then the real daemon (a subprocess) archives
what it judged and prunes by age and size, and the demo leaves nothing behind when stopped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from conftest import Mosquitto
from stations import ROOT, PhantomStock, Station

from edge_worker.errors import ConfigError
from edge_worker.service.config import RetentionConfig, parse
from edge_worker.watching.retention import (
    MIB,
    Item,
    Retention,
    archive_file,
    prune,
    scan,
    select_expired,
    select_for_removal,
    select_over_size,
)

DAY = 86_400.0
NOW = 1_800_000_000.0


def _item(name: str, size: int, age_days: float) -> Item:
    return Item((Path(name),), size, NOW - age_days * DAY)


def _names(items: list[Item]) -> list[str]:
    return [str(i.paths[0]) for i in items]


def test_selection_by_age_and_size() -> None:
    items = [_item("new", 30, 1), _item("old", 10, 40), _item("mid", 20, 10)]
    assert _names(select_expired(items, NOW, 30 * DAY)) == ["old"]
    assert select_expired(items, NOW, 0) == []  # 0: no age limit
    assert _names(select_over_size(items, 35)) == ["old", "mid"]  # oldest first until 30 <= 35
    assert _names(select_over_size(items, 60)) == []
    assert select_over_size(items, 0) == []  # 0: no size bound
    # The expired go first; the size bound then applies to what is left.
    assert _names(select_for_removal(items, NOW, 30 * DAY, 50)) == ["old"]
    assert _names(select_for_removal(items, NOW, 30 * DAY, 30)) == ["old", "mid"]
    assert select_for_removal([], NOW, DAY, 1) == []


def _file(path: Path, size: int, age_days: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    when = time.time() - age_days * DAY
    os.utime(path, (when, when))
    return path


def test_a_quarantined_file_and_its_reason_are_one_item(tmp_path: Path) -> None:
    _file(tmp_path / "x.dcm", 100, 5)
    _file(tmp_path / "x.dcm.reason.json", 10, 5)
    _file(tmp_path / "y.dcm", 50, 1)
    items = {i.paths[0].name: i for i in scan(tmp_path)}
    assert set(items) == {"x.dcm", "y.dcm"}
    assert [p.name for p in items["x.dcm"].paths] == ["x.dcm", "x.dcm.reason.json"]
    assert items["x.dcm"].size == 110
    assert prune(tmp_path, time.time(), 3 * DAY, 0) == (1, 110)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.dcm"]


def _inotify_masks(folder: Path, action: Callable[[], object]) -> list[int]:
    """The kernel's inotify event masks for ``folder`` while ``action`` runs (Linux only)."""
    import ctypes
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    if fd < 0:
        pytest.skip("no inotify here")
    try:
        assert libc.inotify_add_watch(fd, str(folder).encode(), 0x0FFF) >= 0  # IN_ALL_EVENTS
        action()
        data = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            data += chunk
    finally:
        os.close(fd)
    masks, at = [], 0
    while at < len(data):
        _, mask, _, size = struct.unpack_from("iIII", data, at)
        masks.append(mask)
        at += 16 + size
    return masks


IN_MOVED_FROM, IN_DELETE = 0x40, 0x200


@pytest.mark.skipif(sys.platform != "linux", reason="inotify")
def test_a_file_leaves_the_watch_folder_without_an_unpaired_move(tmp_path: Path) -> None:
    """watchdog holds an IN_MOVED_FROM with no partner for 0.5 s and every event behind it:
    archiving and quarantining must delete from the watch folder's view, not move out."""
    from edge_worker.watching.quarantine import Quarantine

    watch, archive = tmp_path / "in", tmp_path / "archive"
    judged = _file(watch / "IMG1.dcm", 10)
    masks = _inotify_masks(watch, lambda: archive_file(judged, watch, archive, time.time()))
    assert any(m & IN_DELETE for m in masks) and not any(m & IN_MOVED_FROM for m in masks), masks
    assert not judged.exists() and len(list(archive.rglob("IMG1.dcm"))) == 1
    rejected = _file(watch / "IMG2.dcm", 10)
    masks = _inotify_masks(watch, lambda: Quarantine(tmp_path / "q").put(rejected, "test", "why"))
    assert any(m & IN_DELETE for m in masks) and not any(m & IN_MOVED_FROM for m in masks), masks
    assert not rejected.exists()


def test_archive_keeps_subfolders_never_overwrites_and_pruning_drops_empty_days(tmp_path: Path) -> None:
    watch, archive = tmp_path / "in", tmp_path / "archive"
    when = time.time()
    day = datetime.fromtimestamp(when).strftime("%Y-%m-%d")
    first = archive_file(_file(watch / "study" / "IMG1.dcm", 10), watch, archive, when)
    second = archive_file(_file(watch / "study" / "IMG1.dcm", 20), watch, archive, when)  # a reused name
    assert first == archive / day / "study" / "IMG1.dcm" and first.stat().st_size == 10
    assert second == archive / day / "study" / "IMG1__1.dcm" and second.stat().st_size == 20
    assert not (watch / "study" / "IMG1.dcm").exists()
    _file(archive / "2020-01-01" / "old.dcm", 10, 400)
    assert prune(archive, time.time(), 30 * DAY, 0) == (1, 10)
    assert not (archive / "2020-01-01").exists() and archive.is_dir()


def test_dispose_modes(tmp_path: Path) -> None:
    watch, archive, quarantine = tmp_path / "in", tmp_path / "archive", tmp_path / "q"
    for mode, archived in (("keep", False), ("delete", False), ("archive", True)):
        f = _file(watch / f"{mode}.dcm", 10)
        dest = Retention(RetentionConfig(judged=mode), watch, archive, quarantine).dispose(f, time.time())
        assert f.exists() is (mode == "keep")
        assert (dest is not None and dest.is_file()) is archived
    gone = Retention(RetentionConfig(), watch, archive, quarantine).dispose(watch / "never.dcm", time.time())
    assert gone is None  # a file that vanished meanwhile is no failure


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('judged = "shred"', "retention.judged"),
        ("max_total_mib = -1", "retention.max_total_mib"),
        ("interval_seconds = 0", "retention.interval_seconds"),
        ('archive_folder = "/in"', "must not be the watch folder"),
    ],
)
def test_retention_config_mistakes_are_refused(table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(f'[watch]\nfolder = "/in"\n[retention]\n{table}\n')


def test_default_archive_lives_in_the_state_folder() -> None:
    config = parse('[state]\nfolder = "/srv/st"\n')
    assert config.retention.judged == "archive" and config.archive_folder == Path("/srv/st/archive")


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _until(what: str, check: Callable[[], bool], timeout: float, station: Station) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{station.log_tail()}")
        time.sleep(0.1)


def test_daemon_archives_judged_files_and_prunes_archive_and_quarantine(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    stock = PhantomStock(tmp_path / "stock")
    archive = tmp_path / "archive"
    phantom = stock.path(1).stat().st_size
    bound_mib = 2.5 * phantom / MIB  # room for two phantoms and a half
    station = Station(
        tmp_path / "st", mosquitto.url, site="keep", station="xr-r",
        tables={"retention": {"judged": "archive", "archive_folder": str(archive), "max_age_days": 30.0,
                              "max_total_mib": bound_mib, "quarantine_max_age_days": 30.0,
                              "interval_seconds": 1.0}},
    )  # fmt: skip
    old = _file(archive / "2026-01-01" / "old.dcm", 1000, 60)
    old_rejected = _file(station.quarantine / "bad.dcm", 500, 60)
    old_reason = _file(station.quarantine / "bad.dcm.reason.json", 50, 60)
    fresh_rejected = _file(station.quarantine / "recent.dcm", 500, 1)
    try:
        station.start()
        names = [stock.drop(seed, station.watch) for seed in (1, 2, 3)]
        _until("three files judged", lambda: len(station.journaled_files()) == 3, 60, station)
        _until("the watch folder emptied", lambda: not any(station.watch.glob("*.dcm")), 15, station)
        _until("the archive pruned to its bound",
               lambda: not old.exists() and _tree_bytes(archive) <= bound_mib * MIB, 15, station)  # fmt: skip
        _until("the old quarantined file and its reason removed",
               lambda: not old_rejected.exists() and not old_reason.exists(), 15, station)  # fmt: skip
    finally:
        station.close()
    assert fresh_rejected.exists()
    kept = sorted(archive.rglob("*.dcm"))
    day = datetime.now().strftime("%Y-%m-%d")
    # The newest two judged files fit the bound; the oldest went first.
    assert [p.name for p in kept] == sorted(names)[-2:] and all(p.parent.name == day for p in kept), kept
    assert station.journaled_files() == set(names)  # each judged once: archived files are not re-read


def test_demo_leaves_nothing_behind(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_worker", "demo", "--stations", "1", "--interval", "0.3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while sum("[ward] xr-01" in line and "view" in line for line in lines) < 3:
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                pytest.fail("the demo printed no three verdicts:\n" + "".join(lines))
            lines.append(line)
        demo_dirs = list(tmp.glob("edge-worker-demo-*"))
        assert len(demo_dirs) == 1
        # Judged exposures left the watch folder for the bounded archive (one may be in flight).
        assert list((demo_dirs[0] / "xr-01" / "state" / "archive").rglob("*.dcm"))
        assert len(list((demo_dirs[0] / "xr-01" / "incoming").glob("*.dcm"))) <= 2
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, "".join(lines)
    assert "stopped cleanly" in "".join(lines)
    assert not list(tmp.glob("edge-worker-demo-*"))
    # onnxruntime leaves a 51-byte session id (.ses) in $TMPDIR on import; nothing else stays.
    assert [p.name for p in tmp.iterdir() if p.name != ".ses"] == []
