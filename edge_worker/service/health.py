"""What hospital IT watches: health problems, metrics, the retained status and the watchdog.

* :class:`Health` holds known problems by component (an empty dict means healthy).
* :func:`declare_metrics` names every Prometheus metric the daemon exports.
* :func:`status_document` is the retained ``.../status`` MQTT message: the same essentials.
* :class:`Watchdog` pings systemd (``WATCHDOG=1``) only while the pipeline makes progress: a
  station whose judge thread is stuck with files waiting stops pinging and is restarted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_worker import __version__
from edge_worker.service import sdnotify
from edge_worker.service.metrics import Registry

log = logging.getLogger(__name__)


@dataclass
class Health:
    """Problems the daemon knows of, by component; empty means healthy."""

    problems: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_change: Callable[[], None] | None = None

    def fail(self, component: str, why: str) -> None:
        with self.lock:
            changed = self.problems.get(component) != why
            self.problems[component] = why
        if changed:
            log.error("health: %s: %s", component, why)
            if self.on_change:
                self.on_change()

    def clear(self, component: str) -> None:
        with self.lock:
            changed = self.problems.pop(component, None) is not None
        if changed:
            log.info("health: %s recovered", component)
            if self.on_change:
                self.on_change()

    def snapshot(self) -> dict[str, str]:
        with self.lock:
            return dict(self.problems)

    @property
    def ok(self) -> bool:
        with self.lock:
            return not self.problems


def declare_metrics(registry: Registry) -> Registry:
    """Declare the daemon's metrics on ``registry`` (idempotent) and return it."""
    registry.describe("edge_worker_files_seen_total", "counter", "Complete files handed to the judge")
    registry.describe("edge_worker_verdicts_total", "counter", "Verdicts made, by decision")
    registry.describe("edge_worker_rejections_total", "counter", "Files rejected, by reason")
    registry.describe("edge_worker_stage_seconds", "histogram", "Time per pipeline stage")
    registry.describe("edge_worker_end_to_end_seconds", "histogram", "File seen complete to message stored for sending")
    registry.describe("edge_worker_outbox_depth", "gauge", "Messages stored and not yet acknowledged by the broker")
    registry.describe("edge_worker_broker_connected", "gauge", "1 while connected to the MQTT broker and it answers")
    registry.describe(
        "edge_worker_broker_silence_seconds", "gauge", "Seconds since the last packet from the broker (-1: none yet)"
    )
    registry.describe("edge_worker_healthy", "gauge", "1 while no health problem is known")
    registry.describe("edge_worker_backend_info", "gauge", "The inference backend and pack in use (value 1)")
    return registry


def record_outcome(
    registry: Registry, station: str, kind: str, payload: dict[str, Any], seen_at: float
) -> None:
    """Count one outcome and observe its stage and end-to-end times."""
    registry.inc("edge_worker_files_seen_total", station=station)
    if kind == "verdict":
        registry.inc("edge_worker_verdicts_total", station=station, decision=str(payload["decision"]))
        for stage, ms in payload.get("timings_ms", {}).items():
            if stage != "total":
                registry.observe("edge_worker_stage_seconds", float(ms) / 1000.0, stage=stage)
    else:
        registry.inc("edge_worker_rejections_total", station=station, reason=str(payload["reason"]))
    registry.observe("edge_worker_end_to_end_seconds", max(0.0, time.time() - seen_at), station=station)


def status_document(
    *,
    site: str,
    station: str,
    health: Health,
    backend: str,
    pack: dict[str, Any],
    outbox_depth: int,
    broker_connected: bool,
    processed: int,
    started_at: float,
    last_message_at: float | None,
    stopped: bool = False,
) -> dict[str, Any]:
    """The retained status message: what a dashboard or IT needs at a glance.

    ``state`` is ``ok`` (no problem known), ``degraded`` (see ``problems``) or, with
    ``stopped``, ``stopped``: the last status a clean stop leaves retained, so a stopped
    station never shows as ok.
    """
    problems = health.snapshot()
    return {
        "schema": "xray-qc/status@1",
        "site": site,
        "station": station,
        "state": "stopped" if stopped else "ok" if not problems else "degraded",
        "problems": problems,
        "backend": backend,
        "pack": pack,
        "outbox_depth": outbox_depth,
        "broker_connected": broker_connected,
        "processed": processed,
        "uptime_s": round(time.time() - started_at, 1),
        "last_message_at": last_message_at,
        "worker_version": __version__,
        "at": time.time(),
    }


class Watchdog(threading.Thread):
    """Pings systemd while ``progressing()`` says the pipeline is not stuck."""

    def __init__(self, interval_s: float, progressing: Callable[[], bool]) -> None:
        super().__init__(name="edge-worker/watchdog", daemon=True)
        self.interval_s = interval_s
        self.progressing = progressing
        self.stop_event = threading.Event()
        self.pings = 0

    def run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            if self.progressing():
                if sdnotify.notify("WATCHDOG=1"):
                    self.pings += 1
            else:
                log.error("watchdog: no progress; withholding the ping so systemd restarts the service")

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5.0)
