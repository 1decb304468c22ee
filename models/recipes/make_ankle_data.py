"""Phantom ankle data in the layout a site would bring: DICOM images and one labels.csv.

    python3 -m models.recipes.make_ankle_data --out runs/ankle-data [--n 1200] [--seed 11]

Writes ``n`` synthetic ankle radiographs (:func:`edge_worker.phantoms.ankle.write_dataset`:
AP and LAT alternating, grades 1-3 cycling, CR and DX, 12-16 bit, MONOCHROME1/2, 1024-2048 px):
half in ``upright/`` turned within +-15 degrees (as a radiographer lays the ankle), half in
``rotated/`` at any angle (a cassette read in any direction), and ``labels.csv`` beside them
with every row of both (``file`` relative to ``--out``; ``rotation_deg`` is the labelled turn
the orientation stage learns and the later stages are turned upright by).  Every phantom is a
new patient (its own PatientID, which the build hashes as the patient key).  The bundled
``models/packs/ankle-demo`` is built from ``--n 1200 --seed 11`` by ``models/recipes/ankle.toml``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from edge_worker.phantoms.ankle import write_dataset

#: The two halves: folder, rotation range, and the offset of their seed.
HALVES = (("upright", (-15.0, 15.0), 0), ("rotated", (0.0, 360.0), 1))


def write_ankle_build_data(folder: str | Path, n: int, seed: int = 11) -> Path:
    """Write both halves and the joint labels into ``folder``; returns the labels path."""
    folder = Path(folder)
    rows: list[dict[str, str]] = []
    columns: list[str] = []
    for name, rotation, offset in HALVES:
        part = write_dataset(folder / name, n // 2, seed=seed * 10 + offset,
                             rotation_range=rotation)  # fmt: skip
        with part.open(newline="") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            for row in reader:
                row["file"] = f"{name}/{row['file']}"
                rows.append(row)
        part.unlink()
    labels = folder / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=1200, help="images (half upright, half rotated)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    labels = write_ankle_build_data(args.out, args.n, args.seed)
    print(f"wrote {args.n // 2 * 2} phantoms and {labels}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
