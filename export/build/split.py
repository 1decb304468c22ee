"""The split by patient: every image of a patient lands on the same side, by construction.

Patients are grouped by their first class (the view of their first image, then its grade),
each group shuffled with the recipe's seed and its first ``ceil(test_fraction * n)`` patients
held out, so every view and grade is on both sides.  A labels file with its own ``split``
column keeps it, and is refused if a patient is on both sides.  Either way the split is
checked (:func:`check_disjoint`) and described with its seed and counts.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.build.labels import LabelSet, LabelsRefused, Problem, Row, check_disjoint, classes_of
from export.build.recipe import Recipe


@dataclass(frozen=True)
class Split:
    """The two sides and how they were made."""

    train: list[Row]
    test: list[Row]
    seed: int
    method: str

    def describe(self) -> dict[str, Any]:
        """Seed, method and counts (patients, images, per class) for the manifest."""

        def side(rows: list[Row]) -> dict[str, Any]:
            counts: Counter[str] = Counter()
            for row in rows:
                counts[row.record.view] += 1
                if row.record.grade is not None:
                    counts[f"grade {row.record.grade}"] += 1
            return {"patients": len({r.patient for r in rows}), "images": len(rows),
                    "per_class": dict(sorted(counts.items()))}  # fmt: skip

        return {"by": "patient", "method": self.method, "seed": self.seed,
                "train": side(self.train), "test": side(self.test)}  # fmt: skip


def _side_problems(train: list[Row], test: list[Row], recipe: Recipe) -> list[Problem]:
    problems = []
    for name, rows in (("train", train), ("test", test)):
        counts: Counter[str] = Counter()
        seen: dict[str, set[str]] = defaultdict(set)
        for row in rows:
            for cls in classes_of(row, recipe):
                seen[cls].add(row.patient)
        counts.update({c: len(p) for c, p in seen.items()})
        wanted = {c for r in train + test for c in classes_of(r, recipe)}
        problems += [Problem("class_too_small", f"{cls}: {counts[cls]} patient(s) on the {name} "
                             f"side; needs {recipe.min_per_class}")
                     for cls in sorted(wanted) if counts[cls] < recipe.min_per_class]  # fmt: skip
    return problems


def split_by_patient(labels: LabelSet, recipe: Recipe) -> Split:
    """Split ``labels`` into train and held-out test by patient.

    Raises :class:`LabelsRefused` listing every patient on both sides of a fixed ``split``
    column, and every class with too few patients on a side.
    """
    rows = labels.rows
    fixed = [r.fixed_split for r in rows]
    if any(f is not None for f in fixed):
        if any(f is None for f in fixed):
            missing = [r.line for r in rows if r.fixed_split is None][:20]
            raise LabelsRefused([Problem("bad_value", "the split column is filled on some rows "
                                         f"and empty on others (lines {missing})", None, "split")])
        train = [r for r in rows if r.fixed_split == "train"]
        test = [r for r in rows if r.fixed_split == "test"]
        method = "the labels file's split column"
    else:
        groups: dict[str, list[str]] = defaultdict(list)
        first: dict[str, Row] = {}
        for row in rows:
            first.setdefault(row.patient, row)
        for patient, row in first.items():
            groups["|".join(classes_of(row, recipe))].append(patient)
        rng = np.random.default_rng(recipe.seed)
        held: set[str] = set()
        for key in sorted(groups):
            patients = sorted(groups[key])
            order = rng.permutation(len(patients))
            n = min(len(patients) - 1, max(1, math.ceil(recipe.test_fraction * len(patients))))
            held.update(patients[i] for i in order[:n])
        train = [r for r in rows if r.patient not in held]
        test = [r for r in rows if r.patient in held]
        method = (f"patients grouped by first view and grade, {recipe.test_fraction:.0%} of each "
                  "group held out (numpy default_rng(seed).permutation)")
    problems = check_disjoint(train, test) + _side_problems(train, test, recipe)
    if problems:
        raise LabelsRefused(problems)
    return Split(train, test, recipe.seed, method)
