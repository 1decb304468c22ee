"""``edge-worker analyze`` exit codes, as a script or a CI job relies on them.

0: every path judged (rejections included, unless ``--fail-on-reject``); 1: with
``--fail-on-reject``, at least one file was rejected; 2: a path that does not exist (said before
any pack is loaded), or no file at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge_worker.phantoms.ankle import write_phantom
from tests.stations import ROOT


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_worker", "analyze", *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip


def test_missing_path_exits_2_and_names_it(tmp_path: Path) -> None:
    good = tmp_path / "p.dcm"
    write_phantom(good, seed=31, size=256)
    missing = tmp_path / "no-such.dcm"
    result = _analyze(str(good), str(missing))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{missing}: no such file or folder" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # refused before judging anything


def test_empty_folder_exits_2(tmp_path: Path) -> None:
    result = _analyze(str(tmp_path))
    assert result.returncode == 2 and "no files found" in result.stderr


def test_rejections_exit_0_by_default_and_1_with_fail_on_reject(tmp_path: Path) -> None:
    write_phantom(tmp_path / "p.dcm", seed=32, size=256)
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 300)
    plain = _analyze(str(tmp_path), "--json")
    assert plain.returncode == 0, plain.stderr
    kinds = {Path(r["file"]).name: r["kind"] for r in map(json.loads, plain.stdout.splitlines())}
    assert kinds == {"junk.dcm": "error", "p.dcm": "verdict"}
    assert "1 of 2 file(s) rejected" in plain.stderr
    strict = _analyze(str(tmp_path), "--fail-on-reject")
    assert strict.returncode == 1, strict.stderr
    assert len(strict.stdout.splitlines()) == 2  # every file is still reported
    only_good = _analyze(str(tmp_path / "p.dcm"), "--fail-on-reject")
    assert only_good.returncode == 0, only_good.stderr
