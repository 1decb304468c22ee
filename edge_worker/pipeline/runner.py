"""Run a pack's stages on one radiograph and decide what the radiographer should do."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from edge_worker.backends import LoadOptions, Selected, Session
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
from edge_worker.preprocess import working_image


@dataclass
class Judgement:
    """Everything the networks said about one image, plus the decision and its reasons."""

    view: ViewResult
    roi: RoiResult | None
    quality: QualityResult | None
    orientation: OrientationResult | None
    decision: str
    reasons: list[str]
    working_scale: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: The reduced image every stage was fed (the ROI box is in its coordinates); kept for the
    #: optional verdict thumbnail.
    working_image: np.ndarray | None = field(default=None, repr=False, compare=False)


def decide(
    pack: Pack,
    view: ViewResult,
    roi: RoiResult | None,
    quality: QualityResult | None,
    orientation: OrientationResult | None,
) -> tuple[str, list[str]]:
    """``ok``, ``retake`` or ``review``, with one human-readable reason per finding.

    ``retake`` needs a confident view, a found ROI and a quality score clearly in grade 3;
    anything the networks are unsure of becomes ``review`` so a person looks at it.
    """
    reasons: list[str] = []
    unsure = False
    view_spec = pack.stage("view")
    min_conf = view_spec.threshold("min_confidence", 0.8) if view_spec else 0.8
    if view.confidence < min_conf:
        unsure = True
        reasons.append(f"view uncertain: {view.label} at {view.confidence:.2f} < {min_conf:.2f}")
    if pack.stage("roi", view.label) is not None and (roi is None or roi.box is None):
        unsure = True
        reasons.append(f"no {view.label} region of interest found")
    quality_spec = pack.stage("quality", view.label)
    if quality is not None and quality_spec is not None:
        margin = quality_spec.threshold("review_margin", 0.15)
        if abs(quality.score - 2.5) < margin:
            unsure = True
            reasons.append(f"quality {quality.score:.2f} is within {margin:.2f} of the retake boundary 2.5")
        elif quality.grade == 3:
            reasons.append(f"quality grade 3 (score {quality.score:.2f}): not diagnostic, retake")
        else:
            reasons.append(f"quality grade {quality.grade} (score {quality.score:.2f}): diagnostic")
    elif quality_spec is None and any(s.task == "quality" for s in pack.stages):
        unsure = True
        reasons.append(f"pack {pack.name} has no quality stage for view {view.label}")
    elif quality_spec is None:
        # A view/orientation pack (the chest pack): nothing to retake for, quality not judged.
        reasons.append(f"pack {pack.name} checks view and orientation only, not quality")
    orient_spec = pack.stage("orientation")
    if orientation is not None and orient_spec is not None:
        if orientation.confidence < orient_spec.threshold("min_norm", 0.5):
            unsure = True
            reasons.append("orientation uncertain")
        elif orientation.suggested_rotation_deg:
            reasons.append(
                f"anatomy rotated {orientation.angle_deg:.0f} deg; rotate "
                f"{orientation.suggested_rotation_deg} deg clockwise to display upright"
            )
    if unsure:
        return "review", reasons
    if quality is not None and quality.grade == 3:
        return "retake", reasons
    return "ok", reasons


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

    def __init__(self, pack: Pack, backend: Selected, options: LoadOptions | None = None) -> None:
        self.pack = pack
        self.backend = backend
        self.options = options or LoadOptions()
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

    def judge(self, pixels: np.ndarray) -> Judgement:
        """Judge one normalised image (float32 in [0, 1], display polarity)."""
        return self.judge_many([pixels])[0]

    def judge_many(self, images: Sequence[np.ndarray]) -> list[Judgement]:
        """Judge several normalised images, running each network once on all that need it.

        Stage order and stage functions are those of one image (:meth:`judge` is this with a
        batch of one): view on every image, then ROI and quality per predicted view on the
        images of that view, then orientation on every image.  Each judgement's
        ``timings_ms`` are the batch's wall times, with ``batch`` set to the batch size when
        it is above one.
        """
        if not images:
            return []
        timings: dict[str, float] = {}
        clock = _Clock(timings)
        with clock("resize"):
            reduced = [working_image(pixels) for pixels in images]
        works = [work for work, _ in reduced]

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

        orientations: list[OrientationResult | None] = [None] * len(works)
        orient_spec = self.pack.stage("orientation")
        if orient_spec is not None:
            with clock("orientation"):
                session = self._sessions[orient_spec.name]
                orientations = list(run_orientation_batch(session, orient_spec, works))
        if len(works) > 1:
            timings["batch"] = float(len(works))

        judgements = []
        for i, (work, scale) in enumerate(reduced):
            decision, reasons = decide(self.pack, views[i], rois[i], qualities[i], orientations[i])
            judgements.append(Judgement(
                views[i], rois[i], qualities[i], orientations[i], decision, reasons, scale,
                dict(timings), work,
            ))  # fmt: skip
        return judgements

    def _require(self, task: str, view: str | None) -> StageSpec:
        spec = self.pack.stage(task, view)
        if spec is None:  # load_pack guarantees a view stage; this guards hand-built packs
            raise RuntimeError(f"pack {self.pack.name} has no {task} stage")
        return spec
