"""Before/after figures for each optimisation, measured in this process on the same inputs.

* ``ort``: per network, graph optimisation ``BASIC`` against ``ENABLE_ALL``, one thread
  against two, and session creation without, with a cold and with a warm optimised-model cache;
* ``decode``: ``read_radiograph`` at full resolution against ``max_side=512`` (the
  reduced-resolution decode), with the decisions of both;
* ``batching``: the networks of K images run one by one against once on a batch of K;
* ``sessions``: ORT's defaults (a memory arena per session, pool threads that spin after
  each run) against the worker's (one shared arena, sleeping threads): peak memory at batch
  1 and 4, and the networks' time per image (each configuration in a fresh process);
* ``parallel``: orientation in a second thread while view -> roi -> quality runs, against
  one after the other (two cores: it only helps if the networks leave a core idle).

Each returns plain data for the report.  Times are medians in ms.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edge_worker.backends import LoadOptions, select
from edge_worker.backends._ort import OrtSession
from edge_worker.errors import Rejection
from edge_worker.ingest import read_radiograph
from edge_worker.judging.decision import decide
from edge_worker.packs.pack import Pack, StageSpec, load_pack
from edge_worker.pipeline.preprocess import WORKING_MAX_SIDE, working_image
from edge_worker.pipeline.runner import Pipeline
from edge_worker.pipeline.stages import run_orientation, run_quality, run_roi, run_view


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return round(statistics.median(times), 2)


def _distinct(pack: Pack) -> list[StageSpec]:
    """One stage per architecture and input size: the per-view twins cost the same."""
    seen: dict[tuple[str, object], StageSpec] = {}
    for spec in pack.networks:
        seen.setdefault((spec.architecture, spec.input), spec)
    return list(seen.values())


def ort(pack_dir: Path, runs: int = 5) -> dict[str, Any]:
    """ORT settings per network, and session creation with and without the optimised cache."""
    import onnxruntime

    pack = load_pack(pack_dir)
    level = onnxruntime.GraphOptimizationLevel
    variants = {"basic_2t": (level.ORT_ENABLE_BASIC, 2), "all_1t": (level.ORT_ENABLE_ALL, 1),
                "all_2t": (level.ORT_ENABLE_ALL, 2)}  # fmt: skip
    result: dict[str, Any] = {}
    for spec in _distinct(pack):
        i = spec.input
        assert i is not None and spec.file is not None  # _distinct lists network stages
        x = np.random.default_rng(0).random((1, i.channels, i.height, i.width), dtype=np.float32)
        row: dict[str, float] = {}
        for name, (lvl, threads) in variants.items():
            options = onnxruntime.SessionOptions()
            options.graph_optimization_level = lvl
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            raw = onnxruntime.InferenceSession(
                str(spec.file), options, providers=["CPUExecutionProvider"]
            )
            row[f"run_{name}"] = _median_ms(partial(raw.run, None, {"image": x}), runs)
        with tempfile.TemporaryDirectory(prefix="edge-bench-ort-") as tmp:
            for label, cache in (("create_nocache", None), ("create_cold_cache", Path(tmp)),
                                 ("create_warm_cache", Path(tmp))):  # fmt: skip
                start = time.perf_counter()
                session = OrtSession(spec.file, ["CPUExecutionProvider"], 2, cache)
                row[label] = round((time.perf_counter() - start) * 1000.0, 1)
            row["run_warm_cache"] = _median_ms(partial(session.run, x), runs)
        result[spec.name] = row
    return result


def decode(files: Sequence[Path], runs: int = 3) -> dict[str, Any]:
    """Read + decode + grayscale (+ the working-image resize) at full and reduced resolution."""
    out: dict[str, Any] = {}
    for label, max_side in (("full", None), ("reduced_512", WORKING_MAX_SIDE)):
        times = []
        for _ in range(runs):
            for path in files:
                start = time.perf_counter()
                working_image(read_radiograph(path, max_side=max_side).pixels)
                times.append((time.perf_counter() - start) * 1000.0)
        out[label] = round(statistics.median(times), 1)
    out["speedup"] = round(out["full"] / out["reduced_512"], 2)
    return out


def decisions_full_vs_reduced(pack_dir: Path, files: Sequence[Path]) -> dict[str, Any]:
    """Do full-resolution and reduced-resolution decoding give the same decisions?"""
    pipeline = Pipeline(load_pack(pack_dir), select(["onnxruntime-cpu"]), LoadOptions())
    same, total, differ = 0, 0, []
    for path in files:
        try:
            full = pipeline.judge(read_radiograph(path).pixels)
            reduced = pipeline.judge(read_radiograph(path, max_side=WORKING_MAX_SIDE).pixels)
        except Rejection:
            continue  # a file the ingest refuses is no test of decoding
        total += 1
        a, b = (full.decision, full.view.label), (reduced.decision, reduced.view.label)
        same += a == b
        if a != b:
            differ.append({"file": path.name, "full": [*a, round(full.view.confidence, 3)],
                           "reduced": [*b, round(reduced.view.confidence, 3)],
                           "reasons_full": full.reasons, "reasons_reduced": reduced.reasons})  # fmt: skip
    return {"files": total, "same_decision_and_view": same, "different": differ}


def batching(pack_dir: Path, files: Sequence[Path], sizes: Sequence[int] = (2, 4, 8),
             options: LoadOptions | None = None) -> dict[str, Any]:  # fmt: skip
    """Networks' time per image, one by one against batches; and whether outputs agree."""
    pipeline = Pipeline(load_pack(pack_dir), select(["onnxruntime-cpu"]), options or LoadOptions())
    pipeline.warm_up()
    images = [read_radiograph(p, max_side=WORKING_MAX_SIDE).pixels for p in files]
    n = max(sizes)
    images = (images * (n // len(images) + 1))[:n]
    single = [pipeline.judge(x) for x in images]
    result: dict[str, Any] = {"images": n}
    result["per_image_1"] = round(_median_ms(lambda: [pipeline.judge(x) for x in images], 3) / n, 2)
    for k in sizes:
        chunks = [images[i : i + k] for i in range(0, n, k)]
        result[f"per_image_{k}"] = round(
            _median_ms(partial(_judge_chunks, pipeline, chunks), 3) / n, 2
        )
        batched = [j for c in chunks for j in pipeline.judge_many(c)]
        result[f"same_decisions_{k}"] = all(
            a.decision == b.decision for a, b in zip(single, batched)
        )
    return result


def _judge_chunks(pipeline: Pipeline, chunks: list[list[np.ndarray]]) -> None:
    for chunk in chunks:
        pipeline.judge_many(chunk)


def _chain(pipeline: Pipeline, work: np.ndarray) -> tuple[Any, Any, Any]:
    pack = pipeline.pack
    view_spec = pack.stage("view")
    assert view_spec is not None
    view = run_view(pipeline.session(view_spec.name), view_spec, work)
    roi_spec, quality_spec = pack.stage("roi", view.label), pack.stage("quality", view.label)
    roi = run_roi(pipeline.session(roi_spec.name), roi_spec, work) if roi_spec else None
    quality = None
    if quality_spec is not None and roi is not None and roi.box is not None:
        quality = run_quality(pipeline.session(quality_spec.name), quality_spec, work, roi.box)
    return view, roi, quality


def parallel(pack_dir: Path, files: Sequence[Path], runs: int = 3) -> dict[str, Any]:
    """Orientation in a second thread beside the view->roi->quality chain, against after it.

    Both use the worker's sessions (the process-wide pool of two threads): on two cores the
    overlap only helps if a network leaves a core idle.
    """
    images = [working_image(read_radiograph(p, max_side=WORKING_MAX_SIDE).pixels)[0] for p in files]
    pipeline = Pipeline(load_pack(pack_dir), select(["onnxruntime-cpu"]), LoadOptions())
    pipeline.warm_up()
    result: dict[str, Any] = {}
    with ThreadPoolExecutor(1, thread_name_prefix="edge-worker/bench-orientation") as pool:
        for label, overlap in (("sequential", None), ("parallel", pool)):
            run = partial(_judge_images, pipeline, images, overlap)
            result[label] = round(_median_ms(run, runs) / len(images), 1)
    return result


def _judge_images(
    pipeline: Pipeline, images: list[np.ndarray], pool: ThreadPoolExecutor | None
) -> None:
    """Judge each working image; with ``pool``, orientation runs there beside the chain."""
    orient = pipeline.pack.stage("orientation")
    assert orient is not None
    session = pipeline.session(orient.name)
    for work in images:
        if pool is None:
            view, roi, quality = _chain(pipeline, work)
            decide(pipeline.pack, view, roi, quality, run_orientation(session, orient, work))
        else:
            later = pool.submit(run_orientation, session, orient, work)
            view, roi, quality = _chain(pipeline, work)
            decide(pipeline.pack, view, roi, quality, later.result())


def sessions(pack_dir: Path, repeat: int = 10) -> dict[str, Any]:
    """ORT's defaults (an arena per session, spinning pool threads) against the worker's.

    Per configuration, in a fresh process: VmHWM (MiB) after one run of every network at
    batch 1 and at batch 4, and the median time (ms) of the networks one image meets.
    """
    import json
    import subprocess
    import sys

    out: dict[str, Any] = {}
    for batch in (1, 4):
        for label, extra in (("own", ["--own-arenas"]), ("shared", [])):
            cmd = [sys.executable, "-m", "edge_worker.bench.memprobe", str(pack_dir),
                   "--batch", str(batch), "--repeat", str(repeat if batch == 1 else 0), *extra]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=900)
            probe = json.loads(done.stdout)
            out[f"peak_mb_{label}_batch{batch}"] = probe["vm_hwm_mb"]
            if probe["networks_ms"] is not None:
                out[f"networks_ms_{label}"] = probe["networks_ms"]
    return out
