"""Both real chest sets as one record list, one patient split, and leave-site-out folds.

* ``chest-views`` (``shared/data/training/chest-views``): 190 frontal images of 58 patients,
  nearly all from one hospital (Hannover), labelled AP or PA.
* ``chest-multisite`` (``.../chest-multisite``): 508 images of 282 patients from about 126
  places, labelled PA, AP, AP_SUPINE and LATERAL, 189 with machine-generated lung masks.

View labels are ``AP``, ``PA`` and ``LATERAL``.  ``AP_SUPINE`` joins ``AP``: Hannover's 150
``AP`` images do not say whether the patient lay or sat (the collection relabels 44 of its 45
copies of them "AP Supine", and many show "liegend"), 11 multisite patients have images under
both labels, and the difference (patient lying, not sitting) is not a projection: the beam
goes front to back in both.  A separate class would be trained on labels that the largest AP
source cannot give.  The raw label stays in :attr:`Record.raw_view`.

One image is in both sets (the same original file, sha256 of the source): the multisite row
is kept.  Patients who also have images in the project's DEV set (``patient_in_dev_set`` in
the multisite labels; the eight Hannover patients the chest-views README lists) never train:
:func:`patient_split` puts them in the test part and :func:`site_folds` never trains on them.

Nothing here imports torch.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The view stage's labels, in output order.
LABELS: tuple[str, ...] = ("AP", "PA", "LATERAL")
#: Raw view label -> view stage label (see the module docstring for AP_SUPINE).
VIEW_OF: dict[str, str] = {"AP": "AP", "AP_SUPINE": "AP", "PA": "PA", "LATERAL": "LATERAL"}
#: The split every committed figure was measured on; change it and every figure changes.
SPLIT_SEED = 20261203
TEST_FRACTION = 0.25
#: Patients with more images than this always train: one 22-image patient would make the
#: test figures measure that patient rather than the method.
MAX_TEST_PATIENT_IMAGES = 8
#: The site of every chest-views row from Hannover (the set is one hospital).
HANNOVER = "Hannover Medical School, Hannover, Germany"
#: chest-views/README.md, "How the set was selected", step 5: patients with DEV-set images.
CHEST_VIEWS_DEV_PATIENTS: frozenset[str] = frozenset({
    "hannover:042f06a9", "hannover:0664ee2b", "hannover:09ec853d", "hannover:0a359802",
    "hannover:177330aa", "hannover:189daebe", "hannover:1c642000", "hannover:271ddf1a",
})  # fmt: skip


@dataclass(frozen=True)
class Record:
    """One real chest radiograph of either set.

    ``source`` is ``chest-views`` or ``chest-multisite``; ``lung_mask`` the path of its
    machine-generated lung mask (multisite frontal images only) or ``None``; ``dev`` is true
    for a patient who also has images in the DEV set (never trains).
    """

    id: str
    path: Path
    view: str
    raw_view: str
    patient: str
    site: str
    license: str
    source: str
    lung_mask: Path | None
    dev: bool
    finding: str

    @property
    def label(self) -> int:
        """Index of the view in :data:`LABELS`."""
        return LABELS.index(self.view)


def _counts(records: Sequence[Record]) -> dict[str, object]:
    views = Counter(r.view for r in records)
    return {
        "images": len(records),
        "patients": len({r.patient for r in records}),
        "sites": len({r.site for r in records}),
        **{view: views.get(view, 0) for view in LABELS},
        "AP_SUPINE_in_AP": sum(r.raw_view == "AP_SUPINE" for r in records),
        "lung_masks": sum(r.lung_mask is not None for r in records),
        "by_source": dict(sorted(Counter(r.source for r in records).items())),
    }


@dataclass(frozen=True)
class Split:
    """A patient-level split: ``train`` and ``test`` share no patient."""

    train: tuple[Record, ...]
    test: tuple[Record, ...]
    seed: int
    method: str

    def describe(self) -> dict[str, object]:
        """Sizes per class, source and patient counts, and the test patients, for the manifest."""
        return {
            "method": self.method,
            "seed": self.seed,
            "train": _counts(self.train),
            "test": _counts(self.test),
            "test_patients": sorted({r.patient for r in self.test}),
        }


def _read_multisite(root: Path) -> list[Record]:
    records = []
    with (root / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            raw = row["view"].strip().upper()
            if raw not in VIEW_OF:
                raise ValueError(f"{root}/labels.csv: {row['id']}: unknown view {raw!r}")
            mask = row.get("lung_mask", "").strip()
            records.append(Record(
                id=row["id"], path=root / row["file"], view=VIEW_OF[raw], raw_view=raw,
                patient=row["patient_id"], site=row["site"].strip() or "unknown",
                license=row["license"].strip() or "unknown", source="chest-multisite",
                lung_mask=root / mask if mask else None,
                dev=row["patient_in_dev_set"].strip().lower() == "yes",
                finding=row.get("finding", "").strip(),
            ))  # fmt: skip
    return records


def _read_chest_views(root: Path, skip_sha: set[str]) -> list[Record]:
    records = []
    with (root / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["sha256_of_original"] in skip_sha:
                continue  # the same original is a multisite row
            raw = row["view"].strip().upper()
            if raw not in ("AP", "PA"):
                raise ValueError(f"{root}/labels.csv: {row['id']}: view must be AP or PA, got {raw!r}")
            hannover = row["patient_id"].startswith("hannover:")
            records.append(Record(
                id=row["id"], path=root / row["file"], view=raw, raw_view=raw,
                patient=row["patient_id"], site=HANNOVER if hannover else "unknown",
                license=row["license"].strip() or "unknown", source="chest-views",
                lung_mask=None, dev=row["patient_id"] in CHEST_VIEWS_DEV_PATIENTS, finding="",
            ))  # fmt: skip
    return records


def read_records(shared_data: Path) -> list[Record]:
    """Every image of ``<shared_data>/chest-multisite`` and ``<shared_data>/chest-views``.

    ``shared_data`` is the ``training`` folder holding both sets.  Multisite rows come first,
    then the chest-views rows whose original is not already among them.  Raises
    ``ValueError`` on a view label outside PA/AP/AP_SUPINE/LATERAL.
    """
    shared_data = Path(shared_data)
    multisite = _read_multisite(shared_data / "chest-multisite")
    with (shared_data / "chest-multisite" / "labels.csv").open(newline="") as handle:
        seen = {row["sha256_of_original"] for row in csv.DictReader(handle)}
    return multisite + _read_chest_views(shared_data / "chest-views", seen)


def _strata(r: Record) -> tuple[str, str]:
    return (r.source, r.view)


def patient_split(records: Sequence[Record], seed: int = SPLIT_SEED,
                  test_fraction: float = TEST_FRACTION, tries: int = 2000) -> Split:  # fmt: skip
    """Split ``records`` by patient; the test part holds about ``test_fraction`` of each
    (source, view) stratum.

    DEV-set patients always go to test (they never train); patients with more than
    :data:`MAX_TEST_PATIENT_IMAGES` images always train.  Each try shuffles the other
    patients (seeded) and adds them to test until it holds ``test_fraction`` of the images;
    the try whose per-stratum counts are closest to their targets wins (the first on a
    tie), so the result depends on ``records`` and ``seed`` alone.
    """
    per_patient: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    for r in records:
        per_patient[r.patient][_strata(r)] += 1
    forced = {r.patient for r in records if r.dev}
    totals = Counter(_strata(r) for r in records)
    target = {k: test_fraction * n for k, n in totals.items()}
    eligible = sorted(p for p, c in per_patient.items()
                      if p not in forced and sum(c.values()) <= MAX_TEST_PATIENT_IMAGES)  # fmt: skip
    start: Counter[tuple[str, str]] = Counter()
    for p in forced:
        start.update(per_patient[p])
    rng = np.random.default_rng(seed)
    best: tuple[float, set[str]] | None = None
    for _ in range(tries):
        chosen, held = set(forced), Counter(start)
        for index in rng.permutation(len(eligible)):
            if sum(held.values()) >= test_fraction * len(records):
                break
            patient = eligible[int(index)]
            chosen.add(patient)
            held.update(per_patient[patient])
        cost = sum(abs(held[k] - target[k]) / max(1.0, target[k]) for k in totals)
        if best is None or cost < best[0]:
            best = (cost, chosen)
    assert best is not None
    method = (
        f"group split by patient_id, about {test_fraction:.0%} of each (source, view) stratum "
        f"in test (best of {tries} seeded draws); DEV-set patients always test, patients with "
        f"more than {MAX_TEST_PATIENT_IMAGES} images always train; AP_SUPINE counted as AP"
    )
    return Split(train=tuple(r for r in records if r.patient not in best[1]),
                 test=tuple(r for r in records if r.patient in best[1]), seed=seed,
                 method=method)  # fmt: skip


def _site_groups(records: Iterable[Record]) -> list[set[str]]:
    """Sites joined into groups so that no patient spans two groups (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    sites_of: dict[str, set[str]] = defaultdict(set)
    for r in records:
        sites_of[r.patient].add(r.site)
        find(r.site)
    for sites in sites_of.values():
        first, *rest = sorted(sites)
        for other in rest:
            parent[find(other)] = find(first)
    groups: dict[str, set[str]] = defaultdict(set)
    for site in parent:
        groups[find(site)].add(site)
    return sorted(groups.values(), key=lambda g: sorted(g)[0])


def site_folds(records: Sequence[Record], k: int = 5, seed: int = SPLIT_SEED) -> list[Split]:
    """``k`` leave-site-out splits: each fold's test part is a group of whole sites.

    Hannover is one site; multisite rows use the ``site`` column (sites that share a patient
    are kept together).  Site groups are dealt, largest first after a seeded shuffle, to the
    fold with the fewest images, so folds are about equal in size (Hannover, 189 images, is
    alone in the largest fold).  A fold trains on every other site, minus DEV-set patients.
    """
    if k < 2:
        raise ValueError(f"site_folds needs k >= 2, got {k}")
    groups = _site_groups(records)
    size = Counter(r.site for r in records)
    rng = np.random.default_rng(seed)
    order = [groups[int(i)] for i in rng.permutation(len(groups))]
    order.sort(key=lambda g: -sum(size[s] for s in g))  # stable: ties keep the shuffle
    folds: list[set[str]] = [set() for _ in range(k)]
    load = [0] * k
    for group in order:
        i = int(np.argmin(load))
        folds[i] |= group
        load[i] += sum(size[s] for s in group)
    out = []
    for i, held in enumerate(folds):
        method = (f"leave-site-out fold {i + 1} of {k}: {len(held)} sites held out (whole "
                  "sites, seeded); training on the other sites without DEV-set patients")
        out.append(Split(train=tuple(r for r in records if r.site not in held and not r.dev),
                         test=tuple(r for r in records if r.site in held), seed=seed,
                         method=method))  # fmt: skip
    return out
