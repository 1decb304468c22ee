"""What ``edge-worker check`` and ``edge-worker run`` both prove before any model is loaded.

One set of checks for both, so that ``check`` cannot pass a config that ``run`` refuses:

* the folders: watch, quarantine and state exist (``run`` creates missing ones; ``check`` only
  says it would) and the service user can write them, proved by writing a probe file, since
  ``os.access`` says yes to root on a read-only mount.  An unusable quarantine is the one
  exception ``run`` survives (started degraded, see :class:`Folders`); ``check`` fails on it;
* the state filesystem has ``state.min_free_mb`` free: a full disk otherwise shows up later as
  an ONNX Runtime protobuf error from the optimised-model cache, which names no disk;
* every configured pack (``pack.path``, each ``pack.extra``, the bundled ones) loads and
  verifies, and a failure names the pack by its config key.

The folder layout (no overlaps) and the number ranges are pure checks on the config and live
in :func:`edge_worker.service.config.validate`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_worker.errors import ConfigError, PackError
from edge_worker.packs.pack import Pack, bundled_pack_dirs, default_pack_dir, load_pack
from edge_worker.packs.signing import load_trusted_keys, verify_signature
from edge_worker.service.config import Config

_MIB = 1 << 20
_PROBE_BYTES = 4096


@dataclass(frozen=True)
class FolderReport:
    """One folder that passed: its config key, path, whether it is still to be created, and the
    free bytes of its filesystem."""

    key: str
    folder: Path
    missing: bool
    free_bytes: int

    def describe(self) -> str:
        """``state /var/lib/edge-worker/state (12.3 GiB free)``."""
        name = self.key.split(".")[0]
        todo = ", run creates it" if self.missing else ""
        return f"{name} {self.folder} ({_size(self.free_bytes)} free{todo})"


def _size(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / _MIB:.1f} MiB"


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged user may still write on the filesystem holding ``folder``."""
    st = os.statvfs(folder)
    return int(st.f_bavail) * int(st.f_frsize)


def _existing_ancestor(folder: Path) -> Path:
    probe = folder.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _cannot_create(parent: Path) -> str | None:
    """Why ``mkdir`` would fail below the existing ``parent``, in its own words, or ``None``."""
    if not parent.is_dir():
        return os.strerror(errno.ENOTDIR)
    if os.statvfs(parent).f_flag & os.ST_RDONLY:
        return os.strerror(errno.EROFS)
    if not os.access(parent, os.W_OK | os.X_OK):
        return os.strerror(errno.EACCES)
    return None


def _probe_write(folder: Path) -> None:
    """Create, fill, fsync and remove a hidden probe file; raise OSError if any step fails."""
    # Hidden (leading dot): the watcher never takes it for a radiograph.
    probe = folder / f".edge-worker-probe-{os.getpid()}.tmp"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"\0" * _PROBE_BYTES)
        os.fsync(fd)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def check_folder(key: str, folder: Path, *, create: bool, min_free_bytes: int = 0) -> FolderReport:
    """Prove ``folder`` (config key ``key``) usable: created when ``create``, writable, and with
    ``min_free_bytes`` free.  Returns what was found; raises :class:`ConfigError` naming the key,
    the folder and, for a write or space failure, the free space."""
    folder = Path(folder)
    missing = not folder.exists()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{key}: {folder} exists and is not a folder")
    if missing and create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{key}: cannot create {folder}: {exc.strerror or exc}") from exc
        missing = False
    where = folder if not missing else _existing_ancestor(folder)
    if missing:
        # check: nothing is created, so the nearest existing parent must take the new folder;
        # the reasons are worded as mkdir's errors, so that check and run say the same.
        why = _cannot_create(where)
        if why:
            raise ConfigError(f"{key}: cannot create {folder}: {why}")
    free = free_bytes(where)
    if not missing:
        try:
            _probe_write(folder)
        except OSError as exc:
            raise ConfigError(
                f"{key}: {folder} is not writable ({exc.strerror or exc}); {_size(free)} free there"
            ) from exc
    if free < min_free_bytes:
        raise ConfigError(
            f"{key}: only {_size(free)} free on the filesystem of {folder}, below state.min_free_mb = "
            f"{min_free_bytes // _MIB} MiB (the outbox, the journal and the optimised-model cache "
            "live there); free some space or point it elsewhere"
        )
    return FolderReport(key, folder, missing, free)


@dataclass(frozen=True)
class Folders:
    """What :func:`check_folders` found: the folders that passed, and the quarantine's problem.

    An unusable quarantine does not stop the daemon (verdicts still flow; rejected files wait
    in the watch folder and health reports it until the quarantine takes them), so it is a
    value here: ``run`` starts degraded with it, ``check`` fails on it, in the same words.
    """

    reports: list[FolderReport]
    quarantine_problem: str | None


def check_folders(config: Config, *, create: bool) -> Folders:
    """:func:`check_folder` for the watch, quarantine and state folders, in that order.

    A watch or state problem raises :class:`ConfigError`; a quarantine problem is returned in
    :attr:`Folders.quarantine_problem`.
    """
    reports = [check_folder("watch.folder", config.watch.folder, create=create)]
    problem = None
    try:
        reports.append(check_folder("quarantine.folder", config.quarantine.folder, create=create))
    except ConfigError as exc:
        problem = str(exc)
    min_free = config.state.min_free_mb * _MIB
    reports.append(
        check_folder("state.folder", config.state.folder, create=create, min_free_bytes=min_free)
    )
    return Folders(reports, problem)


def pack_sources(config: Config, primary: Path | None = None) -> list[tuple[str, Path]]:
    """Every pack the config loads, as ``(config key, folder)``: the primary (``primary``, else
    the pack a rollout installed in ``pack.rollout_folder``, else ``pack.path``, else the demo pack), each ``pack.extra[i]``, then the bundled ones other
    than the primary when ``pack.bundled``.  Raises :class:`PackError` without the demo pack."""
    from edge_worker.packs.rollout import installed

    # A pack a rollout installed (ROLLOUT/current) is what run judges with: check that one.
    first = primary or installed(config.pack.rollout_folder) or (
        Path(config.pack.path) if config.pack.path else default_pack_dir()
    )
    sources = [("pack.path", first)]
    sources += [(f"pack.extra[{i}]", Path(p)) for i, p in enumerate(config.pack.extra)]
    if config.pack.bundled:
        sources += [
            ("pack.bundled", d) for d in bundled_pack_dirs() if d.resolve() != first.resolve()
        ]
    return sources


def load_named(key: str, root: Path, trusted_keys: Sequence[str] = ()) -> Pack:
    """:func:`~edge_worker.packs.pack.load_pack`, then its signature when ``trusted_keys`` (the
    ``pack.trusted_keys`` files) are set; a failure names the pack's config key and folder.
    Raises :class:`PackError` (bad, unsigned, untrusted or changed pack) or
    :class:`ConfigError` (an unreadable key file)."""
    try:
        pack = load_pack(root)
        verify_signature(root, pack.digest, load_trusted_keys(trusted_keys))
    except PackError as exc:
        raise PackError(f"{key} {root}: {exc}") from exc
    return pack


def signature_note(config: Config, pack: Pack) -> str:
    """What ``check`` says of a loaded pack's signature: the signing key id, or that none is
    required.  Raises :class:`PackError` like :func:`load_named`."""
    if not config.pack.trusted_keys:
        return "signature not required"
    kid = verify_signature(pack.root, pack.digest, load_trusted_keys(config.pack.trusted_keys))
    return f"signed by trusted key {kid}"


def load_packs(config: Config, primary: Path | None = None) -> list[tuple[str, Pack]]:
    """Load and verify every pack of :func:`pack_sources` (signatures too when
    ``pack.trusted_keys`` is set); the first failure raises."""
    keys = config.pack.trusted_keys
    return [(key, load_named(key, root, keys)) for key, root in pack_sources(config, primary)]
