"""The real worker (``edge-worker run``, hence the real StationDaemon) in a subprocess.

Latency is measured from the moment a file is closed in the watch folder to the moment the
verdict arrives at a subscriber on the broker, both on this machine's wall clock.  Each
verdict's own ``times`` (``file_seen``, ``verdict_made``) split that into the watcher's part
(settle time), the judge's part (queue, read, decode, networks) and delivery (journal,
outbox, MQTT).  Peak memory is the worker process's ``VmHWM`` from ``/proc/<pid>/status``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_worker.bench.broker import BenchBroker, BenchError, VerdictListener
from edge_worker.bench.inputs import BaseFile

SITE = "bench"
_PREFIX = "bench"


@dataclass(frozen=True)
class WorkerSettings:
    """What the benchmark varies in the worker's configuration."""

    pack: Path
    settle_s: float = 0.5
    skip_settle_when_whole: bool = True
    threads: int = 2
    batch_files: int = 1
    review_copy: bool = False  # [verdict] review_copy: a copy after each verdict
    #: [derived] folder under the run's root: a pack's derive stages run and are written.
    derived: bool = False
    #: The pack alone: no bundled packs (one covering the same body part would be refused
    #: beside it) and every image sent to it whatever its body part (the inputs are phantoms).
    alone: bool = False


def _toml(settings: WorkerSettings, root: Path, station: str, url: str) -> str:
    def q(path: Path) -> str:
        return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "\n".join([
        f'site = "{SITE}"', f'station = "{station}"',
        "[watch]", f"folder = {q(root / 'incoming')}", f"settle_seconds = {settings.settle_s}",
        f"skip_settle_when_whole = {str(settings.skip_settle_when_whole).lower()}",
        "[quarantine]", f"folder = {q(root / 'quarantine')}",
        "[state]", f"folder = {q(root / 'state')}",
        "[pack]", f"path = {q(settings.pack)}", *_alone(settings),
        "[inference]", f"threads = {settings.threads}", f"batch_files = {settings.batch_files}",
        "[mqtt]", f'url = "{url}"', f'topic_prefix = "{_PREFIX}"',
        "[service]", 'metrics_listen = ""',
        "[verdict]", f"review_copy = {str(settings.review_copy).lower()}",
        *(["[derived]", f"folder = {q(root / 'derived')}"] if settings.derived else []),
    ]) + "\n"  # fmt: skip


def _alone(settings: WorkerSettings) -> list[str]:
    """The ``[pack]`` lines that load ``settings.pack`` alone and route every image to it."""
    if not settings.alone:
        return []
    name = json.loads((settings.pack / "manifest.json").read_text())["name"]
    return ["bundled = false", f"default = {json.dumps(str(name))}"]  # a TOML basic string


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def vm_kib(pid: int, field: str) -> int | None:
    """A ``Vm*`` figure (KiB) of process ``pid`` from ``/proc``, or ``None`` where unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class WorkerRun:
    """One worker process with its own watch, quarantine and state folders under ``root``.

    ``state`` survives between runs in the same ``root`` (as on a box after a restart): the
    second start of a worker finds its optimised-model cache.
    """

    def __init__(
        self, root: Path, broker: BenchBroker, settings: WorkerSettings, station: str
    ) -> None:
        self.root, self.broker, self.settings, self.station = root, broker, settings, station
        self.watch = root / "incoming"
        self.staging = root / "staging"
        for folder in (self.watch, self.staging):
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.iterdir():  # a previous run's files would be reconciled again
                if old.is_file():
                    old.unlink()
        self.config = root / "edge-worker.toml"
        self.config.write_text(_toml(settings, root, station, broker.url))
        self.listener = VerdictListener(broker, f"{_PREFIX}/{SITE}/{station}")
        self._proc: subprocess.Popen[bytes] | None = None
        self._serial = int(time.time() * 1000) % 10**7 * 10

    def start(self, timeout: float = 180.0) -> float:
        """Start the worker; returns seconds until it announced ``online`` (pack loaded, warm)."""
        log = (self.root / "worker.log").open("ab")
        started = time.time()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "edge_worker", "run", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        online = self.listener.wait_online(timeout, since=started)
        if online is None or self._proc.poll() is not None:
            self.stop()
            tail = (self.root / "worker.log").read_text(errors="replace")[-2000:]
            raise BenchError(f"the worker did not come online within {timeout} s:\n{tail}")
        return online - started

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchError("the worker is not running")
        return self._proc.pid

    def peak_rss_mb(self) -> float | None:
        """The worker's peak resident memory so far (VmHWM), in MiB."""
        kib = vm_kib(self.pid, "VmHWM")
        return None if kib is None else round(kib / 1024.0, 1)

    def _next(self) -> int:
        self._serial += 1
        return self._serial

    def latency(self, files: list[BaseFile], n: int, gap_s: float = 0.3,
                timeout: float = 120.0) -> list[dict[str, Any]]:  # fmt: skip
        """Drop ``n`` files one at a time (each after the previous verdict) and time each."""
        samples = []
        for i in range(n):
            base = files[i % len(files)]
            dest = self.watch / f"lat_{i:04d}.dcm"
            uid = base.copy_to(dest, self._next())
            closed = time.time()
            if self.listener.wait_uids([uid], timeout):
                raise BenchError(f"no verdict for {dest.name} within {timeout} s")
            got = self.listener.by_uid[uid]
            sample = {"file": dest.name, "kind": got.kind, "e2e_ms": (got.at - closed) * 1000.0}
            times = got.payload.get("times") or {}
            if "file_seen" in times and "verdict_made" in times:
                seen, made = _timestamp(times["file_seen"]), _timestamp(times["verdict_made"])
                sample.update(watch_ms=(seen - closed) * 1000.0, judge_ms=(made - seen) * 1000.0,
                              deliver_ms=(got.at - made) * 1000.0)  # fmt: skip
            sample["timings_ms"] = got.payload.get("timings_ms", {})
            sample["decision"] = got.payload.get("decision")
            samples.append(sample)
            time.sleep(gap_s)
        return samples

    def backlog(
        self, files: list[BaseFile], n: int, timeout: float | None = None
    ) -> dict[str, Any]:
        """Move ``n`` files into the watch folder at once; time until the last verdict arrives."""
        staged = []
        for i in range(n):
            path = self.staging / f"burst_{i:04d}.dcm"
            staged.append((path, files[i % len(files)].copy_to(path, self._next())))
        dropped = time.time()
        for path, _ in staged:
            os.replace(path, self.watch / path.name)  # a move-in, as a DICOM receiver does
        uids = [uid for _, uid in staged]
        missing = self.listener.wait_uids(uids, timeout or 60.0 + 3.0 * n)
        if missing:
            raise BenchError(f"backlog: {len(missing)} of {n} verdicts missing after the timeout")
        arrivals = sorted(self.listener.by_uid[u].at for u in uids)
        seconds = arrivals[-1] - dropped
        return {
            "files": n,
            "seconds": round(seconds, 3),
            "files_per_s": round(n / seconds, 2),
            "first_verdict_s": round(arrivals[0] - dropped, 3),
            "errors": sum(self.listener.by_uid[u].kind != "verdict" for u in uids),
        }

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the worker and wait for it; then close the subscriber."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.listener.close()
