"""The labels file of a build: read it, check it whole, and refuse it with every problem listed.

Layout: ``models.data.read_csv``'s columns (``file, view, grade, score, rotation_deg, roi_cx,
roi_cy, roi_w, roi_h, roi_angle``) with ``file`` relative to the data folder, plus the columns
in :data:`BUILD_COLUMNS` and the review export's (:data:`REVIEW_COLUMNS`), which the build
accepts and ignores.  Any other column is refused unless the recipe lists it in
``labels.ignore_columns``: a column the build does not understand may be a label it would
silently drop.  docs/recipes.md has the table.

Every image is read here, DICOM through the worker's own ingest
(:func:`edge_worker.ingest.read_radiograph`), PNG/JPEG with OpenCV, and reduced to the working
image the way training and the worker do; a file the ingest refuses is a problem of the labels
file, found before any training.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_worker.errors import Rejection
from edge_worker.pipeline.preprocess import RotatedBox, box_from_points
from export.build.recipe import Recipe
from models.data import IMAGE_SUFFIXES, Record, Sample, load_sample

CORE_COLUMNS = ("file", "view", "grade", "score", "rotation_deg",
                "roi_cx", "roi_cy", "roi_w", "roi_h", "roi_angle")  # fmt: skip
ROI_COLUMNS = CORE_COLUMNS[5:]
#: Columns the build reads besides the core: licence per image, a fixed split, an ROI given as
#: a mask file (non-zero pixels), flags (``;``-separated names from ``labels.flags``), and the
#: segmentation: a PNG whose pixel values are the class indices of the view's segment stage;
#: ``finding``: free text a ``finding`` stage learns from (``models.chest.classifier``).
BUILD_COLUMNS = ("license", "split", "roi_mask", "flags", "mask", "finding")
#: The review export's bookkeeping (branch review-copies) and the phantom writer's description
#: columns: accepted, not used for training.
REVIEW_COLUMNS = ("patient_key", "final", "reviewer_tier", "reviewed_at", "review_id",
                  "reviewer", "study_uid", "sop_instance_uid")  # fmt: skip
DESCRIPTION_COLUMNS = ("modality", "photometric", "laterality", "rows", "columns")
SPLITS = ("train", "test")
#: Problem kinds, each a refusal (docs/recipes.md).
KINDS = ("unknown_column", "missing_column", "missing_image", "unreadable_image",
         "unknown_label", "bad_value", "missing_patient", "class_too_small",
         "patient_on_both_sides")  # fmt: skip


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the labels file; ``row`` is the CSV line (header = 1)."""

    kind: str
    detail: str
    row: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = f"line {self.row}: " if self.row is not None else ""
        col = f"[{self.column}] " if self.column else ""
        return f"{self.kind}: {where}{col}{self.detail}"


class LabelsRefused(ValueError):
    """The labels file has problems; :attr:`problems` lists every one of them."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"labels refused ({len(problems)} problem(s)), nothing trained:\n{lines}")


@dataclass(frozen=True)
class Row:
    """One accepted image: its record (labels), its sample (working image) and bookkeeping."""

    record: Record
    sample: Sample
    patient: str
    license: str | None
    flags: tuple[str, ...]
    fixed_split: str | None
    line: int
    #: The class-index mask file (``mask`` column) when the row's view has a segment stage.
    mask: Path | None = None
    #: The mask file's pixel value of each class (the segment stage's ``mask_values``).
    mask_values: tuple[int, ...] = ()
    #: The ``finding`` column's text (empty when the file has none).
    finding: str = ""

    def class_mask(self) -> np.ndarray:
        """The row's mask as class indices (0 = the first class); ValueError if unusable."""
        assert self.mask is not None, "the row has no mask"
        return class_indices(read_mask(self.mask), self.mask_values)


@dataclass
class LabelSet:
    """The accepted labels: rows, the file's sha256 and the columns it had."""

    path: Path
    sha256: str
    rows: list[Row]
    columns: list[str]
    patient_source: str
    ignored_columns: list[str] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hashed_patient_id(path: Path) -> str | None:
    """sha256 (first 16 hex digits) of a DICOM file's PatientID, read from the header only.

    The raw identifier never leaves this function: the split, the manifest and the report
    carry only the hash.  ``None`` when the file has no (or an empty) PatientID.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except (InvalidDicomError, OSError, ValueError, KeyError, EOFError):
        return None  # the ingest has read the file already; a PatientID it cannot give is absent
    value = str(getattr(ds, "PatientID", "") or "").strip()
    return hashlib.sha256(value.encode()).hexdigest()[:16] if value else None


def _mask_box(path: Path) -> RotatedBox | None:
    """The rotated box around a mask file's non-zero pixels (stored-pixel coordinates)."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"cannot read mask {path.name}")
    ys, xs = np.nonzero(mask)
    if len(xs) < 3:
        return None
    return box_from_points(np.stack([xs, ys], axis=1).astype(np.float32))


def read_mask(path: Path) -> np.ndarray:
    """A class-index mask file as a 2-D ``uint8``/``uint16`` array; ``ValueError`` if unusable."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ValueError(f"cannot read mask {path.name}")
    if mask.ndim != 2:
        raise ValueError(f"mask {path.name} has {mask.shape[2]} channels; a class-index mask is "
                         "one grayscale channel whose values are class numbers")  # fmt: skip
    return mask


def class_indices(mask: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    """``mask``'s pixel values turned into class indices (``values[k]`` -> ``k``); ValueError
    naming a value that is no class's.  ``values`` empty: the pixels are the indices already."""
    if values == tuple(range(len(values))):
        top = int(mask.max()) if mask.size else 0
        if values and top >= len(values):
            raise ValueError(f"class value {top} is no class's (values 0-{len(values) - 1})")
        return mask
    out = np.zeros(mask.shape, np.uint8)
    known = np.zeros(mask.shape, bool)
    for k, v in enumerate(values):
        hit = mask == v
        out[hit] = k
        known |= hit
    if not known.all():
        raise ValueError(f"mask values {sorted(set(np.unique(mask[~known]).tolist()))[:5]} are no "
                         f"class's (mask_values {list(values)})")  # fmt: skip
    return out


def _segment_mask(raw: dict[str, str], sample: Sample, data: Path, recipe: Recipe, line: int,
                  problems: list[Problem]) -> Path | None:  # fmt: skip
    """The row's mask file, checked against its image and its view's classes."""
    stage = next((s for s in recipe.stages if s.task == "segment" and s.view == sample.record.view),
                 None)  # fmt: skip
    if stage is None:
        return None
    name = (raw.get("mask") or "").strip()
    if not name:
        if not stage.mask_optional:
            problems.append(Problem("missing_image", f"view {sample.record.view} is segmented by "
                                    f"stage {stage.name!r}: a mask file is required", line, "mask"))
        return None
    path = data / name
    if not path.is_file():
        problems.append(Problem("missing_image", f"no mask file {name} in the data folder", line,
                                "mask"))  # fmt: skip
        return None
    try:
        mask = read_mask(path)
    except ValueError as exc:
        problems.append(Problem("unreadable_image", str(exc), line, "mask"))
        return None
    h, w = sample.working.shape
    if abs(mask.shape[0] / mask.shape[1] - h / w) > 0.02 * h / w:
        problems.append(Problem("bad_value", f"mask {name} is {mask.shape[1]}x{mask.shape[0]}, "
                                "not the shape of its image (it must cover the stored image)",
                                line, "mask"))  # fmt: skip
        return None
    try:
        class_indices(mask, stage.mask_values)
    except ValueError as exc:
        problems.append(Problem("unknown_label", f"mask {name}: {exc}; stage {stage.name!r} has "
                                f"classes {list(stage.classes)}", line, "mask"))  # fmt: skip
        return None
    return path


def _float(value: str, column: str, line: int, problems: list[Problem]) -> float | None:
    value = value.strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        problems.append(Problem("bad_value", f"not a number: {value!r}", line, column))
        return None


def _header_problems(columns: list[str], recipe: Recipe) -> list[Problem]:
    known = {*CORE_COLUMNS, *BUILD_COLUMNS, *REVIEW_COLUMNS, *DESCRIPTION_COLUMNS,
             *recipe.ignore_columns, *([recipe.patient_column] if recipe.patient_column else [])}
    problems = [Problem("unknown_column", f"column {c!r} is not a label the build knows; list it "
                        "in the recipe's labels.ignore_columns to accept it unused", 1, c)
                for c in columns if c not in known]  # fmt: skip
    problems += [Problem("missing_column", f"column {c!r} is required", 1, c)
                 for c in ("file", "view") if c not in columns]  # fmt: skip
    return problems


def _roi(row: dict[str, str], data: Path, line: int, problems: list[Problem]) -> RotatedBox | None:
    mask_name = (row.get("roi_mask") or "").strip()
    if mask_name:
        try:
            return _mask_box(data / mask_name)
        except ValueError as exc:
            problems.append(Problem("missing_image", str(exc), line, "roi_mask"))
            return None
    values = [_float(row.get(c) or "", c, line, problems) for c in ROI_COLUMNS]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        problems.append(Problem("bad_value", "an ROI needs all of " + ", ".join(ROI_COLUMNS),
                                line, "roi_w"))  # fmt: skip
        return None
    return RotatedBox(*values)  # type: ignore[arg-type]


def _record(row: dict[str, str], line: int, data: Path, recipe: Recipe,
            problems: list[Problem]) -> Record | None:  # fmt: skip
    view = (row.get("view") or "").strip().upper()
    before = len(problems)
    if view not in recipe.views:
        problems.append(Problem("unknown_label", f"view {view!r} is not in the recipe's "
                                f"vocabulary {list(recipe.views)}", line, "view"))  # fmt: skip
    grade_text = (row.get("grade") or "").strip()
    grade = None
    if grade_text:
        try:
            grade = int(grade_text)
        except ValueError:
            grade = None
        if grade not in recipe.grades:
            problems.append(Problem("unknown_label", f"grade {grade_text!r} is not one of "
                                    f"{list(recipe.grades)}", line, "grade"))  # fmt: skip
    score = _float(row.get("score") or "", "score", line, problems)
    rotation = _float(row.get("rotation_deg") or "", "rotation_deg", line, problems)
    roi = _roi(row, data, line, problems)
    # Flags are checked against the recipe's vocabulary when it declares one; without one the
    # column is bookkeeping (the review export writes reviewers' flags there).
    for flag in _flags(row) if recipe.flags else ():
        if flag not in recipe.flags:
            problems.append(Problem("unknown_label", f"flag {flag!r} is not in the recipe's "
                                    f"labels.flags {list(recipe.flags)}", line, "flags"))  # fmt: skip
    if len(problems) > before:
        return None
    return Record(path=data / row["file"].strip(), view=view, grade=grade,
                  score=score if score is not None else (float(grade) if grade else None),
                  rotation_deg=None if rotation is None else rotation % 360.0, roi=roi)  # fmt: skip


def _flags(row: dict[str, str]) -> tuple[str, ...]:
    return tuple(f.strip() for f in (row.get("flags") or "").split(";") if f.strip())


def _read_image(record: Record, line: int, problems: list[Problem]) -> Sample | None:
    path = record.path
    if not path.is_file():
        problems.append(Problem("missing_image", f"no file {path.name} in the data folder",
                                line, "file"))  # fmt: skip
        return None
    try:
        return load_sample(record)
    except Rejection as exc:
        problems.append(Problem("unreadable_image", f"the worker's ingest refuses "
                                f"{path.name}: {exc}", line, "file"))  # fmt: skip
    except (ValueError, OSError) as exc:
        problems.append(Problem("unreadable_image", f"{path.name}: {exc}", line, "file"))
    return None


def _patient(row: dict[str, str], record: Record, recipe: Recipe) -> str | None:
    column = recipe.patient_column
    if column and column in row:
        value = (row.get(column) or "").strip()
        return value or None
    if record.path.suffix.lower() in IMAGE_SUFFIXES:
        return None
    return hashed_patient_id(record.path)


def read_labels(csv_path: str | Path, data: str | Path, recipe: Recipe) -> LabelSet:
    """Read and check the whole labels file; returns the accepted rows.

    Raises :class:`LabelsRefused` with every problem found (header, each row, each image, then
    the classes) when there is any.  Class sizes are checked here as far as they can be before
    the split (:func:`export.build.split.split_by_patient` checks each side).
    """
    csv_path, data = Path(csv_path), Path(data)
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        raw_rows = list(reader)
    problems = _header_problems(columns, recipe)
    if any(p.kind == "missing_column" for p in problems):
        raise LabelsRefused(problems)
    by_patient_column = bool(recipe.patient_column and recipe.patient_column in columns)
    rows: list[Row] = []
    for i, raw in enumerate(tqdm(raw_rows, desc="checking labels and images", leave=False)):
        line = i + 2
        record = _record(raw, line, data, recipe, problems)
        sample = _read_image(record, line, problems) if record is not None else None
        if record is None or sample is None:
            continue
        before = len(problems)
        mask = _segment_mask(raw, sample, data, recipe, line, problems)
        if len(problems) > before:
            continue
        patient = _patient(raw, record, recipe)
        if patient is None:
            source = (f"column {recipe.patient_column!r} is empty" if by_patient_column else
                      "no patient key column and the file carries no DICOM PatientID")
            problems.append(Problem("missing_patient", source, line,
                                    recipe.patient_column if by_patient_column else "file"))
            continue
        split = (raw.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLITS:
            problems.append(Problem("bad_value", f"split must be one of {SPLITS}, got {split!r}",
                                    line, "split"))  # fmt: skip
            continue
        values = next((s.mask_values for s in recipe.stages
                       if s.task == "segment" and s.view == record.view), ())  # fmt: skip
        rows.append(Row(record, sample, patient, (raw.get("license") or "").strip() or None,
                        _flags(raw), split, line, mask, values,
                        (raw.get("finding") or "").strip()))  # fmt: skip
    problems += class_problems(rows, recipe)
    if any(r.fixed_split for r in rows):
        problems += check_disjoint([r for r in rows if r.fixed_split == "train"],
                                   [r for r in rows if r.fixed_split == "test"])  # fmt: skip
    if problems:
        raise LabelsRefused(problems)
    used = {*CORE_COLUMNS, "license", "split", "roi_mask", *(("flags",) if recipe.flags else ()),
            *(("mask",) if any(s.task == "segment" for s in recipe.stages) else ()),
            *(("finding",) if any(s.task == "finding" for s in recipe.stages) else ()),
            *((recipe.patient_column,) if by_patient_column else ())}
    ignored = [c for c in columns if c not in used]
    source = (f"column {recipe.patient_column}" if by_patient_column
              else "DICOM PatientID, sha256-hashed")  # fmt: skip
    return LabelSet(csv_path, sha256_file(csv_path), rows, columns, source, ignored)


def check_disjoint(train: list[Row], test: list[Row]) -> list[Problem]:
    """One problem per patient found on both sides (none for a proper split)."""
    both = sorted({r.patient for r in train} & {r.patient for r in test})
    lines: dict[str, list[int]] = {}
    for row in train + test:
        if row.patient in both:
            lines.setdefault(row.patient, []).append(row.line)
    return [Problem("patient_on_both_sides", f"patient {p!r} has images in train and test "
                    f"(lines {sorted(lines[p])})") for p in both]  # fmt: skip


def classes_of(row: Row, recipe: Recipe) -> list[str]:
    """The classes a row counts towards: its view, and its grade within that view."""
    out = [f"view={row.record.view}"]
    if row.record.grade is not None and any(s.task == "quality" for s in recipe.stages):
        out.append(f"grade={row.record.grade}@{row.record.view}")
    return out


def class_problems(rows: list[Row], recipe: Recipe) -> list[Problem]:
    """A view (or a grade within a view) with fewer patients than both sides of a split need."""
    patients: dict[str, set[str]] = {}
    for row in rows:
        for name in classes_of(row, recipe):
            patients.setdefault(name, set()).add(row.patient)
    need = 2 * recipe.min_per_class
    wanted = [f"view={v}" for v in recipe.views]
    counts = Counter({name: len(p) for name, p in patients.items()})
    found = [Problem("class_too_small", f"{name}: {counts[name]} patient(s); splitting needs at "
                     f"least {need} ({recipe.min_per_class} per side)")
             for name in sorted(set(wanted) | set(counts)) if counts[name] < need]  # fmt: skip
    for stage in recipe.stages:
        if stage.task == "segment":
            masked = {r.patient for r in rows if r.record.view == stage.view and r.mask is not None}
            if len(masked) < need:  # only reachable with mask_optional: else every row has one
                found.append(Problem("class_too_small", f"stage {stage.name}: {len(masked)} "
                                     f"patient(s) of view {stage.view} with a mask; its "
                                     f"segmenter needs at least {need}"))  # fmt: skip
        if stage.task == "finding":
            from models.chest.classifier import LABELS, finding_class

            by_class: dict[int, set[str]] = {0: set(), 1: set()}
            for r in rows:
                label = finding_class(r.finding, r.record.view)
                if label is not None and r.record.view in stage.views:
                    by_class[label].add(r.patient)
            for label, who in by_class.items():
                if len(who) < need:
                    found.append(Problem("class_too_small", f"stage {stage.name}: {len(who)} "
                                         f"patient(s) whose `finding` is {LABELS[label]} on "
                                         f"{list(stage.views)}; the classifier needs at least "
                                         f"{need}", column="finding"))  # fmt: skip
    return found
