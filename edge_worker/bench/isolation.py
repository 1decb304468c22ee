"""What the isolated decode process costs per image, against decoding in the daemon.

    python -m edge_worker.bench.isolation [--repeat 15] [--side 3000] [--cache DIR]

Writes (once, into ``--cache``) a ``side`` x ``side`` 16-bit phantom radiograph uncompressed
and as JPEG 2000 lossless, then reads each ``--repeat`` times in this process
(:func:`edge_worker.ingest.read_radiograph`) and through :class:`DecodeSandbox`, alternating,
at the working size the daemon asks for.  Prints one JSON object: the medians in ms, the
difference, the time spent passing request and pixels (the child's wall time less its own
``total_ms``), the child's start time and its resident size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_worker.ingest import read_radiograph
from edge_worker.ingest.sandbox import DecodeSandbox
from edge_worker.ingest.types import IngestPolicy
from edge_worker.pipeline.preprocess import WORKING_MAX_SIDE


def write_inputs(folder: Path, side: int) -> dict[str, Path]:
    """A square phantom of ``side`` rows, uncompressed and JPEG 2000 lossless (cached)."""
    from pydicom.uid import JPEG2000Lossless

    from edge_worker.phantoms.ankle import make_dataset

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"uncompressed": folder / f"square-{side}-raw.dcm",
             "jpeg2000": folder / f"square-{side}-j2k.dcm"}  # fmt: skip
    if all(p.is_file() for p in paths.values()):
        return paths
    ds, _ = make_dataset(4242, view="AP", grade=2, modality="DX", bits_stored=16, size=side)
    stored = ds.pixel_array
    # The phantom's columns are 0.8 of its rows: pad to a square with the edge values.
    square = np.pad(stored, ((0, 0), (0, side - stored.shape[1])), mode="edge")
    ds.Columns = side
    ds.PixelData = np.ascontiguousarray(square).tobytes()
    for encoding, path in paths.items():
        if encoding == "jpeg2000":
            ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
        partial = path.with_name(f".{path.name}.tmp")
        ds.save_as(partial, enforce_file_format=True)
        os.replace(partial, path)
    return paths


def _ms(fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return (time.perf_counter() - t0) * 1000.0


def measure(paths: dict[str, Path], repeat: int) -> dict[str, object]:
    """Median read times in process and isolated, per encoding, and the child's costs."""
    policy = IngestPolicy()
    sandbox = DecodeSandbox(policy.decode_memory_mib, 60.0)
    t0 = time.perf_counter()
    sandbox.start()
    started_ms = (time.perf_counter() - t0) * 1000.0
    report: dict[str, object] = {"repeat": repeat, "working_max_side": WORKING_MAX_SIDE,
                                 "child_start_ms": round(started_ms, 1)}  # fmt: skip
    try:
        for encoding, path in paths.items():
            here: list[float] = []
            there: list[float] = []
            passing: list[float] = []
            read_radiograph(path, policy, max_side=WORKING_MAX_SIDE)  # warm caches
            sandbox.read(path, policy, max_side=WORKING_MAX_SIDE)
            for _ in range(repeat):
                here.append(_ms(read_radiograph, path, policy, max_side=WORKING_MAX_SIDE))
                t0 = time.perf_counter()
                image = sandbox.read(path, policy, max_side=WORKING_MAX_SIDE)
                there.append((time.perf_counter() - t0) * 1000.0)
                # The request and the pickled pixels through the socket, both ways.
                passing.append(there[-1] - image.timings_ms["total_ms"])
            report[encoding] = {
                "file_mb": round(path.stat().st_size / 1e6, 1),
                "in_process_ms": round(statistics.median(here), 1),
                "isolated_ms": round(statistics.median(there), 1),
                "added_ms": round(statistics.median(t - h for t, h in zip(there, here)), 1),
                "transfer_ms": round(statistics.median(passing), 1),
            }
        pid = sandbox.pid()
        if pid is not None:
            with open(f"/proc/{pid}/status", encoding="ascii") as status:
                rss = next(line for line in status if line.startswith("VmRSS:"))
            report["child_rss_mb"] = round(int(rss.split()[1]) / 1024, 1)
    finally:
        sandbox.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    """Print the JSON report; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m edge_worker.bench.isolation")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--side", type=int, default=3000)
    parser.add_argument("--cache", type=Path, default=Path(".bench-cache"))
    args = parser.parse_args(argv)
    paths = write_inputs(args.cache / "isolation", args.side)
    print(json.dumps(measure(paths, args.repeat), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
