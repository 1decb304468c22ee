"""``edge-worker bench``: run every measurement, check the targets, report (text or JSON).

Per pack (the demo pack; the full-size seed pack and its INT8 copy when torch is installed)
and per encoding (uncompressed, JPEG 2000 lossless):

1. per-stage latency in this process (:mod:`edge_worker.bench.stages`);
2. the real worker in a subprocess on a real broker: start-up with a cold and a warm
   optimised-model cache, file closed -> verdict received for files dropped one at a time,
   a backlog dropped at once (with and without batching), peak memory
   (:mod:`edge_worker.bench.worker`);
3. for packs with torch checkpoints (the seed packs; ``--pack`` with ``--checkpoints``, e.g.
   a pack from ``edge-export build`` and its ``<work>/checkpoints``), the straightforward
   pipeline in its own process (:mod:`models.baseline.naive`) on the same files, and the
   ratio of its time to ours;

then the before/after figures of each optimisation (:mod:`edge_worker.bench.optimise`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_worker.backends import LoadOptions
from edge_worker.bench import optimise, packs
from edge_worker.bench.broker import BenchBroker, BenchError
from edge_worker.bench.inputs import ENCODINGS, BaseFile, base_files, describe
from edge_worker.bench.packs import BenchPack
from edge_worker.bench.report import machine, targets
from edge_worker.bench.stages import measure, summary
from edge_worker.bench.worker import WorkerRun, WorkerSettings

SHARED_DICOM = Path(__file__).resolve().parents[3] / "shared" / "data" / "radiographs" / "dicom"


@dataclass(frozen=True)
class BenchOptions:
    """The command's options (see ``edge-worker bench --help``)."""

    cache: Path
    pack: Path | None = None
    #: The torch checkpoints ``pack`` was built from: the straightforward pipeline runs on it.
    checkpoints: Path | None = None
    files: int = 20
    backlog: int = 200
    backlog_full: int = 16
    size: int = 3000
    settle_s: float = 0.5
    batch: int = 4
    quick: bool = False
    full: bool = True
    naive: bool = True
    optimisations: bool = True
    real: Path | None = None
    train_full: bool = False
    #: The measured worker writes derived images (``[derived] folder``), so a pack's derive
    #: stages run; without it they do not, in the worker, in-process and in the
    #: straightforward pipeline alike (the worker's default).
    derived: bool = False


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/edge-worker/bench`` (``~/.cache/...`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-worker" / "bench"


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _e2e(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Summaries of the latency samples, total and by part."""
    out: dict[str, Any] = {"e2e_ms": summary(s["e2e_ms"] for s in samples)}
    for part in ("watch_ms", "judge_ms", "deliver_ms"):
        out[part] = summary(s[part] for s in samples if part in s)
    return out


def _worker_phase(pack: BenchPack, encoding: str, bases: list[BaseFile], root: Path,
                  broker: BenchBroker, opts: BenchOptions, backlog: int) -> dict[str, Any]:  # fmt: skip
    """Latency and backlog of one pack on one encoding, in a worker with a warm cache."""
    settings = WorkerSettings(pack.path, settle_s=opts.settle_s, batch_files=opts.batch,
                              alone=pack.alone, derived=opts.derived)  # fmt: skip
    run = WorkerRun(root, broker, settings, station=f"{encoding[:4]}-b{opts.batch}")
    try:
        startup = run.start()
        run.latency(bases, 1 if opts.quick else 2)  # the first files pay lazy allocations
        samples = run.latency(bases, opts.files)
        result = {"startup_warm_s": round(startup, 2), **_e2e(samples)}
        result["worker_timings_ms"] = {
            key: summary(s["timings_ms"][key] for s in samples if key in s["timings_ms"])
            for key in sorted({k for s in samples for k in s["timings_ms"]})
        }
        result[f"backlog_batch{opts.batch}"] = run.backlog(bases, backlog)
        result["peak_rss_mb"] = run.peak_rss_mb()
    finally:
        run.stop()
    if encoding == "uncompressed" and opts.batch != 1 and not opts.quick:
        # The same backlog judged one file at a time: batching's before/after.
        run = WorkerRun(
            root, broker, WorkerSettings(pack.path, settle_s=opts.settle_s, alone=pack.alone,
                                         derived=opts.derived),
            station="b1",
        )
        try:
            run.start()
            run.latency(bases, 1)
            result["backlog_batch1"] = run.backlog(bases, backlog)
            result["peak_rss_mb_batch1"] = run.peak_rss_mb()
        finally:
            run.stop()
    return result


def _cold_start(pack: BenchPack, root: Path, broker: BenchBroker, opts: BenchOptions) -> float:
    """Seconds to ``online`` with an empty state folder (no optimised-model cache yet)."""
    shutil.rmtree(root / "state", ignore_errors=True)
    settings = WorkerSettings(pack.path, settle_s=opts.settle_s, alone=pack.alone)
    run = WorkerRun(root, broker, settings, station="cold")
    try:
        return round(run.start(), 2)
    finally:
        run.stop()


def _naive(pack: BenchPack, paths: list[Path], repeat: int, derived: bool) -> dict[str, Any]:
    """The straightforward pipeline in its own process on ``paths`` (its derive stages only
    where ``derived``, as in the measured worker)."""
    assert pack.checkpoints is not None
    cmd = [sys.executable, "-m", "models.baseline.naive", "--pack", str(pack.path),
           "--checkpoints", str(pack.checkpoints), "--repeat", str(repeat),
           *([] if derived else ["--skip-derive"]), *map(str, paths)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise BenchError(f"the straightforward pipeline failed:\n{done.stderr[-2000:]}")
    data = json.loads(done.stdout)
    files = data.pop("files")
    keys = sorted({k for f in files for k in f["times_ms"]})
    data["stages_ms"] = {
        k: summary(f["times_ms"][k] for f in files if k in f["times_ms"]) for k in keys
    }
    data["decisions"] = {
        d: sum(f["decision"] == d for f in files) for d in sorted({f["decision"] for f in files})
    }
    return data


def _pack_runs(pack: BenchPack, inputs: dict[str, list[BaseFile]], broker: BenchBroker,
               opts: BenchOptions, backlog: int, work: Path,
               naive_runs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """Everything measured on one pack; ``naive_runs`` keeps the straightforward pipeline's
    results per (checkpoints, encoding), shared by packs made from the same weights."""
    root = work / pack.path.parent.name / pack.path.name
    out: dict[str, Any] = {"pack": pack.label, "path": str(pack.path), "accepted": pack.accepted}
    if pack.gate is not None:
        out["precision_gate"] = pack.gate
    if not opts.quick:
        _say(f"{pack.label}: worker start-up with a cold cache")
        out["startup_cold_s"] = _cold_start(pack, root, broker, opts)
    for encoding, bases in inputs.items():
        paths = [b.path for b in bases]
        _say(f"{pack.label}, {encoding}: per-stage latency in-process")
        run: dict[str, Any] = measure(
            pack.path, paths, LoadOptions(), repeat=max(1, opts.files // len(paths)),
            skip_tasks=() if opts.derived else ("derive",),
        )
        _say(f"{pack.label}, {encoding}: the worker on the broker (latency, backlog of {backlog})")
        run.update(_worker_phase(pack, encoding, bases, root, broker, opts, backlog))
        if opts.naive and pack.checkpoints is not None:
            key = (str(pack.checkpoints), encoding)
            if key not in naive_runs:
                _say(
                    f"{pack.label}, {encoding}: the straightforward pipeline (torch, separate process)"
                )
                naive_runs[key] = _naive(pack, paths, max(1, opts.files // (2 * len(paths))),
                                         opts.derived)  # fmt: skip
            naive = naive_runs[key]
            ours_e2e = run["e2e_ms"]["p50"]
            run["naive"] = naive
            run["ratio_naive_to_ours_e2e"] = round(naive["stages_ms"]["total"]["p50"] / ours_e2e, 2)
            run["ratio_naive_to_ours_in_process"] = round(
                naive["stages_ms"]["total"]["p50"] / run["stages_ms"]["total"]["p50"], 2
            )
        out[encoding] = run
    return out


def _optimisations(measured: list[BenchPack], inputs: dict[str, list[BaseFile]],
                   opts: BenchOptions) -> dict[str, Any]:  # fmt: skip
    """Before/after of each optimisation on the packs measured."""
    out: dict[str, Any] = {"decode": {}, "ort": {}, "batching": {}, "parallel": {}, "sessions": {}}
    for encoding, bases in inputs.items():
        _say(f"optimisation: reduced-resolution decode, {encoding}")
        out["decode"][encoding] = optimise.decode([b.path for b in bases])
    check = [b.path for bases in inputs.values() for b in bases]
    if opts.real is not None and opts.real.is_dir():
        check += sorted(p for p in opts.real.iterdir() if p.is_file())
    out["decode"]["decisions_full_vs_reduced"] = optimise.decisions_full_vs_reduced(
        measured[0].path, check
    )
    for pack in measured:
        if "int8" in pack.label:
            continue
        paths = [b.path for b in inputs["uncompressed"]]
        _say(f"optimisation: ORT settings and cache, batching, parallel stages on {pack.label}")
        out["ort"][pack.label] = optimise.ort(pack.path)
        out["sessions"][pack.label] = optimise.sessions(pack.path)
        big = pack.checkpoints is not None
        out["batching"][pack.label] = optimise.batching(
            pack.path, paths, (2, 4) if big else (2, 4, 8)
        )
        out["parallel"][pack.label] = optimise.parallel(pack.path, paths[:4], runs=1 if big else 3)
    _say(f"optimisation: the whole-file check against the settle wait on {measured[0].label}")
    out["whole_file"] = _whole_file(measured[0], inputs, opts)
    return out


def _whole_file(pack: BenchPack, inputs: dict[str, list[BaseFile]],
                opts: BenchOptions) -> dict[str, Any]:  # fmt: skip
    """File closed -> verdict with ``watch.skip_settle_when_whole`` off and on (same worker
    settings otherwise); the watcher's share is what the check saves."""
    out: dict[str, Any] = {"settle_s": opts.settle_s}
    with tempfile.TemporaryDirectory(prefix="edge-bench-whole-") as tmp, BenchBroker() as broker:
        for skip in (False, True):
            settings = WorkerSettings(pack.path, settle_s=opts.settle_s,
                                      skip_settle_when_whole=skip, alone=pack.alone)  # fmt: skip
            run = WorkerRun(Path(tmp), broker, settings, station=f"whole-{str(skip).lower()}")
            try:
                run.start()
                run.latency(inputs["uncompressed"], 2)
                samples = run.latency(inputs["uncompressed"], max(4, opts.files // 2))
            finally:
                run.stop()
            out["skip" if skip else "settle"] = _e2e(samples)
    return out


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Every measurement; returns the report (``targets`` included)."""
    report: dict[str, Any] = {
        "machine": machine(),
        "options": {k: str(v) for k, v in vars(opts).items()},
    }
    count = 2 if opts.quick else 8
    inputs = {}
    for encoding in ENCODINGS:
        _say(f"inputs: {count} base files, {opts.size} rows, {encoding} (cached in {opts.cache})")
        inputs[encoding] = base_files(opts.cache, encoding, count, opts.size)
    report["inputs"] = {enc: describe(files) for enc, files in inputs.items()}
    primary = (BenchPack(f"{opts.pack.name} (fp32)", opts.pack, opts.checkpoints, alone=True)
               if opts.pack else packs.demo())  # fmt: skip
    extra: list[BenchPack] = []
    skipped = "--quick" if opts.quick else None
    skipped = skipped or (None if opts.full else "--skip-full given") or packs.ml_missing()
    if skipped is None:
        full = packs.trained(opts.cache, opts.train_full, _say)
        if full is None:
            _say("no phantom-trained full-size pack in the cache (--train-full builds it, about "
                 "50 min): measuring the untrained seed pack, whose INT8 gate means little")  # fmt: skip
            full = packs.seed(opts.cache, _say)
        extra.append(full)
        int8 = packs.quantized(full, opts.cache, opts.real, packs.INT8_STAGES, _say)
        extra.append(int8)
        if not int8.accepted:
            _say(f"the INT8 copy of {full.label} was refused by its accuracy gate: measured "
                 "for information only")  # fmt: skip
    else:
        report["full_size_skipped"] = skipped
        _say(f"full-size seed pack: {skipped}")
    report["packs"] = []
    naive_runs: dict[tuple[str, str], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp, BenchBroker() as broker:
        report["broker"] = broker.kind
        for i, pack in enumerate([primary, *extra]):
            backlog = opts.backlog if i == 0 else opts.backlog_full
            report["packs"].append(
                _pack_runs(pack, inputs, broker, opts, backlog, Path(tmp), naive_runs)
            )
    if opts.optimisations and not opts.quick:
        report["optimisations"] = _optimisations([primary, *extra], inputs, opts)
    report["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = targets(report)
    return report
