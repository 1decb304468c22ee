"""The station as a systemd service: signals, sd_notify, the watchdog and the metrics endpoint.

:mod:`edge_worker.service.daemon` wires one station's parts; this module runs that station as a
process (``edge-worker run``) until SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from edge_worker.service import preflight, sdnotify
from edge_worker.service.assembly import build_pipeline, build_router
from edge_worker.service.config import Config
from edge_worker.service.daemon import StationDaemon
from edge_worker.service.health import Watchdog
from edge_worker.service.metrics import MetricsServer, Registry

log = logging.getLogger(__name__)


def _or_minus_one(value: float | None) -> float:
    return -1.0 if value is None else value


def _serve_metrics(config: Config, registry: Registry, daemon: StationDaemon) -> MetricsServer | None:
    listen = config.service.metrics_listen
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    registry.gauge_callback("edge_worker_outbox_depth", lambda: float(daemon.publisher.outbox_depth))
    registry.gauge_callback("edge_worker_broker_connected", lambda: float(daemon.publisher.connected))
    registry.gauge_callback(
        "edge_worker_broker_silence_seconds", lambda: _or_minus_one(daemon.publisher.silence_s)
    )
    registry.gauge_callback("edge_worker_healthy", lambda: float(daemon.health.ok))
    pipeline = daemon.judge.pipeline
    registry.set(
        "edge_worker_backend_info", 1.0,
        backend=pipeline.backend.name, pack=pipeline.pack.name, pack_version=pipeline.pack.version,
    )  # fmt: skip
    server = MetricsServer(registry, host or "127.0.0.1", int(port))
    server.start()
    log.info("metrics on http://%s:%d/metrics", host or "127.0.0.1", server.port)
    return server


def run_daemon(config: Config) -> int:
    """Run one station until SIGTERM or SIGINT; returns the process exit code.

    Under systemd (``Type=notify``): READY=1 once the pack is verified and every network is
    warmed up, STATUS= lines on the way, WATCHDOG=1 pings while the pipeline makes progress,
    STOPPING=1 when a signal arrives.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: draining and stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Before any model: a full or read-only state disk would otherwise surface as an ONNX
    # Runtime protobuf error from the optimised-model cache, naming no disk.
    folders = preflight.check_folders(config, create=True)
    sdnotify.notify("STATUS=loading and warming up the model pack")
    pipeline = build_pipeline(config)
    registry = Registry()
    daemon = StationDaemon(config, pipeline, registry, router=build_router(config, pipeline))
    if folders.quarantine_problem:
        # Verdicts still flow; rejected files wait in the watch folder until it takes them.
        daemon.health.fail("quarantine", folders.quarantine_problem)
    daemon.start()
    metrics = _serve_metrics(config, registry, daemon)
    interval = sdnotify.watchdog_interval()
    watchdog = Watchdog(interval, daemon.progressing) if interval else None
    if watchdog:
        watchdog.start()
    pack = pipeline.pack
    sdnotify.notify(f"READY=1\nSTATUS=judging with {pack.name} {pack.version} on {pipeline.backend.name}")
    try:
        while not stop.wait(1.0):
            pass
    finally:
        sdnotify.notify("STOPPING=1\nSTATUS=draining work in flight")
        if watchdog:
            watchdog.stop()
        daemon.stop(timeout=config.service.stop_timeout_seconds)
        if metrics:
            metrics.stop()
    return 0
