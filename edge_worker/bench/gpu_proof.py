"""The GPU proof: parity and latency of the CUDA path, with torch on CUDA as the reference.

    python -m edge_worker.bench.gpu_proof --out DIR [--dry-run] [--seed-dir DIR] [--real DIR]

For every bundled pack (``models/packs/*``) and, with ``--seed-dir``, the full-size seed pack
(built there by ``python -m export.seed_pack`` when absent; its checkpoints feed the torch
reference):

1. parity of ``onnxruntime-cuda`` against ``onnxruntime-cpu`` (the pack's parity gate at
   fp32, :mod:`edge_worker.backends.parity`) on every network input the worker's own pipeline
   made from phantoms and the real files, plus identical decisions per file;
2. per-stage latency (path -> decision in a station process, read and decode included) and
   end to end (file closed -> verdict received, the real ``edge-worker run`` per station on a
   real broker; :mod:`edge_worker.bench.proof_e2e`), p50 and p99, for single files and for a
   burst of five (one file per station at once, each station its own process with its own
   CUDA context, as on a box);
3. memory: the GPU's (nvidia-smi, all stations loaded) and each station's peak RSS;
4. the same latency and memory with the networks run by torch on CUDA (the seed pack).

It writes ``DIR/gpu_proof.json`` and ``DIR/gpu_proof.md``; exit 0 when every parity gate
passed, 1 when one refused, 2 when the proof could not run (no CUDA provider, say).
``--dry-run`` runs all of it on the CPU (``onnxruntime-cpu`` for CUDA, torch on the CPU): it
proves the script, never the GPU, and its report says so.

On the lent GPU machine (the library's device notes: nothing downloadable there, at most
64 MiB travel per call, a machine warm for 30 s between calls; its image has torch with CUDA
13, the nvidia-* CUDA 13 and cuDNN 9 wheels and the CPU build of onnxruntime):

* the worker's own wheels missing there (pydicom, pylibjpeg and its plugins, imagecodecs,
  paho-mqtt, watchdog, monai for the seed pack) travel in one carried ``.whl`` folder
  (``pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
  manylinux_2_28_x86_64 -d .whl NAME==VERSION``) and are installed with ``pip install
  --no-index --no-deps .whl/*.whl``;
* ``onnxruntime-gpu`` (1.31.1, built for CUDA 13 like the image's torch, is a 256 MB wheel)
  is far over one call: the tracked tree is about 37 MiB (the packs 35), which leaves about
  25 MiB per call, so ``split -b 24M`` it here into ``.ortgpu/part-NN`` and carry one part
  per call while the machine stays warm (30 s), each call appending its part to
  ``/tmp/ortgpu.whl``: about 11 calls, a large share of a 15-minute lease.  The last call
  checks the sha256, then, as the install fix says, ``pip uninstall -y onnxruntime`` and
  ``pip install --no-deps /tmp/ortgpu.whl``: both builds side by side (or the GPU build on
  ``PYTHONPATH`` over the system's CPU build) is the very fault ``edge-worker check``
  refuses;
* a few real files travel in a carried folder (``--real``; ``shared/`` does not travel);
* then ``edge-worker check --backend onnxruntime-cuda --skip-broker`` and this script, with
  ``--seed-dir /tmp/seed``, in one call of a few minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_worker.backends import LoadOptions, Selected, Session, select
from edge_worker.backends.parity import GateReport, gate
from edge_worker.bench.broker import BenchError
from edge_worker.bench.inputs import base_files
from edge_worker.bench.proof_e2e import file_to_verdict
from edge_worker.bench.proof_station import StationJob, gpu_memory, run_stations
from edge_worker.bench.stages import summary
from edge_worker.errors import EdgeWorkerError, Rejection
from edge_worker.ingest import read_radiograph
from edge_worker.ingest.types import IngestPolicy
from edge_worker.packs.pack import default_pack_dir, load_pack
from edge_worker.pipeline.preprocess import WORKING_MAX_SIDE
from edge_worker.pipeline.runner import Pipeline

REFERENCE = "onnxruntime-cpu"


@dataclass(frozen=True)
class Mode:
    """What runs where: the GPU proof, or its CPU dry run."""

    backend: str
    torch_device: str
    label: str


GPU = Mode("onnxruntime-cuda", "cuda", "GPU")
DRY = Mode("onnxruntime-cpu", "cpu", "CPU dry run (onnxruntime-cpu in place of CUDA, torch on the CPU): not a GPU figure")


def write_phantoms(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` phantoms of ``size`` rows, AP and LAT, both polarities; returns their paths."""
    from edge_worker.phantoms.ankle import write_phantom

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"phantom_{i:02d}.dcm"
        if not path.is_file():
            write_phantom(path, 7100 + i, view=("AP", "LAT")[i % 2], grade=1 + i % 3, size=size,
                          photometric=("MONOCHROME2", "MONOCHROME1")[(i // 2) % 2], index=i + 1)  # fmt: skip
        paths.append(path)
    return paths


def judgeable(paths: list[Path]) -> tuple[list[Path], dict[str, str]]:
    """The files the worker judges, and why each other one was left out."""
    kept, skipped = [], {}
    for path in paths:
        try:
            read_radiograph(path, IngestPolicy(), max_side=WORKING_MAX_SIDE)
            kept.append(path)
        except Rejection as exc:
            skipped[path.name] = str(exc)
    return kept, skipped


def plain_readable(paths: list[Path]) -> list[Path]:
    """The files plain ``pydicom.dcmread(path).pixel_array`` decodes (the torch reference reads
    them that way; the worker's ingest also takes files it refuses, ACR-NEMA ones say)."""
    import pydicom

    kept = []
    for path in paths:
        try:
            pydicom.dcmread(path).pixel_array  # noqa: B018 - decoding is the test
            kept.append(path)
        except Exception:  # noqa: BLE001, S112 - any failure leaves the file out of the reference
            continue
    return kept


@dataclass
class _Recorder:
    """A session that keeps a copy of every batch it is given (the gate's golden inputs)."""

    inner: Session
    batches: list[Any]

    def run(self, batch: Any) -> dict[str, Any]:
        self.batches.append(batch.copy())
        return self.inner.run(batch)


@dataclass
class _RecordingBackend:
    """The reference backend with recording sessions; satisfies ``BackendModule``."""

    inner: Selected
    inputs: dict[str, list[Any]]
    NAME: str = REFERENCE

    def probe(self) -> str | None:
        return None

    def load(self, path: Path, options: LoadOptions) -> Session:
        return _Recorder(self.inner.load(path, options), self.inputs.setdefault(path.name, []))


def parity(pack_dir: Path, files: list[Path], backend: str, threads: int) -> dict[str, Any]:
    """Every stage of the pack on ``backend`` against the CPU reference, on the inputs the
    worker made from ``files``, and whether each file's decision is the same."""
    pack = load_pack(pack_dir)
    options = LoadOptions(threads=threads)
    reference, candidate = select([REFERENCE]), select([backend])
    inputs: dict[str, list[Any]] = {}
    recording = _RecordingBackend(reference, inputs)
    ref_pipe = Pipeline(pack, Selected(REFERENCE, recording, {}), options)
    cand_pipe = Pipeline(pack, candidate, options)
    decisions = {}
    for path in files:
        image = read_radiograph(path, IngestPolicy(), max_side=WORKING_MAX_SIDE)
        ref, cand = ref_pipe.judge(image.pixels), cand_pipe.judge(image.pixels)
        decisions[path.name] = {"reference": ref.decision, "candidate": cand.decision,
                                "same": ref.decision == cand.decision and ref.view == cand.view}  # fmt: skip
    stages: list[dict[str, Any]] = []
    for spec in pack.networks:
        assert spec.file is not None
        batches = inputs.get(spec.file.name, [])
        if not batches:
            stages.append({"stage": spec.name, "passed": None, "note": "no file reached this stage"})
            continue
        report: GateReport = gate(spec.name, "fp32", reference.load(spec.file, options),
                                  candidate.load(spec.file, options), batches)  # fmt: skip
        stages.append(report.as_dict() | {"describe": report.describe()})
    gated = [s["passed"] for s in stages if s["passed"] is not None]
    same = all(d["same"] for d in decisions.values())
    return {"passed": bool(gated) and all(gated) and same, "stages": stages, "decisions": decisions}


def latency(kind: str, pack: Path, files: list[Path], stations: int, rounds: int,
            mode: Mode, threads: int, checkpoints: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Per-part summaries (ms) of ``rounds`` rounds at ``stations`` station processes, the
    burst's makespan (slowest station per round), and the memory read with all loaded."""
    jobs = [StationJob(kind, str(pack), tuple(str(f) for f in files), rounds, index=i,
                       backend=mode.backend, checkpoints=str(checkpoints) if checkpoints else None,
                       device=mode.torch_device, threads=threads) for i in range(stations)]  # fmt: skip
    reports, memory = run_stations(jobs)
    parts: dict[str, list[float]] = {}
    for report in reports:
        for timing in report["rounds"]:
            for key, value in timing.items():
                parts.setdefault(key, []).append(value)
    makespan = [max(r["rounds"][i]["total"] for r in reports) for i in range(rounds)]
    pids = {r["pid"] for r in reports}
    if memory.get("measured"):
        memory["stations_mib"] = sum(v for p, v in memory.pop("per_pid_mib").items() if p in pids)
    return {
        "stations": stations, "rounds": rounds,
        "parts_ms": {key: summary(values) for key, values in parts.items()},
        "makespan_ms": summary(makespan), "gpu_memory": memory,
        "station_memory": [r["memory"] for r in reports],
    }  # fmt: skip


def seed_pack(folder: Path, threads: int) -> tuple[Path, Path]:
    """The full-size seed pack and its checkpoints in ``folder``, built there when absent."""
    if not (folder / "pack" / "manifest.json").is_file():
        print(f"building the full-size seed pack in {folder} (python -m export.seed_pack) ...", flush=True)
        code = subprocess.run([sys.executable, "-m", "export.seed_pack", "--out", str(folder),
                               "--threads", str(threads)], check=False).returncode  # fmt: skip
        if code != 0:
            raise BenchError(f"building the seed pack failed (exit {code})")
    return folder / "pack", folder / "checkpoints"


def environment(mode: Mode) -> dict[str, Any]:
    """The versions and the GPU the figures belong to."""
    from edge_worker.backends.ort_install import installed
    from edge_worker.bench.report import machine

    info = machine() | {"mode": mode.label, "backend": mode.backend,
                        "onnxruntime_distribution": installed().describe()}  # fmt: skip
    import onnxruntime

    info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
        info["gpu"] = smi.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        info["gpu"] = None
    return info


def prove(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole proof as ``args`` say; the report as a dict."""
    mode = DRY if args.dry_run else GPU
    if not args.dry_run:
        from edge_worker.backends import probe_all

        missing = probe_all()[GPU.backend]
        if missing is not None:  # never measure the CPU and call it the GPU
            raise BenchError(f"{GPU.backend} is not usable: {missing}")
    out: Path = args.out
    phantoms = write_phantoms(out / "inputs", args.phantoms, args.size)
    real = sorted(args.real.glob("*.dcm")) if args.real and args.real.is_dir() else []
    real_files, skipped = judgeable(real)
    real_files = real_files[: args.max_real]
    files = phantoms + real_files
    torch_files = plain_readable(files)
    e2e_files = base_files(out / "inputs-e2e", "uncompressed", args.phantoms, args.size)
    packs: list[tuple[str, Path, Path | None]] = [
        (d.name, d, None) for d in sorted(default_pack_dir().parent.iterdir())
        if (d / "manifest.json").is_file() and (not args.packs or d.name in args.packs)
    ]  # fmt: skip
    if args.seed_dir is not None:
        packs.append(("seed-full", *seed_pack(args.seed_dir, args.threads)))
    report: dict[str, Any] = {
        "environment": environment(mode), "gpu_memory_idle": gpu_memory(),
        "inputs": {"phantoms": len(phantoms), "phantom_rows": args.size, "real": [p.name for p in real_files],
                   "real_skipped": skipped, "real_note": None if real else "no real files given (--real)",
                   "torch_reference_files": [p.name for p in torch_files]},
        "packs": {},
    }  # fmt: skip
    for name, pack, checkpoints in packs:
        print(f"{name}: parity, single files, burst of {args.stations} ...", flush=True)
        entry: dict[str, Any] = {"parity": parity(pack, files, mode.backend, args.threads)}
        entry["worker_single"] = latency("onnxruntime", pack, files, 1, args.rounds, mode, args.threads)
        entry["worker_burst"] = latency("onnxruntime", pack, files, args.stations, args.rounds, mode, args.threads)
        e2e_root = out / "e2e" / name
        entry["e2e_single"] = file_to_verdict(e2e_root, pack, e2e_files, mode.backend, 1, args.rounds, args.threads)
        entry["e2e_burst"] = file_to_verdict(e2e_root, pack, e2e_files, mode.backend, args.stations, args.rounds,
                                             args.threads)  # fmt: skip
        if checkpoints is not None:
            entry["torch_single"] = latency("torch", pack, torch_files, 1, args.rounds, mode, args.threads, checkpoints)
            entry["torch_burst"] = latency("torch", pack, torch_files, args.stations, args.rounds, mode, args.threads,
                                           checkpoints)  # fmt: skip
        report["packs"][name] = entry
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m edge_worker.bench.gpu_proof", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON, the table and inputs")
    parser.add_argument("--dry-run", action="store_true", help="everything on the CPU (no GPU figure)")
    parser.add_argument("--seed-dir", type=Path, help="the full-size seed pack (built there if absent)")
    parser.add_argument("--real", type=Path, help="a folder of real DICOM files")
    parser.add_argument("--max-real", type=int, default=6, help="at most this many real files")
    parser.add_argument("--packs", nargs="*", help="bundled packs by name (default: all)")
    parser.add_argument("--phantoms", type=int, default=6)
    parser.add_argument("--size", type=int, default=3000, help="phantom rows (columns are 0.8 of it)")
    parser.add_argument("--rounds", type=int, default=20, help="files per station and measurement")
    parser.add_argument("--stations", type=int, default=5, help="stations in the burst")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per station")
    args = parser.parse_args(argv)
    if min(args.phantoms + args.max_real, args.rounds, args.stations, args.threads) < 1:
        parser.error("--phantoms (or --real), --rounds, --stations and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: 0 all gates passed, 1 a gate refused, 2 could not run."""
    from edge_worker.bench.proof_table import markdown

    args = parse_args(argv)
    try:
        report = prove(args)
    except EdgeWorkerError as exc:
        print(f"gpu_proof: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_proof.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "gpu_proof.md").write_text(markdown(report))
    print((args.out / "gpu_proof.md").read_text())
    return 0 if all(p["parity"]["passed"] for p in report["packs"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
