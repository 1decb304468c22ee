"""PNG against JPEG q90 for review copies, on real DICOM files: bytes and encode time.

``python3 -m edge_worker.bench.review_copy [FOLDER] [--size 1024]`` reads every ``*.dcm`` in
FOLDER (default ``/work/shared/data/radiographs/dicom``) as the worker would for a copy
(``read_radiograph(max_side=size)``), reduces it to ``size`` and encodes it both ways, five
times each; prints one line per file and the totals (median encode times).
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

DEFAULT_FOLDER = Path("/work/shared/data/radiographs/dicom")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
