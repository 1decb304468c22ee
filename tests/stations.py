"""The real daemon as a subprocess, for fault, security and privacy tests.

:class:`Station` writes a strict TOML config, runs ``python -m edge_worker run --config FILE``
with ``NOTIFY_SOCKET`` pointing at a datagram socket of the test (what systemd gives a
``Type=notify`` service), and knows when it is READY.  Its stderr (the journald stream) goes
to a log file that tests read.  Files arrive the way a modality delivers them: written under a
hidden name, then renamed into the watch folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from edge_worker.phantoms.ankle import write_phantom

ROOT = Path(__file__).resolve().parents[1]


def wait_until(
    what: str, check: Callable[[], Any], timeout: float = 10.0, station: Station | None = None
) -> Any:
    """Poll ``check`` until it returns something true and return that; fail the test after
    ``timeout`` seconds, with the daemon's log tail when ``station`` is given."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            tail = f"\n{station.log_tail()}" if station is not None else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what}{tail}")
        time.sleep(0.05)
    return value


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def render_toml(top: Mapping[str, Any], tables: Mapping[str, Mapping[str, Any]]) -> str:
    """A TOML document from top-level keys and ``{"mqtt.tls": {...}}`` tables."""
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for name, values in tables.items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"


class Station:
    """One edge-worker daemon process for one station, restartable on the same folders."""

    def __init__(
        self,
        workdir: Path,
        mqtt_url: str,
        *,
        site: str = "faults",
        station: str = "xr-01",
        tables: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
        verbose: bool = False,
        wrapper: tuple[str, ...] = (),
    ) -> None:
        """``verbose``: run with ``-v`` (DEBUG log lines too).  ``wrapper``: a command the
        daemon runs under, e.g. ``("prlimit", "--as=4294967296")`` (a memory limit)."""
        self.workdir = workdir
        self.wrapper = wrapper
        self.verbose = verbose
        self.site, self.station = site, station
        self.watch = workdir / "incoming"
        self.quarantine = workdir / "quarantine"
        self.state = workdir / "state"
        self.watch.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "edge-worker.toml"
        self.log_path = workdir / "daemon.log"
        merged: dict[str, dict[str, Any]] = {
            "watch": {"folder": str(self.watch), "settle_seconds": 0.2},
            "quarantine": {"folder": str(self.quarantine)},
            "state": {"folder": str(self.state)},
            "mqtt": {"url": mqtt_url},
            "service": {"metrics_listen": "", "stop_timeout_seconds": 10.0},
            # The fault tests read judged files back from the watch folder; the retention
            # tests ask for "archive" or "delete" themselves.
            "retention": {"judged": "keep"},
        }
        for name, values in (tables or {}).items():
            merged.setdefault(name, {}).update(values)
        self.config_path.write_text(render_toml({"site": site, "station": station}, merged))
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._notify: socket.socket | None = None
        self.notifications: list[str] = []
        self.starts = 0

    @property
    def base(self) -> str:
        return f"xray/{self.site}/{self.station}"

    def start(self, wait_ready: float | None = 90.0) -> None:
        """Start the daemon; wait for READY=1 unless ``wait_ready`` is None."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        sock_path = self.workdir / f"notify-{self.starts}"
        self._close_notify()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(sock_path))
        self._notify.settimeout(0.1)
        self.notifications = []
        env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), PYTHONUNBUFFERED="1", **self.env)
        env.pop("WATCHDOG_USEC", None)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "edge_worker", *(["-v"] if self.verbose else []),
                 "run", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            )  # fmt: skip
        self.starts += 1
        if wait_ready is not None:
            self.wait_notify("READY=1", wait_ready)

    def wait_notify(self, needle: str, timeout: float) -> str:
        """Wait for an sd_notify message containing ``needle``; fail with the log if none."""
        assert self._notify is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.notifications:
                if needle in m:
                    return m
            try:
                self.notifications.append(self._notify.recv(4096).decode())
            except TimeoutError:
                if self.proc.poll() is not None:
                    break
        pytest.fail(f"no {needle!r} from the daemon within {timeout} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no clean disconnect."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM; return (exit code, seconds until the process was gone)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            pytest.fail(f"the daemon did not exit within {timeout} s of SIGTERM:\n{self.log_tail()}")
        return rc, time.monotonic() - t0

    def close(self) -> None:
        """Stop the daemon if it still runs (SIGTERM, then SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_notify()

    def _close_notify(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- the state folder, read while the daemon runs (WAL allows a concurrent reader) ------
    def _query(self, db: str, sql: str) -> list[tuple[Any, ...]]:
        path = self.state / db
        if not path.exists():
            return []
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []  # not created yet
        finally:
            con.close()

    def outbox_depth(self) -> int:
        rows = self._query("outbox.sqlite3", "SELECT COUNT(*) FROM outbox")
        return int(rows[0][0]) if rows else 0

    def journal_messages(self) -> dict[str, str]:
        """Every message the daemon ever made: id -> payload (canonical JSON)."""
        return {str(i): str(p) for i, p in self._query("journal.sqlite3", "SELECT message_id, payload FROM messages")}

    def journaled_files(self) -> set[str]:
        """Watch-folder-relative names of the file versions marked done."""
        return {str(k).rsplit("|", 2)[0] for (k,) in self._query("journal.sqlite3", "SELECT key FROM processed")}


class PhantomStock:
    """Phantom DICOM files made once, then copied and renamed into a watch folder on demand."""

    def __init__(self, folder: Path, size: int = 512) -> None:
        self.folder = folder
        self.size = size
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, seed: int) -> Path:
        p = self.folder / f"phantom-{seed}.dcm"
        if not p.exists():
            tmp = self.folder / f".phantom-{seed}.tmp"
            write_phantom(tmp, seed=seed, size=self.size, view="AP" if seed % 2 else "LAT", grade=1 + seed % 3)
            os.replace(tmp, p)
        return p

    def drop(self, seed: int, watch: Path, name: str | None = None) -> str:
        """Copy phantom ``seed`` into ``watch`` under a hidden name, then rename it in."""
        name = name or f"img-{seed}.dcm"
        hidden = watch / f".{name}.part"
        shutil.copyfile(self.path(seed), hidden)
        os.replace(hidden, watch / name)
        return name


def sop_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def by_id(payloads: list[bytes]) -> dict[str, set[bytes]]:
    """Message id -> the distinct payloads received under it."""
    out: dict[str, set[bytes]] = {}
    for p in payloads:
        out.setdefault(str(json.loads(p)["id"]), set()).add(p)
    return out


def summary(name: str, sent: int, payloads: list[bytes], extra: str = "") -> str:
    """The figure line for the issue note; printed (pytest -s shows it) and returned."""
    ids = by_id(payloads)
    conflicts = sum(1 for v in ids.values() if len(v) > 1)
    line = (
        f"[{name}] verdicts sent {sent}, received {len(payloads)}, distinct ids {len(ids)}, "
        f"conflicting contents {conflicts}{extra}"
    )
    print(line, flush=True)
    figures = os.environ.get("EDGE_WORKER_FAULT_FIGURES")
    if figures:
        with open(figures, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    return line
