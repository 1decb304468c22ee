"""Quarantine on the real filesystem, with failures injected where the OS cannot be made to fail."""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from edge_worker.errors import RejectReason
from edge_worker.watching.quarantine import Quarantine, QuarantineError


def make_file(path: Path, content: bytes = b"DICM" * 10) -> Path:
    """Create ``path`` (and its parents) holding ``content``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def record_of(quarantined: Path) -> dict[str, object]:
    """The parsed ``<name>.reason.json`` beside a quarantined file."""
    data = json.loads((quarantined.parent / (quarantined.name + ".reason.json")).read_text())
    assert isinstance(data, dict)
    return data


def test_put_moves_file_and_writes_reason(tmp_path: Path) -> None:
    source = make_file(tmp_path / "in" / "img.dcm", b"payload")
    q = Quarantine(tmp_path / "in" / "quarantine")
    before = time.time()
    dest = q.put(source, RejectReason.NOT_DICOM, "no DICM prefix", {"size": 7, "where": source})
    assert dest == tmp_path / "in" / "quarantine" / "img.dcm"
    assert dest.read_bytes() == b"payload"
    assert not source.exists()
    record = record_of(dest)
    assert record["reason"] == "not_dicom"
    assert record["detail"] == "no DICM prefix"
    assert record["original_path"] == str(source)
    assert record["extra"] == {"size": 7, "where": str(source)}
    stamp = datetime.fromisoformat(str(record["quarantined_at"]))
    assert stamp.utcoffset() == timedelta(0)
    assert before - 1 <= stamp.timestamp() <= time.time() + 1
    assert sorted(p.name for p in dest.parent.iterdir()) == ["img.dcm", "img.dcm.reason.json"]


def test_same_names_get_distinct_entries(tmp_path: Path) -> None:
    q = Quarantine(tmp_path / "q")
    dests = []
    for i, name in enumerate(["img.dcm", "img.dcm", "img.dcm", "1.2.840.5", "1.2.840.5"]):
        source = make_file(tmp_path / f"src{i}" / name, f"file {i}".encode())
        dests.append(q.put(source, "unreadable", f"case {i}"))
    assert [d.name for d in dests] == [
        "img.dcm", "img__1.dcm", "img__2.dcm", "1.2.840.5", "1.2.840.5__1"]
    for i, dest in enumerate(dests):
        assert dest.read_bytes() == f"file {i}".encode()
        assert record_of(dest)["detail"] == f"case {i}"


def test_concurrent_puts_never_collide(tmp_path: Path) -> None:
    q = Quarantine(tmp_path / "q")
    sources = [make_file(tmp_path / f"s{i}" / "x.dcm", bytes([i])) for i in range(8)]
    results: list[Path] = []
    lock = threading.Lock()

    def put(source: Path) -> None:
        dest = q.put(source, "unreadable", "race")
        with lock:
            results.append(dest)

    threads = [threading.Thread(target=put, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 8
    assert sorted(d.read_bytes() for d in results) == [bytes([i]) for i in range(8)]


def _cross_device(monkeypatch: pytest.MonkeyPatch, source: Path) -> None:
    """``source`` on another filesystem than the quarantine: no hard link, no rename."""
    real_link, real_replace = os.link, os.replace

    def refuse(real):  # type: ignore[no-untyped-def]
        def call(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
            if Path(src) == source:
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            real(src, dst)
        return call

    monkeypatch.setattr(os, "link", refuse(real_link))
    monkeypatch.setattr(os, "replace", refuse(real_replace))


def test_cross_filesystem_move_copies_then_unlinks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_file(tmp_path / "in" / "img.dcm", b"far away")
    _cross_device(monkeypatch, source)
    dest = Quarantine(tmp_path / "q").put(source, "unreadable", "x")
    assert dest.read_bytes() == b"far away"
    assert not source.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["img.dcm", "img.dcm.reason.json"]


def test_disk_full_during_copy_keeps_original(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_file(tmp_path / "in" / "img.dcm", b"precious")
    def copyfile(src: Path, dst: Path) -> None:
        Path(dst).write_bytes(b"prec")  # a partial copy, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    _cross_device(monkeypatch, source)
    monkeypatch.setattr(shutil, "copyfile", copyfile)
    q = Quarantine(tmp_path / "q")
    with pytest.raises(QuarantineError, match="No space left"):
        q.put(source, "unreadable", "x")
    assert source.read_bytes() == b"precious"
    assert list(q.folder.iterdir()) == []


@pytest.mark.parametrize("far", [True, False], ids=["copied across filesystems", "hard-linked"])
def test_failed_unlink_after_copy_leaves_file_only_at_origin(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, far: bool) -> None:
    source = make_file(tmp_path / "in" / "img.dcm", b"stuck")
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == source:
            raise PermissionError(errno.EACCES, "Permission denied")
        real_unlink(self, missing_ok=missing_ok)

    if far:
        _cross_device(monkeypatch, source)
    monkeypatch.setattr(Path, "unlink", unlink)
    q = Quarantine(tmp_path / "q")
    with pytest.raises(QuarantineError):
        q.put(source, "unreadable", "x")
    assert source.read_bytes() == b"stuck"
    assert list(q.folder.iterdir()) == []


def test_file_in_place_of_folder_raises_and_keeps_original(tmp_path: Path) -> None:
    source = make_file(tmp_path / "img.dcm", b"keep me")
    blocker = make_file(tmp_path / "q", b"not a folder")
    with pytest.raises(QuarantineError):
        Quarantine(blocker).put(source, "unreadable", "x")
    assert source.read_bytes() == b"keep me"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_folder_raises_and_keeps_original(tmp_path: Path) -> None:
    source = make_file(tmp_path / "img.dcm", b"keep me")
    folder = tmp_path / "q"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(QuarantineError):
            Quarantine(folder).put(source, "unreadable", "x")
    finally:
        folder.chmod(0o755)
    assert source.read_bytes() == b"keep me"
    assert list(folder.iterdir()) == []


def test_permission_denied_in_folder_raises_and_keeps_original(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root ignores a read-only mode, so the refusal is injected where the kernel would give it.
    source = make_file(tmp_path / "img.dcm", b"keep me")
    folder = tmp_path / "q"
    real_open = os.open

    def deny(path: os.PathLike[str] | str, flags: int, mode: int = 0o777) -> int:
        if Path(path).parent == folder:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(QuarantineError, match="Permission denied"):
        Quarantine(folder).put(source, "unreadable", "x")
    assert source.read_bytes() == b"keep me"
    assert list(folder.iterdir()) == []


def test_reason_write_failure_keeps_original(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_file(tmp_path / "img.dcm", b"keep me")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the first fsync is the reason record's
    q = Quarantine(tmp_path / "q")
    with pytest.raises(QuarantineError, match="No space left"):
        q.put(source, "unreadable", "x")
    assert source.read_bytes() == b"keep me"
    assert list(q.folder.iterdir()) == []


def test_missing_source_raises(tmp_path: Path) -> None:
    with pytest.raises(QuarantineError, match="not a regular file"):
        Quarantine(tmp_path / "q").put(tmp_path / "absent.dcm", "unreadable", "x")
