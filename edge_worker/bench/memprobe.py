"""Peak memory and network time of a pack's sessions, in a fresh process.

    python -m edge_worker.bench.memprobe PACK --batch N [--repeat R] [--own-arenas]

Loads every stage of ``PACK`` as the CPU backend does (one shared arena, pool threads that
sleep between runs), or with ``--own-arenas`` as ONNX Runtime does by default (an arena per
session, spinning pool threads); runs each network once on a batch of ``N`` images; then ``R`` times the
networks one image meets in the pipeline, back to back (view, the first view's roi and
quality, orientation).  Prints ``{"vm_hwm_mb": ..., "networks_ms": ...}``.  A fresh process
per configuration is the only honest way: ``VmHWM`` never goes down, and the thread pool is
state of the allocator is per process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from edge_worker.backends._ort import OrtSession
from edge_worker.bench.worker import vm_kib
from edge_worker.packs.pack import load_pack


def main(argv: list[str] | None = None) -> int:
    """Print the process's peak resident memory after loading and running the pack."""
    parser = argparse.ArgumentParser(prog="python -m edge_worker.bench.memprobe")
    parser.add_argument("pack", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=0, help="timed passes over the networks")
    parser.add_argument("--own-arenas", action="store_true", help="ORT's defaults: an arena per session, spinning threads")
    args = parser.parse_args(argv)
    pack = load_pack(args.pack)
    shared = not args.own_arenas
    rng = np.random.default_rng(0)
    sessions = {}
    for s in pack.networks:
        assert s.file is not None and s.input is not None  # a network stage has both
        x = rng.random((args.batch, s.input.channels, s.input.height, s.input.width), dtype=np.float32)
        sessions[s.name] = (OrtSession(s.file, ["CPUExecutionProvider"], 2, shared=shared), x)
    for session, x in sessions.values():
        session.run(x)
    peak = vm_kib(os.getpid(), "VmHWM")
    view = next(s for s in pack.stages if s.role == "view")
    chain = [view.name] + [
        spec.name for task in ("roi", "quality", "orientation")
        if (spec := pack.stage(task, view.labels[0])) is not None
    ]  # fmt: skip
    totals = []
    for _ in range(args.repeat + 2 if args.repeat else 0):
        start = time.perf_counter()
        for name in chain:
            session, x = sessions[name]
            session.run(x[:1])
        totals.append((time.perf_counter() - start) * 1000.0)
        time.sleep(0.05)  # an idle gap between images, as between files
    print(json.dumps({
        "vm_hwm_mb": None if peak is None else round(peak / 1024.0, 1),
        "networks_ms": round(statistics.median(totals[2:]), 1) if totals else None,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
