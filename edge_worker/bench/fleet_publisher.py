"""Simulated sites for the fleet load test (:mod:`edge_worker.bench.fleet_load`).

``python -m edge_worker.bench.fleet_publisher`` reads one JSON :class:`SiteGroup` on stdin,
connects one MQTT client per site (what a central broker sees of a site: one bridge
connection carrying all its stations), publishes each station's retained ``online`` and a first
status, prints ``ready``, waits for a line ``go <POSIX time>``, then plays the schedule and
prints one JSON result line.  Messages are shaped as a daemon publishes them: the status
document is :func:`edge_worker.service.health.status_document` itself, the ``latest`` summary
:func:`edge_worker.publish.latest.latest_summary`, the verdict a ``xray-qc/verdict@2`` without
a thumbnail.  Each carries its publish time (``times.verdict_made`` with microseconds, the
status ``at``), so a subscriber can measure the latency of every message.

Time is compressed by ``rate_multiplier``: at 10, a station's status every 30 s comes every
3 s and a verdict every 45 s on average (exponential gaps: modalities are bursty) every 4.5 s.
"""

from __future__ import annotations

import heapq
import json
import random
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_worker import __version__
from edge_worker.publish.latest import latest_summary
from edge_worker.service.health import Health, status_document

#: The pack every simulated station runs (its digest is the shape of a real one).
PACK = {"name": "chest-qc", "version": "1.4.0", "not_for_clinical_use": True,
        "training_data": "synthetic-phantoms", "digest": "5e" * 32}  # fmt: skip
DECISIONS = (("ok", 0.8), ("review", 0.1), ("retake", 0.08), ("not_judged", 0.02))


@dataclass(frozen=True)
class SiteGroup:
    """What one publisher process simulates: ``sites`` with ``stations`` each, on ``host:port``.

    ``seconds`` of compressed time; ``verdict_every_s`` (mean) and ``status_every_s`` are the
    real-time intervals, divided by ``rate_multiplier``; ``seed`` makes the schedule repeatable.
    """

    host: str
    port: int
    prefix: str
    sites: list[str]
    stations: int
    seconds: float
    rate_multiplier: float
    verdict_every_s: float = 45.0
    status_every_s: float = 30.0
    seed: int = 1


def station_names(stations: int) -> list[str]:
    """``xr-01``, ``xr-02``, ... for one site."""
    return [f"xr-{n:02d}" for n in range(1, stations + 1)]


def schedule(group: SiteGroup) -> list[tuple[float, str, str, str]]:
    """Every ``(seconds after go, kind, site, station)`` of the run, in time order; ``kind`` is
    ``status`` or ``verdict`` (a verdict is followed by its ``latest`` summary)."""
    rng = random.Random(f"{group.seed}:{','.join(group.sites)}")
    verdict_gap = group.verdict_every_s / group.rate_multiplier
    status_gap = group.status_every_s / group.rate_multiplier
    events: list[tuple[float, str, str, str]] = []
    for site in group.sites:
        for station in station_names(group.stations):
            t = rng.uniform(0, status_gap)  # stations started at different times: phases differ
            while t < group.seconds:
                events.append((t, "status", site, station))
                t += status_gap
            t = rng.expovariate(1 / verdict_gap)
            while t < group.seconds:
                events.append((t, "verdict", site, station))
                t += rng.expovariate(1 / verdict_gap)
    heapq.heapify(events)
    return [heapq.heappop(events) for _ in range(len(events))]


def _iso_us(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="microseconds")


def verdict_payload(site: str, station: str, rng: random.Random, made_at: float) -> dict[str, Any]:
    """A verdict shaped like :func:`edge_worker.publish.verdict.build_verdict`'s, made at ``made_at``."""
    decision = rng.choices([d for d, _ in DECISIONS], [w for _, w in DECISIONS])[0]
    grade = {"ok": 1, "review": 2, "retake": 3, "not_judged": 1}[decision]
    uid = f"1.2.826.0.1.3680043.10.1.{rng.getrandbits(48)}"
    return {
        "schema": "xray-qc/verdict@2", "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "site": site, "station": station, "sop_instance_uid": uid, "study_instance_uid": uid + ".1",
        "series_instance_uid": uid + ".2", "modality": "DX", "body_part": "CHEST", "header_view_position": "PA",
        "header_laterality": None, "pixel_sha256": f"{rng.getrandbits(256):064x}",
        "times": {"file_seen": _iso_us(made_at - 0.35), "verdict_made": _iso_us(made_at)},
        "view": {"label": "AP", "confidence": 0.97, "probabilities": {"AP": 0.97, "LAT": 0.03}},
        "roi": {"found": True, "box": [212.0, 180.5, 2811.0, 2790.0],
                "rotated": {"cx": 1511.5, "cy": 1485.2, "width": 2599.0, "height": 2609.5, "angle_deg": 0.4}},
        "quality": {"score": round(rng.uniform(0.8, 3.2), 4), "grade": grade, "diagnostic": decision == "ok"},
        "diagnostic": None if decision in ("review", "not_judged") else decision == "ok",
        "decision": decision,
        "reasons": [{"code": f"quality.{decision}", "severity": "info", "text": f"simulated {decision}"}],
        "exposure": None,
        "orientation": {"angle_deg": 0.4, "suggested_rotation_deg": 0, "confidence": 0.99, "judged_upright": True},
        "timings_ms": {"decode": 61.2, "view": 8.1, "roi": 22.4, "quality": 30.9, "total": 131.0},
        "pack": PACK, "not_for_clinical_use": True, "backend": "onnxruntime-cpu", "worker_version": __version__,
    }  # fmt: skip


class _Site:
    """One site's MQTT client (its bridge, as the centre sees it) and its stations' state."""

    def __init__(self, group: SiteGroup, site: str) -> None:
        self.site = site
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"fleet-load-{site}")
        self.client.max_queued_messages_set(0)  # never drop: every message is counted
        self.client.connect(group.host, group.port, keepalive=30)
        self.client.loop_start()
        self.started = time.time()
        self.processed: dict[str, int] = dict.fromkeys(station_names(group.stations), 0)
        self.last_at: dict[str, float | None] = dict.fromkeys(self.processed)

    def topic(self, prefix: str, station: str, kind: str) -> str:
        return f"{prefix}/{self.site}/{station}/{kind}"

    def status(self, station: str, rng: random.Random) -> dict[str, Any]:
        health = Health()
        if rng.random() < 0.03:  # now and then a station is degraded for a while
            health.problems["publisher"] = "broker silent for 31 s (keepalive 30 s)"
        return status_document(
            site=self.site, station=station, health=health, backend="onnxruntime-cpu", pack=PACK,
            outbox_depth=rng.choice((0, 0, 0, 1, 2)), broker_connected=True, processed=self.processed[station],
            started_at=self.started, last_message_at=self.last_at[station],
        )  # fmt: skip


def run(group: SiteGroup, go: Any, out: Any) -> dict[str, Any]:
    """Connect, publish the births, say ``ready`` on ``out``, wait for ``go`` (a readable line
    ``go <POSIX time>``), play the schedule; the counts, verdict ids and the largest lag."""
    rng = random.Random(group.seed)
    events = schedule(group)
    sites = {name: _Site(group, name) for name in group.sites}
    deadline = time.monotonic() + 30
    while not all(s.client.is_connected() for s in sites.values()):
        if time.monotonic() > deadline:
            raise SystemExit(f"fleet_publisher: cannot connect to {group.host}:{group.port}")
        time.sleep(0.02)
    sent: list[paho.MQTTMessageInfo] = []
    counts = {"availability": 0, "status": 0, "verdict": 0, "latest": 0}
    ids: list[str] = []

    def publish(site: _Site, station: str, kind: str, doc: Any, retain: bool) -> None:
        payload = doc if isinstance(doc, bytes) else json.dumps(doc, separators=(",", ":")).encode()
        sent.append(site.client.publish(site.topic(group.prefix, station, kind), payload, qos=1, retain=retain))
        counts[kind] += 1

    for site in sites.values():
        for station in site.processed:
            publish(site, station, "availability", b"online", True)
            publish(site, station, "status", site.status(station, rng), True)
    print("ready", file=out, flush=True)
    start = float(go.readline().split()[1])
    max_lag = 0.0
    for t, kind, site_name, station in events:
        due = start + t
        now = time.time()
        if due > now:
            time.sleep(due - now)
        else:
            max_lag = max(max_lag, now - due)
        site = sites[site_name]
        if kind == "status":
            publish(site, station, "status", site.status(station, rng), True)
            continue
        verdict = verdict_payload(site_name, station, rng, time.time())
        site.processed[station] += 1
        site.last_at[station] = time.time()
        ids.append(verdict["id"])
        publish(site, station, "verdict", verdict, False)
        publish(site, station, "latest", latest_summary("verdict", verdict), True)
    ended = time.time()
    unacked = sum(1 for info in sent if not _acked(info))
    for site in sites.values():
        site.client.disconnect()
        site.client.loop_stop()
    return {"published": counts, "verdict_ids": ids, "max_lag_s": round(max_lag, 4),
            "played_s": round(ended - start, 3), "unacked": unacked}  # fmt: skip


def _acked(info: paho.MQTTMessageInfo) -> bool:
    try:
        info.wait_for_publish(timeout=30)
    except (RuntimeError, ValueError):  # paho: the message was refused or the client is gone
        return False
    return info.is_published()


def main() -> int:
    """Read the plan (one JSON line) on stdin; results as one JSON line on stdout."""
    group = SiteGroup(**json.loads(sys.stdin.readline()))
    result = run(group, sys.stdin, sys.stdout)
    print(json.dumps(result), flush=True)
    return 0


def plan_line(group: SiteGroup) -> str:
    """The plan as the JSON line :func:`main` reads."""
    return json.dumps(asdict(group)) + "\n"


if __name__ == "__main__":
    sys.exit(main())
