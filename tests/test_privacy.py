"""No patient data leaves the box: a real DICOM carrying a patient's name, ID and birth date,
and rejected files carrying them too, go through the real daemon; none of these strings may
appear in any MQTT payload (verdict, error, status, availability), any log line (DEBUG
included), the quarantine's reason files, or the journal and outbox databases.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from conftest import Mosquitto, Subscriber

from tests.stations import PhantomStock, Station

ROOT = Path(__file__).resolve().parents[1]
SHARED_DICOM = ROOT.parent / "shared" / "data" / "radiographs" / "dicom"
REAL = "nhsx_nih_cxr14_DX.dcm"  # a real chest DX, uncompressed

NAME = "Qzxfamily^Wolfgangus^Ottokar"
PATIENT_ID = "QZX-PID-993311"
BIRTH = "19020304"
# Every form in which one of them could leak: the DICOM PN as stored, its components, a
# "Given Family" rendering, the ID, the birth date raw and as an ISO date.
NEEDLES = [NAME, "Qzxfamily", "Wolfgangus", "Ottokar", PATIENT_ID, "993311", BIRTH, "1902-03-04"]


def _with_identity(src: Path, dest: Path, **changes: str) -> None:
    import pydicom

    ds = pydicom.dcmread(src)
    ds.PatientName = NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH
    ds.OtherPatientIDs = PATIENT_ID
    for key, value in changes.items():
        setattr(ds, key, value)
    tmp = dest.with_name(f".{dest.name}.part")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, dest)


def _truncated(src: Path, dest: Path) -> None:
    data = src.read_bytes()
    tmp = dest.with_name(f".{dest.name}.part")
    tmp.write_bytes(data[: int(len(data) * 0.6)])
    os.replace(tmp, dest)


def _leaks(data: bytes, where: str) -> list[str]:
    return [f"{needle!r} in {where}" for needle in NEEDLES if needle.encode() in data]


def test_no_patient_data_in_payloads_logs_quarantine_or_state(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Callable[..., Subscriber]
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    real = SHARED_DICOM / REAL
    if not real.is_file():  # no ../shared here: a phantom stands in for the real file
        real = PhantomStock(tmp_path / "phantoms").path(7100)
    phantom = PhantomStock(tmp_path / "phantoms").path(7101)
    _with_identity(real, staging / "real.dcm")
    _with_identity(phantom, staging / "phantom.dcm")
    _with_identity(real, staging / "mr.dcm", Modality="MR", SOPInstanceUID="1.2.826.0.1.3680043.8.498.77341")
    _truncated(staging / "real.dcm", staging / "truncated.dcm")
    for f in staging.glob("*.dcm"):
        assert NAME.encode() in f.read_bytes() and PATIENT_ID.encode() in f.read_bytes()

    station = Station(tmp_path / "st", mosquitto.url, site="priv", station="xr-09", verbose=True,
                      tables={"service": {"status_interval_seconds": 1.0}})  # fmt: skip
    sub = subscriber(mosquitto, "#")
    try:
        station.start()
        for name in ("real.dcm", "phantom.dcm", "mr.dcm", "truncated.dcm"):
            os.replace(staging / name, station.watch / name)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            outcomes = sub.messages(f"{station.base}/verdict") + sub.messages(f"{station.base}/error")
            if len(outcomes) >= 4:
                break
            time.sleep(0.2)
        time.sleep(2.0)  # a status refresh or two
        rc, _ = station.terminate()
        assert rc == 0
    finally:
        station.close()

    verdicts = [json.loads(m.payload) for m in sub.messages(f"{station.base}/verdict")]
    errors = [json.loads(m.payload) for m in sub.messages(f"{station.base}/error")]
    assert len(verdicts) + len(errors) == 4, (verdicts, errors)
    assert len(verdicts) >= 1 and len(errors) >= 2
    reasons = sorted(e["reason"] for e in errors)
    assert "unsupported_modality" in reasons, reasons

    leaks: list[str] = []
    everything = sub.all_messages()
    topics = sorted({m.topic for m in everything})
    for m in everything:
        leaks += _leaks(m.payload, f"MQTT {m.topic}")
    checked = len(everything)
    assert any(t.endswith("/status") for t in topics)
    log = station.log_path.read_bytes()
    assert b"DEBUG" in log  # the strictest log level was on
    leaks += _leaks(log, "the daemon's log")
    reason_files = sorted(station.quarantine.glob("*.reason.json"))
    assert len(reason_files) == len(errors)
    for f in reason_files:
        leaks += _leaks(f.read_bytes(), f"quarantine/{f.name}")
    state_files = sorted(p for p in station.state.rglob("*") if p.is_file())
    assert any(p.name == "journal.sqlite3" for p in state_files)
    assert any(p.name == "outbox.sqlite3" for p in state_files)
    for f in state_files:
        leaks += _leaks(f.read_bytes(), f"state/{f.name}")
    print(
        f"[privacy] {checked} MQTT messages on {len(topics)} topics, {len(log.splitlines())} log lines, "
        f"{len(reason_files)} reason files, {len(state_files)} state files: {len(leaks)} leaks "
        f"(input {'a real DICOM' if real.name == REAL else 'a phantom'}; verdicts {len(verdicts)}, "
        f"errors {reasons})"
    )
    assert not leaks, leaks

