"""``edge-export quantize``: an INT8 or FP16 copy of a pack, accepted only if it keeps the verdicts.

    edge-export quantize PACK --out DIR --precision int8|fp16 [--calibration DIR]
                         [--test DIR] [--stages NAME,...] [--phantoms N] [--report FILE]
                         [--labels CSV --data DIR] [--max-accuracy-drop 0.02]

* **int8**: static quantisation in QDQ format with ``onnxruntime.quantization`` (per-channel
  signed 8-bit weights, unsigned 8-bit activations, MinMax ranges).  Static INT8 runs
  ResNet-type convolutions about 3x faster on a CPU with VNNI (DeepLabV3-R50 at 400 px:
  906 -> 315 ms, reference/cpu-baseline.md); dynamic INT8 is never faster there, so it is not
  offered.  Calibration inputs are what each network sees when the FP32 pack judges the
  calibration images through the worker's own ingest and pipeline: phantoms, plus the
  DICOM files under ``--calibration``.
* **fp16**: weights and arithmetic in float16 with float32 inputs and outputs
  (``onnxruntime.transformers.float16``): half the size, for GPUs; no faster on a CPU.

**The gate.**  The FP32 pack and the candidate judge a test set that calibration never saw:
phantoms from other seeds plus every file under ``--test`` that the ingest accepts.  The
candidate is written to ``--out`` only if, on every file, the decision, the view, whether an
ROI was found, the quality grade and the suggested rotation are the same.  Otherwise it is
refused (exit status 1) and nothing is written.  Either way the agreement figures are
printed, and the accepted pack carries them in ``validation.precision_gate``.

**The label gate.**  When the pack carries its labelled held-out set (``validation.test_set``,
written by ``edge-export build``) or ``--labels CSV --data FOLDER`` names one, the candidate
must also be as right as the FP32 pack against those labels: view and grade accuracy and the
share of ROIs found may not fall by more than ``--max-accuracy-drop`` (default 0.02), and no
more grade-3 images may be decided ``ok`` (:mod:`export.build.label_gate`).

``--stages`` converts only the named stages (the rest stay FP32): the slow segmenters can be
quantised while a classifier whose decision flips is left alone.  That choice is explicit and
recorded in the manifest, never made silently.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_worker.backends import LoadOptions, Selected, Session, select
from edge_worker.errors import Rejection
from edge_worker.ingest import read_radiograph
from edge_worker.packs.pack import Pack, load_pack, seal_manifest
from edge_worker.pipeline.preprocess import WORKING_MAX_SIDE
from export.pack import StageFile, write_pack
from export.precision_gate import compare, format_report, judge_facts

PRECISIONS = ("int8", "fp16")
#: Fewer calibration inputs than this for a stage: refuse rather than guess its ranges.
MIN_CALIBRATION = 4
#: Calibration inputs per stage are capped at this many pixels in all (8 images at 400 px).
CALIBRATION_PIXELS = 8 * 400 * 400
#: Phantoms in the test set (and offered for calibration).  16 let through an INT8 copy that
#: changed 4 grades in 64 (a quality regressor near its grade boundaries, a box that moved):
#: the gate needs enough images to see a 5 % flip rate.
PHANTOMS = 64
#: Phantom seeds: calibration and test sets never share an image.
CALIBRATION_SEED, TEST_SEED = 5_100_000, 5_200_000


class QuantizeError(Exception):
    """A usage problem: unknown stage or precision, too little calibration data."""


@dataclass
class _Recorder:
    """A backend module (``BackendModule`` protocol) whose sessions keep a copy of each input."""

    inner: Selected
    seen: dict[str, list[np.ndarray]] = field(default_factory=dict)
    NAME: str = "recorder"

    def probe(self) -> str | None:
        return None

    def load(self, path: Path, options: LoadOptions) -> Session:
        session, store = self.inner.load(path, options), self.seen.setdefault(path.stem, [])

        class Recording:
            def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
                store.extend(np.array(x[None]) for x in batch)
                return session.run(batch)

        return Recording()


def write_phantoms(folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` phantom DICOM files (half upright +-15 deg, half at any rotation)."""
    from edge_worker.phantoms.ankle import write_phantom

    paths = []
    for i in range(n):
        path = folder / f"phantom_{seed}_{i:03d}.dcm"
        rotation = (-15.0, 15.0) if i % 2 == 0 else (0.0, 360.0)
        write_phantom(path, seed + i, view=("AP", "LAT")[i // 2 % 2], grade=1 + i % 3,
                      rotation_range=rotation, index=i + 1)  # fmt: skip
        paths.append(path)
    return paths


def dicom_files(folder: Path | None) -> list[Path]:
    """Every regular, visible file under ``folder`` (none for ``None``)."""
    if folder is None:
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _readable(files: Sequence[Path]) -> Iterator[tuple[Path, np.ndarray]]:
    """The files the ingest accepts, with their pixels (a rejected file is no test of a pack)."""
    for path in files:
        try:
            yield path, read_radiograph(path, max_side=WORKING_MAX_SIDE).pixels
        except Rejection:
            continue


def calibration_inputs(pack: Pack, files: Sequence[Path]) -> dict[str, list[np.ndarray]]:
    """Per stage, the ``(1, C, H, W)`` inputs it receives while judging ``files``.

    Every network sees every image, per-view stages included (the ROI and quality stages of
    both views run on each): a view classifier that calls most images LAT must not leave the
    AP stages with nothing to calibrate on.  Quality crops come from that view's ROI stage.
    """
    from edge_worker.pipeline.preprocess import working_image
    from edge_worker.pipeline.stages import run_orientation, run_quality, run_roi, run_view

    recorder = _Recorder(select(["onnxruntime-cpu"]))
    sessions = {s.name: recorder.load(s.file, LoadOptions()) for s in pack.networks if s.file}
    view_spec = next(s for s in pack.stages if s.role == "view")
    for _, pixels in _readable(files):
        work, _ = working_image(pixels)
        run_view(sessions[view_spec.name], view_spec, work)
        for label in view_spec.labels:
            roi_spec, quality_spec = pack.stage("roi", label), pack.stage("quality", label)
            roi = run_roi(sessions[roi_spec.name], roi_spec, work) if roi_spec else None
            if quality_spec is not None and roi is not None and roi.box is not None:
                run_quality(sessions[quality_spec.name], quality_spec, work, roi.box)
        orient_spec = pack.stage("orientation")
        if orient_spec is not None:
            run_orientation(sessions[orient_spec.name], orient_spec, work)
    return recorder.seen


def quantize_int8(src: Path, dst: Path, inputs: list[np.ndarray], work: Path) -> None:
    """Static QDQ INT8 of the ONNX file ``src`` into ``dst``, ranges from ``inputs``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )  # fmt: skip
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._items = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            return None if item is None else {"image": item.astype(np.float32)}

    # The calibrator keeps every intermediate tensor of every input in memory (about 0.5 GB
    # per 400 px DeepLabV3 image); ORT 1.32's CalibMaxIntermediateOutputs, meant to bound
    # that, discards the data instead of merging it.  So the inputs are capped by pixels.
    cap = max(MIN_CALIBRATION, CALIBRATION_PIXELS // int(np.prod(inputs[0].shape[-2:])))
    inputs = inputs[:cap]
    pre = work / f"{src.stem}.pre.onnx"
    # Symbolic shape inference fails on some dynamo graphs (an Expand from F.normalize);
    # ONNX's own shape inference, which pre-processing still runs, is enough for QDQ.
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )  # fmt: skip
    pre.unlink(missing_ok=True)


def convert_fp16(src: Path, dst: Path) -> None:
    """FP16 weights and arithmetic with FP32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


def _candidate(pack: Pack, out: Path, precision: str, stages: set[str],
               calibration: dict[str, list[np.ndarray]], described: str) -> Path:  # fmt: skip
    """Write the converted pack into ``out``; returns its manifest path."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for spec in pack.networks:
        assert spec.file is not None and spec.input is not None
        dst = out / spec.file.name
        if spec.name not in stages:
            shutil.copyfile(spec.file, dst)
        elif precision == "int8":
            quantize_int8(spec.file, dst, calibration[spec.name], out)
        else:
            convert_fp16(spec.file, dst)
        note = f"; {precision.upper()} ({described})" if spec.name in stages else ""
        i = spec.input
        files.append(StageFile(
            name=spec.name, task=spec.role, onnx_path=dst, output_name=next(iter(spec.outputs)),
            input={"height": i.height, "width": i.width, "channels": i.channels, "mean": i.mean,
                   "std": i.std, "resize": i.resize},
            architecture=spec.architecture + note, opset=_opset(spec.file),
            applies_to_view=spec.applies_to_view, labels=list(spec.labels) or None,
            thresholds=dict(spec.thresholds),
        ))  # fmt: skip
    raw = json.loads((pack.root / "manifest.json").read_text())
    return write_pack(
        out, files, name=pack.name, version=f"{pack.version}+{precision}",
        description=f"{raw.get('description', '')} {precision.upper()} copy of {pack.name} "
        f"{pack.version} made by edge-export quantize.".strip(),
        training_data=pack.training_data, validation=dict(pack.validation),
        body_parts=pack.body_parts, not_for_clinical_use=pack.not_for_clinical_use,
    )  # fmt: skip


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def quantize_pack(pack_dir: Path, out: Path, precision: str, *, calibration: Path | None = None,
                  test: Path | None = None, stages: Sequence[str] = (), phantoms: int = PHANTOMS,
                  keep_refused: Path | None = None, log: Any = print,
                  labels: Path | None = None, data: Path | None = None,
                  max_accuracy_drop: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Convert, gate, and write ``out`` only when the gate passes; returns the gate report.

    ``keep_refused``: where to put a refused candidate anyway, named ``<name>-REFUSED``, so
    that its speed can be measured (``edge-worker bench``); it is never written to ``out``.

    Raises :class:`QuantizeError` for a usage problem (unknown stage or precision, too little
    calibration data).  A refused candidate is a report with ``accepted: false``.
    """
    if precision not in PRECISIONS:
        raise QuantizeError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    pack = load_pack(pack_dir)
    chosen = set(stages) or {s.name for s in pack.stages}
    unknown = chosen - {s.name for s in pack.stages}
    if unknown:
        raise QuantizeError(
            f"unknown stage(s) {sorted(unknown)}; the pack has {[s.name for s in pack.stages]}"
        )
    from export.build.label_gate import MAX_ACCURACY_DROP, LabelGateError, label_gate, test_rows

    try:
        labelled = test_rows(pack, labels, data)
    except LabelGateError as exc:
        raise QuantizeError(str(exc)) from exc
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-quantize-") as tmp:
        work = Path(tmp)
        calib_files = write_phantoms(
            work / "calibration", phantoms, CALIBRATION_SEED
        ) + dicom_files(calibration)
        test_files = write_phantoms(work / "test", phantoms, TEST_SEED) + dicom_files(test)
        inputs: dict[str, list[np.ndarray]] = {}
        described = f"static QDQ, MinMax, {len(calib_files)} calibration images"
        if precision == "int8":
            inputs = calibration_inputs(pack, calib_files)
            short = {
                n: len(inputs.get(n, []))
                for n in chosen
                if len(inputs.get(n, [])) < MIN_CALIBRATION
            }
            if short:
                raise QuantizeError(f"too few calibration inputs {short} (need {MIN_CALIBRATION}); "
                                  "add images with --calibration or --phantoms")  # fmt: skip
            log(f"calibration: {len(calib_files)} images, inputs per stage "
                f"{ {n: len(v) for n, v in sorted(inputs.items())} }")  # fmt: skip
        else:
            described = "float16 weights and arithmetic, float32 inputs and outputs"
        candidate = work / "candidate"
        _candidate(pack, candidate, precision, chosen, inputs, described)
        readable = list(_readable(test_files))
        images = [pixels for _, pixels in readable]
        names = [path.name for path, _ in readable]
        report = compare(judge_facts(pack.root, images), judge_facts(candidate, images), names)
        report.update(precision=precision, stages=sorted(chosen), source=f"{pack.name} {pack.version}",
                      test_set={"phantoms": phantoms, "real": len(readable) - phantoms},
                      calibration=described)  # fmt: skip
        if labelled is not None:
            drop = MAX_ACCURACY_DROP if max_accuracy_drop is None else max_accuracy_drop
            report["label_gate"] = label_gate(pack.root, candidate, labelled, drop)
            report["accepted"] = report["accepted"] and report["label_gate"]["accepted"]
        report["seconds"] = round(time.monotonic() - started, 1)
        manifest = json.loads((candidate / "manifest.json").read_text())
        manifest["validation"]["precision_gate"] = {
            k: v for k, v in report.items() if k != "changed"
        }
        target = out if report["accepted"] else keep_refused
        if not report["accepted"]:
            manifest["name"] += "-REFUSED"
            manifest["description"] = (
                "REFUSED by the precision gate: for speed measurements only. "
                + manifest["description"]
            )
        (candidate / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        seal_manifest(candidate)
        if target is not None:
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(candidate, target)
    return report


def add_parser(sub: Any) -> None:
    """Add the ``quantize`` subcommand to ``edge-export``'s subparsers."""
    cmd = sub.add_parser(
        "quantize", help="an INT8 or FP16 copy of a pack, refused if a verdict changes"
    )
    cmd.add_argument("pack", type=Path, help="the FP32 pack folder")
    cmd.add_argument("--out", type=Path, required=True, help="folder for the new pack")
    cmd.add_argument("--precision", choices=PRECISIONS, required=True)
    cmd.add_argument(
        "--calibration", type=Path, help="DICOM files to calibrate on (besides phantoms)"
    )
    cmd.add_argument(
        "--test", type=Path, help="DICOM files for the gate (besides phantoms), e.g. real ones"
    )
    cmd.add_argument("--stages", default="", help="comma-separated stage names (default: all)")
    cmd.add_argument(
        "--phantoms", type=int, default=PHANTOMS,
        help=f"phantoms for calibration and for the test set (default {PHANTOMS})",
    )
    cmd.add_argument("--report", type=Path, help="also write the gate report as JSON here")
    cmd.add_argument("--labels", type=Path, help="labelled test set for the label gate (default: "
                     "the pack's validation.test_set, when it has one)")
    cmd.add_argument("--data", type=Path, help="folder of the --labels files")
    cmd.add_argument("--max-accuracy-drop", type=float, default=None,
                     help="largest accepted fall of view/grade accuracy or ROIs found against "
                     "the labels (default 0.02)")
    cmd.add_argument(
        "--keep-refused",
        type=Path,
        metavar="DIR",
        help="write a refused candidate here anyway, named <name>-REFUSED (speed tests only)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``edge-export quantize``; 0 when accepted, 1 when refused or impossible."""
    try:
        report = quantize_pack(
            args.pack, args.out, args.precision, calibration=args.calibration, test=args.test,
            stages=[s for s in args.stages.split(",") if s], phantoms=args.phantoms,
            keep_refused=args.keep_refused, labels=args.labels, data=args.data,
            max_accuracy_drop=args.max_accuracy_drop,
        )  # fmt: skip
    except QuantizeError as exc:
        print(f"edge-export quantize: {exc}", file=sys.stderr)
        return 1
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    if report["accepted"]:
        print(f"wrote {args.out}")
    return 0 if report["accepted"] else 1
