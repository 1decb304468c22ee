"""The composition root: wires watcher -> judge -> quarantine / publisher for one station.

Parts do not import each other sideways; this module is the only one that knows them all.
Threads: the folder watcher emits complete files into a bounded queue; one worker thread
judges them in arrival order; the publisher's network thread delivers from the durable
outbox.  Each thread stops on an event plus a sentinel, and ``stop()`` joins them all.
Files are read and decoded in a separate, memory- and time-limited decode process
(:mod:`edge_worker.ingest.sandbox`), and each is marked in progress in the journal while it is
judged: a file that kills the decode process is a rejection, one that kills the daemon twice
is quarantined as ``crashed_worker`` at the next start.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_worker.errors import EdgeWorkerError, PackError, Rejection, RejectReason
from edge_worker.ingest.sandbox import DecodeSandbox
from edge_worker.ingest.whole import is_whole
from edge_worker.judging.bodypart import parse_keywords
from edge_worker.judging.process import Outcome, file_digest
from edge_worker.judging.routing import RoutedJudge, Router, parse_synonyms
from edge_worker.names import original_path, printable
from edge_worker.packs.rollout import PREVIOUS, Decision, RolloutWatcher, restore_previous
from edge_worker.pipeline.runner import Pipeline
from edge_worker.publish.journal import Journal
from edge_worker.publish.lineage import Lineage
from edge_worker.publish.listener import Listener
from edge_worker.publish.mqtt import Publisher, Topics
from edge_worker.publish.outbox import Outbox, OutboxFull
from edge_worker.publish.verdict import build_error
from edge_worker.service.assembly import (
    backend_problem,
    build_pipeline,
    build_router,
    ingest_policy,
    mqtt_settings,
)
from edge_worker.service.config import SCAN_SETTLE_SECONDS, Config
from edge_worker.service.fleet import FleetDesk, dumps
from edge_worker.service.health import Health, declare_metrics, record_outcome, status_document
from edge_worker.service.metrics import Registry
from edge_worker.service.pacs_desk import PacsDesk
from edge_worker.service.review_copier import ReviewCopier
from edge_worker.service.series_desk import SeriesDesk
from edge_worker.subscribers.summary import summary_line
from edge_worker.watching.quarantine import Quarantine, QuarantineError
from edge_worker.watching.retention import Retention
from edge_worker.watching.watch import FolderWatcher

log = logging.getLogger(__name__)

_STOP = object()
#: How often the daemon retries what a full or failing disk refused: a file whose message could
#: not be stored (outbox full, journal write failed) and a rejected file the quarantine could
#: not take.  Doubles after each failed pass, up to RETRY_MAX_SECONDS.
RETRY_SECONDS = 2.0
RETRY_MAX_SECONDS = 60.0
#: A file the worker died judging is judged once more, alone; dying on it this many times
#: quarantines it as crashed_worker (a crash loop under systemd otherwise ends in "failed").
CRASH_STRIKES = 2


@dataclass(frozen=True)
class _Prepared:
    """A rollout candidate built and warmed up, not yet judging."""

    judge: RoutedJudge
    digest: str
    body_parts: tuple[str, ...]


class StationDaemon:
    """One X-ray station: its watch folder, quarantine, journal and publisher."""

    def __init__(
        self,
        config: Config,
        pipeline: Pipeline,
        registry: Registry | None = None,
        router: Router | None = None,
        queue_size: int = 256,
    ) -> None:
        self.config = config
        self.health = Health(on_change=self.publish_status)
        self.metrics = declare_metrics(registry or Registry())
        self.started_at = time.time()
        self.last_message_at: float | None = None
        self._last_progress = time.monotonic()
        thumbnail = config.verdict.thumbnail_size if config.verdict.thumbnail else None
        router = router or Router([pipeline], parse_synonyms(config.pack.synonyms), config.pack.default,
                                  parse_keywords(config.pack.body_part_keywords))  # fmt: skip
        ingest = config.ingest
        # The daemon decodes in a limited child process: a file can kill that, not the station.
        self.sandbox = (
            DecodeSandbox(ingest.decode_memory_mib, ingest.decode_timeout_seconds)
            if ingest.decode_isolated
            else None
        )
        self._judge_args = (config.site, config.station, ingest_policy(config), thumbnail,
                            self.sandbox.read if self.sandbox else None)  # fmt: skip
        overlay, derived = config.verdict.heatmap_overlay, config.derived.folder
        self._judge_kwargs: dict[str, Any] = {"derived_folder": Path(derived) if derived else None,
            "heatmap_overlay_size": config.verdict.heatmap_overlay_size if overlay else None}  # fmt: skip
        self.judge = RoutedJudge(router, *self._judge_args, **self._judge_kwargs)
        self.quarantine = Quarantine(config.quarantine.folder)
        self.journal = Journal(config.state.folder / "journal.sqlite3")
        self.lineage = Lineage(self.journal)
        settings = mqtt_settings(config)
        config.state.folder.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(config.state.folder / "outbox.sqlite3", max_rows=config.state.outbox_max_messages)
        healed = [d.describe() for d in (self.journal.damage, self.outbox.damage) if d is not None]
        if healed:
            # Its own component: "state" is cleared by the next successful write, and IT must
            # see that rows may be lost (the damaged files stay beside the fresh ones).
            self.health.fail("state_damaged", "; ".join(healed))
        self.publisher = Publisher(
            settings, Topics(config.site, config.station, settings.topic_prefix), self.outbox,
            on_problem=self._broker_problem,
        )  # fmt: skip
        self.copier = ReviewCopier.from_config(config, ingest_policy(config), self.publisher, self._dispose)
        self._stopped = False
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name=f"edge-worker/judge-{config.station}", daemon=True)
        self.watcher = FolderWatcher(
            config.watch.folder,
            on_ready=self._enqueue,
            settle_s=config.watch.settle_seconds,
            is_whole=is_whole if config.watch.skip_settle_when_whole else None,
            scan_settle_s=SCAN_SETTLE_SECONDS,
            incomplete_deadline_s=config.watch.incomplete_deadline_seconds,
            on_incomplete=self._incomplete,
            recursive=config.watch.recursive,
            exclude=[config.quarantine.folder, config.state.folder, config.archive_folder],
            use_polling=config.watch.use_polling,
        )
        self.processed = 0
        # MR series are collected and judged on their own thread (edge_worker.service.series_desk).
        self.series = SeriesDesk(
            config, build_pipeline(config, Path(config.series.pack), "series.pack") if config.series.pack else None,
            self.journal, send=self._send, quarantine=self._quarantine, dispose=self._dispose,
            journal_key=self._journal_key, retry=self._retry_later, on_outcome=self._series_sent,
            publisher=self.publisher,
        ) if config.series.enabled else None  # fmt: skip
        self.retention = Retention(
            config.retention, config.watch.folder, config.archive_folder, config.quarantine.folder
        )
        self._next_prune = 0.0  # the first pass right after start
        self._status_thread = threading.Thread(
            target=self._status_loop, name=f"edge-worker/status-{config.station}", daemon=True
        )
        # The watcher hands each file version on only once, so what a full disk or a full
        # outbox refused is remembered here and retried: it costs time, never a file.
        self._retry_lock = threading.Lock()
        self._retry_keys: set[str] = set()  # journal keys of files whose message was not stored
        self._retry_quarantine: dict[Path, tuple[int, int, Rejection]] = {}
        self._replay_again = False
        self._retry_delay = RETRY_SECONDS
        self._next_retry = 0.0
        self._retry_thread = threading.Thread(
            target=self._retry_loop, name=f"edge-worker/retry-{config.station}", daemon=True
        )
        problem = backend_problem(config, pipeline)
        if problem:
            self.health.fail("backend", problem)
        # A rolled-out judge waits here until the judge thread is between two batches.
        self._next_judge: RoutedJudge | None = None
        self._judge_lock = threading.Lock()
        self.rollout = (
            RolloutWatcher(Path(config.pack.rollout_folder), self._prepare_pack, lambda: self.judge,
                           self._install_judge, self._report_pack)
            if config.pack.rollout_folder else None
        )  # fmt: skip
        # Commands and the site's canary plan (edge_worker.service.fleet decides; the rollout acts).
        self.fleet: FleetDesk | None = None
        self.listener: Listener | None = None
        if config.pack.commands:
            self.fleet = FleetDesk(
                prefix=settings.topic_prefix, site=config.site, station=config.station,
                store=Path(config.pack.store_folder), rollout=Path(config.pack.rollout_folder),
                state=config.state.folder, max_verdicts=config.pack.canary_max_verdicts,
                send=self._send_control, running_digest=lambda: self.judge.pipeline.pack.digest,
                restore=self._restore_pack,
            )  # fmt: skip
            self.listener = Listener(settings, f"{settings.client_id}-cmd", self.fleet.topics(), self.fleet.handle)
        # Results in the PACS (edge_worker.service.pacs_desk): SRs after verdicts, KOSs after confirmations.
        self.pacs = PacsDesk(config, self.health, self.metrics, self._send_control, settings) if config.pacs.enabled else None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start publishing, judging and watching (the watcher reconciles the folder first)."""
        self.config.watch.folder.mkdir(parents=True, exist_ok=True)
        if self.sandbox is not None:
            self.sandbox.start()
        self.publisher.start()
        self._replay_unqueued()
        self._recover_crashed()
        self.publish_status()
        if self.copier is not None:
            self.copier.start()
        if self.pacs is not None:
            self.pacs.start()
        self._worker.start()
        if self.series is not None:
            self.series.start()
        self.watcher.start()
        self._status_thread.start()
        self._retry_thread.start()
        if self.rollout is not None:
            self.rollout.start()
        if self.listener is not None:
            self.listener.start()
        pipeline = self.judge.pipeline
        log.info("station %s/%s watching %s with pack %s %s on %s", self.config.site, self.config.station,
                 self.config.watch.folder, pipeline.pack.name, pipeline.pack.version, pipeline.backend.name)  # fmt: skip

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching, finish the files already queued, deliver what the broker takes, stop."""
        deadline = time.monotonic() + timeout
        if self.listener is not None:
            self.listener.stop()
        if self.rollout is not None:
            self.rollout.stop()
        self.watcher.stop()
        self._stop.set()
        self._queue.put(_STOP)
        self._worker.join(max(0.1, deadline - time.monotonic()))
        if self.series is not None:  # a series being judged finishes; waiting ones stay in the folder
            self.series.stop(max(0.1, deadline - time.monotonic()))
        if self.copier is not None:  # after the judge (no more files), before the last sends
            self.copier.stop(max(0.1, min(5.0, deadline - time.monotonic())))
        if self.pacs is not None:  # its answers go through the MQTT outbox below
            self.pacs.stop(max(0.1, min(5.0, deadline - time.monotonic())))
        self._status_thread.join(1.0)
        self._retry_thread.join(1.0)
        self.publisher.wait_drained(max(0.1, min(3.0, deadline - time.monotonic())))
        # The last retained status says "stopped" (sent before "offline", on the same session).
        self._stopped = True
        self.publish_status()
        self.publisher.stop(max(0.1, deadline - time.monotonic()))
        self.watcher.join(1.0)
        if self.sandbox is not None:
            self.sandbox.stop()
        self.journal.close()
        self.outbox.close()

    # -- health ----------------------------------------------------------------------------
    def publish_status(self) -> None:
        """Publish the retained status document (also re-sent after every reconnect)."""
        publisher = getattr(self, "publisher", None)
        if publisher is None:
            return  # health changed during construction; start() publishes
        pipeline = self.judge.pipeline
        # A function, not a document: the publisher rebuilds it on every reconnect, so the
        # retained status never carries a stale broker_connected.
        publisher.set_status(
            lambda: status_document(
                site=self.config.site,
                station=self.config.station,
                health=self.health,
                backend=pipeline.backend.name,
                pack=pipeline.pack.describe(),
                outbox_depth=publisher.outbox_depth,
                broker_connected=publisher.connected,
                processed=self.processed,
                started_at=self.started_at,
                last_message_at=self.last_message_at,
                stopped=self._stopped,
            )
        )

    def _status_loop(self) -> None:
        while not self._stop.wait(self.config.service.status_interval_seconds):
            self.publish_status()

    def progressing(self) -> bool:
        """False when a thread died, or files wait and nothing was judged for too long."""
        if not (self._worker.is_alive() and self.watcher.is_alive()):
            return False
        if self.series is not None and not self.series.watch.is_alive():
            return False
        if self.pacs is not None and not self.pacs.is_alive():
            return False
        if self._queue.empty():
            self._last_progress = time.monotonic()
            return True
        return time.monotonic() - self._last_progress < self.config.service.stall_seconds

    # -- the work --------------------------------------------------------------------------
    def _series_sent(self, outcome: Outcome, seen_at: float) -> None:
        self.processed += 1
        record_outcome(self.metrics, self.config.station, outcome.kind, outcome.payload, seen_at)

    def _enqueue(self, path: Path) -> None:
        if self.series is not None and self.series.offer(path):
            return  # a series file: collected, judged with its series
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
            batch, stop_after = [item], False
            # Take only files already waiting: a lone file never waits for company, and a
            # backlog is judged batch_files at a time with each network run once per batch.
            while len(batch) < self.config.inference.batch_files:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop_after = True  # finish the files taken, then stop
                    break
                batch.append(item)
            files = [entry for entry in batch if isinstance(entry, tuple)]
            self._swap_judge()
            try:
                self.handle_many([(path, seen_at) for path, seen_at in files])
                self._last_progress = time.monotonic()
                self.health.clear("worker")
            except EdgeWorkerError as exc:
                self.health.fail("worker", f"{len(files)} file(s) from {printable(files[0][0].name)}: {exc}")
            except Exception as exc:
                first = printable(files[0][0].name)
                log.exception("unexpected failure on %d file(s) from %s", len(files), first)
                self.health.fail("worker", f"{first}: {type(exc).__name__}: {exc}")
            if stop_after:
                return

    # -- rollout (edge_worker.packs.rollout decides; these only build, swap and report) -----------
    def _prepare_pack(self, root: Path) -> _Prepared:
        """Load, verify and warm up a candidate primary pack (and the other packs beside it)."""
        pipeline = build_pipeline(self.config, root, "pack.rollout_folder")
        judge = RoutedJudge(build_router(self.config, pipeline), *self._judge_args, **self._judge_kwargs)
        return _Prepared(judge, pipeline.pack.digest, pipeline.pack.body_parts)

    def _install_judge(self, prepared: _Prepared) -> None:
        with self._judge_lock:
            self._next_judge = prepared.judge

    def _swap_judge(self) -> None:
        """In the judge thread, before a batch: take a rolled-out judge.  The old one is
        dropped here, so its sessions are released once this batch no longer needs them."""
        with self._judge_lock:
            judge, self._next_judge = self._next_judge, None
        if judge is not None:
            old, self.judge = self.judge, judge
            log.info("judging with pack %s (was %s)", judge.pipeline.pack.digest[:12], old.pipeline.pack.digest[:12])
            if self.fleet is not None:
                self.fleet.swapped(old, judge)  # a canary keeps the old judge in shadow

    def _report_pack(self, decision: Decision) -> None:
        """A rollout decision: health, and the retained ``pack`` message (through the outbox)."""
        if decision.state == "refused":
            self.health.fail("pack_rollout", decision.reason)
        else:
            self.health.clear("pack_rollout")
        self._send_control(f"{self.publisher.topics.base}/pack", decision.as_payload(), True)
        if self.fleet is not None:
            self.fleet.decided(decision)

    def _send_control(self, topic: str, doc: dict[str, object], retain: bool) -> None:
        """A pack, command-result or rollout-status message, through the outbox (QoS 1)."""
        try:
            self.outbox.put(topic, dumps(doc), f"ctl:{time.time_ns()}", qos=1, retain=retain)
        except (OutboxFull, sqlite3.Error) as exc:
            self.health.fail("outbox", f"message for {topic} not stored: {exc}")

    def _restore_pack(self, judge: RoutedJudge, reason: str) -> None:
        """A canary below its threshold: the shadow judge (the previous pack) judges again from
        the next batch, ``ROLLOUT/previous`` becomes ``current`` again, and ``pack`` says so."""
        tried = self.judge.pipeline.pack.digest
        try:
            restore_previous(Path(self.config.pack.rollout_folder))
        except (OSError, PackError) as exc:  # the swap below still happens: it is in memory
            self.health.fail("pack_rollout", f"rolled back in memory, not on disk: {exc}")
        with self._judge_lock:
            self._next_judge = judge
        self._report_pack(Decision("rolled_back", PREVIOUS, reason, judge.pipeline.pack.digest, tried))

    def _name(self, path: Path) -> str:
        """The watch-folder-relative path in printable form: how the journal names a file."""
        try:
            rel = path.relative_to(self.config.watch.folder)
        except ValueError:
            rel = path
        return printable(rel)

    def _journal_key(self, path: Path) -> str | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        # The printable form: a name that is not UTF-8 cannot go into SQLite as it is, and for
        # every ordinary name it is the name itself, so existing keys stay valid.
        return Journal.key(Path(self._name(path)), st.st_size, st.st_mtime_ns)

    def handle(self, path: Path, seen_at: float) -> Outcome | None:
        """Judge one complete file, quarantine it if rejected, and hand the message over."""
        return self.handle_many([(path, seen_at)])[0]

    def handle_many(self, files: list[tuple[Path, float]]) -> list[Outcome | None]:
        """Judge complete files together; each is quarantined or sent as if judged alone.

        Each file is marked in progress in the journal while it is judged, so that a worker
        death on it is known at the next start (:meth:`_recover_crashed`).  Returns one outcome
        per file, ``None`` for a file that vanished, was judged before, or was quarantined as
        crashed_worker.
        """
        todo: list[tuple[int, Path, float, str]] = []
        for i, (path, seen_at) in enumerate(files):
            key = self._journal_key(path)
            if key is None:
                log.info("%s vanished before it was judged", printable(path.name))
            elif self.journal.seen(key):
                log.debug("%s was judged before; skipped", printable(path.name))
            else:
                todo.append((i, path, seen_at, key))
        results: list[Outcome | None] = [None] * len(files)
        # A file the worker died on before is judged alone, so that a batch that died does
        # not condemn its innocent members: only the culprit dies again (and is quarantined).
        strikes = self.journal.strikes([key for *_, key in todo])
        plain = [t for t in todo if t[3] not in strikes]
        groups = ([plain] if plain else []) + [[t] for t in todo if t[3] in strikes]
        failure: EdgeWorkerError | None = None
        for group in groups:
            try:
                if strikes.get(group[0][3], 0) >= CRASH_STRIKES:
                    self._condemn(group[0][1], group[0][3], group[0][2], strikes[group[0][3]])
                else:
                    self._judge_group(group, results)
            except EdgeWorkerError as exc:
                failure = failure or exc  # the other groups are still judged
        if failure is not None:
            raise failure
        return results

    def _judge_group(
        self, group: list[tuple[int, Path, float, str]], results: list[Outcome | None]
    ) -> None:
        """Judge ``group`` in one batch between marking it in progress and clearing the mark."""
        keys = [key for *_, key in group]
        self._mark_in_progress(keys)
        failure: EdgeWorkerError | None = None
        try:
            outcomes = self.judge.judge_many([(path, seen_at) for _, path, seen_at, _ in group])
            if self.fleet is not None:
                self._shadow_judge([path for _, path, _, _ in group], outcomes)
            for (i, path, seen_at, key), outcome in zip(group, outcomes):
                try:
                    if outcome.kind == "error" and outcome.rejection is not None:
                        outcome.payload["quarantined_as"] = self._quarantine(path, outcome.rejection)
                    name = self._name(path)
                    self.lineage.supersede(outcome, name)
                    self._send(outcome, key)
                except EdgeWorkerError as exc:
                    failure = failure or exc  # the other files of the batch are still sent
                    continue
                self.processed += 1
                record_outcome(self.metrics, self.config.station, outcome.kind, outcome.payload, seen_at)
                self.lineage.sent(outcome, name)  # after the metrics: it waits for a disk sync
                results[i] = outcome
                if outcome.kind == "verdict" and self.pacs is not None:  # reads the header, never waits for the PACS
                    self.pacs.submit(path, outcome.payload)
                # A rejected file went to the quarantine; the review copier disposes after its copy.
                if outcome.kind == "verdict" and not (self.copier and self.copier.submit(path, outcome.payload)):
                    self._dispose(path)
        finally:
            # Judged (or failed with an exception, which is no death): not in progress any more.
            self._clear_in_progress(keys)
        if failure is not None:
            raise failure

    def _shadow_judge(self, files: list[Path], outcomes: list[Outcome]) -> None:
        """A canary judges the batch with the previous pack too, before the files are disposed
        of; a failure there is reported and never costs a verdict."""
        assert self.fleet is not None
        try:
            self.fleet.shadow_judge(files, outcomes)
        except Exception as exc:  # the live verdicts go on regardless
            log.exception("shadow judging failed")
            self.health.fail("pack_rollout", f"shadow judging failed: {type(exc).__name__}: {exc}")

    def _mark_in_progress(self, keys: list[str]) -> None:
        try:
            self.journal.begin(keys)
        except sqlite3.Error as exc:
            # Judging goes on: without the mark only the crash-loop guard is lost for these.
            self.health.fail("state", f"journal in {self.config.state.folder}: {exc}")

    def _clear_in_progress(self, keys: list[str]) -> None:
        try:
            self.journal.end(keys)
        except sqlite3.Error as exc:
            self.health.fail("state", f"journal in {self.config.state.folder}: {exc}")

    def _recover_crashed(self) -> None:
        """At start: count the files the last run died judging; quarantine repeat killers.

        A file with fewer than CRASH_STRIKES strikes is left to the watcher's reconcile,
        which hands it on again; :meth:`handle_many` then judges it alone.
        """
        for key, count in self.journal.crashed().items():
            path = self.config.watch.folder / key.rsplit("|", 2)[0]
            if self._journal_key(path) != key:
                self._clear_in_progress([key])  # gone or rewritten: a new version is innocent
            elif count >= CRASH_STRIKES:
                try:
                    self._condemn(path, key, time.time(), count)
                except EdgeWorkerError as exc:
                    log.warning("%s: %s; quarantined when handed on again", path.name, exc)
            else:
                log.warning("%s was being judged when the worker died; judging it again, alone", path.name)

    def _condemn(self, path: Path, key: str, seen_at: float, count: int) -> None:
        """Quarantine a file the worker died on ``count`` times and publish its error."""
        rejection = Rejection(
            RejectReason.CRASHED_WORKER,
            f"the worker died {count} times while judging this file; it is not judged again",
        )
        log.error("%s: %s", path.name, rejection.detail)
        try:
            image_key = f"sha256:{file_digest(path)}"  # no parse: parsing it may be what kills
        except OSError:
            image_key = f"path:{path.name}"
        payload = build_error(
            site=self.config.site, station=self.config.station, rejection=rejection,
            image_key=image_key, sop_instance_uid=None, seen_at=seen_at, made_at=time.time(),
            quarantined_as=None,
        )  # fmt: skip
        payload["quarantined_as"] = self._quarantine(path, rejection)
        outcome = Outcome("error", payload, rejection)
        self._send(outcome, key)
        self._clear_in_progress([key])
        self.processed += 1
        record_outcome(self.metrics, self.config.station, outcome.kind, payload, seen_at)

    def _quarantine(self, path: Path, rejection: Rejection) -> str | None:
        try:
            dest = self.quarantine.put(path, rejection.reason.value, rejection.detail)
        except QuarantineError as exc:
            # The file stays where it is and the journal keeps it from being judged again; the
            # move is retried until the quarantine takes it.
            self.health.fail("quarantine", str(exc))
            self._quarantine_later(path, rejection)
            return None
        with self._retry_lock:
            waiting = bool(self._retry_quarantine)
        if not waiting:
            self.health.clear("quarantine")
        return printable(dest.name)

    def _send(self, outcome: Outcome, key: str | None) -> None:
        """Remember the message, hand it to the outbox, then mark the file done.

        If this image was judged before (same id), the stored payload is sent instead of the
        new one, so every copy of a message that ever reaches the broker is identical.
        """

        try:
            self.lineage.note_reused_uid(outcome)
            payload = self.journal.remember(outcome.id, outcome.kind, outcome.payload)
        except sqlite3.Error as exc:  # the state disk is full or failing
            self._retry_later(key)
            self.health.fail("state", f"journal in {self.config.state.folder}: {exc}")
            raise EdgeWorkerError(f"cannot record message {outcome.id}: {exc}") from exc
        try:
            self.publisher.publish(outcome.kind, payload, key=outcome.id)
            self.health.clear("outbox")
        except (EdgeWorkerError, sqlite3.Error) as exc:
            # OutboxFull (the broker has acknowledged nothing for long) or a failing disk: the
            # file stays unmarked and is judged again once the outbox has room.
            self._retry_later(key)
            if isinstance(exc, EdgeWorkerError):
                self.health.fail("outbox", str(exc))
                raise
            self.health.fail("outbox", f"outbox write failed: {exc}")
            raise EdgeWorkerError(f"cannot store message {outcome.id}: {exc}") from exc
        try:
            self.journal.mark_queued(key, outcome.id, outcome.kind)
        except sqlite3.Error as exc:
            # The message is stored for sending; only the file's mark is missing, so the file
            # is judged again later and the same message (same id, same content) re-sent.
            self._retry_later(key)
            self.health.fail("state", f"journal in {self.config.state.folder}: {exc}")
            raise EdgeWorkerError(f"cannot mark {outcome.id} as queued: {exc}") from exc
        self.health.clear("state")
        self.last_message_at = time.time()
        log.info("%s: %s", self.config.station, summary_line(outcome.kind, payload))

    def _replay_unqueued(self) -> None:
        """Hand to the outbox the messages a crash left between the journal and the outbox."""
        self._replay_again = False
        for message_id, kind, payload in self.journal.unqueued():
            log.info("re-queueing message %s left by an interrupted run", message_id)
            try:
                self.publisher.publish(kind, payload, key=message_id)
            except EdgeWorkerError as exc:
                # A full outbox must not stop the start (a crash loop): report it, go on, and
                # replay the rest once the broker has taken some.
                self.health.fail("outbox", str(exc))
                self._replay_again = True
                return
            self.journal.mark_queued(None, message_id, kind)

    # -- retries ---------------------------------------------------------------------------
    def _retry_later(self, key: str | None) -> None:
        if key is not None:
            with self._retry_lock:
                self._retry_keys.add(key)

    def _quarantine_later(self, path: Path, rejection: Rejection) -> None:
        try:
            st = path.stat()
        except OSError:
            return  # gone: nothing left to move
        with self._retry_lock:
            self._retry_quarantine[path] = (st.st_size, st.st_mtime_ns, rejection)

    # -- retention -------------------------------------------------------------------------
    def _dispose(self, path: Path) -> Path | None:
        """Archive or delete a judged file (the archived path, or None); a failure is a health
        problem, retried by the sweep."""
        try:
            archived = self.retention.dispose(path, time.time())
        except OSError as exc:
            self.health.fail("retention", f"cannot archive or delete judged {path.name}: {exc}")
            return None
        self.health.clear("retention")
        return archived

    def _retention_pass(self) -> None:
        """Dispose of judged files left in the watch folder, then prune archive and quarantine."""
        self._next_prune = time.monotonic() + self.config.retention.interval_seconds
        with self._retry_lock:
            waiting = set(self._retry_quarantine)  # rejected files the quarantine must still take

        def judged(path: Path) -> bool:
            key = self._journal_key(path)
            held = self.copier is not None and self.copier.holds(path)  # disposed after its copy
            return not held and path not in waiting and key is not None and self.journal.seen(key) is not None

        c = self.config
        try:
            swept = self.retention.sweep(judged, [c.quarantine.folder, c.state.folder, c.archive_folder], time.time())
            self.retention.prune_all(time.time())
        except OSError as exc:
            self.health.fail("retention", f"retention pass: {exc}")
            return
        if swept:
            log.info("retention: disposed of %d judged file(s) left in the watch folder", swept)
        self.health.clear("retention")

    def _retry_loop(self) -> None:
        while not self._stop.wait(RETRY_SECONDS):
            try:
                if time.monotonic() >= self._next_prune:
                    self._retention_pass()
                self._check_broker()
                self._retry_quarantine_moves()
                if time.monotonic() >= self._next_retry:
                    self._retry_files()
            except Exception:  # the retry thread must outlive one bad pass
                log.exception("retry pass failed; trying again in %.0f s", RETRY_SECONDS)

    def _check_broker(self) -> None:
        """Refused, unreachable, silent, no CONNACK, a refused message: a health problem."""
        self._broker_problem(self.publisher.broker_problem())
        if self.listener is not None and not self._stopped:
            if self.listener.problem:  # e.g. an ACL without the station's read right
                self.health.fail("commands", f"{self.publisher.settings.url}: {self.listener.problem}")
            else:
                self.health.clear("commands")

    def _broker_problem(self, problem: str | None) -> None:
        if self._stopped or getattr(self, "health", None) is None:
            return
        if problem:
            self.health.fail("broker", f"{self.publisher.settings.url}: {problem}")
        else:
            self.health.clear("broker")

    def _retry_files(self) -> None:
        """Hand on again the files whose message could not be stored, once there is room."""
        with self._retry_lock:
            keys = sorted(self._retry_keys)
        if not keys and not self._replay_again:
            self._retry_delay = RETRY_SECONDS
            return
        if self.outbox.depth() >= self.outbox.max_rows:
            return  # still full: nothing could be stored yet
        if self._replay_again:
            self._replay_unqueued()
        if keys:
            log.info("retrying %d file(s) whose message could not be stored", len(keys))
        for key in keys:
            with self._retry_lock:
                self._retry_keys.discard(key)
            path = self.config.watch.folder / original_path(key.rsplit("|", 2)[0])
            # A file gone or changed since is not retried: a new version is the watcher's.
            if self._journal_key(path) == key and not self.journal.seen(key):
                self._enqueue(path)
        self._next_retry = time.monotonic() + self._retry_delay
        self._retry_delay = min(RETRY_MAX_SECONDS, self._retry_delay * 2)

    def _retry_quarantine_moves(self) -> None:
        """Move into the quarantine the rejected files it could not take before."""
        with self._retry_lock:
            todo = list(self._retry_quarantine.items())
        if not todo:
            return
        for path, (size, mtime_ns, rejection) in todo:
            try:
                st = path.stat()
                same = (st.st_size, st.st_mtime_ns) == (size, mtime_ns)
            except OSError:
                same = False
            if same:
                try:
                    dest = self.quarantine.put(path, rejection.reason.value, rejection.detail)
                except QuarantineError as exc:
                    self.health.fail("quarantine", str(exc))
                    return  # still unusable; the next pass tries again
                log.info("%s moved to the quarantine as %s once it could take it",
                         printable(path.name), printable(dest.name))
            with self._retry_lock:
                self._retry_quarantine.pop(path, None)
        with self._retry_lock:
            waiting = bool(self._retry_quarantine)
        if not waiting:
            self.health.clear("quarantine")

    def _incomplete(self, path: Path, why: str) -> None:
        rejection = Rejection(RejectReason.INCOMPLETE_FILE, why)
        now = time.time()
        payload = build_error(
            site=self.config.site,
            station=self.config.station,
            rejection=rejection,
            image_key=f"path:{printable(path)}",
            sop_instance_uid=None,
            seen_at=now,
            made_at=now,
            quarantined_as=None,
        )
        payload["file_name"] = printable(path.name)
        payload["quarantined_as"] = self._quarantine(path, rejection)
        outcome = Outcome("error", payload, rejection)
        self._send(outcome, None)
        self.lineage.sent(outcome, self._name(path))
