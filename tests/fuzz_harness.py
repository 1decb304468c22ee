"""Run the ingest fuzz cases in a watched worker process and summarise what happened.

    python tests/fuzz_harness.py --cases 5000 [--seed 2] [--no-shared] [--json]
    python tests/fuzz_harness.py --replay 1234 --dump /tmp/cases   # one case, in this process

The cases (seed files and mutations) are defined in ``tests/test_fuzz_ingest.py``; this is
the harness that runs them.  The worker is a subprocess so that the parent can time each case
from outside: a hang in C code cannot be interrupted from Python, and a decoder's segfault
would otherwise end the run.  The worker runs under RLIMIT_AS (its size after start-up plus
``--memory-mib``), so an allocation the size checks missed fails instead of swapping.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import select
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
#: A rejection whose detail says this ran out of memory: a size check came too late.
MEMORY_WORDS = re.compile(r"memory|bad_alloc|cannot allocate", re.IGNORECASE)
STARTUP_S = 180.0


# -- the worker -------------------------------------------------------------------------------


def _vm_size() -> int:
    """This process's virtual size in bytes (RLIMIT_AS counts exactly this)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _classify(path: Path, max_side: int | None) -> dict[str, Any]:
    """Read one case; what came out, as a JSON-ready dict."""
    import numpy as np

    from edge_worker.errors import Rejection
    from edge_worker.ingest import read_radiograph

    try:
        result = read_radiograph(path, max_side=max_side)
    except Rejection as rejection:
        outcome = "memory" if MEMORY_WORDS.search(rejection.detail) else "rejected"
        return {
            "outcome": outcome,
            "reason": rejection.reason.value,
            "detail": rejection.detail[:300],
        }
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - this is what the fuzzing looks for
        return {"outcome": "escape", "reason": type(exc).__name__, "detail": str(exc)[:300]}
    pixels, header = result.pixels, result.header
    want = (round(header.rows * result.scale), round(header.columns * result.scale))
    good = (
        pixels.dtype == np.float32
        and pixels.ndim == 2
        and all(abs(g - w) <= 1 for g, w in zip(pixels.shape, want))
        and bool(np.isfinite(pixels).all())
        and float(pixels.min(initial=0.0)) >= 0.0
        and float(pixels.max(initial=0.0)) <= 1.0
    )
    detail = (
        f"{pixels.dtype} {pixels.shape} scale {result.scale} header {header.rows}x{header.columns}"
    )
    return {"outcome": "accepted" if good else "bad_output", "reason": "", "detail": detail}


def worker(
    seed: int, shared: bool, max_seed_bytes: int | None, memory_mib: int, full_share: float
) -> None:
    """Answer case indices read from stdin with one JSON line each on stdout."""
    import logging

    from tests.test_fuzz_ingest import make_case, seeds

    logging.disable(logging.WARNING)  # one warning per odd file would flood the pipe's reader
    corpus = seeds(shared, max_seed_bytes)
    limit = _vm_size() + (memory_mib << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    scratch = Path(tempfile.mkdtemp(prefix="edge-worker-fuzz-"))
    print(json.dumps({"ready": len(corpus), "limit_mib": limit >> 20}), flush=True)
    for line in sys.stdin:
        index = int(line)
        name, data, max_side = make_case(corpus, seed, index, full_share)
        path = scratch / "case.dcm"
        path.write_bytes(data)
        start = time.perf_counter()
        answer = _classify(path, max_side)
        answer.update(
            index=index,
            case=name,
            ms=round((time.perf_counter() - start) * 1000, 1),
            rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10,
        )
        print(json.dumps(answer), flush=True)


# -- the parent -------------------------------------------------------------------------------


class _Worker:
    """The worker subprocess and its pipes; started by :func:`run`, killed on a hang."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}  # fmt: skip
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, cwd=ROOT, env=env,
        )  # fmt: skip
        ready = self.answer(STARTUP_S)
        if not ready or "ready" not in ready:
            raise RuntimeError(f"fuzz worker did not start: {self.last_words()}")

    def answer(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON line, or None on timeout or when the worker died."""
        out: IO[bytes] = self.proc.stdout  # type: ignore[assignment]
        ready, _, _ = select.select([out], [], [], timeout)
        if not ready:
            return None
        line = out.readline()
        return json.loads(line) if line else None

    def ask(self, index: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{index}\n".encode())
        self.proc.stdin.flush()

    def last_words(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-500:]

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        self.stderr.close()
        return code


def run(
    cases: int,
    seed: int = 2,
    shared: bool = True,
    max_seed_bytes: int | None = None,
    time_limit: float = 5.0,
    memory_mib: int = 2048,
    full_share: float = 0.1,
    progress: bool = False,
) -> dict[str, Any]:
    """Run cases ``0..cases-1``; returns the summary (``failures`` lists every bad case).

    ``full_share`` of the cases read at full size; the rest with ``max_side=512`` as the
    daemon does.
    """
    args = ["--seed", str(seed), "--memory-mib", str(memory_mib), "--full-share", str(full_share)]
    args += ["--max-seed-bytes", str(max_seed_bytes)] if max_seed_bytes else []
    args += [] if shared else ["--no-shared"]
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    times: list[float] = []
    slowest: list[tuple[float, int, str]] = []
    rss, restarts, started = 0, 0, time.monotonic()
    current = _Worker(args)
    try:
        for index in range(cases):
            current.ask(index)
            answer = current.answer(time_limit)
            if answer is None:
                hung = current.proc.poll() is None
                words = current.last_words()
                code = current.stop()
                answer = {"index": index, "case": "?", "ms": time_limit * 1000,
                          "outcome": "hang" if hung else "crash",
                          "reason": "" if hung else f"exit {code}",
                          "detail": "" if hung else words}  # fmt: skip
                current, restarts = _Worker(args), restarts + 1
            outcomes[answer["outcome"]] += 1
            if answer["outcome"] == "rejected":
                reasons[answer["reason"]] += 1
            elif answer["outcome"] != "accepted":
                failures.append(answer)
            times.append(float(answer["ms"]))
            slowest = sorted([*slowest, (float(answer["ms"]), index, answer["case"])])[-5:]
            rss = max(rss, int(answer.get("rss_mib", 0)))
            if progress and (index + 1) % 500 == 0:
                print(f"  {index + 1} cases, {len(failures)} failing", file=sys.stderr, flush=True)
    finally:
        current.stop()
    ordered = sorted(times)
    return {
        "cases": cases, "seed": seed, "time_limit_s": time_limit, "memory_mib": memory_mib,
        "full_share": full_share,
        "outcomes": dict(outcomes), "rejections": dict(reasons.most_common()),
        "accepted": outcomes["accepted"], "escapes": outcomes["escape"], "hangs": outcomes["hang"],
        "crashes": outcomes["crash"], "memory": outcomes["memory"],
        "bad_output": outcomes["bad_output"], "max_ms": ordered[-1] if ordered else 0.0,
        "p99_ms": ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0,
        "slowest": [{"ms": ms, "index": i, "case": case} for ms, i, case in reversed(slowest)],
        "worker_max_rss_mib": rss, "restarts": restarts,
        "wall_s": round(time.monotonic() - started, 1), "failures": failures,
    }  # fmt: skip


def replay(
    index: int,
    seed: int,
    shared: bool,
    max_seed_bytes: int | None,
    full_share: float,
    dump: Path | None,
) -> dict[str, Any]:
    """Make and read case ``index`` in this process; write its bytes to ``dump`` if given.

    ``seed``, ``shared``, ``max_seed_bytes`` and ``full_share`` must be the run's.
    """
    from tests.test_fuzz_ingest import make_case, seeds

    name, data, max_side = make_case(seeds(shared, max_seed_bytes), seed, index, full_share)
    folder = dump or Path(tempfile.mkdtemp(prefix="edge-worker-fuzz-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"case-{seed}-{index}.dcm"
    path.write_bytes(data)
    start = time.perf_counter()
    outcome = _classify(path, max_side)
    return {"index": index, "case": name, "file": str(path), "max_side": max_side,
            "ms": round((time.perf_counter() - start) * 1000, 1), **outcome}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """CLI: run, replay or (internally) serve as the worker.  Exit 1 when a case failed."""
    sys.path.insert(0, str(ROOT))  # the worker and --replay import tests.test_fuzz_ingest
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--no-shared", dest="shared", action="store_false",
                        help="phantoms only, not ../shared/data/radiographs/dicom")  # fmt: skip
    parser.add_argument("--max-seed-bytes", type=int, help="leave out larger shared files")
    parser.add_argument("--time-limit", type=float, default=5.0, help="seconds per case")
    parser.add_argument("--memory-mib", type=int, default=2048, help="address space headroom")
    parser.add_argument("--full-share", type=float, default=0.1, help="share of full-size reads")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--replay", type=int, help="run this one case here and print it")
    parser.add_argument("--dump", type=Path, help="with --replay: where to write the case")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.seed, args.shared, args.max_seed_bytes, args.memory_mib, args.full_share)
        return 0
    if args.replay is not None:
        found = replay(
            args.replay, args.seed, args.shared, args.max_seed_bytes, args.full_share, args.dump
        )
        print(json.dumps(found, indent=2))
        return 0
    summary = run(args.cases, args.seed, args.shared, args.max_seed_bytes, args.time_limit,
                  args.memory_mib, args.full_share, progress=True)  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key in ("cases", "accepted", "escapes", "hangs", "crashes", "memory", "bad_output",
                    "max_ms", "p99_ms", "worker_max_rss_mib", "restarts", "wall_s"):  # fmt: skip
            print(f"{key:>20}: {summary[key]}")
        print(
            f"{'rejections':>20}: "
            + ", ".join(f"{k} {v}" for k, v in summary["rejections"].items())
        )
        for slow in summary["slowest"]:
            print(f"{'slow':>20}: {slow}")
        for failure in summary["failures"][:20]:
            print(f"  FAIL {failure}")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
