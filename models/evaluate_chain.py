"""Figures of a pack as the worker runs it, on fresh phantoms at any rotation.

    python -m models.evaluate_chain [--pack DIR] [--n 240] [--seed 7301] [--out FILE.json]

Writes phantom DICOM files from seeds no recipe trains or validates on (``--seed``; the demo
recipe uses 11, 12, 9011 and 9012), judges each through the worker itself (its ingest, its
pipeline: orientation first, the image turned upright, then view, ROI and quality, and its
decision rule) and compares the verdict with the phantom's truth.  Two sets: ``upright``
(rotations within +-15 deg, as the view, ROI and quality stages were trained) and
``any_rotation`` (uniform in 0-360 deg).

Per set: chained view accuracy, quality grade accuracy (a missing grade counts as wrong), how
each true grade was decided, and the count that matters most, grade-3 phantoms decided ``ok``
(must be 0).  Nothing here imports torch: it measures what the box would publish.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from edge_worker.backends import LoadOptions, select
from edge_worker.ingest.types import IngestPolicy
from edge_worker.judging.process import Judge
from edge_worker.packs.pack import load_pack
from edge_worker.phantoms.ankle import write_dataset
from edge_worker.pipeline.runner import Pipeline

SETS = {"upright": (-15.0, 15.0), "any_rotation": (0.0, 360.0)}


def _angle_error(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def evaluate_set(judge: Judge, folder: Path, n: int, seed: int, rotation: tuple[float, float],
                 progress: Any = None) -> dict[str, Any]:  # fmt: skip
    """Write ``n`` phantoms into ``folder``, judge each and score the verdicts against truth."""
    import csv

    csv_path = write_dataset(folder, n, seed, rotation_range=rotation)
    rows = list(csv.DictReader(csv_path.open()))
    view_ok = grade_ok = 0
    decided: dict[str, Counter[str]] = {g: Counter() for g in ("1", "2", "3")}
    codes: Counter[str] = Counter()
    angle_errors = []
    started = time.monotonic()
    for k, row in enumerate(rows):
        outcome = judge(folder / row["file"])
        payload = outcome.payload
        if outcome.kind != "verdict":
            decided[row["grade"]][f"rejected:{payload['reason']}"] += 1
            continue
        view_ok += payload["view"]["label"] == row["view"]
        quality = payload.get("quality") or {}
        grade_ok += str(quality.get("grade")) == row["grade"]
        decided[row["grade"]][payload["decision"]] += 1
        codes.update(r["code"] for r in payload["reasons"])
        if payload.get("orientation"):
            angle_errors.append(_angle_error(payload["orientation"]["angle_deg"], float(row["rotation_deg"])))
        if progress is not None and (k + 1) % 40 == 0:
            rate = (k + 1) / max(1e-9, time.monotonic() - started)
            progress(f"  {k + 1}/{n} judged, about {(n - k - 1) / rate:.0f} s left")
    automatic = sum(c["ok"] + c["retake"] for c in decided.values())
    return {
        "n": n,
        "rotation_range_deg": list(rotation),
        "view_accuracy": round(view_ok / n, 4),
        "quality_grade_accuracy": round(grade_ok / n, 4),
        "grade3_decided_ok": decided["3"]["ok"],
        "automatic_fraction": round(automatic / n, 4),
        "decisions_by_true_grade": {g: dict(c) for g, c in decided.items()},
        "reason_codes": dict(codes.most_common()),
        "orientation_mae_deg": round(sum(angle_errors) / len(angle_errors), 2) if angle_errors else None,
        "orientation_max_error_deg": round(max(angle_errors), 1) if angle_errors else None,
    }


def evaluate(pack_dir: Path | None, n: int, seed: int, progress: Any = print) -> dict[str, Any]:
    """Both sets for the pack at ``pack_dir`` (default: the demo pack)."""
    pack = load_pack(pack_dir)
    pipeline = Pipeline(pack, select(["onnxruntime-cpu"]), LoadOptions())
    pipeline.warm_up()
    judge = Judge(pipeline, "eval", "eval", IngestPolicy())
    result: dict[str, Any] = {
        "pack": pack.describe(),
        "seed": seed,
        "command": f"python -m models.evaluate_chain --n {n} --seed {seed}",
        "sets": {},
    }
    with tempfile.TemporaryDirectory(prefix="evaluate-chain-") as tmp:
        for i, (name, rotation) in enumerate(SETS.items()):
            progress(f"{name}: writing and judging {n} phantoms (seed {seed + i})")
            folder = Path(tmp) / name
            result["sets"][name] = evaluate_set(judge, folder, n, seed + i, rotation, progress)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.evaluate_chain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", type=Path, help="pack folder (default: the demo pack)")
    parser.add_argument("--n", type=int, default=240, help="phantoms per set (default 240)")
    parser.add_argument("--seed", type=int, default=7301, help="first seed (default 7301)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.n < 6 or math.isnan(args.n):
        parser.error("--n must be at least 6 (views and grades are cycled)")
    result = evaluate(args.pack, args.n, args.seed, progress=lambda m: print(m, file=sys.stderr))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
