"""Verdicts of a fixed set of files, reduced to what a radiographer sees, to compare two builds.

``python -m tests.stage_reference --write FILE`` judges the set through ``edge-worker analyze``
(every bundled pack, routed by body part) and writes one fingerprint per file; the test in
``tests/test_stage_equivalence.py`` judges the same set with the code of the day and compares.
The reference on disk was written with the version-1 pipeline (four fixed tasks), before the
typed stages replaced it: the comparison shows the typed stages judge exactly as before.

A fingerprint keeps the decision, every reason (code, severity, sentence), view, orientation,
ROI box and quality score; it drops what legitimately changes with a rebuilt manifest (pack
digest and version, verdict id, times).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from edge_worker.phantoms.ankle import write_phantom

SHARED_DICOM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "radiographs" / "dicom"

#: (seed, view, grade, rotation): both views, every grade, upright and turned.
PHANTOMS = [
    (8800 + i, view, grade, rotation)
    for i, (view, grade, rotation) in enumerate(
        (v, g, r) for v in ("AP", "LAT") for g in (1, 2, 3) for r in (0.0, 90.0, 200.0)
    )
]


def write_phantoms(folder: Path) -> list[Path]:
    """The phantom half of the set, written into ``folder``."""
    paths = []
    for seed, view, grade, rotation in PHANTOMS:
        path = folder / f"ph_{seed}_{view}_{grade}_{int(rotation)}.dcm"
        write_phantom(path, seed, view=view, grade=grade, rotation=rotation)
        paths.append(path)
    return paths


def analyze(paths: list[Path], packs: list[Path] | None = None) -> list[dict[str, Any]]:
    """``edge-worker analyze --json`` on ``paths``, one payload per file, in order, with
    ``packs`` (default: every bundled pack)."""
    chosen = [a for d in packs or [] for a in ("--pack", str(d))]
    out = subprocess.run(
        [sys.executable, "-m", "edge_worker", "analyze", "--json", *chosen, *map(str, paths)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    by_name = {}
    for line in out.splitlines():
        payload = json.loads(line)
        by_name[Path(payload["file"]).name] = payload
    return [by_name[p.name] for p in paths]


def _r(x: Any, digits: int = 3) -> Any:
    return None if x is None else round(float(x), digits)


def fingerprint(payload: dict[str, Any]) -> dict[str, Any]:
    """What a radiographer sees of one outcome (see the module docstring)."""
    if payload.get("kind") != "verdict":
        return {"kind": payload.get("kind"), "reason": payload.get("reason")}
    view = payload.get("view") or {}
    quality = payload.get("quality") or {}
    orientation = payload.get("orientation") or {}
    rotated = (payload.get("roi") or {}).get("rotated") or {}
    return {
        "kind": "verdict",
        "pack": payload["pack"]["name"],
        "decision": payload["decision"],
        "reasons": [[r["code"], r["severity"], r["text"]] for r in payload["reasons"]],
        "view": [view.get("label"), _r(view.get("confidence"))],
        "orientation": _r(orientation.get("angle_deg"), 1),
        "roi": {k: _r(v, 0) for k, v in sorted(rotated.items())},
        "quality": [quality.get("grade"), _r(quality.get("score"))],
    }


def reference_set(folder: Path) -> list[Path]:
    """Phantoms written into ``folder`` plus the real dev DICOM files where ``../shared`` is."""
    paths = write_phantoms(folder)
    if SHARED_DICOM.is_dir():
        paths += sorted(SHARED_DICOM.glob("*.dcm"))
    return paths


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, required=True)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = reference_set(Path(tmp))
        prints = {p.name: fingerprint(v) for p, v in zip(paths, analyze(paths))}
    args.write.parent.mkdir(parents=True, exist_ok=True)
    args.write.write_text(json.dumps(prints, indent=1, sort_keys=True) + "\n")
    print(f"{len(prints)} fingerprints -> {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
