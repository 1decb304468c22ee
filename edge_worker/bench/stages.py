"""Per-stage latency in this process: read, decode, normalise, resize, each network, the rest.

The pipeline is the worker's own (:class:`~edge_worker.pipeline.runner.Pipeline` on the
selected backend); only its sessions are wrapped so that the time inside each network is
known.  What a stage spends outside its network (tensor preparation, mask to box, crop,
decision) is reported as ``pre_post``.  ``read`` is what ``read_radiograph`` spends besides
decoding and the grayscale chain: opening the file, parsing and validating the header.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_worker.backends import LoadOptions, Selected, Session, select
from edge_worker.ingest import read_radiograph
from edge_worker.ingest.types import IngestPolicy
from edge_worker.packs.pack import Pack, load_pack
from edge_worker.pipeline.preprocess import WORKING_MAX_SIDE
from edge_worker.pipeline.runner import Judgement, Pipeline


def summary(values: Iterable[float]) -> dict[str, float]:
    """p50, p99 (nearest rank), mean and count of ``values`` in ms, rounded to 0.1 ms."""
    data = sorted(values)
    if not data:
        return {"n": 0}
    rank = max(0, min(len(data) - 1, int(np.ceil(0.99 * len(data))) - 1))
    return {
        "p50": round(float(statistics.median(data)), 1),
        "p99": round(float(data[rank]), 1),
        "mean": round(float(statistics.fmean(data)), 1),
        "n": len(data),
    }


@dataclass
class _TimedSession:
    """A session that adds the wall time of each run to ``log[name]``."""

    inner: Session
    name: str
    log: dict[str, list[float]]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        out = self.inner.run(batch)
        self.log[self.name].append((time.perf_counter() - start) * 1000.0)
        return out


@dataclass
class _TimedBackend:
    """A backend module whose sessions are timed; satisfies ``BackendModule``."""

    inner: Selected
    log: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    NAME: str = ""  # the BackendModule protocol's attribute: the wrapped backend's name

    def __post_init__(self) -> None:
        self.NAME = self.inner.name

    def probe(self) -> str | None:
        return None

    def load(self, path: Path, options: LoadOptions) -> Session:
        return _TimedSession(self.inner.load(path, options), path.stem, self.log)


def timed_pipeline(
    pack: Pack, options: LoadOptions, backend: str = "onnxruntime-cpu"
) -> tuple[Pipeline, dict[str, list[float]]]:
    """A warmed-up pipeline whose per-network run times land in the returned log.

    The log maps an ONNX file's stem (the stage name) to its run times in ms; the warm-up
    runs are cleared from it.
    """
    timed = _TimedBackend(select([backend]))
    pipeline = Pipeline(pack, Selected(timed.NAME, timed, {}), options)
    pipeline.warm_up()
    timed.log.clear()
    return pipeline, timed.log


@dataclass
class ImageTiming:
    """One image through read -> judgement, with its parts in ms."""

    parts: dict[str, float]
    judgement: Judgement


def time_image(pipeline: Pipeline, log: dict[str, list[float]], path: Path,
               max_side: int | None = WORKING_MAX_SIDE,
               skip_tasks: Collection[str] = ()) -> ImageTiming:  # fmt: skip
    """Read, decode, normalise and judge ``path`` as the worker does, timing each part
    (``skip_tasks``: as :meth:`Pipeline.judge` takes them)."""
    for runs in log.values():
        runs.clear()
    start = time.perf_counter()
    image = read_radiograph(path, IngestPolicy(), max_side=max_side)
    read_total = (time.perf_counter() - start) * 1000.0
    judgement = pipeline.judge(image.pixels, None, skip_tasks)
    total = (time.perf_counter() - start) * 1000.0
    t = image.timings_ms
    parts = {
        "read": read_total - t.get("decode_ms", 0.0) - t.get("grayscale_ms", 0.0),
        "decode": t.get("decode_ms", 0.0),
        "normalise": t.get("grayscale_ms", 0.0),
        "resize": judgement.timings_ms.get("resize", 0.0),
    }
    nets = {f"net:{name}": sum(runs) for name, runs in log.items() if runs}
    parts.update(nets)
    parts["pre_post"] = max(0.0, total - read_total - parts["resize"] - sum(nets.values()))
    parts["networks"] = sum(nets.values())
    parts["total"] = total
    return ImageTiming(parts, judgement)


def measure(pack_dir: Path, files: Sequence[Path], options: LoadOptions, repeat: int = 1,
            max_side: int | None = WORKING_MAX_SIDE,
            skip_tasks: Collection[str] = ()) -> dict[str, object]:  # fmt: skip
    """Per-stage summaries over ``files`` x ``repeat`` (after one warm-up image)."""
    pipeline, log = timed_pipeline(load_pack(pack_dir), options)
    time_image(pipeline, log, files[0], max_side, skip_tasks)
    per_part: dict[str, list[float]] = defaultdict(list)
    decisions = []
    for _ in range(repeat):
        for path in files:
            timing = time_image(pipeline, log, path, max_side, skip_tasks)
            for key, value in timing.parts.items():
                per_part[key].append(value)
            decisions.append(timing.judgement.decision)
    return {
        "stages_ms": {key: summary(values) for key, values in per_part.items()},
        "decisions": {d: decisions.count(d) for d in sorted(set(decisions))},
    }
