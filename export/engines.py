"""``edge-export engines``: build a pack's TensorRT engines on the box, gate them, cache them.

For every stage of the pack: look the engine up in the cache (key: GPU, compute capability,
TensorRT version, ONNX sha256, precision, batch profile); build it if missing or foreign;
compare it with ONNX Runtime on a golden set of phantoms and real DICOM files; store it only
when it passes.  No torch: this runs on the boxes, which have the worker's packages only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_worker.backends import LoadOptions, ort_cpu
from edge_worker.backends.engine_cache import EngineCache
from edge_worker.backends.parity import GateReport, gate
from edge_worker.errors import BackendError, EdgeWorkerError, Rejection
from edge_worker.ingest import read_radiograph
from edge_worker.packs.pack import InputSpec, load_pack, sha256_file
from edge_worker.phantoms.ankle import make_dataset
from edge_worker.pipeline.preprocess import to_tensor, working_image


def golden_images(dicom_dir: Path | None, n_phantoms: int = 6, limit: int = 24) -> list[np.ndarray]:
    """Working images (float32 in [0, 1]) from phantoms and, if given, real DICOM files."""
    images: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        for i in range(n_phantoms):
            ds, _ = make_dataset(31_000 + i, size=768)
            path = Path(tmp) / f"p{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            images.append(working_image(read_radiograph(path).pixels)[0])
    if dicom_dir is not None:
        for path in sorted(p for p in dicom_dir.rglob("*") if p.is_file())[:limit]:
            try:
                images.append(working_image(read_radiograph(path).pixels)[0])
            except Rejection:
                continue  # the golden set takes what the worker would judge, nothing else
    return images


def batches(images: list[np.ndarray], spec: InputSpec, batch: int = 1) -> list[np.ndarray]:
    """Network inputs for ``spec`` from ``images``, ``batch`` images per array."""
    tensors = [to_tensor(im, spec.height, spec.width, spec.channels, spec.mean, spec.std, spec.resize)
               for im in images]  # fmt: skip
    return [np.concatenate(tensors[i : i + batch]) for i in range(0, len(tensors), batch)]


def build_pack_engines(
    pack_dir: Path | None,
    cache_dir: Path,
    precision: str,
    max_batch: int,
    golden_dir: Path | None = None,
    calibration_dir: Path | None = None,
    force: bool = False,
    report: Callable[[str], None] = print,
) -> list[GateReport]:
    """Build, gate and cache an engine per stage; raises :class:`BackendError` on any refusal."""
    from edge_worker.backends import tensorrt as trt_backend
    from edge_worker.backends.tensorrt import TrtSession
    from edge_worker.backends.trt_build import build_engine

    missing = trt_backend.probe()
    if missing:
        raise BackendError(f"cannot build TensorRT engines here: {missing}")
    pack = load_pack(pack_dir)
    gpu = trt_backend.gpu_identity()
    options = LoadOptions(cache_dir=cache_dir, precision=precision, max_batch=max_batch)
    cache = EngineCache(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    golden = golden_images(golden_dir)
    calibration = golden_images(calibration_dir, n_phantoms=16, limit=200) if precision == "int8" else []
    report(f"{pack.name} {pack.version} on {gpu.name} (sm {gpu.compute_capability}, TensorRT {gpu.tensorrt_version})")
    reports: list[GateReport] = []
    refused: list[str] = []
    for spec in pack.networks:
        assert spec.file is not None
        key = trt_backend.engine_key(sha256_file(spec.file), options, gpu)
        found = cache.lookup(key)
        if found.path is not None and not force:
            report(f"{spec.name}: cached engine is current ({found.detail})")
            continue
        if found.status in ("stale", "corrupt"):
            report(f"{spec.name}: {found.status} - {found.detail}; rebuilding")
        engine_bytes, build = build_engine(
            spec.file,
            precision,
            max_batch,
            calibration=batches(calibration, spec.input, batch=8) if calibration else None,
            calibration_cache=cache_dir / f"{spec.name}.calib" if calibration else None,
            report=lambda line, name=spec.name: report(f"{name}: {line}"),
        )
        with tempfile.NamedTemporaryFile(suffix=".engine", dir=cache_dir) as tmp:
            tmp.write(engine_bytes)
            tmp.flush()
            candidate = TrtSession(Path(tmp.name))
            reference = ort_cpu.load(spec.file, LoadOptions())
            result = gate(spec.name, precision, reference, candidate, batches(golden, spec.input))
        reports.append(result)
        report(result.describe())
        if not result.passed:
            refused.append(result.describe())
            continue
        cache.store(key, engine_bytes, {**build, "parity": result.as_dict()})
        report(f"{spec.name}: engine stored ({build['build_seconds']} s to build)")
    if refused:
        raise BackendError("engines refused by the parity gate: " + " | ".join(refused))
    return reports


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``edge-export engines`` on the CLI's subparsers."""
    cmd = sub.add_parser("engines", help="build, gate and cache TensorRT engines for a pack, on this box")
    cmd.add_argument("--pack", type=Path, help="model pack folder (default: the demo pack)")
    cmd.add_argument("--cache", type=Path, required=True, help="engine cache folder (the worker's state/engines)")
    cmd.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16")
    cmd.add_argument("--max-batch", type=int, default=8, help="optimisation profile: batch 1..N")
    cmd.add_argument("--golden", type=Path, help="folder of DICOM files added to the parity gate's inputs")
    cmd.add_argument("--calibration", type=Path, help="folder of DICOM files for INT8 calibration")
    cmd.add_argument("--force", action="store_true", help="rebuild even when a current engine is cached")


def run(args: argparse.Namespace) -> int:
    """Run ``edge-export engines``; 0 when every engine passed its gate, 1 otherwise."""
    try:
        build_pack_engines(
            args.pack, args.cache, args.precision, args.max_batch,
            golden_dir=args.golden, calibration_dir=args.calibration, force=args.force,
        )  # fmt: skip
    except EdgeWorkerError as exc:
        print(f"edge-export engines: {exc}", file=sys.stderr)
        return 1
    return 0
