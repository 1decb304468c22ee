"""What the chest pack says about images it was not made for, and about other sources.

Out of distribution (must NOT come out as a confident AP or PA):

* the chest laterals and knees of ``../shared/data/radiographs/images`` (picked by the
  ``body_part`` and ``view`` columns of its ``MANIFEST.tsv``), read as grey float [0, 1];
* phantom ankles from :mod:`edge_worker.phantoms.ankle`, from a seed that outlier exposure never
  used (the training outliers are phantom ankles too, so these are a seen *kind*).

Cross-source frontal chests (should be PA): the DEV set's frontal chests that do not come
from Hannover (NIH ChestX-ray14, covid-chestxray-dataset).  The Hannover DEV images are left
out: some of their patients are in the training set (see the chest-views README).  These
images were not used to choose anything.

Every image goes through ``working_image`` and the pack's ONNX stages, as in the worker.
The decision column applies the pack's two thresholds as the worker's ``decide`` does:
view confidence below ``min_confidence`` or orientation norm below ``min_norm`` is ``review``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_worker.pipeline.preprocess import working_image
from models.chest.data import LABELS, read_grayscale
from models.chest.evaluate import OnnxStage, softmax
from models.chest.outliers import CHECK_PHANTOM_SEED, phantom_ankles


@dataclass(frozen=True)
class Case:
    """One image of the check and what it really is."""

    file: str
    kind: str
    image: np.ndarray


def _manifest_rows(radiographs: Path) -> list[dict[str, str]]:
    with (radiographs / "MANIFEST.tsv").open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [r for r in rows if r["file"].startswith("images/") and "/masks/" not in r["file"]]


def _load(radiographs: Path, rel: str) -> np.ndarray:
    working, _ = working_image(read_grayscale(radiographs / rel))
    return working


def ood_cases(radiographs: Path | None, n_phantoms: int = 4) -> list[Case]:
    """Chest laterals, knees (when ``radiographs`` exists) and ``n_phantoms`` phantom ankles."""
    cases = []
    if radiographs is not None and (radiographs / "MANIFEST.tsv").is_file():
        for row in _manifest_rows(radiographs):
            if row["body_part"] == "KNEE":
                kind = "knee (frontal)"
            elif row["body_part"] == "CHEST" and row["view"] in ("LAT", "LATERAL", "LL"):
                kind = "chest lateral"
            else:
                continue
            cases.append(Case(row["file"], kind, _load(radiographs, row["file"])))
    for i, img in enumerate(phantom_ankles(CHECK_PHANTOM_SEED, n_phantoms)):
        view = ("AP", "LAT")[i % 2]
        cases.append(Case(f"phantom seed {CHECK_PHANTOM_SEED} #{i}", f"phantom ankle {view}", img))
    return cases


def cross_source_cases(radiographs: Path | None) -> list[Case]:
    """The DEV set's non-Hannover frontal chests, with their view as the kind."""
    if radiographs is None or not (radiographs / "MANIFEST.tsv").is_file():
        return []
    return [
        Case(row["file"], f"chest {row['view']}", _load(radiographs, row["file"]))
        for row in _manifest_rows(radiographs)
        if row["body_part"] == "CHEST" and row["view"] in LABELS
        and not Path(row["file"]).name.startswith("hannover_")
    ]  # fmt: skip


def judge(stages: dict[str, OnnxStage], cases: list[Case]) -> list[dict[str, object]]:
    """One table row per case: view, confidence, orientation, and the decision."""
    if not cases:
        return []
    view = stages["view"]
    min_conf = float(view.thresholds.get("min_confidence", 0.8))
    probs = softmax(view.run([c.image for c in cases]))
    orientation = stages.get("orientation")
    cossin = orientation.run([c.image for c in cases])[:, :2] if orientation else None
    min_norm = float(orientation.thresholds.get("min_norm", 0.5)) if orientation else 0.0
    rows = []
    for i, case in enumerate(cases):
        best = int(probs[i].argmax())
        row: dict[str, object] = {
            "file": case.file,
            "kind": case.kind,
            "view": LABELS[best],
            "confidence": round(float(probs[i, best]), 4),
        }
        reasons = []
        if probs[i, best] < min_conf:
            reasons.append("view uncertain")
        if cossin is not None:
            c, s = (float(v) for v in cossin[i])
            row["orientation_deg"] = round(float(np.degrees(np.arctan2(s, c)) % 360.0), 1)
            row["orientation_norm"] = round(float(np.hypot(c, s)), 3)
            if np.hypot(c, s) < min_norm:
                reasons.append("orientation uncertain")
        row["decision"] = (
            "review (" + ", ".join(reasons) + ")" if reasons else (f"confident {LABELS[best]}")
        )
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    """How many rows per kind went to review, and the most confident of them."""
    kinds: dict[str, dict[str, object]] = {}
    for row in rows:
        entry = kinds.setdefault(str(row["kind"]), {"n": 0, "review": 0, "max_confidence": 0.0})
        entry["n"] = int(entry["n"]) + 1  # type: ignore[call-overload]
        entry["review"] = int(entry["review"]) + int(str(row["decision"]).startswith("review"))  # type: ignore[call-overload]
        entry["max_confidence"] = max(float(entry["max_confidence"]), float(row["confidence"]))  # type: ignore[arg-type]
    return kinds
