"""The composition root: wires watcher -> judge -> quarantine / publisher for one station.

Parts do not import each other sideways; this module is the only one that knows them all.
Threads: the folder watcher emits complete files into a bounded queue; one worker thread
judges them in arrival order; the publisher's network thread delivers from the durable
outbox.  Each thread stops on an event plus a sentinel, and ``stop()`` joins them all.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from edge_worker.backends import LoadOptions, select
from edge_worker.config import SCAN_SETTLE_SECONDS, Config
from edge_worker.errors import EdgeWorkerError, Rejection, RejectReason
from edge_worker.ingest.types import IngestPolicy
from edge_worker.journal import Journal
from edge_worker.pack import load_pack
from edge_worker.pipeline.runner import Pipeline
from edge_worker.process import Judge, Outcome
from edge_worker.publish.mqtt import MqttSettings, Publisher, Topics
from edge_worker.publish.outbox import Outbox
from edge_worker.quarantine import Quarantine, QuarantineError
from edge_worker.verdict import build_error
from edge_worker.watch import FolderWatcher

log = logging.getLogger(__name__)

_STOP = object()


@dataclass
class Health:
    """Problems the daemon knows of, by component; empty means healthy."""

    problems: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, component: str, why: str) -> None:
        with self.lock:
            if self.problems.get(component) != why:
                log.error("health: %s: %s", component, why)
            self.problems[component] = why

    def clear(self, component: str) -> None:
        with self.lock:
            if self.problems.pop(component, None) is not None:
                log.info("health: %s recovered", component)

    @property
    def ok(self) -> bool:
        with self.lock:
            return not self.problems


def build_pipeline(config: Config) -> Pipeline:
    """Load and verify the pack, select the backend, create and warm every session."""
    pack = load_pack(Path(config.pack.path) if config.pack.path else None)
    backend = select(list(config.inference.backends))
    options = LoadOptions(
        threads=config.inference.threads,
        cache_dir=config.state.folder / "engines",
        precision=config.inference.precision,
        max_batch=config.inference.max_batch,
    )
    pipeline = Pipeline(pack, backend, options)
    pipeline.warm_up()
    return pipeline


def backend_problem(config: Config, pipeline: Pipeline) -> str | None:
    """Why the running backend is not what was asked for, or ``None``.

    Running on the CPU when a GPU backend was preferred is a health failure: the box still
    judges images, but too slowly, and IT must know.
    """
    wanted = config.inference.backends[0]
    chosen = pipeline.backend
    if chosen.name == wanted:
        return None
    failures = "; ".join(f"{k}: {v}" for k, v in chosen.failures.items())
    where = "on the CPU " if chosen.on_cpu else ""
    return f"running {where}with {chosen.name} although {wanted} was preferred ({failures})"


def ingest_policy(config: Config) -> IngestPolicy:
    """The ingest limits from the config."""
    return IngestPolicy(
        modalities=tuple(m.upper() for m in config.ingest.modalities),
        accept_for_processing=config.ingest.accept_for_processing,
        max_side=config.ingest.max_side,
    )


def mqtt_settings(config: Config) -> MqttSettings:
    """Broker settings from the config, with the password from the credential store."""
    m = config.mqtt
    return MqttSettings.from_url(
        m.url,
        username=m.username or None,
        password=config.mqtt_password(),
        client_id=m.client_id or f"edge-worker-{config.site}-{config.station}",
        topic_prefix=m.topic_prefix,
        keepalive=m.keepalive,
        ca_file=m.tls.ca_file or None,
        cert_file=m.tls.cert_file or None,
        key_file=m.tls.key_file or None,
        tls_insecure=m.tls.insecure,
    )


class StationDaemon:
    """One X-ray station: its watch folder, quarantine, journal and publisher."""

    def __init__(self, config: Config, pipeline: Pipeline, queue_size: int = 256) -> None:
        self.config = config
        self.health = Health()
        self.judge = Judge(pipeline, config.site, config.station, ingest_policy(config))
        self.quarantine = Quarantine(config.quarantine.folder)
        self.journal = Journal(config.state.folder / "journal.sqlite3")
        settings = mqtt_settings(config)
        config.state.folder.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(config.state.folder / "outbox.sqlite3", max_rows=config.state.outbox_max_messages)
        self.publisher = Publisher(
            settings, Topics(config.site, config.station, settings.topic_prefix), self.outbox
        )
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name=f"edge-worker/judge-{config.station}", daemon=True)
        self.watcher = FolderWatcher(
            config.watch.folder,
            on_ready=self._enqueue,
            settle_s=config.watch.settle_seconds,
            scan_settle_s=SCAN_SETTLE_SECONDS,
            incomplete_deadline_s=config.watch.incomplete_deadline_seconds,
            on_incomplete=self._incomplete,
            recursive=config.watch.recursive,
            exclude=[config.quarantine.folder, config.state.folder],
            use_polling=config.watch.use_polling,
        )
        self.processed = 0
        problem = backend_problem(config, pipeline)
        if problem:
            self.health.fail("backend", problem)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start publishing, judging and watching (the watcher reconciles the folder first)."""
        self.config.watch.folder.mkdir(parents=True, exist_ok=True)
        self.publisher.start()
        self._worker.start()
        self.watcher.start()
        log.info(
            "station %s/%s watching %s with pack %s %s on %s",
            self.config.site,
            self.config.station,
            self.config.watch.folder,
            self.judge.pipeline.pack.name,
            self.judge.pipeline.pack.version,
            self.judge.pipeline.backend.name,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching, finish the files already queued, deliver what the broker takes, stop."""
        deadline = time.monotonic() + timeout
        self.watcher.stop()
        self._stop.set()
        self._queue.put(_STOP)
        self._worker.join(max(0.1, deadline - time.monotonic()))
        self.publisher.wait_drained(max(0.1, min(3.0, deadline - time.monotonic())))
        self.publisher.stop(max(0.1, deadline - time.monotonic()))
        self.watcher.join(1.0)
        self.journal.close()
        self.outbox.close()

    # -- the work --------------------------------------------------------------------------
    def _enqueue(self, path: Path) -> None:
        # Blocking put: a backlog waits in the folder (the watcher's own queue), not in memory.
        while not self._stop.is_set():
            try:
                self._queue.put((path, time.time()), timeout=0.5)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            path, seen_at = item  # type: ignore[misc]
            try:
                self.handle(path, seen_at)
            except EdgeWorkerError as exc:
                self.health.fail("worker", f"{path.name}: {exc}")
            except Exception as exc:  # noqa: BLE001 - one file must never kill the station
                log.exception("unexpected failure on %s", path.name)
                self.health.fail("worker", f"{path.name}: {type(exc).__name__}: {exc}")

    def _journal_key(self, path: Path) -> str | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        try:
            rel = path.relative_to(self.config.watch.folder)
        except ValueError:
            rel = path
        return Journal.key(rel, st.st_size, st.st_mtime_ns)

    def handle(self, path: Path, seen_at: float) -> Outcome | None:
        """Judge one complete file, quarantine it if rejected, and hand the message over."""
        key = self._journal_key(path)
        if key is None:
            log.info("%s vanished before it was judged", path.name)
            return None
        if self.journal.seen(key):
            log.debug("%s was judged before; skipped", path.name)
            return None
        outcome = self.judge(path, seen_at)
        if outcome.kind == "error" and outcome.rejection is not None:
            outcome.payload["quarantined_as"] = self._quarantine(path, outcome.rejection)
        self._publish(outcome)
        self.journal.record(key, outcome.id, outcome.kind)
        self.processed += 1
        return outcome

    def _quarantine(self, path: Path, rejection: Rejection) -> str | None:
        try:
            dest = self.quarantine.put(path, rejection.reason.value, rejection.detail)
            self.health.clear("quarantine")
            return dest.name
        except QuarantineError as exc:
            # The file stays where it is and the journal keeps it from being judged again.
            self.health.fail("quarantine", str(exc))
            return None

    def _publish(self, outcome: Outcome) -> None:
        from edge_worker.cli import summary_line

        try:
            self.publisher.publish(outcome.kind, outcome.payload, key=outcome.id)
            self.health.clear("outbox")
        except EdgeWorkerError as exc:
            self.health.fail("outbox", str(exc))
            raise
        log.info("%s: %s", self.config.station, summary_line(outcome.kind, outcome.payload))

    def _incomplete(self, path: Path, why: str) -> None:
        rejection = Rejection(RejectReason.INCOMPLETE_FILE, why)
        now = time.time()
        payload = build_error(
            site=self.config.site,
            station=self.config.station,
            rejection=rejection,
            image_key=f"path:{path}",
            sop_instance_uid=None,
            seen_at=now,
            made_at=now,
            quarantined_as=None,
        )
        payload["quarantined_as"] = self._quarantine(path, rejection)
        self._publish(Outcome("error", payload, rejection))


def run_daemon(config: Config) -> int:
    """Run one station until SIGTERM or SIGINT; returns the process exit code."""
    pipeline = build_pipeline(config)
    daemon = StationDaemon(config, pipeline)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: draining and stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        daemon.stop()
    return 0
