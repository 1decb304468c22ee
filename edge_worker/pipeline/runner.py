"""Run a pack's stages on one radiograph and decide what the radiographer should do."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from edge_worker.backends import LoadOptions, Selected, Session
from edge_worker.decision import Reason, Rules, decide
from edge_worker.ingest.types import Header
from edge_worker.pack import Pack, StageSpec
from edge_worker.pipeline.stages import (
    OrientationResult,
    QualityResult,
    RoiResult,
    ViewResult,
    run_orientation_batch,
    run_quality_batch,
    run_roi_batch,
    run_view_batch,
)
from edge_worker.preprocess import RotatedBox, Turn, turn_upright, working_image


@dataclass
class Judgement:
    """Everything the networks said about one image, plus the decision and its reasons.

    The view, ROI and quality stages ran on the image turned upright by the orientation stage:
    ``roi.box`` is in the upright image's coordinates, and ``turn`` maps it back to the working
    image (:meth:`roi_in_working`).
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

    def roi_in_working(self) -> RotatedBox | None:
        """The ROI box in the (unturned) working image's coordinates, or ``None``."""
        if self.roi is None or self.roi.box is None:
            return None
        return self.turn.box_to_working(self.roi.box) if self.turn is not None else self.roi.box

    @property
    def reason_codes(self) -> list[str]:
        return [r.code for r in self.reasons]


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
            spec.name: backend.load(spec.file, self.options) for spec in pack.stages
        }

    def warm_up(self) -> None:
        """Run every network once so the first real image pays no lazy initialisation."""
        for spec in self.pack.stages:
            i = spec.input
            self._sessions[spec.name].run(np.zeros((1, i.channels, i.height, i.width), np.float32))

    def session(self, name: str) -> Session:
        """The loaded network of the stage called ``name`` (for measurements and tools)."""
        return self._sessions[name]

    def judge(self, pixels: np.ndarray, header: Header | None = None) -> Judgement:
        """Judge one normalised image (float32 in [0, 1], display polarity)."""
        return self.judge_many([pixels], [header])[0]

    def judge_many(
        self, images: Sequence[np.ndarray], headers: Sequence[Header | None] | None = None
    ) -> list[Judgement]:
        """Judge several normalised images, running each network once on all that need it.

        Stage order and stage functions are those of one image (:meth:`judge` is this with a
        batch of one): orientation on every image first, each image turned upright by its
        angle, then view on every upright image, then ROI and quality per predicted view on
        the upright images of that view.  ``headers`` (one per image, optional) bring the
        header cross-checks into the decision.  Each judgement's ``timings_ms`` are the
        batch's wall times, with ``batch`` set to the batch size when it is above one.
        """
        if not images:
            return []
        heads = list(headers) if headers is not None else [None] * len(images)
        if len(heads) != len(images):
            raise ValueError(f"{len(images)} images but {len(heads)} headers")
        timings: dict[str, float] = {}
        clock = _Clock(timings)
        with clock("resize"):
            reduced = [working_image(pixels) for pixels in images]
        works = [work for work, _ in reduced]

        # Upright first: every later stage was trained on upright anatomy (within +-15 deg).
        orientations: list[OrientationResult | None] = [None] * len(works)
        turns: list[Turn | None] = [None] * len(works)
        orient_spec = self.pack.stage("orientation")
        if orient_spec is not None:
            with clock("orientation"):
                session = self._sessions[orient_spec.name]
                orientations = list(run_orientation_batch(session, orient_spec, works))
            with clock("upright"):
                for i, orientation in enumerate(orientations):
                    if orientation is not None:
                        works[i], turns[i] = turn_upright(works[i], orientation.angle_deg)

        view_spec = self._require("view", None)
        with clock("view"):
            views = run_view_batch(self._sessions[view_spec.name], view_spec, works)

        rois: list[RoiResult | None] = [None] * len(works)
        qualities: list[QualityResult | None] = [None] * len(works)
        for label in dict.fromkeys(view.label for view in views):
            group = [i for i, view in enumerate(views) if view.label == label]
            roi_spec = self.pack.stage("roi", label)
            if roi_spec is not None:
                with clock("roi"):
                    session = self._sessions[roi_spec.name]
                    found = run_roi_batch(session, roi_spec, [works[i] for i in group])
                for i, found_roi in zip(group, found):
                    rois[i] = found_roi
            quality_spec = self.pack.stage("quality", label)
            boxed = [(i, r.box) for i in group if (r := rois[i]) is not None and r.box is not None]
            if quality_spec is not None and boxed:
                with clock("quality"):
                    scores = run_quality_batch(
                        self._sessions[quality_spec.name], quality_spec,
                        [works[i] for i, _ in boxed], [box for _, box in boxed],
                    )  # fmt: skip
                for (i, _), quality in zip(boxed, scores):
                    qualities[i] = quality

        if len(works) > 1:
            timings["batch"] = float(len(works))

        judgements = []
        for i, (_, scale) in enumerate(reduced):
            decision, reasons = decide(
                self.pack, views[i], rois[i], qualities[i], orientations[i], heads[i], self.rules
            )
            judgements.append(Judgement(
                views[i], rois[i], qualities[i], orientations[i], decision, reasons, scale,
                dict(timings), works[i], turns[i],
            ))  # fmt: skip
        return judgements

    def _require(self, task: str, view: str | None) -> StageSpec:
        spec = self.pack.stage(task, view)
        if spec is None:  # load_pack guarantees a view stage; this guards hand-built packs
            raise RuntimeError(f"pack {self.pack.name} has no {task} stage")
        return spec
