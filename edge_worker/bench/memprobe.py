"""Peak memory of a pack's sessions, in a fresh process: ``python -m edge_worker.bench.memprobe``.

    python -m edge_worker.bench.memprobe PACK --batch N [--own-arenas]

Loads every stage of ``PACK`` as the CPU backend does (with the shared arena, or with one
arena per session as ONNX Runtime does by default), runs each network once on a batch of
``N`` zero images, and prints ``{"vm_hwm_mb": ...}``.  A fresh process per configuration is
the only honest way to compare peaks: ``VmHWM`` never goes down.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from edge_worker.backends._ort import OrtSession
from edge_worker.bench.worker import vm_kib
from edge_worker.pack import load_pack


def main(argv: list[str] | None = None) -> int:
    """Print the process's peak resident memory after loading and running the pack."""
    parser = argparse.ArgumentParser(prog="python -m edge_worker.bench.memprobe")
    parser.add_argument("pack", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--own-arenas", action="store_true", help="ORT's default: one per session")
    args = parser.parse_args(argv)
    pack = load_pack(args.pack)
    shared = not args.own_arenas
    sessions = [(OrtSession(s.file, ["CPUExecutionProvider"], 2, shared_arena=shared), s.input)
                for s in pack.stages]  # fmt: skip
    for session, i in sessions:
        session.run(np.zeros((args.batch, i.channels, i.height, i.width), np.float32))
    peak = vm_kib(os.getpid(), "VmHWM")
    print(json.dumps({"vm_hwm_mb": None if peak is None else round(peak / 1024.0, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
