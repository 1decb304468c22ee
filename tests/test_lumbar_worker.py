"""The lumbar spine pack through the worker: routed by body part, segmented, every rule listed.

Real parts: phantom DICOM files (seeds the pack never saw) judged by ``edge-worker analyze``
with every bundled pack, ONNX Runtime, the verdict schema.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jsonschema
import pydicom

from edge_worker.phantoms.lumbar import write_lumbar_dataset
from tests.stage_reference import analyze

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "edge_worker" / "schema" / "verdict.schema.json").read_text())
#: The rule each phantom error breaks, as the pack's rules name it.
BROKEN = {"rotation": "ap_spinous_midline", "tilt": "lat_disc_spaces_open", "obliquity": "obl_eye_centred"}
RULES_PER_VIEW = {"AP": 4, "LAT": 3, "OBL": 3}


def test_lumbar_phantoms_get_every_rule_and_the_right_decision(tmp_path: Path) -> None:
    labels = write_lumbar_dataset(tmp_path, 6, 555)  # AP, LAT, OBL well placed, then one error each
    rows = list(csv.DictReader(labels.open()))
    paths = [tmp_path / row["file"] for row in rows]
    for row, verdict in zip(rows, analyze(paths)):
        assert verdict["kind"] == "verdict", verdict
        # analyze adds where the file was and what it is; the rest is the published verdict
        jsonschema.validate({k: v for k, v in verdict.items() if k not in ("file", "kind")}, SCHEMA)
        assert verdict["pack"]["name"] == "lumbar-demo" and verdict["route"]["body_part"] == "LSPINE"
        assert verdict["pack"]["training_data"] == "synthetic-phantom" and verdict["not_for_clinical_use"]
        assert verdict["view"]["label"] == row["view"]
        rules = verdict["rules"]
        assert len(rules) == RULES_PER_VIEW[row["view"]]
        assert all(r["sentence"] and r["criterion"].startswith("Bontrager") for r in rules)
        failed = [r["code"] for r in rules if r["status"] != "pass"]
        codes = [r["code"] for r in verdict["reasons"]]
        if not row["error"]:
            assert failed == [] and verdict["decision"] == "ok" and codes == ["rules_passed"], rules
        else:
            assert failed == [BROKEN[row["error"]]] and verdict["decision"] == "retake", rules
            assert [r.get("rule") for r in verdict["reasons"] if r["code"] == "rule_failed"] == failed


def test_a_header_that_names_another_view_sends_a_lumbar_image_to_review(tmp_path: Path) -> None:
    labels = write_lumbar_dataset(tmp_path, 2, 556)  # AP, LAT
    row = list(csv.DictReader(labels.open()))[1]
    path = tmp_path / row["file"]
    ds = pydicom.dcmread(path)
    ds.ViewPosition = "AP"  # the image is a lateral
    ds.save_as(path, enforce_file_format=True)
    verdict = analyze([path])[0]
    assert verdict["view"]["label"] == "LAT" and verdict["decision"] == "review"
    assert "view_header_mismatch" in [r["code"] for r in verdict["reasons"]]


def test_the_dashboard_tile_and_the_summary_line_name_the_failed_rules(tmp_path: Path) -> None:
    from edge_worker.subscribers.dashboard.state import entry_from_verdict
    from edge_worker.subscribers.summary import summary_line

    labels = write_lumbar_dataset(tmp_path, 4, 555)  # the fourth: AP with the trunk rotated
    row = list(csv.DictReader(labels.open()))[3]
    verdict = analyze([tmp_path / row["file"]])[0]
    tile = entry_from_verdict(verdict, 0.0)
    assert tile["rules"] == {"total": 4, "passed": 3, "failed": ["ap_spinous_midline"]}
    assert tile["decision"] == "retake" and "spinous processes are off the midline" in tile["reasons"][0]
    line = summary_line("verdict", verdict)
    assert line.startswith("RETAKE view AP") and "rules 3/4 passed (not: ap_spinous_midline)" in line
