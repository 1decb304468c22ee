"""``edge-worker analyze``: one verdict or one named rejection per file, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_worker.phantoms.ankle import write_phantom

ROOT = Path(__file__).resolve().parents[1]
SHARED_DICOM = ROOT.parent / "shared" / "data" / "radiographs" / "dicom"


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_worker", "analyze", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_analyze_phantoms_json(tmp_path: Path) -> None:
    truths = {}
    for i, (view, grade) in enumerate([("AP", 1), ("LAT", 1), ("AP", 3)]):
        truths[f"p{i}.dcm"] = write_phantom(tmp_path / f"p{i}.dcm", seed=500 + i, view=view, grade=grade, size=768)
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 300)
    result = _analyze(str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 4
    by_file = {Path(r["file"]).name: r for r in rows}
    assert by_file["junk.dcm"]["kind"] == "error"
    assert by_file["junk.dcm"]["reason"] == "not_dicom"
    for name in truths:
        row = by_file[name]
        assert row["kind"] == "verdict", row
        assert row["not_for_clinical_use"] is True
        assert row["view"]["label"] in ("AP", "LAT")
        assert 0 <= row["orientation"]["angle_deg"] < 360


@pytest.mark.shared
@pytest.mark.skipif(not SHARED_DICOM.is_dir(), reason="../shared/data/radiographs/dicom is absent")
def test_analyze_every_shared_file_gives_a_verdict_or_named_rejection() -> None:
    files = sorted(SHARED_DICOM.glob("*.dcm"))
    result = _analyze(str(SHARED_DICOM))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(files)
    for line in lines:
        status = line.split(": ", 1)[1]
        assert status.split()[0] in ("OK", "RETAKE", "REVIEW", "REJECTED"), line
        if status.startswith("REJECTED"):
            reason = status.split()[1].rstrip(":")
            assert reason.islower() and "_" in reason or reason.isalpha(), line
