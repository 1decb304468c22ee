"""Verdicts a radiographer can trust: upright first, no overclaiming, identity by content.

Real parts: phantom and real DICOM files read through the worker's ingest, the bundled packs
run by ONNX Runtime, and (for a reused UID) the real daemon on a real mosquitto.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from edge_worker.backends import LoadOptions, select
from edge_worker.ingest.types import IngestPolicy
from edge_worker.judging.decision import REASONS
from edge_worker.judging.process import Judge
from edge_worker.packs.pack import default_pack_dir, load_pack, seal_manifest
from edge_worker.phantoms.ankle import make_dataset
from edge_worker.pipeline.preprocess import box_mask
from edge_worker.pipeline.runner import Pipeline
from tests.stations import Station

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "edge_worker" / "schema" / "verdict.schema.json").read_text())
SHARED = ROOT.parent / "shared" / "data" / "radiographs" / "dicom"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is absent")


def _judge(pack_dir: Path | None = None) -> Judge:
    pipeline = Pipeline(load_pack(pack_dir), select(["onnxruntime-cpu"]), LoadOptions())
    return Judge(pipeline, "trust", "xr-01", IngestPolicy())


@pytest.fixture(scope="module")
def ankle() -> Judge:
    return _judge()


@pytest.fixture(scope="module")
def chest() -> Judge:
    return _judge(default_pack_dir().parent / "chest")


def _write(tmp: Path, name: str, seed: int, **kwargs: Any) -> tuple[Path, Any]:
    ds, truth = make_dataset(seed, **kwargs)
    path = tmp / name
    ds.save_as(path, enforce_file_format=True)
    return path, truth


def _iou_with_truth(payload: dict[str, Any], truth: Any) -> float:
    from edge_worker.pipeline.preprocess import RotatedBox

    r = payload["roi"]["rotated"]
    found = RotatedBox(r["cx"], r["cy"], r["width"], r["height"], r["angle_deg"])
    shape = (truth.rows, truth.columns)
    a, b = box_mask(shape, found) > 0, box_mask(shape, truth.roi) > 0
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("rotation", [90.0, 180.0, 270.0, 135.0])
def test_a_turned_image_is_judged_upright_and_boxed_where_it_is_stored(
    ankle: Judge, tmp_path: Path, rotation: float
) -> None:
    path, truth = _write(tmp_path, "turned.dcm", 4100 + int(rotation), view="AP", grade=1,
                         rotation=rotation)  # fmt: skip
    outcome = ankle(path)
    v = outcome.payload
    jsonschema.validate(v, SCHEMA)
    assert v["orientation"]["judged_upright"] is True
    assert abs((v["orientation"]["angle_deg"] - rotation + 180) % 360 - 180) < 15
    assert v["view"]["label"] == "AP", v["reasons"]
    # The box was found on the upright image and is reported in the stored image's pixels.
    assert v["roi"]["found"] and _iou_with_truth(v, truth) > 0.5
    assert "orientation_turned" in [r["code"] for r in v["reasons"]]


def test_no_grade_three_phantom_is_ever_ok_at_any_rotation(ankle: Judge, tmp_path: Path) -> None:
    decisions = []
    for i, rotation in enumerate(np.linspace(0.0, 337.5, 16)):
        path, _ = _write(tmp_path, f"g3_{i}.dcm", 5200 + i, view=("AP", "LAT")[i % 2], grade=3,
                         rotation=float(rotation))  # fmt: skip
        decisions.append(ankle(path).payload["decision"])
    assert "ok" not in decisions and "not_judged" not in decisions, decisions
    assert decisions.count("retake") >= 12, decisions


def _view_only(tmp_path: Path) -> Judge:
    """The bundled chest pack without its segmenters and rules: orientation and view only."""
    pack = tmp_path / "view-only"
    shutil.copytree(default_pack_dir().parent / "chest", pack)
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest["stages"] = [s for s in manifest["stages"] if s["task"] in ("orientation", "classify")]
    manifest["decision"] = {"judged_by": []}
    (pack / "manifest.json").write_text(json.dumps(manifest, indent=1))
    seal_manifest(pack)
    return _judge(pack)


def test_a_view_only_pack_never_says_ok(tmp_path: Path) -> None:
    path, _ = _write(tmp_path, "not_a_chest.dcm", 77, view="AP", grade=1, rotation=0.0)
    v = _view_only(tmp_path)(path).payload
    jsonschema.validate(v, SCHEMA)
    assert v["decision"] in ("not_judged", "review")
    assert v["quality"] is None and v["diagnostic"] is None
    assert "quality_not_judged" in [r["code"] for r in v["reasons"]]


@needs_shared
def test_real_chest_whose_header_says_pa_and_network_ap_goes_to_review(chest: Judge) -> None:
    v = chest(SHARED / "fodicom_CR-MONO1-10-chest.dcm").payload
    jsonschema.validate(v, SCHEMA)
    assert v["header_view_position"] == "PA"
    if v["view"]["label"] != "PA":
        mismatch = [r for r in v["reasons"] if r["code"] == "view_header_mismatch"]
        assert v["decision"] == "review" and mismatch
        assert "PA" in mismatch[0]["text"] and v["view"]["label"] in mismatch[0]["text"]
    else:  # header and network agree: the lung-field rules decide, and say so
        assert {r["code"] for r in v["reasons"]} & {"rules_passed", "rule_failed", "rule_flagged",
                                                     "rule_not_measurable", "view_uncertain"}


@needs_shared
def test_exposure_from_a_real_header(chest: Judge) -> None:
    # highdicom's DX example carries EI 176 for a target of 876 and DI -7.0 (IEC 62494-1).
    v = chest(SHARED / "highdicom_dx_image.dcm").payload
    jsonschema.validate(v, SCHEMA)
    assert v["exposure"] == {"exposure_index": 176.0, "target_exposure_index": 876.0, "deviation_index": -7.0}
    under = [r for r in v["reasons"] if r["code"] == "exposure_under"]
    assert under and "-7.0" in under[0]["text"] and v["decision"] == "review"


def test_identity_follows_pixels_and_pack_not_uid_and_name(ankle: Judge, tmp_path: Path) -> None:
    ds, _ = make_dataset(901, view="LAT", grade=2, rotation=5.0)
    first = tmp_path / "a.dcm"
    ds.save_as(first, enforce_file_format=True)
    again = ankle(first).payload
    twice = ankle(first).payload
    assert again["id"] == twice["id"]
    drop = ("times", "timings_ms")
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in twice.items() if k not in drop}
    # Same SOP Instance UID, other pixels (a re-processed image): another verdict id.
    pixels = np.frombuffer(ds.PixelData, dtype=np.uint16).copy()
    pixels[: pixels.size // 3] //= 2
    ds.PixelData = pixels.tobytes()
    second = tmp_path / "b.dcm"
    ds.save_as(second, enforce_file_format=True)
    other = ankle(second).payload
    assert other["sop_instance_uid"] == again["sop_instance_uid"]
    assert other["pixel_sha256"] != again["pixel_sha256"] and other["id"] != again["id"]
    # The same image, a pack rebuilt under the same name and version with one threshold
    # changed: another pack digest, another id.
    pack_copy = tmp_path / "pack"
    shutil.copytree(default_pack_dir(), pack_copy)
    manifest = json.loads((pack_copy / "manifest.json").read_text())
    next(s for s in manifest["stages"] if s["name"] == "view")["thresholds"]["min_confidence"] = 0.85
    (pack_copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    seal_manifest(pack_copy)
    rebuilt = _judge(pack_copy)(first).payload
    assert (rebuilt["pack"]["name"], rebuilt["pack"]["version"]) == (again["pack"]["name"], again["pack"]["version"])
    assert rebuilt["pack"]["digest"] != again["pack"]["digest"] and rebuilt["id"] != again["id"]


def test_every_reason_code_is_in_the_schema_with_its_meaning() -> None:
    code = SCHEMA["properties"]["reasons"]["items"]["properties"]["code"]
    assert set(code["enum"]) == set(REASONS)
    for name, (_, meaning) in REASONS.items():
        assert f"{name}: {meaning}" in code["description"]


@pytest.mark.broker
def test_a_second_image_under_a_used_uid_gets_its_own_verdict_that_says_so(
    tmp_path: Path, mosquitto: Any, subscriber: Callable[..., Any]
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    ds, _ = make_dataset(333, view="AP", grade=1, rotation=0.0, size=1024)
    ds.save_as(staging / "first.dcm", enforce_file_format=True)
    pixels = np.frombuffer(ds.PixelData, dtype=np.uint16).copy()
    pixels[:200] = 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(staging / "second.dcm", enforce_file_format=True)
    station = Station(tmp_path / "st", mosquitto.url, site="trust", station="xr-02")
    sub = subscriber(mosquitto, "xray/trust/xr-02/verdict")
    try:
        station.start()
        os.replace(staging / "first.dcm", station.watch / "first.dcm")
        first = json.loads(sub.wait_for(f"{station.base}/verdict", 1, timeout=60)[0].payload)
        os.replace(staging / "second.dcm", station.watch / "second.dcm")
        got = sub.wait_for(f"{station.base}/verdict", 2, timeout=60)
        second = json.loads(got[1].payload)
    finally:
        station.terminate()
        station.close()
    for v in (first, second):
        jsonschema.validate(v, SCHEMA)
    assert first["sop_instance_uid"] == second["sop_instance_uid"] and first["id"] != second["id"]
    assert "shares_uid_with" not in first
    assert second["shares_uid_with"] == first["id"]
    assert second["decision"] == "review"
    assert "uid_reused" in [r["code"] for r in second["reasons"]]
