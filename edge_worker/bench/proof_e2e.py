"""The GPU proof's end to end: file closed in a watch folder -> verdict received on the broker.

The real worker (``edge-worker run``, one process per station, :class:`~edge_worker.bench.worker.WorkerRun`)
on a backend chosen for the proof, with a real broker (mosquitto, or the embedded one where the
binary is absent, as on the lent GPU machine).  Single files: one station, each file dropped
after the previous verdict.  A burst: one file moved into every station's folder at once; each
station's latency runs from that moment to its verdict, the burst's makespan to the last one.
The files are phantoms whose copies get fresh SOP Instance UIDs (:mod:`edge_worker.bench.inputs`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from edge_worker.bench.broker import BenchBroker, BenchError
from edge_worker.bench.inputs import BaseFile
from edge_worker.bench.proof_station import gpu_memory
from edge_worker.bench.stages import summary
from edge_worker.bench.worker import WorkerRun, WorkerSettings
from edge_worker.packs.pack import load_pack

#: Verdict wait per file; generous for a CPU dry run on a loaded machine.
VERDICT_TIMEOUT_S = 120.0


def _station(root: Path, broker: BenchBroker, pack: Path, backend: str, threads: int, index: int) -> WorkerRun:
    run = WorkerRun(root / f"station-{index}", broker, WorkerSettings(pack=pack, threads=threads), f"xr-{index:02d}")
    # WorkerSettings has no backend or routing fields: the proof adds them to the written
    # config.  Only the pack under test is loaded, and every phantom (BodyPartExamined ANKLE)
    # goes to it, whatever body part the pack covers (the chest pack, say).
    text = run.config.read_text()
    if "[inference]\n" not in text or "[pack]\n" not in text:
        raise BenchError("the benchmark worker's config has no [inference] or [pack] table")
    name = json.dumps(load_pack(pack).name)
    text = text.replace("[inference]\n", f'[inference]\nbackends = ["{backend}"]\n', 1)
    run.config.write_text(text.replace("[pack]\n", f"[pack]\nbundled = false\ndefault = {name}\n", 1))
    return run


def file_to_verdict(root: Path, pack: Path, files: list[BaseFile], backend: str, stations: int,
                    rounds: int, threads: int) -> dict[str, Any]:  # fmt: skip
    """``rounds`` files through ``stations`` worker processes on ``backend`` (one at a time when
    ``stations`` is 1, else one per station at once); latency summaries in ms and memory."""
    with BenchBroker() as broker:
        runs = [_station(root, broker, pack, backend, threads, i) for i in range(stations)]
        try:
            startup = [round(run.start(), 2) for run in runs]
            # One unmeasured file each (not named lat_*, which latency() writes): the first
            # verdict pays one-off costs.
            _bursts(runs, files, 1, prefix="warm")
            if stations == 1:
                samples = runs[0].latency(files, rounds, gap_s=0.05, timeout=VERDICT_TIMEOUT_S)
                latencies = [s["e2e_ms"] for s in samples]
                makespan: list[float] = []
                decisions = [s["decision"] for s in samples]
            else:
                latencies, makespan, decisions = _bursts(runs, files, rounds)
            memory = gpu_memory()
            rss = [run.peak_rss_mb() for run in runs]
            if memory.get("measured"):
                pids = {run.pid for run in runs}
                memory["stations_mib"] = sum(v for p, v in memory.pop("per_pid_mib").items() if p in pids)
        finally:
            for run in runs:
                run.stop()
    return {
        "stations": stations, "rounds": rounds, "broker": broker.kind, "startup_s": startup,
        "e2e_ms": summary(latencies), "makespan_ms": summary(makespan),
        "decisions": {d: decisions.count(d) for d in sorted(set(map(str, decisions)))},
        "gpu_memory": memory, "rss_peak_mib": rss,
    }  # fmt: skip


def _bursts(runs: list[WorkerRun], files: list[BaseFile], rounds: int,
            prefix: str = "burst") -> tuple[list[float], list[float], list[Any]]:  # fmt: skip
    """Per round, one file (``<prefix>_<round>.dcm``) moved into every station's watch folder
    at once; every latency, each round's makespan and every decision."""
    latencies, makespan, decisions = [], [], []
    serial = time.time_ns() // 10**6 % 10**6 * 100  # fresh UIDs: each station's journal keys on them
    for r in range(rounds):
        staged = []
        for i, run in enumerate(runs):
            path = run.staging / f"{prefix}_{r:04d}.dcm"
            staged.append((run, path, files[(r + i) % len(files)].copy_to(path, serial + r * len(runs) + i)))
        dropped = time.time()
        for run, path, _ in staged:
            os.replace(path, run.watch / path.name)  # a move-in, as a DICOM receiver does
        arrivals = []
        for run, path, uid in staged:
            if run.listener.wait_uids([uid], VERDICT_TIMEOUT_S):
                raise BenchError(f"no verdict for {path.name} at {run.station} within {VERDICT_TIMEOUT_S} s")
            got = run.listener.by_uid[uid]
            arrivals.append((got.at - dropped) * 1000.0)
            decisions.append(got.payload.get("decision"))
        latencies += arrivals
        makespan.append(max(arrivals))
    return latencies, makespan, decisions
