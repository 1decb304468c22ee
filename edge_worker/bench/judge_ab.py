"""Per-image judge time of the demo pack in *this* checkout, to compare two versions of the code.

    python -m edge_worker.bench.judge_ab --rounds 5      # run in each checkout, alternately

Writes 16 ankle phantoms (both views, every grade, turned by 0-345 deg), decodes them once,
then times ``Pipeline.judge`` (orientation, upright, view, ROI, quality, decision) image by
image on ONNX Runtime CPU with one thread per network, and prints one JSON line (median and
mean ms).  The code measured is the checkout in the current folder, even where another
checkout is installed in editable mode (its import hook is left out), so two worktrees can be
compared on the same machine in turns.
"""

from __future__ import annotations

import os
import sys

# An editable install maps ``edge_worker`` to its own checkout ahead of sys.path; drop that
# hook so the folder this runs in is the code measured.
sys.meta_path = [f for f in sys.meta_path if "editable" not in f"{getattr(f, '__module__', '')}{f!r}".lower()]
sys.path.insert(0, os.getcwd())


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import statistics
    import tempfile
    import time
    from pathlib import Path

    try:  # the module layout since the typed stages, and before
        from edge_worker.packs.pack import load_pack
        from edge_worker.phantoms.ankle import write_phantom
    except ImportError:
        from edge_worker.pack import load_pack  # type: ignore[no-redef]
        from edge_worker.phantom import write_phantom  # type: ignore[no-redef]
    import edge_worker
    from edge_worker.backends import LoadOptions, select
    from edge_worker.ingest import read_radiograph
    from edge_worker.ingest.types import IngestPolicy
    from edge_worker.pipeline.runner import Pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    images = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(16):
            path = Path(tmp) / f"{i}.dcm"
            write_phantom(path, 4400 + i, view=("AP", "LAT")[i % 2], grade=1 + i % 3,
                          rotation=float(i * 23 % 360))  # fmt: skip
            read = read_radiograph(path, IngestPolicy())
            images.append((read.pixels, read.header))
    pipeline = Pipeline(load_pack(None), select(["onnxruntime-cpu"]), LoadOptions(threads=1))
    pipeline.warm_up()
    for pixels, header in images[:4]:
        pipeline.judge(pixels, header)
    times = []
    for _ in range(args.rounds):
        for pixels, header in images:
            start = time.perf_counter()
            pipeline.judge(pixels, header)
            times.append((time.perf_counter() - start) * 1000.0)
    print(json.dumps({"code": str(Path(edge_worker.__file__).parent), "n": len(times),
                      "median_ms": round(statistics.median(times), 2),
                      "mean_ms": round(statistics.mean(times), 2)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
