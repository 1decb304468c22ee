"""Run a pack's stages on one radiograph and decide what the radiographer should do."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_worker.backends import LoadOptions, Selected, Session
from edge_worker.errors import PackError
from edge_worker.ingest.types import Header
from edge_worker.judging.decision import (
    Reason,
    Rules,
    decision_of,
    exposure_reasons,
    judged_reasons,
)
from edge_worker.packs.pack import Pack, StageSpec
from edge_worker.pipeline.preprocess import RotatedBox, Turn, working_image
from edge_worker.pipeline.stages import OrientationResult, QualityResult, RoiResult, ViewResult
from edge_worker.pipeline.tasks import TASKS
from edge_worker.pipeline.tasks.base import Context, Item
from edge_worker.pipeline.volume import VolumeJudgement, judge_volume


@dataclass
class Judgement:
    """Everything the stages said about one image, plus the decision and its reasons.

    ``results`` holds every stage's result by stage name; ``view``, ``roi``, ``quality`` and
    ``orientation`` are the results of the stages in those roles (:attr:`StageSpec.role`).
    The stages after orientation ran on the image turned upright: ``roi.box`` is in the
    upright image's coordinates, and ``turn`` maps it back to the working image
    (:meth:`roi_in_working`).
    """

    view: ViewResult
    roi: RoiResult | None
    quality: QualityResult | None
    orientation: OrientationResult | None
    decision: str
    reasons: list[Reason]
    working_scale: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: The upright working image every stage after orientation was fed (the ROI box is in its
    #: coordinates); kept for the optional verdict thumbnail.
    working_image: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: The rotation that made the working image upright (``None`` without an orientation stage).
    turn: Turn | None = field(default=None, repr=False, compare=False)
    #: The working image before it was turned upright: the stored image scaled evenly (the
    #: frame of heatmap overlays, :mod:`edge_worker.judging.overlay`).
    stored_image: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: Every stage's result by stage name, in pack order (rules, flags and heatmaps among them).
    results: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def roi_in_working(self) -> RotatedBox | None:
        """The ROI box in the (unturned) working image's coordinates, or ``None``."""
        if self.roi is None or self.roi.box is None:
            return None
        return self.turn.box_to_working(self.roi.box) if self.turn is not None else self.roi.box

    @property
    def reason_codes(self) -> list[str]:
        return [r.code for r in self.reasons]


#: Roles whose stages share one timing key, as version 1 reported them (roi_ap and roi_lat
#: add up under ``roi``); other stages are timed under their own name.
_TIMED_ROLES = ("orientation", "view", "roi", "quality")


#: Tasks a caller may leave out of a judgement: their results never change a decision and no
#: later stage reads them (a ``derive`` stage's image is for people, written only to a
#: configured folder: :class:`edge_worker.judging.process.Judge` skips it without one).
SKIPPABLE = frozenset({"derive"})


def _inputs_ready(spec: StageSpec, item: Item) -> bool:
    """Whether every earlier result ``spec`` reads exists for ``item`` (a crop needs a box)."""
    for key, source in spec.reads.items():
        if key == "image":
            continue
        result = item.results.get(source)
        if result is None or (key == "crop" and getattr(result, "box", None) is None):
            return False
    return True


class _Clock:
    """Adds the wall time of each ``with clock(key):`` block to ``timings[key]`` (ms)."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = (time.perf_counter() - start) * 1000.0
            self.timings[key] = round(self.timings.get(key, 0.0) + spent, 3)


class Pipeline:
    """A pack's sessions, loaded once, run in a fixed list order per image."""

    def __init__(
        self,
        pack: Pack,
        backend: Selected,
        options: LoadOptions | None = None,
        rules: Rules | None = None,
    ) -> None:
        self.pack = pack
        self.backend = backend
        self.options = options or LoadOptions()
        self.rules = rules or Rules()
        self._sessions: dict[str, Session] = {
            spec.name: backend.load(spec.file, self.options) for spec in pack.networks
            if spec.file is not None
        }

    def warm_up(self) -> None:
        """Run every network once so the first real image pays no lazy initialisation."""
        for spec in self.pack.networks:
            i = spec.input
            assert i is not None
            depth = (i.depth,) if i.depth else ()
            self._sessions[spec.name].run(np.zeros((1, i.channels, *depth, i.height, i.width), np.float32))

    def session(self, name: str) -> Session:
        """The loaded network of the stage called ``name`` (for measurements and tools)."""
        return self._sessions[name]

    @property
    def judges_volumes(self) -> bool:
        """Whether the pack has a tiled_volume stage (:meth:`judge_volume` works)."""
        return self._volume_stage() is not None

    def _volume_stage(self) -> StageSpec | None:
        return next((s for s in self.pack.stages if s.task == "tiled_volume"), None)

    def judge_volume(
        self, volume: np.ndarray, spacing_mm: tuple[float, float, float]
    ) -> VolumeJudgement:
        """Judge an MR volume ``(z, y, x)`` in scanner units, voxels of ``spacing_mm`` (z, y, x).

        Raises :class:`PackError` when the pack has no tiled_volume stage, and a
        :class:`~edge_worker.errors.Rejection` (``volume_too_large``) when the resampled volume
        exceeds the stage's ``max_voxels`` (:func:`edge_worker.pipeline.volume.judge_volume`).
        """
        spec = self._volume_stage()
        if spec is None:
            raise PackError(f"pack {self.pack.name} has no tiled_volume stage: it judges no volume")
        synthetic = bool(spec.options["synthetic"]) or self.pack.synthetic
        return judge_volume(self._sessions[spec.name], spec, volume, spacing_mm, synthetic)

    def judge(self, pixels: np.ndarray, header: Header | None = None,
              skip_tasks: Collection[str] = ()) -> Judgement:  # fmt: skip
        """Judge one normalised image (float32 in [0, 1], display polarity)."""
        return self.judge_many([pixels], [header], skip_tasks)[0]

    def judge_many(
        self, images: Sequence[np.ndarray], headers: Sequence[Header | None] | None = None,
        skip_tasks: Collection[str] = (),
    ) -> list[Judgement]:  # fmt: skip
        """Judge several normalised images, running each network once on all that need it.

        The pack's stages run in list order; each runs once on every image it is due for (its
        ``when`` holds) whose inputs exist (a crop needs an earlier box).  :meth:`judge` is this
        with a batch of one, so batching changes how often a network runs, never what it
        computes.  ``headers`` (one per image, optional) bring the header cross-checks into the
        decision.  Each judgement's ``timings_ms`` are the batch's wall times by stage role,
        with ``batch`` set to the batch size when it is above one.  ``skip_tasks``: tasks
        (of :data:`SKIPPABLE`) whose stages are left out because nothing would read their
        result: ``derive`` when no derived folder is configured.
        """
        if unknown := set(skip_tasks) - SKIPPABLE:
            raise ValueError(f"tasks {sorted(unknown)} cannot be skipped (only "
                             f"{sorted(SKIPPABLE)}: they never change a decision)")  # fmt: skip
        if not images:
            return []
        if not self.pack.judges_radiographs:
            raise PackError(f"pack {self.pack.name} is a volume pack (no view stage): it judges "
                            "MR volumes (judge_volume), not radiographs")  # fmt: skip
        heads = list(headers) if headers is not None else [None] * len(images)
        if len(heads) != len(images):
            raise ValueError(f"{len(images)} images but {len(heads)} headers")
        timings: dict[str, float] = {}
        clock = _Clock(timings)
        with clock("resize"):
            reduced = [working_image(pixels) for pixels in images]
        items = [Item(working=work, upright=work) for work, _ in reduced]
        for spec in self.pack.stages:
            if spec.task not in skip_tasks:
                self._run_stage(spec, items, clock)
        if len(items) > 1:
            timings["batch"] = float(len(items))
        return [
            self._judgement(item, head, scale, timings)
            for item, head, (_, scale) in zip(items, heads, reduced)
        ]

    def _run_stage(self, spec: StageSpec, items: list[Item], clock: _Clock) -> None:
        task = TASKS[spec.task]
        due = [item for item in items if spec.runs_for(item.labels)]
        for item in due:
            item.due.append(spec.name)
        ready = [item for item in due if _inputs_ready(spec, item)]
        if not ready:
            return
        with clock(spec.role if spec.role in _TIMED_ROLES else spec.name):
            results = task.run(self._sessions.get(spec.name), spec, ready)
        for item, result in zip(ready, results):
            item.results[spec.name] = result
            if spec.task == "classify" and isinstance(result, ViewResult):
                item.labels[spec.name] = result.label
                if spec.name == self.pack.view_stage:
                    item.view = result.label
        if hasattr(task, "apply"):
            with clock("upright"):
                for item in ready:
                    task.apply(spec, item, item.results[spec.name])

    def _judgement(
        self, item: Item, header: Header | None, scale: float, timings: dict[str, float]
    ) -> Judgement:
        pack = self.pack
        context = Context(pack, header, item.labels.get(pack.view_stage))
        reasons: list[Reason] = []
        for spec in pack.stages:
            # A research stage is published, never decided on (see StageSpec.research_only).
            if spec.name in item.due and not spec.research_only:
                reasons += TASKS[spec.task].reasons(spec, item.results.get(spec.name), item, context)
        if not any(name in item.due for name in pack.judged_by):
            reasons += judged_reasons(pack.name, bool(pack.judged_by), context.view_label)
        reasons += exposure_reasons(header, self.rules)
        view = item.results[pack.view_stage]
        return Judgement(
            view=view,
            roi=self._due_result(item, "roi"),
            quality=self._due_result(item, "quality"),
            orientation=self._due_result(item, "orientation"),
            decision=decision_of(r.severity for r in reasons),
            reasons=reasons,
            working_scale=scale,
            timings_ms=dict(timings),
            working_image=item.upright,
            turn=item.turn,
            stored_image=item.working,
            results=dict(item.results),
        )

    def _due_result(self, item: Item, role: str) -> Any:
        """The result of the first due stage in ``role`` (``None`` if none ran)."""
        for spec in self.pack.stages:
            if spec.role == role and spec.name in item.due:
                return item.results.get(spec.name)
        return None

    def _require(self, task: str, view: str | None) -> StageSpec:
        spec = self.pack.stage(task, view)
        if spec is None:  # load_pack guarantees a view stage; this guards hand-built packs
            raise RuntimeError(f"pack {self.pack.name} has no {task} stage")
        return spec
