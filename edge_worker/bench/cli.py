"""``edge-worker bench`` flags and entry point.

This module imports only the standard library, so that building ``edge-worker``'s parser
loads no measurement code; :func:`run_command` imports the benchmark when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's flags."""
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.add_argument(
        "--markdown", action="store_true", help="print the tables of BENCHMARKS.md instead"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--pack", type=Path, help="measure this pack instead of the demo pack")
    parser.add_argument("--checkpoints", type=Path,
                        help="the torch checkpoints --pack was built from (edge-export build's "
                        "<work>/checkpoints): the straightforward pipeline runs beside it")  # fmt: skip
    parser.add_argument(
        "--files", type=int, default=20, help="files per latency measurement (default 20)"
    )
    parser.add_argument(
        "--backlog", type=int, default=200, help="backlog size for the first pack (default 200)"
    )
    parser.add_argument("--backlog-full", type=int, default=16,
                        help="backlog size for the full-size packs (default 16)")  # fmt: skip
    parser.add_argument(
        "--size", type=int, default=3000, help="rows of the radiographs (default 3000)"
    )
    parser.add_argument("--settle", type=float,
                        help="watch.settle_seconds of the measured worker (default: the "
                        "config's, 0.5; a file proved whole skips it)")  # fmt: skip
    parser.add_argument("--batch", type=int,
                        help="inference.batch_files of the measured worker (default: the config's)")  # fmt: skip
    parser.add_argument(
        "--cache", type=Path, help="cache folder (default ~/.cache/edge-worker/bench)"
    )
    parser.add_argument("--real", type=Path, help="real DICOM files for the accuracy checks "
                        "(default ../shared/data/radiographs/dicom where it exists)")  # fmt: skip
    parser.add_argument("--skip-full", action="store_true", help="skip the full-size seed pack")
    parser.add_argument("--train-full", action="store_true",
                        help="train the phantom-trained full-size pack into the cache first "
                        "when it is missing (python -m models.make_full_pack, about 50 min)")  # fmt: skip
    parser.add_argument(
        "--skip-naive", action="store_true", help="skip the straightforward pipeline"
    )
    parser.add_argument("--derived", action="store_true",
                        help="the measured worker writes derived images ([derived] folder), so "
                        "a pack's derive stages (bone suppression) run; by default, as in the "
                        "worker's default configuration, they do not")  # fmt: skip
    parser.add_argument(
        "--skip-optimisations", action="store_true", help="skip the before/after figures"
    )
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 3 small files (1024 rows), no full-size packs, no "
                        "before/after figures (the straightforward pipeline still runs beside "
                        "a --pack given its --checkpoints)")  # fmt: skip


def run_command(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when it ran (whether or not every target is met)."""
    from edge_worker.bench.report import format_text
    from edge_worker.bench.run import SHARED_DICOM, BenchOptions, default_cache, run_bench
    from edge_worker.service.config import Config

    quick = bool(args.quick)
    if args.checkpoints is not None and (args.pack is None or not args.checkpoints.is_dir()):
        print("edge-worker bench: --checkpoints needs --pack and must be a folder",
              file=sys.stderr)  # fmt: skip
        return 2
    real = args.real if args.real else (SHARED_DICOM if SHARED_DICOM.is_dir() else None)
    opts = BenchOptions(
        cache=args.cache or default_cache(),
        pack=args.pack,
        checkpoints=args.checkpoints,
        files=3 if quick else args.files,
        backlog=6 if quick else args.backlog,
        backlog_full=args.backlog_full,
        size=1024 if quick else args.size,
        settle_s=args.settle if args.settle is not None else Config().watch.settle_seconds,
        batch=args.batch if args.batch is not None else Config().inference.batch_files,
        quick=quick,
        full=not args.skip_full,
        naive=not args.skip_naive,
        optimisations=not args.skip_optimisations,
        real=real,
        train_full=bool(args.train_full),
        derived=bool(args.derived),
    )
    started = time.monotonic()
    report = run_bench(opts)
    report["command"] = (
        "edge-worker bench " + " ".join(sys.argv[2:])
        if sys.argv[1:2] == ["bench"]
        else "edge-worker bench"
    )
    report["seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    if args.markdown:
        from edge_worker.bench.markdown import format_markdown

        print(format_markdown(report))
    else:
        print(text if args.json else format_text(report))
    return 0
