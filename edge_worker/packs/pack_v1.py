"""Read a version-1 pack manifest as version 2: the one small adapter (docs/model-pack.md).

Version 1 knew four fixed tasks and one implicit order (orientation first, then view, then per
view ROI and quality on the ROI's box).  Version 2 says all of that in the manifest; this
module writes it out, so a version-1 pack judges exactly as before.  ``edge-export upgrade
PACK`` uses the same function to rewrite a pack's manifest as version 2.
"""

from __future__ import annotations

import copy
from typing import Any

from edge_worker.errors import PackError

SCHEMA_V1 = "edge-worker/model-pack@1"
#: The version-1 tasks in the order the version-1 worker ran them.
_ORDER = ("orientation", "view", "roi", "quality")


def _converted(stage: dict[str, Any], view_stage: str, rois: dict[str | None, str]) -> dict[str, Any]:
    entry = copy.deepcopy(stage)
    task = entry.pop("task")
    view = entry.pop("applies_to_view", None)
    when = {view_stage: [view]} if view is not None else None
    if task == "orientation":
        entry.update(task="orientation", reads={"image": "working"})
    elif task == "view":
        entry.update(task="classify", reads={"image": "upright"}, multi_label=False)
    elif task == "roi":
        entry.update(task="segment", reads={"image": "upright"}, classes=["roi"],
                     activation="sigmoid", box="roi")  # fmt: skip
    elif task == "quality":
        reads = {"image": "upright"}
        crop = rois.get(view) or rois.get(None)
        if crop is not None:
            reads["crop"] = crop
        entry.update(task="regress", reads=reads, range=[1, 3], retake_grade=3)
    else:
        raise PackError(f"manifest stage '{entry.get('name')}': unknown version-1 task '{task}'")
    if when is not None:
        entry["when"] = when
    return entry


def upgrade_manifest(raw: dict[str, Any]) -> dict[str, Any]:
    """The version-2 manifest that judges exactly as the version-1 manifest ``raw`` did.

    Stages are reordered into the order version 1 ran them; ``view`` becomes a single-label
    ``classify`` stage, ``roi`` a one-class ``segment`` stage with a box, ``quality`` a
    ``regress`` stage reading the crop of its view's ROI box, and the quality stages are the
    ones that judge (``decision.judged_by``).  Raises :class:`PackError` on a task version 1
    did not have.
    """
    stages = list(raw.get("stages", []))
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        raise PackError("manifest: 'stages' must be a list of objects")
    for s in stages:
        if s.get("task") not in _ORDER:
            raise PackError(
                f"manifest stage '{s.get('name')}': unknown task '{s.get('task')}' "
                f"(version 1 has {', '.join(_ORDER)})"
            )
    ordered = sorted(stages, key=lambda s: _ORDER.index(str(s["task"])))
    view_stage = next((str(s["name"]) for s in ordered if s["task"] == "view"), "view")
    rois = {s.get("applies_to_view"): str(s["name"]) for s in ordered if s["task"] == "roi"}
    out = {k: copy.deepcopy(v) for k, v in raw.items() if k != "stages"}
    out["schema"] = "edge-worker/model-pack@2"
    out["view_stage"] = view_stage
    out["stages"] = [_converted(s, view_stage, rois) for s in ordered]
    out["decision"] = {"judged_by": [str(s["name"]) for s in ordered if s["task"] == "quality"]}
    return out


def role_of(entry: dict[str, Any], view_stage: str = "view") -> tuple[str, str | None]:
    """The version-1 task and view of a version-2 stage entry of an ankle-style chain.

    For tools that read manifests raw (the torch baseline, the demo recipe's partial rebuilds):
    ``("roi", "AP")`` for a segment stage with a box due for AP, ``("view", None)`` for the
    view stage, ``(task, None)`` for anything version 1 had no name for.
    """
    task = str(entry.get("task"))
    views = (entry.get("when") or {}).get(view_stage) or [None]
    view = views[0] if len(views) == 1 else None
    if task == "classify" and entry.get("name") == view_stage:
        return "view", None
    if task == "segment" and entry.get("box"):
        return "roi", view
    if task == "regress":
        return "quality", view
    return task, view
