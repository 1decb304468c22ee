"""THE STRAIGHTFORWARD PIPELINE, for comparison only.  THIS MODULE IMPORTS TORCH.

    python -m models.baseline.naive --pack PACK --checkpoints DIR FILE... [--repeat N]

What a user would write first, with the same networks and weights as the pack (the
checkpoints the pack was exported from) and the same files: pydicom ``dcmread`` +
``pixel_array`` with pydicom's default decoding plugins, min-max normalisation in numpy
(inverted for MONOCHROME1), ``cv2.resize`` of the full image to each network's input with
OpenCV's default interpolation (stretched, or scaled to fit and centred on zeros where the
stage's ``input.resize`` is ``pad``), torch eager (``eval()``, ``no_grad``, torch's default threads),
and the same decision rules.  Nothing is deliberately slowed down: the default linear resize
is cheaper than the area resize the worker uses.

Two pipelines, chosen by the pack's stages:

* ankle-style chains (view, ROI box, quality on the crop, orientation): :meth:`Naive.judge_ankle`,
  as the first version of this module wrote it (no upright turn, no header checks);
* chains with segment and rules stages (the chest pack: orientation, view, per-view U-Nets,
  ``margin_*`` rules): :meth:`Naive.judge_chain`.  The full image is turned upright by the
  orientation answer with ``cv2.warpAffine`` (the worker turns its working image), each stage
  reads the image its ``reads.image`` names, runs when its ``when`` holds, the masks are the
  argmax of the softmax (or the sigmoid over ``mask``), and the pack's rules are measured by
  :func:`edge_worker.pipeline.measures.evaluate` (the same closed set of measures).  The
  decision follows the worker's rule (:mod:`edge_worker.judging.decision`): anything unsure
  (a network under its threshold, a header ViewPosition naming another view, a rule not
  measurable or left to a person, no judging stage due for the view, an exposure outside
  the deviation-index band of 3) is ``review``; else a failed retake rule is ``retake``; else
  a pack with no judging stage is ``not_judged``; else ``ok``.  Research-only stages run
  and never count (paper 004's finding classifier; a ``derive`` stage's image, the bone
  suppressor's, is computed and resized back to the image it read, as the worker does before
  it writes it).  Left out: heatmap stages (the
  CAM changes no decision: not computed); multi-label flag stages, ROI boxes and regress
  stages in such chains are refused (the ankle path has its box and quality); and the
  journal's and router's checks (a reused UID, conflicting body parts), not the pipeline's.

It runs in its own process (``edge-worker bench`` starts it) and prints one JSON document:
per file, the wall time from path to decision and its parts.  It is the only module under
``edge_worker/`` that imports torch; the worker never imports this module.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import torch  # the comparison's point: the obvious pipeline runs the networks in torch

from edge_worker.judging.decision import header_view
from edge_worker.packs.pack_v1 import SCHEMA_V1, role_of, upgrade_manifest
from edge_worker.pipeline import measures
from edge_worker.pipeline.preprocess import placement
from export.onnx import load_checkpoint
from models import segment

#: Tasks :meth:`Naive.judge_chain` handles; a pack with a stage of another task is refused.
CHAIN_TASKS = ("orientation", "classify", "segment", "rules", "heatmap", "derive")
#: The worker's default ``rules.deviation_index_limit`` (IEC 62494-1).
DEVIATION_INDEX_LIMIT = 3.0


def normalise(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    """Rescale, min-max to [0, 1], invert MONOCHROME1: the usual first attempt."""
    img = pixels.astype(np.float32)
    img = img * float(getattr(ds, "RescaleSlope", 1) or 1) + float(
        getattr(ds, "RescaleIntercept", 0) or 0
    )
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / max(hi - lo, 1e-6)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        img = 1.0 - img
    return img


def where(shape: tuple[int, ...], stage: dict[str, Any]) -> tuple[int, int, int, int]:
    """Where an image of ``shape`` lies in the stage's input ``(x0, y0, w, h)``: all of it
    (stretched), or scaled to fit with its aspect ratio and centred (``input.resize`` pad)."""
    i = stage["input"]
    at = placement(shape, int(i["height"]), int(i["width"]), i.get("resize", "stretch"))
    return at.x0, at.y0, at.width, at.height


def laid(img: np.ndarray, stage: dict[str, Any]) -> np.ndarray:
    """The image as the network's input lays it out, zeros around it when padded."""
    i = stage["input"]
    x0, y0, w, h = where(img.shape, stage)
    out = np.zeros((int(i["height"]), int(i["width"])), np.float32)
    out[y0 : y0 + h, x0 : x0 + w] = cv2.resize(img, (w, h))
    return out


def tensor(img: np.ndarray, stage: dict[str, Any]) -> torch.Tensor:
    """Lay out to the network's input and standardise: a ``(1, C, H, W)`` tensor."""
    i = stage["input"]
    x = (laid(img, stage) - float(i["mean"])) / float(i["std"])
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None].expand(
        1, int(i["channels"]), -1, -1
    )


def roi_box(mask: np.ndarray, stage: dict[str, Any], shape: tuple[int, int]) -> Any:
    """Largest region over the threshold -> minimum-area rectangle in full-image pixels."""
    x0, y0, w, h = where(shape, stage)
    mask = mask[y0 : y0 + h, x0 : x0 + w]  # the padding is no part of the image
    binary = (mask > stage["thresholds"].get("mask", 0.7)).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    largest = max(contours, key=cv2.contourArea)
    if cv2.contourArea(largest) < stage["thresholds"].get("min_area_fraction", 0.01) * binary.size:
        return None
    points = largest.reshape(-1, 2).astype(np.float32)
    points *= np.array([shape[1] / mask.shape[1], shape[0] / mask.shape[0]], np.float32)
    return cv2.minAreaRect(points)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities of one row of raw class scores."""
    e = np.exp(logits - logits.max())
    return e / e.sum()


def upright(img: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotate clockwise by ``angle_deg`` about the centre, same frame, zeros around."""
    h, w = img.shape
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), -angle_deg, 1.0)
    return cv2.warpAffine(img, matrix, (w, h)) if angle_deg % 360.0 else img


def header_unsure(ds: pydicom.Dataset, labels: list[str], view: str) -> bool:
    """Whether the header's ViewPosition names another view family than ``view``, or its
    deviation index (or exposure index against its target) is outside the band."""
    said = header_view(str(getattr(ds, "ViewPosition", "") or ""))
    seen = header_view(view) or view.upper()
    if said is not None and not {"AP", "PA"} <= {header_view(v) or v.upper() for v in labels}:
        said, seen = ("FRONTAL" if x in ("AP", "PA") else x for x in (said, seen))
    di = getattr(ds, "DeviationIndex", None)
    ei, target = getattr(ds, "ExposureIndex", None), getattr(ds, "TargetExposureIndex", None)
    if di is None and ei and target and float(ei) > 0 and float(target) > 0:
        di = 10.0 * math.log10(float(ei) / float(target))
    exposure = di is not None and abs(float(di)) > DEVIATION_INDEX_LIMIT
    return (said is not None and said != seen) or exposure


def crop(img: np.ndarray, box: Any) -> np.ndarray:
    """Cut the rotated box out upright, long side horizontal (its own size: :func:`tensor`
    lays it out as the quality stage's input)."""
    (cx, cy), (w, h), angle = box
    if h > w:
        w, h, angle = h, w, angle + 90.0
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    matrix[:, 2] += np.array([w / 2.0 - cx, h / 2.0 - cy])
    return cv2.warpAffine(img, matrix, (max(1, int(w)), max(1, int(h))))


class Naive:
    """The pack's networks as torch modules, and the per-file pipeline."""

    def __init__(self, pack: Path, checkpoints: Path, derive: bool = True) -> None:
        #: Whether derive stages run: the worker runs them only with a derived folder.
        self.derive = derive
        manifest = json.loads((pack / "manifest.json").read_text())
        if manifest.get("schema") == SCHEMA_V1:
            manifest = upgrade_manifest(manifest)
        self.view_stage = str(manifest.get("view_stage", "view"))
        self.stages = {s["name"]: s for s in manifest["stages"]}
        self.judged_by = list((manifest.get("decision") or {}).get("judged_by", []))
        tasks = {str(s.get("task")) for s in self.stages.values()}
        #: Segment stages without a box or rules stages: the chest-style chain.
        self.chain = "rules" in tasks or any(
            s.get("task") == "segment" and not s.get("box") for s in self.stages.values()
        )
        odd = sorted(tasks - set(CHAIN_TASKS)) + [
            n for n, s in self.stages.items() if s.get("multi_label") or s.get("box")
        ]  # fmt: skip
        if self.chain and odd:
            raise SystemExit(f"{', '.join(odd)} beside segment or rules stages: the "
                             "straightforward pipeline does not run them")  # fmt: skip
        self.nets: dict[str, torch.nn.Module] = {}
        for name, s in self.stages.items():
            if not str(s.get("file", "")).endswith(".onnx"):
                continue  # heatmap heads and rules run no network of their own
            path = checkpoints / f"{name}.pt"
            if s.get("task") == "derive" or s.get("research_only"):
                # export.build.extras saves paper 004's extras as their torch modules
                saved = torch.load(path, map_location="cpu", weights_only=False)
                self.nets[name] = saved["module"].eval()
            elif s.get("task") == "segment" and "box" not in s:
                self.nets[name] = segment.load(path)[0]  # models/segment.py's checkpoints
            else:
                self.nets[name] = load_checkpoint(path).net.eval()
        self.rules = {
            name: measures.parse_rules(s["rules"], self._classes(s), f"stage {name}")
            for name, s in self.stages.items() if s.get("task") == "rules"
        }  # fmt: skip

    def _classes(self, rules_stage: dict[str, Any]) -> list[str]:
        source = self.stages[rules_stage["reads"]["segments"]]
        return [c for c in source["classes"] if c != "background"]

    def stage(self, task: str, view: str | None = None) -> dict[str, Any] | None:
        for s in self.stages.values():
            role, applies = role_of(s, self.view_stage)
            if role == task and applies in (None, view):
                return s
        return None

    def run(self, name: str, x: torch.Tensor, times: dict[str, float]) -> np.ndarray:
        t = time.perf_counter()
        with torch.no_grad():
            out = self.nets[name](x)
        if isinstance(out, (tuple, list)):
            out = out[0]  # a network that also returns its features: the first is the answer
        key = f"net:{name}"  # summed over the runs of one image (the orientation's looks)
        times[key] = times.get(key, 0.0) + (time.perf_counter() - t) * 1000.0
        return out.numpy()

    def judge(self, path: Path) -> dict[str, Any]:
        """Path -> decision, with wall times in ms (the chain's or the ankle's pipeline)."""
        times: dict[str, float] = {}
        start = time.perf_counter()
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        times["read_decode"] = (time.perf_counter() - start) * 1000.0
        t = time.perf_counter()
        img = normalise(ds, pixels)
        times["normalise"] = (time.perf_counter() - t) * 1000.0
        if self.chain:
            out = self.judge_chain(ds, img, times)
        else:
            out = self.judge_ankle(img, times)
        times["total"] = (time.perf_counter() - start) * 1000.0
        return {"file": path.name, **out, "times_ms": times}

    def judge_chain(self, ds: pydicom.Dataset, img: np.ndarray,
                    times: dict[str, float]) -> dict[str, Any]:  # fmt: skip
        """Stages in pack order on the normalised image: view label, decision, rule outcomes."""
        turned = img
        labels: dict[str, str] = {}
        masks: dict[str, tuple[dict[str, np.ndarray], tuple[float, float]]] = {}
        due: list[str] = []
        derived: dict[str, np.ndarray] = {}
        unsure = retake = False
        outcomes: list[dict[str, Any]] = []
        for name, s in self.stages.items():
            when = s.get("when") or {}
            if not all(labels.get(k) in allowed for k, allowed in when.items()):
                continue
            due.append(name)
            thresholds = s.get("thresholds") or {}
            source = img if (s.get("reads") or {}).get("image") == "working" else turned
            task, counts = s.get("task"), not s.get("research_only", False)
            if task == "orientation":
                # quarter_turns: the same four looks as the worker, one network run each,
                # each answer turned back by -90k degrees, averaged
                looks = 4 if s.get("quarter_turns") else 1
                vectors = []
                for k in range(looks):
                    c, si = self.run(name, tensor(np.ascontiguousarray(np.rot90(source, k)), s),
                                     times).ravel()[:2]  # fmt: skip
                    back = math.radians(-90.0 * k)
                    vectors.append((c * math.cos(back) - si * math.sin(back),
                                    c * math.sin(back) + si * math.cos(back)))
                cos, sin = np.mean(vectors, axis=0)
                t = time.perf_counter()
                turned = upright(img, math.degrees(math.atan2(float(sin), float(cos))) % 360.0)
                times["upright"] = (time.perf_counter() - t) * 1000.0
                norm = min(1.0, math.hypot(float(cos), float(sin)))
                unsure |= counts and norm < thresholds.get("min_norm", 0.5)
            elif task == "classify":
                probs = softmax(self.run(name, tensor(source, s), times)[0].astype(np.float64))
                if s.get("mirrored_look"):  # the worker's second look, mirrored left-right
                    mirror = np.ascontiguousarray(source[:, ::-1])
                    probs = (probs + softmax(self.run(name, tensor(mirror, s), times)[0]
                                             .astype(np.float64))) / 2.0  # fmt: skip
                labels[name] = s["labels"][int(probs.argmax())]
                unsure |= counts and float(probs.max()) < thresholds.get("min_confidence", 0.8)
                if name == self.view_stage:
                    unsure |= header_unsure(ds, list(s["labels"]), labels[name])
            elif task == "segment":
                scores = self.run(name, tensor(source, s), times)[0]
                classes = list(s["classes"])
                if s.get("activation") == "softmax":
                    winner = scores.argmax(axis=0)
                    found = {c: winner == k for k, c in enumerate(classes) if c != "background"}
                else:
                    cut = thresholds.get("mask", 0.5)
                    found = {c: scores[k] > cut for k, c in enumerate(classes) if c != "background"}
                x0, y0, iw, ih = where(source.shape, s)
                found = {c: m[y0 : y0 + ih, x0 : x0 + iw] for c, m in found.items()}
                h, w = source.shape
                masks[name] = (found, (w / iw, h / ih))
            elif task == "derive" and self.derive:
                out = self.run(name, tensor(source, s), times)[0, 0]
                t = time.perf_counter()
                derived[name] = cv2.resize(out, (source.shape[1], source.shape[0]))
                times["derive_resize"] = (time.perf_counter() - t) * 1000.0
            elif task == "rules" and s["reads"]["segments"] in masks:
                t = time.perf_counter()
                found, scale = masks[s["reads"]["segments"]]
                for o in measures.evaluate(self.rules[name], found, labels.get(self.view_stage), scale):
                    outcomes.append({"code": o.code, "status": o.status, "value": o.value})
                    if counts and o.status == "not_measurable":
                        unsure = True
                    elif counts and o.status == "fail":
                        retake |= o.on_fail == "retake"
                        unsure |= o.on_fail != "retake"
                times["rules"] = times.get("rules", 0.0) + (time.perf_counter() - t) * 1000.0
        judged = any(name in due for name in self.judged_by)
        unsure |= bool(self.judged_by) and not judged  # a view the pack does not judge
        decision = ("review" if unsure else "retake" if retake
                    else "ok" if judged else "not_judged")  # fmt: skip
        return {"view": labels[self.view_stage], "decision": decision, "rules": outcomes,
                "derived": sorted(derived)}

    def judge_ankle(self, img: np.ndarray, times: dict[str, float]) -> dict[str, Any]:
        """View, ROI box, quality on the crop and orientation (no upright turn)."""
        view_stage = self.stage("view")
        assert view_stage is not None
        probs = softmax(self.run(view_stage["name"], tensor(img, view_stage), times)[0])
        view = view_stage["labels"][int(probs.argmax())]
        unsure = probs.max() < view_stage["thresholds"].get("min_confidence", 0.8)
        grade = None
        roi_stage, quality_stage = self.stage("roi", view), self.stage("quality", view)
        if roi_stage is not None:
            mask = self.run(roi_stage["name"], tensor(img, roi_stage), times)[0, 0]
            box = roi_box(mask, roi_stage, img.shape)
            unsure = unsure or box is None
            if box is not None and quality_stage is not None:
                cut = crop(img, box)
                score = float(
                    self.run(quality_stage["name"], tensor(cut, quality_stage), times).ravel()[0]
                )
                grade = round(min(3.0, max(1.0, score)))
                unsure = unsure or abs(score - 2.5) < quality_stage["thresholds"].get(
                    "review_margin", 0.15
                )
        orient_stage = self.stage("orientation")
        if orient_stage is not None:
            cos, sin = self.run(orient_stage["name"], tensor(img, orient_stage), times).ravel()[:2]
            unsure = unsure or math.hypot(cos, sin) < orient_stage["thresholds"].get(
                "min_norm", 0.5
            )
        decision = "review" if unsure else ("retake" if grade == 3 else "ok")
        return {"view": view, "decision": decision}


def main(argv: list[str] | None = None) -> int:
    """Judge every file ``--repeat`` times after one warm-up; JSON on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m models.baseline.naive",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--pack", type=Path, required=True, help="the pack (thresholds, sizes)")
    parser.add_argument("--checkpoints", type=Path, required=True, help="its torch checkpoints")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--skip-derive", action="store_true",
                        help="leave the derive stages out, as a worker without a derived folder does")  # fmt: skip
    args = parser.parse_args(argv)
    started = time.perf_counter()
    naive = Naive(args.pack, args.checkpoints, derive=not args.skip_derive)
    load_s = time.perf_counter() - started
    naive.judge(args.files[0])  # warm-up: first-call allocations, as the worker's warm_up()
    results = [naive.judge(path) for _ in range(args.repeat) for path in args.files]
    json.dump({
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "pydicom": pydicom.__version__, "load_s": round(load_s, 3), "files": results,
    }, sys.stdout)  # fmt: skip
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
