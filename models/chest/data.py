"""The real chest-views set: labels, a patient-level split, and the worker's working images.

``labels.csv`` (see the set's README) has one row per image with ``id``, ``file``, ``view``
(``AP``/``PA``), ``patient_id``, ``license`` and provenance columns.  A patient often has
several images, so the split is by patient: no patient is in both training and validation.

Images go through the worker's own preparation: ``models.data.read_image`` (the same reader
the other recipes use: 8-bit PNG -> float32 [0, 1]) and ``edge_worker.pipeline.preprocess.working_image``
(longest side at most 512 px).  Nothing here imports torch.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_worker.pipeline.preprocess import working_image
from models.data import read_image

#: The view stage's labels, in output order.
LABELS: tuple[str, ...] = ("AP", "PA")
#: The split the committed pack was trained with; change it and every figure changes.
SPLIT_SEED = 20250608
VAL_FRACTION = 0.25
#: Patients with more images than this always train: one patient with 22 of ~47 validation
#: images would make the figures measure that patient rather than the method.
MAX_VAL_PATIENT_IMAGES = 8


@dataclass(frozen=True)
class ChestRecord:
    """One row of ``labels.csv``."""

    id: str
    path: Path
    view: str
    patient: str
    license: str

    @property
    def label(self) -> int:
        """Index of the view in :data:`LABELS`."""
        return LABELS.index(self.view)


@dataclass(frozen=True)
class Split:
    """A patient-level split and how it was drawn."""

    train: tuple[ChestRecord, ...]
    val: tuple[ChestRecord, ...]
    seed: int

    def describe(self) -> dict[str, object]:
        """Sizes per class and patient counts, for the manifest."""

        def counts(records: tuple[ChestRecord, ...]) -> dict[str, int]:
            by_view = Counter(r.view for r in records)
            return {
                "images": len(records),
                "patients": len({r.patient for r in records}),
                **{view: by_view.get(view, 0) for view in LABELS},
            }

        return {
            "method": "group split by patient_id, stratified by view as far as whole patients "
            f"allow (best of 2000 seeded draws); patients with more than "
            f"{MAX_VAL_PATIENT_IMAGES} images always train",
            "seed": self.seed,
            "train": counts(self.train),
            "validation": counts(self.val),
            "validation_patients": sorted({r.patient for r in self.val}),
        }


def read_labels(root: str | Path) -> list[ChestRecord]:
    """Parse ``<root>/labels.csv``; raises ``ValueError`` on a view outside :data:`LABELS`."""
    root = Path(root)
    records = []
    with (root / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            view = row["view"].strip().upper()
            if view not in LABELS:
                raise ValueError(f"{root}/labels.csv: view must be AP or PA, got {view!r}")
            records.append(ChestRecord(
                id=row["id"], path=root / row["file"], view=view,
                patient=row["patient_id"], license=row.get("license", ""),
            ))  # fmt: skip
    return records


def patient_split(
    records: list[ChestRecord], seed: int = SPLIT_SEED, val_fraction: float = VAL_FRACTION,
    tries: int = 2000,
) -> Split:  # fmt: skip
    """Split ``records`` by patient so that validation holds about ``val_fraction`` of each view.

    Each try shuffles the eligible patients (seeded) and adds them to validation until it
    holds ``val_fraction`` of the images; the try whose AP and PA counts are closest to their
    targets wins (the first on a tie), so the result depends on ``seed`` alone.
    """
    per_patient: dict[str, Counter[str]] = {}
    for r in records:
        per_patient.setdefault(r.patient, Counter())[r.view] += 1
    totals = Counter(r.view for r in records)
    target = {view: val_fraction * totals[view] for view in LABELS}
    eligible = sorted(
        p for p, c in per_patient.items() if sum(c.values()) <= MAX_VAL_PATIENT_IMAGES
    )
    rng = np.random.default_rng(seed)
    best: tuple[float, set[str]] | None = None
    for _ in range(tries):
        chosen: set[str] = set()
        held: Counter[str] = Counter()
        for index in rng.permutation(len(eligible)):
            if sum(held.values()) >= val_fraction * len(records):
                break
            patient = eligible[int(index)]
            chosen.add(patient)
            held.update(per_patient[patient])
        cost = sum(abs(held[view] - target[view]) for view in LABELS)
        if best is None or cost < best[0]:
            best = (cost, chosen)
    assert best is not None
    val = tuple(r for r in records if r.patient in best[1])
    train = tuple(r for r in records if r.patient not in best[1])
    return Split(train=train, val=val, seed=seed)


def load_working(path: Path) -> np.ndarray:
    """One image as the worker's working image: float32 in [0, 1], longest side <= 512."""
    pixels, _ = read_image(path)
    working, _ = working_image(pixels)
    return working


def read_grayscale(path: Path) -> np.ndarray:
    """A PNG or JPEG file (8 or 16 bit, grey or colour) as grey float32 in [0, 1].

    ``models.data.read_image`` reads PNG and DICOM; the out-of-distribution images are partly
    JPEG, so this reads anything OpenCV decodes.
    """
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"cannot read {path}")
    if raw.ndim == 3:
        raw = cv2.cvtColor(raw[:, :, :3], cv2.COLOR_BGR2GRAY)
    scale = float(np.iinfo(raw.dtype.type).max) if raw.dtype.kind in "ui" else 1.0  # type: ignore[type-var]
    return np.clip(raw.astype(np.float32) / np.float32(scale), 0.0, 1.0)


def load_images(records: list[ChestRecord] | tuple[ChestRecord, ...]) -> list[np.ndarray]:
    """Working images of ``records``, in order (190 images of <= 512 px fit in memory)."""
    return [load_working(r.path) for r in records]
