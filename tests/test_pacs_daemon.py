"""The real daemon with ``[pacs]``: real mosquitto, real Orthanc, the demo pack on phantom files.

A retake verdict's SR reaches Orthanc and no KOS follows until a reject command comes over MQTT;
then the KOS arrives and ``reject/result`` says queued, then sent.  With Orthanc down the SR
waits in the PACS outbox across a daemon restart and arrives once.  ``edge-worker check``
C-ECHOes the PACS.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import Mosquitto

from edge_worker.phantoms.ankle import write_phantom
from tests.orthanc import STATION_AE, Orthanc, orthanc_fixture  # noqa: F401  (fixture)
from tests.stations import ROOT, render_toml, wait_until

pytest.importorskip("onnxruntime")


def pacs_table(server: Orthanc, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "host": "127.0.0.1", "port": server.dicom_port, "called_ae": server.ae_title,
            "ae_title": STATION_AE, "timeout_seconds": 5.0, "retry_max_seconds": 2.0, **extra}  # fmt: skip


def drop_retake(watch: Path, name: str, seed: int = 4) -> Path:
    """A grade-3 phantom (the demo pack says retake), renamed into the watch folder."""
    hidden = watch / f".{name}.part"
    write_phantom(hidden, seed=seed, size=512, view="AP" if seed % 2 else "LAT", grade=3)
    target = watch / name
    hidden.rename(target)
    return target


def modalities(server: Orthanc) -> list[str]:
    return sorted(str(pydicom.dcmread(io.BytesIO(server.file(i)), stop_before_pixels=True).Modality)
                  for i in server.instances())  # fmt: skip


def publish(broker: Mosquitto, topic: str, doc: dict[str, Any]) -> None:
    import paho.mqtt.publish as single

    single.single(topic, json.dumps(doc), qos=1, hostname=broker.host, port=broker.port)


def test_daemon_sends_sr_then_kos_only_after_a_command(tmp_path: Path, mosquitto: Mosquitto, orthanc: Orthanc,
                                                       stations: Any, subscriber: Any) -> None:  # fmt: skip
    station = stations(tmp_path / "st", mosquitto.url, tables={"pacs": pacs_table(orthanc)})
    base = station.base
    sub = subscriber(mosquitto, f"{base}/verdict", f"{base}/reject/result")
    station.start()
    drop_retake(station.watch, "a.dcm")
    [msg] = sub.wait_for(f"{base}/verdict", 1, timeout=60)
    verdict = json.loads(msg.payload)
    assert verdict["decision"] == "retake"
    wait_until("the SR in Orthanc", lambda: modalities(orthanc) == ["SR"], timeout=30, station=station)
    time.sleep(2.0)
    assert modalities(orthanc) == ["SR"]  # a retake verdict alone never rejects the image
    command = {"schema": "xray-qc/reject@1", "id": str(uuid.uuid4()), "action": "reject", "verdict_id": verdict["id"],
               "sop_instance_uid": verdict["sop_instance_uid"], "study_instance_uid": verdict["study_instance_uid"],
               "series_instance_uid": verdict["series_instance_uid"],
               "reason": {"code": "111212", "scheme": "DCM", "meaning": "Over exposed"},
               "confirmed_by": "anna", "tier": 1, "confirmed_at": "2026-12-03T17:00:00+00:00", "review_version": 3}  # fmt: skip
    publish(mosquitto, f"{base}/reject", command)
    answers = sub.wait_for(f"{base}/reject/result", 2, timeout=30)
    docs = [json.loads(a.payload) for a in answers]
    assert [d["outcome"] for d in docs] == ["queued", "sent"] and {d["id"] for d in docs} == {command["id"]}
    wait_until("the KOS in Orthanc", lambda: modalities(orthanc) == ["KO", "SR"], timeout=10, station=station)
    kos = next(pydicom.dcmread(io.BytesIO(orthanc.file(i))) for i in orthanc.instances()
               if pydicom.dcmread(io.BytesIO(orthanc.file(i)), stop_before_pixels=True).Modality == "KO")  # fmt: skip
    assert kos.SOPInstanceUID == docs[0]["document_sop_instance_uid"]
    assert kos.ContentSequence[0].ConceptCodeSequence[0].CodeValue == "111212"


def test_pacs_down_across_a_restart_then_sent_once(tmp_path: Path, mosquitto: Mosquitto, stations: Any,
                                                   subscriber: Any) -> None:  # fmt: skip
    server = Orthanc(tmp_path / "orthanc")
    station = stations(tmp_path / "st", mosquitto.url, tables={"pacs": pacs_table(server)})
    sub = subscriber(mosquitto, f"{station.base}/status")
    station.start()
    drop_retake(station.watch, "b.dcm", seed=5)

    def pacs_problem() -> bool:
        docs = [json.loads(m.payload) for m in sub.messages(f"{station.base}/status")]
        return any("unreachable" in d.get("problems", {}).get("pacs", "") for d in docs)

    wait_until("a pacs health problem in the status", pacs_problem, timeout=60, station=station)
    rc, _ = station.terminate()
    assert rc == 0
    server.start()
    try:
        station.start()
        wait_until("the SR after the restart", lambda: len(server.instances()) == 1, timeout=30, station=station)
        time.sleep(3.0)
        assert len(server.instances()) == 1
    finally:
        station.close()
        server.stop()


def _check(config: Path) -> tuple[int, list[str]]:
    result = subprocess.run([sys.executable, "-m", "edge_worker", "check", "--config", str(config)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)  # fmt: skip
    return result.returncode, [x for x in result.stdout.splitlines() if x.strip()]


def test_check_echoes_the_pacs(tmp_path: Path, mosquitto: Mosquitto, orthanc: Orthanc) -> None:
    tables: dict[str, dict[str, Any]] = {
        "watch": {"folder": str(tmp_path / "in")}, "quarantine": {"folder": str(tmp_path / "q")},
        "state": {"folder": str(tmp_path / "state")}, "mqtt": {"url": mosquitto.url}, "pacs": pacs_table(orthanc),
    }  # fmt: skip
    good = tmp_path / "good.toml"
    good.write_text(render_toml({"site": "chk", "station": "xr-01"}, tables))
    rc, lines = _check(good)
    assert rc == 0, lines
    assert lines[-1].startswith("ok    pacs:") and "C-ECHO" in lines[-1]
    tables["pacs"] = pacs_table(orthanc, ae_title="STRANGER")
    bad = tmp_path / "bad.toml"
    bad.write_text(render_toml({"site": "chk", "station": "xr-01"}, tables))
    rc, lines = _check(bad)
    assert rc == 1 and lines[-1].startswith("FAIL  pacs:") and "association_rejected" in lines[-1], lines
