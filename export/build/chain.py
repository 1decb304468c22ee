"""The written pack measured on the held-out patients, per stage and chained as the worker runs it.

Chained: each held-out file is read by the worker's ingest (DICOM: :func:`read_radiograph` at
the working size, as :class:`edge_worker.judging.process.Judge` reads it; PNG/JPEG:
``models.data.read_image``) and judged by the worker's :class:`Pipeline` on ONNX Runtime
sessions of the pack's files: orientation, the image turned upright, view, that view's ROI,
the box, quality, the decision rule.  The verdict is compared with the labels.

Per stage: each network alone on the same images through the same sessions, fed the truth
of the stages before it (the image turned upright by its labelled rotation, the true view's
ROI network, quality on the true box), so that an error is the stage's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_worker.backends import LoadOptions, select
from edge_worker.ingest import read_radiograph
from edge_worker.ingest.types import IngestPolicy
from edge_worker.packs.pack import load_pack
from edge_worker.pipeline.preprocess import (
    WORKING_MAX_SIDE,
    box_mask,
    crop_box,
    image_part,
    mask_to_box,
    to_tensor,
)
from edge_worker.pipeline.runner import Pipeline
from edge_worker.pipeline.stages import run_orientation_batch, run_view_batch
from export.build.labels import Row
from export.build.stages import upright
from models.chest.augment import rotate
from models.data import IMAGE_SUFFIXES, read_image
from models.evaluate import angular_error, dice
from models.turns import seeded_turns

#: Seed of the turns a self-supervised orientation stage is measured on (plus the CSV line).
ORIENTATION_SEED = 7
#: Turns per held-out image for a self-supervised orientation stage.
ORIENTATION_TURNS = 8


def read_as_worker(path: Path) -> tuple[np.ndarray, Any, float]:
    """Pixels, header and stored->pixels scale, exactly as the worker's judge reads a file."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        pixels, scale = read_image(path)
        return pixels, None, scale
    radiograph = read_radiograph(path, IngestPolicy(), max_side=WORKING_MAX_SIDE)
    return radiograph.pixels, radiograph.header, float(radiograph.scale)


def _box_dice(shape: tuple[int, int], a: Any, b: Any) -> float:
    return dice(box_mask(shape, a) > 0, box_mask(shape, b) > 0)


def chained(pipeline: Pipeline, rows: list[Row]) -> list[dict[str, Any]]:
    """One record per held-out image: truth, the verdict's facts, and the image for thumbnails."""
    out = []
    for row in rows:
        rec = row.record
        pixels, header, scale = read_as_worker(rec.path)
        j = pipeline.judge(pixels, header)
        ws = j.working_scale
        shape = (round(pixels.shape[0] * ws), round(pixels.shape[1] * ws))
        box, truth_box = j.roi_in_working(), None
        if rec.roi is not None:
            truth_box = rec.roi.scaled(scale * ws, scale * ws)
        item: dict[str, Any] = {
            "file": rec.path.name, "line": row.line, "patient": row.patient,
            "view_true": rec.view, "view": j.view.label, "view_confidence": j.view.confidence,
            "grade_true": rec.grade, "score_true": rec.score,
            "grade": j.quality.grade if j.quality else None,
            "score": j.quality.score if j.quality else None,
            "decision": j.decision, "reasons": j.reason_codes,
            "angle_true": rec.rotation_deg,
            "angle": j.orientation.angle_deg if j.orientation else None,
            "roi_found": box is not None,
            "dice": (_box_dice(shape, box, truth_box) if box is not None and truth_box is not None
                     else (0.0 if truth_box is not None else None)),
            "thumbnail_source": row.sample.working, "box": box, "truth_box": truth_box,
        }  # fmt: skip
        out.append(item)
    return out


def run_network(pipeline: Pipeline, name: str, image: np.ndarray) -> np.ndarray:
    """The first output of stage ``name``'s network on ``image``, made as the worker makes it."""
    spec = next(s for s in pipeline.pack.stages if s.name == name)
    i = spec.input
    assert i is not None
    x = to_tensor(image, i.height, i.width, i.channels, i.mean, i.std, i.resize)
    return next(iter(pipeline.session(name).run(x).values()))[0]


def _orientation_cases(row: Row, turns: int) -> list[tuple[np.ndarray, float]]:
    """The images an orientation network is measured on and their true angles: the stored
    image with its label, or (``turns`` > 0, a self-supervised stage) the image turned by
    ``turns`` seeded angles on the same canvas, the label moved with each."""
    image = row.sample.working.astype(np.float32)
    base = row.record.rotation_deg or 0.0
    if turns <= 0:
        return [(image, base)]
    angles = seeded_turns(ORIENTATION_SEED + row.line, turns)
    return [(rotate(image, a, "same"), (base + a) % 360.0) for a in angles]


def per_stage(pipeline: Pipeline, rows: list[Row],
              orientation_turns: int = 0) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Each network alone on the held-out images, fed the truth of the stages before it;
    a self-supervised orientation stage on ``orientation_turns`` seeded turns of each."""
    pack = pipeline.pack
    view_spec = next((s for s in pack.stages if s.role == "view"), None)
    out: dict[str, list[dict[str, Any]]] = {s.name: [] for s in pack.networks}
    for row in rows:
        rec = row.record
        up = upright(row.sample)
        image = up.working.astype(np.float32)
        for spec in pack.networks:
            if spec.applies_to_view is not None and spec.applies_to_view != rec.view:
                continue
            if spec.role == "view" and view_spec is not None:
                # The worker's own function: the stage's options (mirrored_look) count.
                view = run_view_batch(pipeline.session(spec.name), spec, [image])[0]
                out[spec.name].append({"true": rec.view, "pred": view.label,
                                       "confidence": view.confidence})  # fmt: skip
            elif spec.role == "roi" and up.roi is not None:
                assert spec.input is not None
                prob = image_part(run_network(pipeline, spec.name, image)[0], image.shape,
                                  spec.input.height, spec.input.width, spec.input.resize)  # fmt: skip
                truth = box_mask(prob.shape, up.roi.scaled(prob.shape[1] / image.shape[1],
                                                           prob.shape[0] / image.shape[0])) > 0
                found = mask_to_box(prob, spec.thresholds["mask"],
                                    spec.thresholds["min_area_fraction"])  # fmt: skip
                out[spec.name].append({"dice": dice(prob > spec.thresholds["mask"], truth),
                                       "box_found": found is not None})  # fmt: skip
            elif spec.role == "quality" and up.roi is not None and rec.score is not None:
                i = spec.input
                assert i is not None
                crop = crop_box(image, up.roi, i.height, i.width, i.resize)
                score = float(run_network(pipeline, spec.name, crop)[0])
                out[spec.name].append({"true": rec.grade, "score_true": rec.score, "score": score,
                                       "pred": round(min(max(score, 1.0), 3.0))})  # fmt: skip
            elif spec.role == "orientation" and rec.rotation_deg is not None:
                cases = _orientation_cases(row, orientation_turns)
                # The worker's own function: the stage's options (quarter_turns) count.
                found = run_orientation_batch(pipeline.session(spec.name), spec,
                                              [turned for turned, _ in cases])  # fmt: skip
                for result, (_, truth) in zip(found, cases):
                    err = float(angular_error(np.array([result.angle_deg]), np.array([truth]))[0])
                    out[spec.name].append({"error_deg": err, "norm": result.norm})
    return out


def evaluate_pack(pack_dir: Path, rows: list[Row], orientation_turns: int = 0
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """The chained records and the per-stage records of the pack at ``pack_dir`` on ``rows``."""
    pipeline = worker_pipeline(pack_dir)
    return chained(pipeline, rows), per_stage(pipeline, rows, orientation_turns)


def worker_pipeline(pack_dir: Path) -> Pipeline:
    """The worker's pipeline of the pack at ``pack_dir`` on ONNX Runtime (CPU), warmed up."""
    pipeline = Pipeline(load_pack(pack_dir), select(["onnxruntime-cpu"]), LoadOptions())
    pipeline.warm_up()
    return pipeline


def label_figures(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """The accuracies against the labels that a precision change may not lower."""

    def mean(values: list[bool]) -> float | None:
        return round(float(np.mean(values)), 4) if values else None

    graded = [r for r in records if r["grade_true"] is not None]
    return {
        "view_accuracy": mean([r["view"] == r["view_true"] for r in records]),
        "grade_accuracy": mean([r["grade"] == r["grade_true"] for r in graded]),
        "roi_found": mean([bool(r["roi_found"]) for r in records if r["dice"] is not None]),
        "grade3_decided_ok": float(
            sum(r["grade_true"] == 3 and r["decision"] == "ok" for r in records)
        ),
    }
