"""The station's PACS desk: SRs after verdicts, KOSs after confirmations, on a thread of its own.

The judge thread hands each verdict and its file to :meth:`PacsDesk.submit` after the verdict is
in the MQTT outbox and before the file is disposed of; submit reads the file's header only
(``stop_before_pixels``, milliseconds) and queues it, so the verdict never waits for the PACS.
This thread keeps what a later KOS needs of the header, builds the SR
(:mod:`edge_worker.pacs.sr`) and stores it in the PACS outbox (:mod:`edge_worker.pacs.outbox`),
then drains that outbox by C-STORE (:mod:`edge_worker.pacs.sender`) with exponential back-off
(2 s doubling up to ``[pacs] retry_max_seconds``).  Reject commands arrive through a
:class:`~edge_worker.publish.listener.Listener` of its own (client id ``<id>-pacs``, persistent
session) and are answered on ``reject/result`` (:mod:`edge_worker.pacs.commands`).

Health component ``pacs``: objects waiting because the PACS does not take them (with the last
error), or the reject topic refused; ``pacs_restore``: a withdrawn rejection the PACS cannot be
told of (a person must restore the image there).  Metrics: ``edge_worker_pacs_outbox_depth``,
``edge_worker_pacs_sent_total{kind}``, ``edge_worker_pacs_failures_total{reason}``.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from edge_worker.names import printable
from edge_worker.pacs import commands
from edge_worker.pacs.kos import parse_code
from edge_worker.pacs.outbox import PacsOutbox
from edge_worker.pacs.sender import PacsTarget, Sender
from edge_worker.pacs.sr import PacsObjectError, build_report, encode, source_header
from edge_worker.publish.listener import Listener
from edge_worker.publish.settings import MqttSettings
from edge_worker.service.config import Config
from edge_worker.service.health import Health
from edge_worker.service.metrics import Registry

log = logging.getLogger(__name__)

_STOP = object()
QUEUE_SIZE = 256
RETRY_MIN_S = 2.0
PRUNE_EVERY_S = 3600.0
_KIND_ACTION = {"kos": "reject", "revoke": "withdraw"}


def target_of(config: Config) -> PacsTarget:
    """Where ``[pacs]`` says the PACS is."""
    p = config.pacs
    return PacsTarget(host=p.host, port=p.port, called_ae=p.called_ae, ae_title=p.ae_title,
                      timeout_s=p.timeout_seconds, tls=p.tls, tls_ca=p.tls_files.ca_file,
                      tls_cert=p.tls_files.cert_file, tls_key=p.tls_files.key_file)  # fmt: skip


class PacsDesk:
    """SR and KOS delivery for one station.  ``send_result(topic, doc, retain)``: the daemon's
    durable MQTT send; ``settings``: the broker, for the reject listener (None: no commands)."""

    def __init__(self, config: Config, health: Health, metrics: Registry,
                 send_result: Callable[[str, dict[str, object], bool], None],
                 settings: MqttSettings | None = None) -> None:  # fmt: skip
        self.config = config
        self.health = health
        self.metrics = metrics
        self._send_result = send_result
        config.state.folder.mkdir(parents=True, exist_ok=True)
        self.outbox = PacsOutbox(config.state.folder / "pacs.sqlite3")
        if self.outbox.damage is not None:
            health.fail("state_damaged", self.outbox.damage.describe())
        self.sender = Sender(target_of(config))
        self.revoke_code = parse_code(config.pacs.revoke_code) if config.pacs.revoke_code else None
        prefix = settings.topic_prefix if settings is not None else "xray"
        self.base = f"{prefix}/{config.site}/{config.station}"
        self.listener = (Listener(settings, f"{settings.client_id}-pacs", [f"{self.base}/reject"], self.handle)
                         if settings is not None else None)  # fmt: skip
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_SIZE)
        self._wake = threading.Event()
        # Held while objects are sent and while a command acts: a withdrawal never cancels an
        # object that is on its way to the PACS.
        self._sending = threading.Lock()
        self._next_prune = 0.0
        self._thread = threading.Thread(target=self._run, name="edge-worker/pacs", daemon=True)
        metrics.describe("edge_worker_pacs_outbox_depth", "gauge", "DICOM objects stored and not yet taken by the PACS")
        metrics.describe("edge_worker_pacs_sent_total", "counter", "DICOM objects the PACS stored, by kind")
        metrics.describe("edge_worker_pacs_failures_total", "counter", "Failed PACS attempts and objects not made, by reason")
        metrics.gauge_callback("edge_worker_pacs_outbox_depth", lambda: float(self.outbox.depth()))

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the sending thread and the reject listener."""
        self._thread.start()
        if self.listener is not None:
            self.listener.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, finish the queued verdicts within ``timeout``, close the outbox."""
        if self.listener is not None:
            self.listener.stop()
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._wake.set()
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.outbox.close()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    # -- the judge thread's side ---------------------------------------------------------------
    def submit(self, path: Path, verdict: dict[str, Any]) -> None:
        """Queue ``verdict`` with ``path``'s header; never blocks, never raises for a bad file."""
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, InvalidDicomError, ValueError) as exc:
            self._not_made(verdict, "unreadable_source", f"{printable(path.name)}: {exc}")
            return
        try:
            self._queue.put_nowait((verdict, header))
        except queue.Full:
            self._not_made(verdict, "queue_full", "the PACS desk is behind; no SR for this verdict")
        self._wake.set()

    def _not_made(self, verdict: dict[str, Any], reason: str, detail: str) -> None:
        self.metrics.inc("edge_worker_pacs_failures_total", reason=reason)
        log.warning("PACS: no object for verdict %s: %s: %s", verdict.get("id"), reason, detail)

    # -- the listener's side -------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes) -> None:
        """One reject command: act once, answer on ``reject/result``."""
        try:
            command = commands.parse(payload)
        except PacsObjectError as exc:
            answer = commands.result(getattr(exc, "command", None), "refused", exc.reason, exc.detail)
        else:
            with self._sending:
                answer = commands.act(self.outbox, command, self.revoke_code)
            if answer["reason"] == "revoke_unsupported":
                self.health.fail("pacs_restore", f"a rejection was withdrawn: restore image "
                                 f"{command['sop_instance_uid']} in the PACS by hand")  # fmt: skip
        log.info("PACS: %s %s for verdict %s: %s %s", answer["action"], answer["id"], answer["verdict_id"],
                 answer["outcome"], answer["reason"])  # fmt: skip
        self._send_result(f"{self.base}/reject/result", answer, False)
        self._wake.set()

    # -- this thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        # Building an SR costs ~0.1 s of CPU (highdicom's checks): at nice 19 it never delays a
        # verdict on a box whose cores the judge needs (Linux: a thread is a task of its own).
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError) as exc:
            log.info("PACS: cannot lower the thread's priority (%s)", exc)
        while True:
            stop = False
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                    break
                try:
                    self._file(*job)  # type: ignore[misc]
                except Exception:  # one verdict must not end the desk
                    log.exception("PACS: building the report failed")
            if stop:
                return
            try:
                with self._sending:
                    self._drain()
            except Exception:  # a failing disk or library: reported, tried again
                log.exception("PACS: sending failed")
            self._health()
            if time.monotonic() >= self._next_prune:
                self._prune()
            due = self.outbox.next_due()
            wait = 5.0 if due is None else min(5.0, max(0.05, due - time.time()))
            self._wake.wait(wait)
            self._wake.clear()

    def _prune(self) -> None:
        """Once an hour: forget what is older than ``[pacs] keep_days``."""
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        try:
            gone = self.outbox.prune(time.time() - self.config.pacs.keep_days * 86_400)
        except sqlite3.Error as exc:
            log.error("PACS: pruning %s failed: %s", self.outbox.path, exc)
            return
        if gone:
            log.info("PACS: forgot %d row(s) older than %g days", gone, self.config.pacs.keep_days)

    def _file(self, verdict: dict[str, Any], header: pydicom.Dataset) -> None:
        """Keep the image's header for a later KOS, and store the SR (when reports are on)."""
        vid = str(verdict["id"])
        try:
            kept = source_header(header)
        except PacsObjectError as exc:
            self._not_made(verdict, exc.reason, exc.detail)
            return
        self.outbox.keep_source(vid, kept.to_json())
        if not self.config.pacs.send_reports:
            return
        try:
            report = build_report(verdict, kept, station=self.config.station)
        except PacsObjectError as exc:
            self._not_made(verdict, exc.reason, exc.detail)
            return
        self.outbox.put(f"sr:{vid}", "sr", vid, str(report.SOPInstanceUID), encode(report))

    def _drain(self) -> None:
        """Send what is due; count, back off and answer commands per object."""
        due = self.outbox.due(time.time())
        if not due:
            return
        for entry, sent in zip(due, self.sender.store([e.data for e in due])):
            if sent.ok:
                self.outbox.mark_sent(entry.row_id)
                self.metrics.inc("edge_worker_pacs_sent_total", kind=entry.kind)
                log.info("PACS: %s %s stored (%s)", entry.kind, entry.sop_uid, sent.detail)
                if entry.kind in _KIND_ACTION:
                    command = {"id": entry.key.split(":", 1)[1], "verdict_id": entry.verdict_id,
                               "action": _KIND_ACTION[entry.kind]}  # fmt: skip
                    self._send_result(f"{self.base}/reject/result",
                                      commands.result(command, "sent", "", sent.detail, entry.sop_uid), False)  # fmt: skip
            else:
                delay = min(self.config.pacs.retry_max_seconds, RETRY_MIN_S * 2.0**entry.attempts)
                self.outbox.mark_failed(entry.row_id, f"{sent.reason}: {sent.detail}", time.time() + delay)
                self.metrics.inc("edge_worker_pacs_failures_total", reason=sent.reason)
                log.warning("PACS: %s %s not stored: %s; next try in %.0f s", entry.kind, entry.sop_uid, sent.detail, delay)

    def _health(self) -> None:
        problems = []
        error = self.outbox.oldest_error()
        if error is not None:
            problems.append(f"{self.outbox.depth()} object(s) wait for the PACS {self.sender.target.address}: {error}")
        if self.listener is not None and self.listener.problem:
            problems.append(f"reject commands: {self.listener.problem}")
        if problems:
            self.health.fail("pacs", "; ".join(problems))
        else:
            self.health.clear("pacs")


def echo(config: Config) -> tuple[bool, str]:
    """C-ECHO the configured PACS (for ``edge-worker check``): (answered, sentence)."""
    outcome = Sender(target_of(config)).echo()
    return outcome.ok, outcome.detail if outcome.ok else f"{outcome.reason}: {outcome.detail}"

