"""``edge-worker demo``: the whole product on one machine for a newcomer.

An in-process MQTT broker (amqtt) unless a broker URL is given, one daemon per simulated
station on the demo pack, a simulated modality that writes phantom ankle radiographs into
the stations' watch folders, and a subscriber that prints every verdict as the ward
dashboard would receive it.  Ctrl-C, SIGTERM (or ``--count``) stops everything cleanly.

Its folders stay small: judged files are archived with a size bound of
:data:`ARCHIVE_MIB` per station (about a gigabyte of phantoms every ten minutes otherwise), and
the temporary folder used without ``--workdir`` is removed on exit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from edge_worker.phantoms.ankle import make_dataset
from edge_worker.publish.broker import EmbeddedBroker
from edge_worker.publish.mqtt import MqttSettings
from edge_worker.service.assembly import build_pipeline, build_router
from edge_worker.service.config import Config, with_overrides
from edge_worker.service.daemon import StationDaemon
from edge_worker.subscribers.summary import summary_line

log = logging.getLogger(__name__)

SITE = "demo-hospital"
#: Archive bound per simulated station (a 1024 px phantom is about 2 MiB).
ARCHIVE_MIB = 64.0
#: Quarantine bound per simulated station.
QUARANTINE_MIB = 16.0


def _station_config(base: Config, workdir: Path, station: str, url: str, protocol: str) -> Config:
    root = workdir / station
    return with_overrides(
        base,
        top={"site": SITE, "station": station},
        watch={"folder": root / "incoming", "settle_seconds": 0.2},
        quarantine={"folder": root / "quarantine"},
        state={"folder": root / "state"},
        mqtt={"url": url, "protocol": protocol},
        retention={"judged": "archive", "max_total_mib": ARCHIVE_MIB,
                   "quarantine_max_total_mib": QUARANTINE_MIB, "interval_seconds": 10.0},
    )  # fmt: skip


class Modality(threading.Thread):
    """Writes one phantom exposure every ``interval_s`` seconds, station after station.

    Each file is written under a hidden temporary name and renamed into place, as a modality
    or a DICOM receiver does; the watcher acts on the move-in.
    """

    def __init__(self, folders: list[Path], interval_s: float, stop: threading.Event) -> None:
        super().__init__(name="edge-worker/modality", daemon=True)
        self.folders = folders
        self.interval_s = interval_s
        self.stop_event = stop
        self.written = 0

    def run(self) -> None:
        rng = np.random.default_rng(2026)
        while not self.stop_event.wait(self.interval_s if self.written else 0.1):
            folder = self.folders[self.written % len(self.folders)]
            # Mostly upright exposures; now and then one hung a quarter turn off.
            quarter = float(rng.choice([0, 0, 0, 0, 0, 0, 90, 270]))
            ds, truth = make_dataset(
                int(rng.integers(1 << 31)),
                rotation_range=(quarter - 10.0, quarter + 10.0),
                size=1024,
                index=self.written + 1,
            )
            final = folder / f"IMG{self.written + 1:05d}.dcm"
            temp = folder / f".{final.name}.part"
            ds.save_as(temp, enforce_file_format=True)
            os.replace(temp, final)
            log.debug("modality wrote %s (%s grade %d)", final.name, truth.view, truth.grade)
            self.written += 1


def _subscribe(url: str, stations: int, done: threading.Event, count: int) -> mqtt.Client:
    settings = MqttSettings.from_url(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edge-worker-demo-ward")
    received = {"n": 0}

    def on_connect(c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
        c.subscribe(f"{settings.topic_prefix}/{SITE}/+/+", qos=1)

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        station, kind = msg.topic.split("/")[-2:]
        if kind == "availability":
            print(f"[ward] {station:<10} {msg.payload.decode()}", flush=True)
            return
        if kind not in ("verdict", "error"):
            return
        payload = json.loads(msg.payload)
        total = payload.get("timings_ms", {}).get("total")
        took = f" ({total:.0f} ms)" if total is not None else ""
        print(f"[ward] {station:<10} {summary_line(kind, payload)}{took}", flush=True)
        received["n"] += 1
        if count and received["n"] >= count:
            done.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(settings.host, settings.port)
    client.loop_start()
    return client


def run_demo(
    mqtt_url: str | None = None,
    stations: int = 5,
    interval_s: float = 1.0,
    count: int = 0,
    workdir: Path | None = None,
    pack_dir: Path | None = None,
) -> int:
    """Run the demo until Ctrl-C or SIGTERM, or until ``count`` messages reached the ward
    subscriber; the exit code.  Without ``workdir`` everything is written to a temporary folder
    that is removed on the way out, whatever stops the demo."""
    if workdir is not None:
        return _run(mqtt_url, stations, interval_s, count, workdir, pack_dir)
    with tempfile.TemporaryDirectory(prefix="edge-worker-demo-") as temp:
        return _run(mqtt_url, stations, interval_s, count, Path(temp), pack_dir)


def _run(
    mqtt_url: str | None, stations: int, interval_s: float, count: int, workdir: Path, pack_dir: Path | None
) -> int:
    broker: EmbeddedBroker | None = None
    done = threading.Event()
    if threading.current_thread() is threading.main_thread():
        def on_term(signum: int, frame: FrameType | None) -> None:
            done.set()

        signal.signal(signal.SIGTERM, on_term)
    # amqtt speaks MQTT 3.1.1 only; a real broker gets MQTT 5 (refusals become visible).
    protocol = "3.1.1" if mqtt_url is None else "5"
    if mqtt_url is None:
        broker = EmbeddedBroker()
        mqtt_url = f"mqtt://127.0.0.1:{broker.start()}"
        print(f"demo: in-process MQTT broker on {mqtt_url}", flush=True)
    base = with_overrides(Config(), pack={"path": str(pack_dir) if pack_dir else ""})
    pipeline = build_pipeline(base)
    router = build_router(base, pipeline)
    pack = pipeline.pack
    print(
        f"demo: pack {pack.name} {pack.version} on {pipeline.backend.name}"
        + (" - trained on synthetic phantoms, NOT FOR CLINICAL USE" if pack.not_for_clinical_use else ""),
        flush=True,
    )
    names = [f"xr-{i + 1:02d}" for i in range(stations)]
    daemons = [StationDaemon(_station_config(base, workdir, n, mqtt_url, protocol), pipeline, router=router) for n in names]
    subscriber = _subscribe(mqtt_url, stations, done, count)
    for d in daemons:
        d.start()
    modality = Modality([d.config.watch.folder for d in daemons], interval_s, done)
    print(f"demo: {stations} stations writing to {workdir}; Ctrl-C to stop", flush=True)
    modality.start()
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        print("\ndemo: stopping", flush=True)
    finally:
        done.set()
        modality.join(5.0)
        for d in daemons:
            d.stop(timeout=10.0)
        subscriber.disconnect()
        subscriber.loop_stop()
        if broker is not None:
            broker.stop()
    print(f"demo: {modality.written} exposures written, stopped cleanly", flush=True)
    return 0
