"""THE STRAIGHTFORWARD PIPELINE, for comparison only.  THIS MODULE IMPORTS TORCH.

    python -m models.baseline.naive --pack PACK --checkpoints DIR FILE... [--repeat N]

What a user would write first, with the same networks and weights as the pack (the
checkpoints the pack was exported from) and the same files: pydicom ``dcmread`` +
``pixel_array`` with pydicom's default decoding plugins, min-max normalisation in numpy
(inverted for MONOCHROME1), ``cv2.resize`` of the full image to each network's input with
OpenCV's default interpolation, torch eager (``eval()``, ``no_grad``, torch's default threads),
and the same decision rules.  Nothing is deliberately slowed down: the default linear resize
is cheaper than the area resize the worker uses.

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

from edge_worker.packs.pack_v1 import SCHEMA_V1, role_of, upgrade_manifest
from export.onnx import load_checkpoint


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


def tensor(img: np.ndarray, stage: dict[str, Any]) -> torch.Tensor:
    """Resize to the network's input and standardise: a ``(1, C, H, W)`` tensor."""
    i = stage["input"]
    small = cv2.resize(img, (int(i["width"]), int(i["height"])))
    x = (small - float(i["mean"])) / float(i["std"])
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None].expand(
        1, int(i["channels"]), -1, -1
    )


def roi_box(mask: np.ndarray, stage: dict[str, Any], shape: tuple[int, int]) -> Any:
    """Largest region over the threshold -> minimum-area rectangle in full-image pixels."""
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


def crop(img: np.ndarray, box: Any, height: int, width: int) -> np.ndarray:
    """Cut the rotated box out upright, long side horizontal."""
    (cx, cy), (w, h), angle = box
    if h > w:
        w, h, angle = h, w, angle + 90.0
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    matrix[:, 2] += np.array([w / 2.0 - cx, h / 2.0 - cy])
    upright = cv2.warpAffine(img, matrix, (max(1, int(w)), max(1, int(h))))
    return cv2.resize(upright, (width, height))


class Naive:
    """The pack's networks as torch modules, and the per-file pipeline."""

    def __init__(self, pack: Path, checkpoints: Path) -> None:
        manifest = json.loads((pack / "manifest.json").read_text())
        if manifest.get("schema") == SCHEMA_V1:
            manifest = upgrade_manifest(manifest)
        self.view_stage = str(manifest.get("view_stage", "view"))
        self.stages = {s["name"]: s for s in manifest["stages"]}
        self.nets = {
            name: load_checkpoint(checkpoints / f"{name}.pt").net.eval() for name in self.stages
        }

    def stage(self, task: str, view: str | None = None) -> dict[str, Any] | None:
        for s in self.stages.values():
            role, applies = role_of(s, self.view_stage)
            if role == task and applies in (None, view):
                return s
        return None

    def run(self, name: str, x: torch.Tensor, times: dict[str, float]) -> np.ndarray:
        t = time.perf_counter()
        with torch.no_grad():
            out = self.nets[name](x).numpy()
        times[f"net:{name}"] = (time.perf_counter() - t) * 1000.0
        return out

    def judge(self, path: Path) -> dict[str, Any]:
        """Path -> decision, with wall times in ms."""
        times: dict[str, float] = {}
        start = time.perf_counter()
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        times["read_decode"] = (time.perf_counter() - start) * 1000.0
        t = time.perf_counter()
        img = normalise(ds, pixels)
        times["normalise"] = (time.perf_counter() - t) * 1000.0
        view_stage = self.stage("view")
        assert view_stage is not None
        logits = self.run(view_stage["name"], tensor(img, view_stage), times)[0]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        view = view_stage["labels"][int(probs.argmax())]
        unsure = probs.max() < view_stage["thresholds"].get("min_confidence", 0.8)
        grade = None
        roi_stage, quality_stage = self.stage("roi", view), self.stage("quality", view)
        if roi_stage is not None:
            mask = self.run(roi_stage["name"], tensor(img, roi_stage), times)[0, 0]
            box = roi_box(mask, roi_stage, img.shape)
            unsure = unsure or box is None
            if box is not None and quality_stage is not None:
                i = quality_stage["input"]
                cut = crop(img, box, int(i["height"]), int(i["width"]))
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
        times["total"] = (time.perf_counter() - start) * 1000.0
        return {"file": path.name, "view": view, "decision": decision, "times_ms": times}


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
    args = parser.parse_args(argv)
    started = time.perf_counter()
    naive = Naive(args.pack, args.checkpoints)
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
