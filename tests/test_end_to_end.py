"""End to end: the real daemon as a subprocess, a real mosquitto, real DICOM files.

Files dropped into the watch folder (phantoms, a non-DICOM file, and every real DICOM file of
``../shared/data/radiographs/dicom/`` where that folder exists) must each give exactly one
verdict or one typed error on the broker, with the documented payload.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_worker.phantoms.ankle import write_phantom
from tests.browser import stop_process

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "edge_worker" / "schema"
SHARED_DICOM = ROOT.parent / "shared" / "data" / "radiographs" / "dicom"
SITE, STATION = "e2e-site", "xr-07"
BASE = f"xray/{SITE}/{STATION}"


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


def _drop(src_write: Callable[[Path], object], folder: Path, name: str) -> None:
    """Write under a hidden name, then rename into place: the modality's move-in."""
    temp = folder / f".{name}.part"
    src_write(temp)
    os.replace(temp, folder / name)


@pytest.fixture
def daemon(tmp_path: Path, mosquitto: object) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    watch = tmp_path / "incoming"
    quarantine = tmp_path / "quarantine"
    watch.mkdir()
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "edge_worker", "run",
            "--watch", str(watch), "--site", SITE, "--station", STATION,
            "--mqtt", mosquitto.url,  # type: ignore[attr-defined]
            "--quarantine", str(quarantine), "--state", str(tmp_path / "state"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    yield proc, watch, quarantine
    stop_process(proc)
    log.close()


def test_every_file_gets_one_verdict_or_one_error(
    daemon: tuple[subprocess.Popen[bytes], Path, Path],
    subscriber: Callable[..., object],
    mosquitto: object,
    tmp_path: Path,
) -> None:
    proc, watch, quarantine = daemon
    sub = subscriber(mosquitto, f"{BASE}/#")
    online = sub.wait_for(f"{BASE}/availability", 1, timeout=60)  # type: ignore[attr-defined]
    assert online[-1].payload == b"online"

    phantoms = {}
    for i, (view, grade) in enumerate([("AP", 1), ("LAT", 1), ("AP", 3), ("LAT", 3), ("AP", 2)]):
        name = f"phantom{i}.dcm"
        truth = {}

        def write(p: Path, i: int = i, view: str = view, grade: int = grade) -> None:
            truth["t"] = write_phantom(p, seed=7000 + i, view=view, grade=grade, size=1024)

        _drop(write, watch, name)
        phantoms[name] = truth["t"]
    _drop(lambda p: p.write_bytes(b"this is not a radiograph\n" * 40), watch, "notes.dcm")
    expected = len(phantoms) + 1
    shared_files: list[Path] = []
    if SHARED_DICOM.is_dir():
        shared_files = sorted(SHARED_DICOM.glob("*.dcm"))
        sub_dir = watch / "study1"
        sub_dir.mkdir()
        for src in shared_files:
            _drop(lambda p, src=src: shutil.copyfile(src, p), sub_dir, src.name)
        expected += len(shared_files)

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        got = len(sub.messages(f"{BASE}/verdict")) + len(sub.messages(f"{BASE}/error"))  # type: ignore[attr-defined]
        if got >= expected or proc.poll() is not None:
            break
        time.sleep(0.2)
    time.sleep(1.5)  # anything beyond one message per file would show up now
    verdicts = [json.loads(m.payload) for m in sub.messages(f"{BASE}/verdict")]  # type: ignore[attr-defined]
    errors = [json.loads(m.payload) for m in sub.messages(f"{BASE}/error")]  # type: ignore[attr-defined]
    assert proc.poll() is None, "the daemon died"
    assert len(verdicts) + len(errors) == expected, (len(verdicts), len(errors), expected)

    verdict_schema, error_schema = _validator("verdict.schema.json"), _validator("error.schema.json")
    for v in verdicts:
        verdict_schema.validate(v)
        assert v["site"] == SITE and v["station"] == STATION
        assert v["not_for_clinical_use"] is True
        if v["pack"]["name"] == "ankle-demo":  # the phantom-trained pack says so in every verdict
            assert v["pack"]["training_data"] == "synthetic-phantom"
        else:  # another bundled pack judged a real radiograph of its own body part
            assert v["body_part"].upper() in ("CHEST", "THORAX", "LUNG", "CXR"), v["body_part"]
        assert v["decision"] in ("ok", "retake", "review", "not_judged") and v["reasons"]
    for e in errors:
        error_schema.validate(e)
        assert e["quarantined_as"], e
        assert (quarantine / e["quarantined_as"]).is_file()
        reason = json.loads((quarantine / f"{e['quarantined_as']}.reason.json").read_text())
        assert reason["reason"] == e["reason"]
    assert any(e["reason"] == "not_dicom" for e in errors)

    # Every phantom was judged, once, with its own id; a grade-1 AP phantom is not a retake.
    by_uid = {v["sop_instance_uid"]: v for v in verdicts}
    import pydicom

    for name, truth in phantoms.items():
        uid = pydicom.dcmread(watch / name, stop_before_pixels=True).SOPInstanceUID
        assert uid in by_uid, f"{name} got no verdict"
    phantom_ids = [by_uid[pydicom.dcmread(watch / n, stop_before_pixels=True).SOPInstanceUID]["id"] for n in phantoms]
    assert len(set(phantom_ids)) == len(phantoms)

    # No payload carries the phantom patient's name or ID.
    for m in sub.messages(f"{BASE}/verdict") + sub.messages(f"{BASE}/error"):  # type: ignore[attr-defined]
        assert b"PHANTOM^" not in m.payload

    # SIGTERM: a clean stop, availability goes offline.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    sub.wait_for(f"{BASE}/availability", 2, timeout=10)  # type: ignore[attr-defined]
    assert sub.messages(f"{BASE}/availability")[-1].payload == b"offline"  # type: ignore[attr-defined]
