"""Time an MR series from its last file to its message: ``python3 -m edge_worker.bench.series``.

The series desk of a station (:class:`edge_worker.service.series_desk.SeriesDesk`, with its own
collector thread, a real journal and real phantom DICOM files) is handed the files one by one,
as the watcher does; the clock starts when the last file is handed on and stops when the
series' message is sent.  That span is ``[series] quiet_seconds`` (the wait for more files),
plus the tick, the header checks, reading the pixels into a volume and, with ``--pack`` (a
pack with a ``tiled_volume`` stage), ``judge_volume``.  Without a pack the message is the
typed refusal ``no_pack_for_body_part`` and only the collection and assembly are timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_worker.ingest.slices import slice_file
from edge_worker.ingest.volume import build_volume, geometry
from edge_worker.judging.process import Outcome
from edge_worker.phantoms.mri import make_head
from edge_worker.phantoms.mri_dicom import SeriesSpec, write_series
from edge_worker.publish.journal import Journal
from edge_worker.service.config import parse
from edge_worker.service.series_desk import SeriesDesk


def _phantom(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A head phantom filling the series' 1 mm grid (:func:`edge_worker.phantoms.mri.make_head`)."""
    return make_head(seed, shape, (1.0, 1.0, 1.0))


def time_series(
    work: Path, shape: tuple[int, int, int], quiet_s: float, runs: int, pack: Path | None
) -> dict[str, Any]:
    """Median and spread of last-file-to-message over ``runs`` series, and the assembly alone."""
    pack_line = f'pack = "{pack}"\n' if pack else ""
    config = parse(
        f'[watch]\nfolder = "{work / "in"}"\n[state]\nfolder = "{work / "state"}"\n'
        f"[series]\nenabled = true\nquiet_seconds = {quiet_s}\nmax_voxels = {1 << 31}\n{pack_line}"
    )
    pipeline = None
    if pack is not None:
        from edge_worker.service.assembly import build_pipeline

        pipeline = build_pipeline(config, pack, "series.pack")
    journal = Journal(work / "journal.sqlite3")
    done = threading.Event()
    got: list[tuple[float, Outcome]] = []

    def send(outcome: Outcome, key: str | None) -> None:
        got.append((time.perf_counter(), outcome))
        journal.remember(outcome.id, outcome.kind, outcome.payload)
        journal.mark_queued(key, outcome.id, outcome.kind)
        done.set()

    def key(path: Path) -> str | None:
        st = path.stat()
        return Journal.key(path, st.st_size, st.st_mtime_ns)

    desk = SeriesDesk(config, pipeline, journal, send=send, quarantine=lambda p, r: None,
                      dispose=lambda p: None, journal_key=key, retry=lambda k: None)  # fmt: skip
    desk.start()
    spans, assembly = [], []
    kind = ""
    try:
        for run in range(runs):
            paths = write_series(_phantom(shape, run), work / "in" / f"s{run}", SeriesSpec())
            t = time.perf_counter()
            facts = [slice_file(p, ("MR",)) for p in paths]
            volume = build_volume(geometry([f for f in facts if f is not None], 1 << 31))
            assembly.append((time.perf_counter() - t) * 1000.0)
            assert volume.voxels.shape == shape
            done.clear()
            for p in paths:
                desk.offer(p)
            last = time.perf_counter()
            if not done.wait(quiet_s + 600.0):
                raise RuntimeError("no message for the series within 10 minutes")
            at, outcome = got[-1]
            spans.append((at - last) * 1000.0)
            kind = (
                outcome.kind
                if outcome.kind == "verdict"
                else f"error ({outcome.payload['reason']})"
            )
    finally:
        desk.stop()
        journal.close()
    return {
        "shape": list(shape), "runs": runs, "quiet_seconds": quiet_s, "message": kind,
        "last_file_to_message_ms": {"median": statistics.median(spans), "max": max(spans)},
        "beyond_quiet_ms": statistics.median(spans) - quiet_s * 1000.0,
        "header_check_and_assembly_ms": {"median": statistics.median(assembly), "max": max(assembly)},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pack", type=Path, help="a pack with a tiled_volume stage (default: none)"
    )
    parser.add_argument(
        "--shape", type=int, nargs=3, default=(128, 256, 256), metavar=("Z", "Y", "X")
    )
    parser.add_argument(
        "--quiet", type=float, default=1.0, help="[series] quiet_seconds (default 1)"
    )
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edge-worker-series-bench-") as tmp:
        report = time_series(Path(tmp), tuple(args.shape), args.quiet, args.runs, args.pack)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
