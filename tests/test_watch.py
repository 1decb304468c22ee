"""FolderWatcher against the real filesystem and real watchdog observer threads.

Waits poll for the expected outcome with generous limits; the only fixed sleeps are the quiet
periods that prove something did *not* happen.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_worker.watching.watch import FolderWatcher, WatchError

FAST = {"settle_s": 0.15, "scan_settle_s": 0.25}
WAIT_S = 10.0


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def get_paths(q: queue.Queue[Path], n: int) -> list[Path]:
    """The next ``n`` paths from ``q``, failing the test if they do not come in time."""
    return [q.get(timeout=WAIT_S) for _ in range(n)]


def assert_quiet(q: queue.Queue[Path], seconds: float = 0.6) -> None:
    """Nothing more arrives on ``q`` within ``seconds``."""
    with pytest.raises(queue.Empty):
        extra = q.get(timeout=seconds)
        pytest.fail(f"unexpected extra emission {extra}")


@pytest.fixture(autouse=True)
def _no_watchdog_threads_left() -> Iterator[None]:
    """Stricter than conftest's guard: watchdog's own daemon threads must be gone too."""
    before = set(threading.enumerate())
    yield
    assert wait_for(lambda: set(threading.enumerate()) <= before, timeout=3.0), (
        set(threading.enumerate()) - before
    )


class Harness:
    """A watch folder, a scratch folder outside it, and the watchers started on them."""

    def __init__(self, tmp_path: Path) -> None:
        self.folder = tmp_path / "incoming"
        self.outside = tmp_path / "outside"
        self.folder.mkdir()
        self.outside.mkdir()
        self.ready: queue.Queue[Path] = queue.Queue(maxsize=100)
        self.incomplete: list[tuple[Path, str]] = []
        self.watchers: list[FolderWatcher] = []

    def start(self, **kwargs: object) -> FolderWatcher:
        options: dict[str, object] = {**FAST, "on_incomplete": self._on_incomplete}
        options.update(kwargs)
        sink = options.pop("on_ready", self.ready)
        watcher = FolderWatcher(self.folder, sink, **options)  # type: ignore[arg-type]
        self.watchers.append(watcher)
        watcher.start()
        return watcher

    def _on_incomplete(self, path: Path, reason: str) -> None:
        self.incomplete.append((path, reason))

    def close(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        for watcher in self.watchers:
            watcher.join(5.0)


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def test_close_write_emits_once_even_across_rescans(h: Harness) -> None:
    h.start(rescan_interval_s=0.2)
    target = h.folder / "img.dcm"
    target.write_bytes(b"x" * 1000)
    assert get_paths(h.ready, 1) == [target]
    assert_quiet(h.ready)  # several rescans ran meanwhile


def test_changed_file_is_handed_on_again(h: Harness) -> None:
    h.start()
    target = h.folder / "img.dcm"
    target.write_bytes(b"x" * 10)
    assert get_paths(h.ready, 1) == [target]
    target.write_bytes(b"y" * 20)
    assert get_paths(h.ready, 1) == [target]


@pytest.mark.parametrize("reopen", [False, True], ids=["one-handle", "reopen-each-chunk"])
def test_slow_chunked_write_emitted_once_when_complete(h: Harness, reopen: bool) -> None:
    got: list[tuple[Path, int]] = []
    # Reopening closes the file after each chunk: only the settle time keeps it back.
    h.start(on_ready=lambda p: got.append((p, p.stat().st_size)),
            settle_s=0.6 if reopen else 0.15, scan_settle_s=0.6)
    target, chunk, chunks = h.folder / "slow.dcm", b"z" * 4096, 20
    fh = open(target, "wb")  # noqa: SIM115 - held open across chunks on purpose
    for _ in range(chunks):
        fh.write(chunk)
        fh.flush()
        if reopen:
            fh.close()
            fh = open(target, "ab")  # noqa: SIM115
        time.sleep(0.05)
        assert got == [], "emitted while still being written"
    fh.close()
    assert wait_for(lambda: len(got) >= 1)
    time.sleep(0.5)
    assert got == [(target, chunks * len(chunk))]


def test_move_in_from_outside_and_from_dot_name_emit(h: Harness) -> None:
    h.start()
    staged = h.outside / "a.dcm.part"
    staged.write_bytes(b"a" * 100)
    os.rename(staged, h.folder / "a.dcm")
    hidden = h.folder / ".b.dcm"
    hidden.write_bytes(b"b" * 100)
    os.rename(hidden, h.folder / "b.dcm")
    assert sorted(get_paths(h.ready, 2)) == [h.folder / "a.dcm", h.folder / "b.dcm"]
    assert_quiet(h.ready)


def test_directory_moved_in_emits_its_files(h: Harness) -> None:
    h.start()
    study = h.outside / "study" / "series"
    study.mkdir(parents=True)
    for name in ("1.dcm", "2.dcm"):
        (study / name).write_bytes(b"s" * 10)
    os.rename(h.outside / "study", h.folder / "study")
    expected = [h.folder / "study" / "series" / n for n in ("1.dcm", "2.dcm")]
    assert sorted(get_paths(h.ready, 2)) == expected
    assert_quiet(h.ready)


def test_files_in_new_subfolders_emit(h: Harness) -> None:
    h.start()
    series = h.folder / "study" / "series"
    series.mkdir(parents=True)
    (series / "img.dcm").write_bytes(b"d" * 10)
    assert get_paths(h.ready, 1) == [series / "img.dcm"]


def test_open_file_is_not_emitted_before_close(h: Harness) -> None:
    h.start()
    # The first emission proves the startup reconcile is over: a file open during that scan
    # is judged by size stability alone, which is not what this test is about.
    (h.folder / "probe.dcm").write_bytes(b"p")
    assert get_paths(h.ready, 1) == [h.folder / "probe.dcm"]
    target = h.folder / "open.dcm"
    with open(target, "wb") as fh:
        fh.write(b"o" * 1000)
        fh.flush()
        os.fsync(fh.fileno())
        assert_quiet(h.ready, 1.0)  # created and stable, but not closed
    assert get_paths(h.ready, 1) == [target]


def test_startup_reconcile_emits_existing_files(h: Harness) -> None:
    nested = h.folder / "study" / "series"
    nested.mkdir(parents=True)
    expected = [h.folder / "old.dcm", nested / "old2.dcm"]
    for path in expected:
        path.write_bytes(b"p" * 10)
    (h.folder / "old.tmp").write_bytes(b"t")
    h.start()
    assert sorted(get_paths(h.ready, 2)) == sorted(expected)
    assert_quiet(h.ready, 0.5)


def test_hidden_temp_and_directories_ignored(h: Harness) -> None:
    h.start()
    for name in (".hidden", "a.tmp", "b.part", "c.dcm~", "d.TMP"):
        (h.folder / name).write_bytes(b"i")
    (h.folder / ".staging").mkdir()
    (h.folder / ".staging" / "e.dcm").write_bytes(b"i")
    (h.folder / "emptydir").mkdir()
    (h.folder / "real.dcm").write_bytes(b"r")
    assert get_paths(h.ready, 1) == [h.folder / "real.dcm"]
    assert_quiet(h.ready)


def test_excluded_quarantine_subfolder_ignored(h: Harness) -> None:
    quarantine = h.folder / "quarantine"
    quarantine.mkdir()
    (quarantine / "before.dcm").write_bytes(b"q")
    h.start(exclude=[Path("quarantine")], rescan_interval_s=0.2)
    (quarantine / "after.dcm").write_bytes(b"q")
    os.rename(h.folder / "quarantine" / "before.dcm", quarantine / "moved.dcm")
    (h.folder / "real.dcm").write_bytes(b"r")
    assert get_paths(h.ready, 1) == [h.folder / "real.dcm"]
    assert_quiet(h.ready)


def test_non_recursive_ignores_subfolders(h: Harness) -> None:
    (h.folder / "sub").mkdir()
    (h.folder / "sub" / "pre.dcm").write_bytes(b"n")
    h.start(recursive=False)
    (h.folder / "sub" / "new.dcm").write_bytes(b"n")
    (h.folder / "top.dcm").write_bytes(b"n")
    assert get_paths(h.ready, 1) == [h.folder / "top.dcm"]
    assert_quiet(h.ready, 0.5)


def test_empty_file_reported_incomplete_after_deadline(h: Harness) -> None:
    h.start(incomplete_deadline_s=1.0)
    target = h.folder / "empty.dcm"
    target.touch()
    assert wait_for(lambda: len(h.incomplete) == 1)
    path, reason = h.incomplete[0]
    assert path == target and "empty" in reason
    assert h.ready.empty()


def test_file_that_keeps_changing_reported_incomplete(h: Harness) -> None:
    h.start(settle_s=0.4, scan_settle_s=0.4, incomplete_deadline_s=1.2)
    target, done = h.folder / "growing.dcm", threading.Event()

    def writer() -> None:
        while not done.is_set() and not h.incomplete:
            with open(target, "ab") as fh:
                fh.write(b"g" * 100)
            time.sleep(0.05)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert wait_for(lambda: len(h.incomplete) == 1)
    finally:
        done.set()
        thread.join()
    path, reason = h.incomplete[0]
    assert path == target and "changing" in reason


# Settle waits far beyond WAIT_S: in these tests only the whole-file check can hand a file on.
NO_SETTLE = {"settle_s": 60.0, "scan_settle_s": 60.0, "incomplete_deadline_s": 120.0}


def test_dicom_closed_after_each_chunk_is_handed_on_once_when_whole(
    h: Harness, tmp_path: Path
) -> None:
    from test_ingest_files import write

    from edge_worker.ingest.whole import is_whole

    data = write(tmp_path / "source.dcm").read_bytes()
    got: list[tuple[Path, int]] = []
    h.start(on_ready=lambda p: got.append((p, p.stat().st_size)), is_whole=is_whole, **NO_SETTLE)
    target, step = h.folder / "img.dcm", len(data) // 7 + 1
    for start in range(0, len(data), step):
        with open(target, "ab") as fh:  # every chunk ends in a close-write event
            fh.write(data[start : start + step])
        if start + step < len(data):
            time.sleep(0.1)
            assert got == [], f"handed on at {target.stat().st_size} of {len(data)} bytes"
    assert wait_for(lambda: len(got) >= 1)
    time.sleep(0.3)
    assert got == [(target, len(data))]


def test_whole_check_is_asked_once_per_version_and_its_errors_mean_settle(h: Harness) -> None:
    calls: list[str] = []

    def refuse_then_fail(path: str) -> bool:
        calls.append(path)
        raise OSError("check failed")

    h.start(is_whole=refuse_then_fail, settle_s=0.6, scan_settle_s=0.6)
    target = h.folder / "img.dcm"
    target.write_bytes(b"x" * 100)
    # A failing check is a "no": the file is still handed on, after the settle wait.
    assert get_paths(h.ready, 1) == [target]
    assert calls == [str(target)]  # not asked again on every settle tick


def test_scan_found_files_are_not_taken_early(h: Harness) -> None:
    """Without a close or rename event nobody vouches the writer is done: scans settle."""
    (h.folder / "old.dcm").write_bytes(b"x" * 100)
    calls: list[str] = []
    h.start(is_whole=lambda p: calls.append(p) or True, **NO_SETTLE)
    assert_quiet(h.ready, 1.0)
    assert calls == []
    (h.folder / "new.dcm").write_bytes(b"y" * 100)  # a close-write: asked, and handed on
    assert get_paths(h.ready, 1) == [h.folder / "new.dcm"]


def test_polling_mode_emits_once_when_complete(h: Harness) -> None:
    got: list[tuple[Path, int]] = []
    h.start(on_ready=lambda p: got.append((p, p.stat().st_size)), use_polling=True,
            poll_interval_s=0.1, settle_s=0.1, scan_settle_s=0.4)
    target = h.folder / "polled.dcm"
    with open(target, "wb") as fh:
        for _ in range(8):
            fh.write(b"p" * 1000)
            fh.flush()
            time.sleep(0.05)
    assert wait_for(lambda: len(got) >= 1)
    time.sleep(0.6)  # several more polls
    assert got == [(target, 8000)]


def test_callback_error_does_not_stop_watching(h: Harness) -> None:
    seen: list[Path] = []

    def flaky(path: Path) -> None:
        seen.append(path)
        if len(seen) == 1:
            raise RuntimeError("consumer bug")

    watcher = h.start(on_ready=flaky)
    (h.folder / "one.dcm").write_bytes(b"1")
    assert wait_for(lambda: len(seen) == 1)
    (h.folder / "two.dcm").write_bytes(b"2")
    assert wait_for(lambda: len(seen) == 2)
    assert watcher.is_alive()


def test_stop_is_prompt_and_joins_every_thread(h: Harness) -> None:
    for i in range(50):
        (h.folder / f"{i}.dcm").write_bytes(b"s")
    watcher = h.start(scan_settle_s=5.0)  # keep the settle thread busy with pending files
    assert wait_for(watcher.is_alive)
    started = time.monotonic()
    watcher.stop()
    watcher.join(2.0)
    assert time.monotonic() - started < 1.0
    assert not watcher.is_alive()


def test_stop_while_output_queue_full_is_prompt(h: Harness) -> None:
    small: queue.Queue[Path] = queue.Queue(maxsize=1)
    for i in range(3):
        (h.folder / f"{i}.dcm").write_bytes(b"f")
    watcher = h.start(on_ready=small)
    assert wait_for(small.full)
    started = time.monotonic()
    watcher.stop()
    watcher.join(2.0)
    assert time.monotonic() - started < 1.0


def test_slow_consumer_does_not_make_files_incomplete(h: Harness) -> None:
    """While on_ready blocks, the deadline clock of files still being written must not run."""
    writing_done, emitted = threading.Event(), []

    def slow_consumer(path: Path) -> None:
        emitted.append(path)
        if path.name == "first.dcm":
            writing_done.wait(WAIT_S)

    def writer() -> None:
        for _ in range(20):  # 2 s of writing: longer than the deadline
            with open(h.folder / "second.dcm", "ab") as fh:
                fh.write(b"w" * 100)
            time.sleep(0.1)
        writing_done.set()

    h.start(on_ready=slow_consumer, incomplete_deadline_s=1.2)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        (h.folder / "first.dcm").write_bytes(b"f")
        assert wait_for(lambda: len(emitted) == 2)
    finally:
        writing_done.set()
        thread.join()
    assert emitted == [h.folder / "first.dcm", h.folder / "second.dcm"]
    assert h.incomplete == []


def test_deleted_watch_folder_is_a_health_fault(h: Harness) -> None:
    watcher = h.start()
    assert watcher.is_alive()
    h.folder.rmdir()
    assert wait_for(lambda: not watcher.is_alive())


def test_inotify_failure_raises_watch_error_without_leaks(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from watchdog.observers.inotify import InotifyObserver

    def refuse(self: InotifyObserver) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(InotifyObserver, "start", refuse)
    with pytest.raises(WatchError, match="max_user_watches"):
        h.start()


def test_start_on_missing_folder_raises(tmp_path: Path) -> None:
    watcher = FolderWatcher(tmp_path / "absent", queue.Queue(1), on_incomplete=print)
    with pytest.raises(WatchError):
        watcher.start()


def test_start_twice_raises(h: Harness) -> None:
    watcher = h.start()
    with pytest.raises(RuntimeError):
        watcher.start()


@pytest.mark.parametrize(
    "kwargs",
    [{"settle_s": -1.0}, {"incomplete_deadline_s": 0.1}, {"on_ready": queue.Queue()}],
    ids=["negative-settle", "deadline-below-settle", "unbounded-queue"],
)
def test_bad_arguments_raise_early(tmp_path: Path, kwargs: dict[str, object]) -> None:
    options: dict[str, object] = {"on_ready": queue.Queue(1), "on_incomplete": print, **kwargs}
    sink = options.pop("on_ready")
    with pytest.raises(ValueError):
        FolderWatcher(tmp_path, sink, **options)  # type: ignore[arg-type]
