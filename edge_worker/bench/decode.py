"""Decode benchmark: file -> model-ready working image, ours against pydicom's default path.

    python edge_worker/bench/decode.py [--size 3000] [--runs 7] [--json] [--keep DIR]

It synthesises one realistic 16-bit radiograph (BitsStored 14, MONOCHROME2, body outline,
lungs, ribs, spine, multi-scale texture and detector noise, so that lossless codecs reach
the ~2.5:1 ratios of real chest films), writes it in every encoding it can produce, and times
two paths on each file, interleaved so that load from other processes hits both alike:

* **pydicom**: ``dcmread`` + ``pixel_array`` (pydicom's default plugin) + our grayscale chain
  + ``working_image`` (area resize to 512);
* **ours**: ``read_radiograph(path, max_side=512)`` + ``working_image``; and **ours, full**:
  the same without ``max_side`` (the fastest decoder, no resolution reduction).

Files sit in the page cache (just written), so disk reads are not included.  Figures are
medians and 90th percentiles in milliseconds.  The target (issue 3): JPEG 2000 lossless in
at most 250 ms and at least 4x faster than pydicom.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from edge_worker.ingest import read_radiograph
from edge_worker.ingest.grayscale import meta_from_dataset, normalise
from edge_worker.pipeline.preprocess import WORKING_MAX_SIDE, working_image

BITS_STORED = 14
TARGET_MS, TARGET_SPEEDUP = 250.0, 4.0


def synthetic_radiograph(size: int, seed: int = 0) -> np.ndarray:
    """A chest-like ``size`` x ``size`` uint16 image, BitsStored 14, bone bright.

    Smooth anatomy is drawn at a quarter of the size and enlarged (cheap), then texture at
    several scales and sigma = 12 DN noise are added at full size: the noise is what sets a
    lossless codec's ratio, as on a real detector.
    """
    rng = np.random.default_rng(seed)
    low = size // 4
    yy, xx = np.mgrid[0:low, 0:low].astype(np.float32) / np.float32(low)
    body = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.55) / 0.5) ** 2 < 1.0
    lungs = np.zeros_like(xx)
    for cx in (0.33, 0.67):
        lungs += (((xx - cx) / 0.15) ** 2 + ((yy - 0.45) / 0.28) ** 2 < 1.0).astype(np.float32)
    ribs = np.zeros_like(xx)
    for k in range(10):
        curve = 0.2 + 0.065 * k + 0.08 * (xx - 0.5) ** 2 * 4
        ribs += np.exp(-(((yy - curve) / 0.012) ** 2)) * (np.abs(xx - 0.5) > 0.04)
    spine = np.exp(-(((xx - 0.5) / 0.035) ** 2)) * (yy > 0.1)
    heart = (((xx - 0.56) / 0.14) ** 2 + ((yy - 0.62) / 0.13) ** 2 < 1.0).astype(np.float32)
    anatomy = 0.55 * body - 0.35 * lungs * body + 0.25 * ribs * body + 0.4 * spine + 0.2 * heart
    anatomy = cv2.GaussianBlur(anatomy.astype(np.float32), (0, 0), low / 300)
    image = cv2.resize(anatomy, (size, size), interpolation=cv2.INTER_CUBIC)
    for sigma, amplitude in ((size / 40, 0.04), (size / 200, 0.02), (1.5, 0.01)):
        texture = cv2.GaussianBlur(
            rng.standard_normal((size, size), dtype=np.float32), (0, 0), sigma
        )
        image += amplitude * texture / max(float(texture.std()), 1e-6)
    top = (1 << BITS_STORED) - 1
    values = 600 + image * (0.75 * top) + rng.normal(0.0, 12.0, (size, size))
    return np.clip(values, 0, top).astype(np.uint16)


def dataset(pixels: np.ndarray) -> Dataset:
    """A DX For Presentation dataset around ``pixels`` (no VOI: the percentile window runs)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PresentationIntentType = "DX", "FOR PRESENTATION"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, BITS_STORED, BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def _encapsulated(pixels: np.ndarray, uid: str, frame: bytes | bytearray) -> Dataset:
    out = dataset(pixels)
    out.file_meta.TransferSyntaxUID = UID(uid)
    out.PixelData = encapsulate([bytes(frame)])
    out["PixelData"].VR = "OB"
    out["PixelData"].is_undefined_length = True
    return out


def encodings(pixels: np.ndarray) -> dict[str, Callable[[], Dataset]]:
    """Encoding name -> a function that makes the dataset; imagecodecs ones when installed."""

    def compressed(uid: str) -> Callable[[], Dataset]:
        def make() -> Dataset:
            ds = dataset(pixels)
            ds.compress(uid, encoding_plugin="pylibjpeg")
            return ds

        return make

    made: dict[str, Callable[[], Dataset]] = {
        "uncompressed": lambda: dataset(pixels),
        "jpeg2000-lossless": compressed(JPEG2000Lossless),
        "rle-lossless": compressed(RLELossless),
    }
    try:
        import imagecodecs
    except ImportError:
        return made
    # pydicom has no encoder for these; the bytes are what a modality would write.
    made["jpeg-lossless-sv1"] = lambda: _encapsulated(
        pixels,
        JPEGLosslessSV1,
        imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1, bitspersample=BITS_STORED),
    )
    made["jpeg-ls-lossless"] = lambda: _encapsulated(
        pixels, JPEGLSLossless, imagecodecs.jpegls_encode(pixels, level=0)
    )
    made["htj2k-lossless"] = lambda: _encapsulated(
        pixels, HTJ2KLossless, imagecodecs.htj2k_encode(pixels, reversible=True)
    )
    return made


def pydicom_path(path: Path) -> np.ndarray:
    """pydicom's default: full decode by the first installed plugin, then the same chain."""
    ds = pydicom.dcmread(path)
    return working_image(normalise(ds.pixel_array, meta_from_dataset(ds)), WORKING_MAX_SIDE)[0]


def our_path(path: Path, reduced: bool = True) -> np.ndarray:
    """The worker's path: read_radiograph (reduced decode when allowed) + working_image."""
    radiograph = read_radiograph(path, max_side=WORKING_MAX_SIDE if reduced else None)
    return working_image(radiograph.pixels, WORKING_MAX_SIDE)[0]


def _ms(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1000.0, out


def measure(path: Path, runs: int) -> dict[str, float]:
    """Interleaved timings of the three paths on one file, and how far ours is from pydicom's."""
    paths: dict[str, Callable[[], np.ndarray]] = {
        "pydicom": lambda: pydicom_path(path),
        "ours": lambda: our_path(path),
        "ours_full": lambda: our_path(path, reduced=False),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    images: dict[str, np.ndarray] = {}
    for name, fn in paths.items():  # warm-up: imports, decoder probes, page cache
        images[name] = fn()
    for _ in range(runs):
        for name, fn in paths.items():
            elapsed, _ = _ms(fn)
            times[name].append(elapsed)
    diff = np.abs(images["ours"] - images["pydicom"])
    result: dict[str, float] = {
        "file_mb": round(path.stat().st_size / 1e6, 2),
        "mean_abs_diff": round(float(diff.mean()), 5),
        "p99_abs_diff": round(float(np.percentile(diff, 99)), 5),
    }
    for name, values in times.items():
        result[f"{name}_median_ms"] = round(float(np.median(values)), 1)
        result[f"{name}_p90_ms"] = round(float(np.percentile(values, 90)), 1)
    result["speedup"] = round(result["pydicom_median_ms"] / result["ours_median_ms"], 1)
    return result


def machine() -> dict[str, str]:
    """CPU count and model, Python and library versions, date: for BENCHMARKS.md."""
    model = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                      if ln.startswith("Model name")), "")  # fmt: skip
    except OSError:
        model = platform.processor()
    versions = {"pydicom": pydicom.__version__, "numpy": np.__version__, "opencv": cv2.__version__}
    try:
        import imagecodecs

        versions["imagecodecs"] = imagecodecs.__version__
    except ImportError:
        versions["imagecodecs"] = "absent"
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="minutes"),
        "nproc": str(os.cpu_count()),
        "affinity": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "python": platform.python_version(),
        **versions,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table (or JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=3000, help="rows and columns (default 3000)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per path (default 7)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--keep", type=Path, help="write the test files here and keep them")
    args = parser.parse_args(argv)
    cv2.setNumThreads(2)
    pixels = synthetic_radiograph(args.size)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="edge-worker-bench-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for name, make in encodings(pixels).items():
            path = folder / f"{name}.dcm"
            make().save_as(path, enforce_file_format=True)
            results[name] = measure(path, args.runs)
    j2k = results["jpeg2000-lossless"]
    met = j2k["ours_median_ms"] <= TARGET_MS and j2k["speedup"] >= TARGET_SPEEDUP
    report = {"machine": machine(), "size": args.size, "runs": args.runs, "results": results,
              "target_met": met}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.size}x{args.size} uint16, BitsStored {BITS_STORED}; median / p90 ms over "
          f"{args.runs} interleaved runs; {report['machine']}")  # fmt: skip
    print("| encoding | MB | pydicom default | ours, full resolution | ours, max_side=512 "
          "| speedup | mean abs diff |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['file_mb']} | {r['pydicom_median_ms']} / {r['pydicom_p90_ms']} "
              f"| {r['ours_full_median_ms']} / {r['ours_full_p90_ms']} "
              f"| {r['ours_median_ms']} / {r['ours_p90_ms']} | {r['speedup']}x "
              f"| {r['mean_abs_diff']} |")  # fmt: skip
    print(f"target (JPEG 2000 lossless <= {TARGET_MS:.0f} ms and >= {TARGET_SPEEDUP:.0f}x): "
          f"{'met' if met else 'MISSED'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
