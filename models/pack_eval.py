"""End-to-end figures of a written pack: the ONNX files chained as the worker chains them.

Per image: ``view`` picks AP/LAT, that view's ``roi`` map is thresholded and turned into a box
(:func:`edge_worker.pipeline.preprocess.mask_to_box`), the box is cut out for that view's ``quality``
stage.  Unlike the per-stage figures (quality on the true box), errors add up here: a wrong
view or a missed ROI counts as a wrong grade.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_worker.pipeline.preprocess import box_mask, crop_box, image_part, mask_to_box, to_tensor
from models.data import Sample
from models.evaluate import angular_error, dice


class _Stage:
    def __init__(self, root: Path, entry: dict[str, object]) -> None:
        import onnxruntime as ort

        self.entry = entry
        self.spec: dict[str, Any] = entry["input"]  # type: ignore[assignment]
        self.thresholds: dict[str, float] = entry["thresholds"]  # type: ignore[assignment]
        self.session = ort.InferenceSession(str(root / str(entry["file"])),
                                            providers=["CPUExecutionProvider"])  # fmt: skip

    def run(self, image: np.ndarray) -> np.ndarray:
        s = self.spec
        x = to_tensor(image, int(s["height"]), int(s["width"]), int(s["channels"]),
                      float(s["mean"]), float(s["std"]), self.resize)  # fmt: skip
        return self.session.run(None, {"image": x})[0][0]

    @property
    def resize(self) -> str:
        """The stage's input layout (``stretch`` when the manifest does not say)."""
        return str(self.spec.get("resize", "stretch"))

    def image_part(self, net_map: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The part of a network map that covers an image of ``shape`` (all of it unless padded)."""
        return image_part(net_map, shape, int(self.spec["height"]), int(self.spec["width"]), self.resize)


def pack_figures(pack: str | Path, samples: list[Sample]) -> dict[str, object]:
    """Chain the pack's stages over ``samples`` (working images with truth) and score them."""
    root = Path(pack)
    manifest = json.loads((root / "manifest.json").read_text())
    stages = {str(e["name"]): _Stage(root, e) for e in manifest["stages"]}
    labels: list[str] = stages["view"].entry["labels"]  # type: ignore[assignment]
    view_ok, quality_ok, no_roi, dices, angle_err = [], [], 0, [], []
    for sample in samples:
        working = sample.working.astype(np.float32)
        view = labels[int(np.argmax(stages["view"].run(working)))]
        view_ok.append(view == sample.record.view)
        roi = stages[f"roi_{view.lower()}"]
        prob = roi.image_part(roi.run(working)[0], working.shape)
        box = mask_to_box(prob, roi.thresholds["mask"], roi.thresholds["min_area_fraction"])
        if sample.roi is not None and sample.record.grade is not None:
            if box is None:
                no_roi += 1
                quality_ok.append(False)
            else:
                h, w = working.shape
                box = box.scaled(w / prob.shape[1], h / prob.shape[0])
                truth = box_mask(working.shape, sample.roi) > 0
                dices.append(dice(box_mask(working.shape, box) > 0, truth))
                q = stages[f"quality_{view.lower()}"]
                crop = crop_box(working, box, int(q.spec["height"]), int(q.spec["width"]), q.resize)
                score = float(q.run(crop)[0])
                quality_ok.append(round(min(max(score, 1.0), 3.0)) == sample.record.grade)
        if "orientation" in stages and sample.record.rotation_deg is not None:
            c, s = stages["orientation"].run(working)
            predicted = float(np.degrees(np.arctan2(s, c)) % 360.0)
            angle_err.append(float(angular_error(np.array([predicted]),
                                                 np.array([sample.record.rotation_deg]))[0]))
    return {
        "n": len(samples),
        "view_accuracy": round(float(np.mean(view_ok)), 4),
        "roi_box_dice": round(float(np.mean(dices)), 4) if dices else None,
        "no_roi_found": no_roi,
        "quality_accuracy": round(float(np.mean(quality_ok)), 4) if quality_ok else None,
        "orientation_mae_deg": round(float(np.mean(angle_err)), 2) if angle_err else None,
    }
