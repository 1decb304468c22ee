"""One station of the GPU proof: a process that loads a pack and judges files when told.

On a box every X-ray station has its own worker process, hence its own sessions and its own
CUDA context; a burst of five (one file per station at once) is therefore five processes
sharing one GPU, which :func:`run_stations` starts (spawned, so no CUDA state is forked).
Each round every station waits at one barrier and judges its next file; what it reports per
round are the wall times of the file's parts in ms (path -> decision, decode included).

Two kinds of station: ``onnxruntime`` (the worker's own pipeline on a backend, timed per stage
by :mod:`edge_worker.bench.stages`) and ``torch`` (:mod:`models.baseline.torch_ref`, the
reference; torch is imported in that station's process only).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import subprocess
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_worker.bench.broker import BenchError
from edge_worker.bench.worker import vm_kib

#: How long a station waits for the others (start-up of five CUDA contexts included).
BARRIER_S = 600.0


@dataclass(frozen=True)
class StationJob:
    """What one station process does."""

    kind: str
    """``onnxruntime`` or ``torch``."""
    pack: str
    files: tuple[str, ...]
    rounds: int
    index: int = 0
    backend: str = "onnxruntime-cpu"
    """The worker's backend (``onnxruntime`` kind)."""
    checkpoints: str | None = None
    """The pack's torch checkpoints (``torch`` kind)."""
    device: str = "cpu"
    """torch's device (``torch`` kind)."""
    threads: int = 2


def gpu_memory() -> dict[str, Any]:
    """The GPU's used and total memory and each compute process's use (MiB), from nvidia-smi;
    ``{"measured": False, "why": ...}`` where there is none (the CPU dry run)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"measured": False, "why": "nvidia-smi not found (no GPU)"}
    try:
        used = subprocess.run([smi, "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
        apps = subprocess.run([smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return {"measured": False, "why": f"nvidia-smi failed: {exc}"}
    first = [int(x) for x in used.splitlines()[0].split(",")]
    per_pid = {}
    for line in apps.splitlines():
        fields = [x.strip() for x in line.split(",")]
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            per_pid[int(fields[0])] = int(fields[1])
    return {"measured": True, "used_mib": first[0], "total_mib": first[1], "per_pid_mib": per_pid}


def _judge(job: StationJob) -> tuple[Callable[[Path], dict[str, float]], Callable[[], dict[str, Any]]]:
    """The station's judge (path -> parts in ms) and its memory reader."""
    if job.kind == "onnxruntime":
        from edge_worker.backends import LoadOptions
        from edge_worker.bench.stages import time_image, timed_pipeline
        from edge_worker.packs.pack import load_pack

        pipeline, log = timed_pipeline(load_pack(Path(job.pack)), LoadOptions(threads=job.threads),
                                       job.backend)  # fmt: skip
        return (lambda path: time_image(pipeline, log, path).parts), dict
    if job.kind == "torch":
        from models.baseline.torch_ref import DeviceNaive

        if job.checkpoints is None:
            raise BenchError("a torch station needs the pack's checkpoints")
        naive = DeviceNaive(Path(job.pack), Path(job.checkpoints), job.device, job.threads)
        return naive.parts, naive.memory
    raise BenchError(f"unknown station kind {job.kind!r}")


def station_main(job: StationJob, start: Any, done: Any, results: Any) -> None:
    """The station process: load, warm up, judge one file per round at ``start``, report."""
    try:
        judge, memory = _judge(job)
        files = [Path(f) for f in job.files]
        judge(files[job.index % len(files)])  # warm-up: first-run allocations, as warm_up()
        rounds = []
        for r in range(job.rounds):
            start.wait(BARRIER_S)
            rounds.append(judge(files[(job.index + r) % len(files)]))
        rss = vm_kib(os.getpid(), "VmHWM")
        report: dict[str, Any] = {
            "index": job.index, "pid": os.getpid(), "rounds": rounds,
            "memory": {"rss_peak_mib": round(rss / 1024, 1) if rss else None, **memory()},
        }  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the proof
        start.abort()  # the other stations stop waiting for this one
        report = {"index": job.index, "error": f"{exc.__class__.__name__}: {exc}",
                  "traceback": traceback.format_exc()}  # fmt: skip
    results.put(report)
    # Stay alive (CUDA context held) until the parent has read the GPU's memory.
    try:
        done.wait(BARRIER_S)
    except Exception:  # noqa: BLE001 - a broken barrier only means the parent gave up
        return


def run_stations(jobs: list[StationJob]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run one process per job, all rounds in step; their reports (by index) and the GPU's
    memory read while every station was loaded.  Raises :class:`BenchError` if one failed."""
    ctx = mp.get_context("spawn")
    start, done = ctx.Barrier(len(jobs)), ctx.Barrier(len(jobs) + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=station_main, args=(job, start, done, results), daemon=True)
             for job in jobs]  # fmt: skip
    for proc in procs:
        proc.start()
    reports: list[dict[str, Any]] = []
    try:
        for _ in jobs:
            reports.append(results.get(timeout=BARRIER_S * 2))
        memory = gpu_memory()
        done.wait(BARRIER_S)
    except (queue.Empty, threading.BrokenBarrierError) as exc:  # a hung or broken station
        done.abort()
        raise BenchError(f"a station process did not report: {exc!r}") from exc
    finally:
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
                proc.join()
    failed = [r for r in reports if "error" in r]
    if failed:
        raise BenchError("; ".join(f"station {r['index']}: {r['error']}\n{r['traceback']}" for r in failed))
    return sorted(reports, key=lambda r: int(r["index"])), memory
