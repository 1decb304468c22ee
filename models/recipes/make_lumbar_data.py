"""Phantom lumbar data in the layout a site would bring: DICOM images, PNG masks, labels.csv.

    python3 -m models.recipes.make_lumbar_data --out runs/lumbar-data [--n 36] [--seed 7]
        [--size 512]

Writes ``n`` synthetic lumbar radiographs (:func:`edge_worker.phantoms.lumbar.write_lumbar_dataset`:
views AP, LAT, OBL cycling, half of each view with one positioning error), each with its
class-index mask ``<file>.mask.png`` (8-bit; pixel value = index into the view's classes of
``models/recipes/lumbar.toml``, which are :data:`edge_worker.phantoms.lumbar.CLASSES`), and
``labels.csv`` with the columns ``file, view, mask, patient_key, license, error`` (``error``:
the phantom's drawn positioning error, a description the recipe lists in
``labels.ignore_columns``).  Every phantom is a new patient.  The phantom writer's own
``labels.csv`` (with ``.labels.npz`` maps) is replaced.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np

from edge_worker.phantoms.lumbar import write_lumbar_dataset

COLUMNS = ("file", "view", "mask", "patient_key", "license", "error")
LICENSE = "CC0-1.0"


def write_lumbar_build_data(folder: str | Path, n: int, seed: int = 7, size: int = 512) -> Path:
    """Write the phantoms, masks and build labels into ``folder``; returns the labels path."""
    folder = Path(folder)
    phantom_csv = write_lumbar_dataset(folder, n, seed, size=size)
    with phantom_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    out = []
    for row in rows:
        npz = folder / row["labels"]
        with np.load(npz) as saved:
            labels = saved["labels"].astype(np.uint8)
        mask_name = f"{row['file']}.mask.png"
        if not cv2.imwrite(str(folder / mask_name), labels):
            raise OSError(f"cannot write {folder / mask_name}")
        npz.unlink()
        out.append({"file": row["file"], "view": row["view"], "mask": mask_name,
                    "patient_key": f"lumbar-{seed}-{Path(row['file']).stem.rsplit('_', 1)[-1]}",
                    "license": LICENSE, "error": row["error"]})  # fmt: skip
    with phantom_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(out)
    return phantom_csv


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python3 -m models.recipes.make_lumbar_data",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=36, help="images (a multiple of 3 balances views)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--size", type=int, default=512, help="rows of each DICOM image")
    args = parser.parse_args(argv)
    path = write_lumbar_build_data(args.out, args.n, args.seed, args.size)
    print(f"wrote {args.n} phantoms and {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
