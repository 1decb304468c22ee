"""The chest recipe's labels file, written from the metadata of both real chest sets.

    python3 -m models.recipes.chest_labels --training ../shared/data/training \\
        --out runs/chest-labels.csv [--patients-per-view N --images-per-patient M]

Reads ``chest-multisite/labels.csv`` and ``chest-views/labels.csv`` under ``--training``
through :func:`models.chest.multisite.read_records` (the image in both sets is kept once, as
its multisite row) and writes one row per image for ``edge-export build --recipe
models/recipes/chest.toml --data <training> --labels <out>``:

* ``file``: the image, relative to the training folder (``chest-views/images/...``);
* ``view``: ``AP``, ``PA`` or ``LATERAL``.  ``AP_SUPINE`` is written as ``AP`` (the reasons
  are in :mod:`models.chest.multisite`: Hannover's 150 AP images do not say whether the
  patient lay or sat, and lying is not another projection); the raw label stays in
  ``raw_view``;
* ``rotation_deg``: ``0``: both sets are stored upright (their READMEs: no rotation, no
  flipping), so the orientation stage learns from the quarter turns of the build;
* ``patient_key``: the sets' ``patient_id`` (``hannover:...``, ``cohen:...``), so the build
  splits by patient;
* ``license``: the licence of each image as its set gives it (counted into the pack's
  ``training_data.licenses``; most multisite images are non-commercial or unstated);
* ``mask``: the image's machine-generated lung mask (``255`` = lung; 189 frontal multisite
  images), else empty: the recipe's lung segmenters train on the rows that have one;
* ``finding``: the multisite set's finding (``COVID-19``, ``SARS``, ``Pneumonia``, ``No
  Finding``, ``todo``, ...; empty for chest-views, which has none): the recipe's research-only
  finding classifier trains on it (:mod:`models.chest.classifier` says what the labels support);
* ``site``, ``source``, ``raw_view``: kept for leave-site-out work and for the record, listed
  in the recipe's ``labels.ignore_columns`` (the build accepts them unused).

Patients who also have images in the project's DEV set are left out (the count is printed):
the DEV set measures the worker, so a pack must never have trained on them.

``--site-fold I [--site-folds K]`` writes a ``split`` column for leave-site-out figures: fold
I's whole sites are held out (``test``), every other site trains.

``--patients-per-view N`` keeps a small subset for a smoke run: per view, the N patients
first in an order drawn from ``--seed`` among those with an image of that view (those with a
lung mask first, the finding classes in turn; at most ``--images-per-patient`` images each,
of that view); a patient is chosen for one view only.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from collections import Counter, defaultdict
from pathlib import Path

from models.chest.classifier import finding_class
from models.chest.multisite import LABELS, Record, read_records, site_folds

COLUMNS = ("file", "view", "rotation_deg", "patient_key", "license", "site", "source", "raw_view",
           "mask", "finding")


def subset(records: list[Record], patients_per_view: int, images_per_patient: int,
           seed: int) -> list[Record]:  # fmt: skip
    """A small patient-disjoint subset: ``patients_per_view`` patients per view label."""
    by_view: dict[str, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_view[r.view][r.patient].append(r)
    taken: set[str] = set()
    out: list[Record] = []
    for view in LABELS:
        # Patients with a lung mask first, so that a smoke run trains the lung segmenters too,
        # taken in turn from each finding class (COVID-19, another finding, none), so that it
        # trains the finding classifier on both of its classes.
        ordered = sorted(by_view[view], key=lambda p: (
            not any(r.lung_mask for r in by_view[view][p]),
            hashlib.sha256(f"{seed}:{p}".encode()).hexdigest()))  # fmt: skip
        queues = [[p for p in ordered if finding_class(by_view[view][p][0].finding, view) == c]
                  for c in (1, 0, None)]  # fmt: skip
        patients = [q[i] for i in range(len(ordered)) for q in queues if i < len(q)]
        chosen = [p for p in patients if p not in taken][:patients_per_view]
        taken.update(chosen)
        for p in chosen:
            out.extend(sorted(by_view[view][p], key=lambda r: (r.lung_mask is None, r.id))
                       [:images_per_patient])  # fmt: skip
    return out


def write_labels(training: Path, out: Path, patients_per_view: int | None = None,
                 images_per_patient: int = 2, seed: int = 20261203,
                 site_fold: tuple[int, int] | None = None) -> dict[str, object]:  # fmt: skip
    """Write the labels CSV at ``out``; returns what was written (counts).

    ``site_fold`` ``(i, k)``: fold ``i`` (1-based) of :func:`models.chest.multisite.site_folds`
    ``k``: a ``split`` column puts that fold's whole sites in ``test`` and every other site in
    ``train``, so the build's figures are on sites the pack never saw (leave-site-out).
    """
    records = read_records(training)
    dev = [r for r in records if r.dev]
    kept = [r for r in records if not r.dev]
    if patients_per_view is not None:
        kept = subset(kept, patients_per_view, images_per_patient, seed)
    held_sites: set[str] | None = None
    if site_fold is not None:
        i, k = site_fold
        if not 1 <= i <= k:
            raise ValueError(f"site fold must be 1..{k}, got {i}")
        held_sites = {r.site for r in site_folds(records, k)[i - 1].test}
    columns = COLUMNS + (("split",) if held_sites is not None else ())
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for r in kept:
            row = {"file": r.path.relative_to(training).as_posix(), "view": r.view,
                   "rotation_deg": 0, "patient_key": r.patient, "license": r.license,
                   "site": r.site, "source": r.source, "raw_view": r.raw_view,
                   "mask": r.lung_mask.relative_to(training).as_posix() if r.lung_mask else "",
                   "finding": r.finding}  # fmt: skip
            if held_sites is not None:
                row["split"] = "test" if r.site in held_sites else "train"
            writer.writerow(row)
    facts: dict[str, object] = {}
    if held_sites is not None:
        test = [r for r in kept if r.site in held_sites]
        facts = {"site_fold": f"{site_fold[0]}/{site_fold[1]}", "held_out_sites": len({r.site for r in test}),
                 "test_images": len(test), "test_views": dict(Counter(r.view for r in test))}
    return {**facts, "images": len(kept), "patients": len({r.patient for r in kept}),
            "views": dict(Counter(r.view for r in kept)),
            "ap_supine_as_ap": sum(r.raw_view == "AP_SUPINE" for r in kept),
            "licenses": dict(Counter(r.license for r in kept)),
            "dev_images_left_out": len(dev)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python3 -m models.recipes.chest_labels",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--training", type=Path, required=True,
                        help="folder holding chest-multisite/ and chest-views/")
    parser.add_argument("--out", type=Path, required=True, help="labels CSV to write")
    parser.add_argument("--patients-per-view", type=int, help="a small subset (smoke runs)")
    parser.add_argument("--images-per-patient", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--site-fold", type=int, metavar="I",
                        help="leave-site-out: hold out fold I's whole sites (split column)")
    parser.add_argument("--site-folds", type=int, default=5, metavar="K",
                        help="number of leave-site-out folds (default 5)")
    args = parser.parse_args(argv)
    fold = (args.site_fold, args.site_folds) if args.site_fold else None
    facts = write_labels(args.training.resolve(), args.out, args.patients_per_view,
                         args.images_per_patient, args.seed, fold)  # fmt: skip
    print(f"wrote {args.out}: {facts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
