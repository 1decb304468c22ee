"""PNG against JPEG q90 for review copies, on real DICOM files: bytes and encode time.

``python3 -m edge_worker.bench.review_copy [FOLDER] [--size 1024]`` reads every ``*.dcm`` in
FOLDER (default ``../shared/data/radiographs/dicom`` beside the checkout) as the worker would
for a copy (``read_radiograph(max_side=size)``), reduces it to ``size`` and encodes it both ways, five
times each; prints one line per file and the totals (median encode times).

``--latency N``: instead, the real worker (a subprocess on mosquitto, the demo pack) judges N
phantoms of 2048 rows one after the other, with ``[verdict] review_copy`` off and then on;
prints the file-closed -> verdict-received latency (median, p90) of each run.  ``--gap``: seconds
between a verdict and the next file (0.3: back to back, each copy made while the next file is
judged; 3: a busy station's pace).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from edge_worker.errors import Rejection
from edge_worker.ingest import read_radiograph
from edge_worker.judging.review_copy import encode, reduce_to

#: ``../shared/data/radiographs/dicom`` beside the checkout.
DEFAULT_FOLDER = Path(__file__).resolve().parents[3] / "shared" / "data" / "radiographs" / "dicom"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--latency", type=int, default=0, metavar="N", help="verdict latency, copies off and on")
    parser.add_argument("--gap", type=float, default=0.3, help="--latency: seconds after each verdict")
    args = parser.parse_args(argv)
    if args.latency:
        return latency(args.latency, args.gap)
    totals = {"png": [0, 0.0], "jpeg": [0, 0.0]}
    reduce_ms: list[float] = []
    files = sorted(args.folder.glob("*.dcm"))
    print(f"{'file':44s} {'size':>10s} {'png KiB':>8s} {'ms':>6s} {'jpeg KiB':>8s} {'ms':>6s}")
    for path in files:
        try:
            image = read_radiograph(path, max_side=args.size)
        except Rejection as exc:
            print(f"{path.name:44s} rejected: {exc}")
            continue
        t = time.perf_counter()
        grey, _ = reduce_to(image.pixels, args.size)
        reduce_ms.append((time.perf_counter() - t) * 1000.0)
        row = [f"{path.name[:44]:44s}", f"{grey.shape[1]}x{grey.shape[0]:<5d}"]
        for encoding in ("png", "jpeg"):
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                data = encode(grey, encoding)
                times.append((time.perf_counter() - t) * 1000.0)
            ms = statistics.median(times)
            totals[encoding][0] += len(data)
            totals[encoding][1] += ms
            row += [f"{len(data) / 1024:8.0f}", f"{ms:6.1f}"]
        print(" ".join(row), flush=True)
    n = max(1, len(reduce_ms))
    for encoding, (size, ms) in totals.items():
        print(f"{encoding}: {size / 1024 / n:.0f} KiB and {ms / n:.1f} ms per copy on average ({n} files)")
    print(f"reduce to {args.size}: {statistics.median(reduce_ms) if reduce_ms else 0:.1f} ms median")
    return 0


def latency(n: int, gap_s: float, rows: int = 2048) -> int:
    """Verdict latency of the real worker with review copies off, then on (see the docstring)."""
    import tempfile

    from edge_worker.bench.broker import BenchBroker
    from edge_worker.bench.inputs import base_files
    from edge_worker.bench.packs import demo
    from edge_worker.bench.worker import WorkerRun, WorkerSettings

    with tempfile.TemporaryDirectory() as tmp, BenchBroker() as broker:
        files = base_files(Path(tmp), "uncompressed", 4, rows)
        for on in (False, True):
            run = WorkerRun(Path(tmp) / f"copies-{on}", broker, WorkerSettings(demo().path, review_copy=on),
                            f"rc-{str(on).lower()}")  # fmt: skip
            run.start()
            try:
                run.latency(files, 2)  # warm-up
                samples = sorted(s["e2e_ms"] for s in run.latency(files, n, gap_s=gap_s))
            finally:
                run.stop()
            kept = len(list((Path(tmp) / f"copies-{on}" / "state" / "review-copies").glob("*.png")))
            p90 = samples[min(len(samples) - 1, round(0.9 * (len(samples) - 1)))]
            print(f"review_copy={str(on).lower():5s}: verdict latency median {statistics.median(samples):.0f} ms, "
                  f"p90 {p90:.0f} ms over {n} files of {rows} rows, {gap_s} s apart; copies kept {kept}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
