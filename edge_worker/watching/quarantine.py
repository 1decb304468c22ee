"""Move files the worker cannot judge into a quarantine folder, each with a reason beside it.

For an input ``x.dcm`` the quarantine gets ``x.dcm`` (or ``x__1.dcm``, ``x__2.dcm``, ... when
the name is taken) and ``x.dcm.reason.json``::

    {"reason": "truncated_pixel_data", "detail": "...", "original_path": "/in/x.dcm",
     "file_name": "x.dcm", "quarantined_at": "2026-01-31T12:00:00.123+00:00", "extra": {...}}

Any name the file system allows is taken.  ``original_path`` and ``file_name`` are in the
printable form of :mod:`edge_worker.names` (bytes that are not UTF-8, control characters and
``%`` as ``%XX``), so they map back to the exact bytes.  A name too long to take the counter
and the ``.reason.json`` suffix within the 255-byte limit is shortened in the quarantine (its
start, ``~``, 12 hex digits of its sha256, its extension); the record keeps the full name.

The order of steps is chosen so that the original is never lost: claim a free name (an empty
placeholder created exclusively), write the reason (temporary file, fsync, rename), then move
the file: a rename on the same filesystem, otherwise copy to a temporary name, fsync, rename,
and only then unlink the original.  Any failure undoes what was done and raises
:class:`QuarantineError`, leaving the original where it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from edge_worker.errors import EdgeWorkerError
from edge_worker.names import printable
from edge_worker.watching.relink import rename_over

logger = logging.getLogger(__name__)

_REASON_SUFFIX = ".reason.json"
_MAX_VARIANTS = 10_000
#: Longest name kept as is: NAME_MAX (255) less the counter ("__9999"), the reason suffix and
#: the temporary name's "." and ".tmp" / ".part", with room to spare.
_MAX_NAME_BYTES = 200


class QuarantineError(EdgeWorkerError):
    """A file could not be quarantined (disk full, permissions, folder unusable).

    The original file is still in place; the caller should report a health failure.
    """


def _fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable (POSIX only; Windows has no dir fds)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _variant(name: str, n: int) -> str:
    """``x.dcm`` -> ``x__3.dcm``; a name whose last dot part is not a short word (DICOM UIDs
    such as ``1.2.840.5``) gets the counter at the end instead."""
    if n == 0:
        return name
    stem, dot, ext = name.rpartition(".")
    if stem and ext.isalpha() and len(ext) <= 5:
        return f"{stem}__{n}{dot}{ext}"
    return f"{name}__{n}"


def _short_name(name: str) -> str:
    """``name`` itself, or when longer than :data:`_MAX_NAME_BYTES` bytes its start, ``~``,
    12 hex digits of the whole name's sha256 and its extension (distinct names stay distinct)."""
    raw = os.fsencode(name)
    if len(raw) <= _MAX_NAME_BYTES:
        return name
    stem, dot, ext = raw.rpartition(b".")
    suffix = dot + ext if stem and ext.isalpha() and len(ext) <= 5 else b""
    tag = b"~" + hashlib.sha256(raw).hexdigest()[:12].encode()
    return os.fsdecode(raw[: _MAX_NAME_BYTES - len(tag) - len(suffix)] + tag + suffix)


def _remove_quietly(path: Path) -> None:
    """Best-effort clean-up while undoing a failed step; the first error is what gets raised."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not remove %s while undoing a quarantine: %s", printable(path), exc)


class Quarantine:
    """A folder of rejected inputs, each with a ``<name>.reason.json`` record.

    :param folder: where quarantined files go; created on first use.  It may live inside the
        watch folder if the watcher excludes it.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def put(self, path: Path, reason: str, detail: str, extra: dict[str, object] | None = None
            ) -> Path:
        """Move ``path`` into the quarantine and record why.

        :param path: the file to quarantine.
        :param reason: a stable reason code, usually a ``RejectReason`` value.
        :param detail: human-readable explanation.
        :param extra: more JSON-ready facts (header fields, sizes); values that JSON cannot
            hold are written as their ``str()``.
        :returns: the file's new path inside the quarantine.
        :raises QuarantineError: the move failed; the original is untouched.
        """
        source = Path(path).absolute()
        shown = printable(source)
        try:
            if not source.is_file():
                raise QuarantineError(f"cannot quarantine {shown}: not a regular file")
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QuarantineError(f"quarantine folder {self.folder} unusable: {exc}") from exc
        now = datetime.now(timezone.utc)  # noqa: UP017 - datetime.UTC is 3.11+, we support 3.10
        reason_code = str(getattr(reason, "value", reason))
        record = {
            "reason": reason_code,
            "detail": detail,
            "original_path": shown,
            "file_name": printable(source.name),
            "quarantined_at": now.isoformat(timespec="milliseconds"),
            "extra": extra or {},
        }
        text = json.dumps(record, indent=2, default=str) + "\n"  # fails here, before any change
        dest = self._claim(_short_name(source.name))
        reason_path = dest.with_name(dest.name + _REASON_SUFFIX)
        try:
            self._write_text(reason_path, text)
        except OSError as exc:
            _remove_quietly(dest)
            raise QuarantineError(f"cannot write {printable(reason_path)}: {exc}") from exc
        try:
            self._move(source, dest)
        except OSError as exc:
            _remove_quietly(reason_path)
            _remove_quietly(dest)
            raise QuarantineError(f"cannot move {shown} to {printable(dest)}: {exc}") from exc
        logger.info("quarantined %s as %s: %s (%s)", shown, printable(dest.name), reason_code, detail)
        return dest

    def _claim(self, name: str) -> Path:
        """Reserve a free name by creating it exclusively, so concurrent puts never collide."""
        for n in range(_MAX_VARIANTS):
            candidate = self.folder / _variant(name, n)
            if candidate.with_name(candidate.name + _REASON_SUFFIX).exists():
                continue  # a record left by an interrupted put still names this file
            try:
                fd = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
            except OSError as exc:
                raise QuarantineError(f"cannot create files in {self.folder}: {exc}") from exc
            os.close(fd)
            return candidate
        raise QuarantineError(f"no free name for {printable(name)} in {self.folder}")

    @staticmethod
    def _write_text(target: Path, text: str) -> None:
        """Write ``text`` so that ``target`` is either absent or complete, even after a crash."""
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError:
            _remove_quietly(tmp)
            raise
        _fsync_dir(target.parent)

    @staticmethod
    def _move(source: Path, dest: Path) -> None:
        """Rename ``source`` over the placeholder ``dest``; copy durably across filesystems.

        Raises only while the original is still in place, so the caller may undo by removing
        ``dest``.
        """
        try:
            rename_over(source, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        else:
            _sync_after_move(dest.parent, source.parent)
            return
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            shutil.copyfile(source, tmp)
            shutil.copystat(source, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        except OSError:
            _remove_quietly(tmp)
            raise
        # The copy is durable; only now may the original go.
        source.unlink()
        _sync_after_move(source.parent)


def _sync_after_move(*directories: Path) -> None:
    """Sync directories once the file has moved: failing now must not trigger an undo."""
    for directory in directories:
        try:
            _fsync_dir(directory)
        except OSError as exc:
            logger.warning("fsync of %s failed after a quarantine move: %s", directory, exc)
