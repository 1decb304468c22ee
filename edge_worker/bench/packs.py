"""The packs the benchmark runs: the demo pack, a full-size pack and its INT8 copy.

The full-size pack is the phantom-trained one (``python -m models.make_full_pack``, about 50
minutes on 2 cores, built on request with ``--train-full``) when it is in the cache, else the
untrained seed pack (``python -m export.seed_pack``, 1-2 minutes): both have the seed
architectures at full size, so they time the same, but only a trained pack gives the INT8
gate a question worth asking.  These packs are made by the ML side's tools, in subprocesses
(they import torch and onnx; this process must not), with ``edge-export quantize`` for the
INT8 copy.  Both are made once into the cache folder and reused while their
recipe is unchanged.  Without torch (the worker installed without the ``ml`` extra) the
full-size part is skipped with a message saying so.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_worker.bench.broker import BenchError
from edge_worker.packs.pack import default_pack_dir

#: Stages worth INT8: the segmenters, ResNet-type convolutions that use VNNI (about 3x; the
#: EfficientNets' depthwise convolutions gain nothing, reference/cpu-baseline.md).  The
#: orientation ResNet-50 would save ~11 ms more, but on the phantom-trained pack (orientation
#: MAE 3.9 deg on unseen phantoms) INT8 changed the rotation suggestion of 2 of 80 test images
#: (real hip radiographs near the 45 deg boundary) and the gate refused it: it stays FP32.
INT8_STAGES = ("roi_ap", "roi_lat")
#: Must equal ``export.seed_pack.RECIPE`` (not imported: that module imports torch).
_SEED_RECIPE = "seed-full@1"
#: Must equal ``models.make_full_pack.RECIPE``.
_TRAINED_RECIPE = "full-phantom@3"


@dataclass(frozen=True)
class BenchPack:
    """A pack to measure: where it is, a label for reports, and its torch checkpoints if any."""

    label: str
    path: Path
    checkpoints: Path | None = None
    gate: dict[str, Any] | None = None
    #: False for a pack its precision gate refused: measured for information, never a target.
    accepted: bool = True
    #: Loaded alone in the measured worker (``--pack``): see :attr:`WorkerSettings.alone`.
    alone: bool = False


def demo() -> BenchPack:
    """The demo pack shipped with the worker."""
    return BenchPack("ankle-demo (fp32)", default_pack_dir())


def ml_missing() -> str | None:
    """Why the full-size part cannot run here (torch or onnx absent), or ``None``."""
    missing = [m for m in ("torch", "onnx", "monai") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"{', '.join(missing)} not installed: the full-size seed pack and the straightforward "
                "torch pipeline need the ml extra (pip install -e '.[ml]'); skipped")  # fmt: skip
    return None


def _run(cmd: list[str], log: Path, what: str, timeout: float) -> int:
    with log.open("w") as out:
        try:
            return subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
            ).returncode
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{what} took over {timeout:.0f} s; see {log}") from exc


def seed(cache: Path, say: Any = print) -> BenchPack:
    """The full-size seed pack, built on first use (about 1-2 minutes on 2 cores)."""
    root = cache / "seed-full"
    recipe = root / "recipe.json"
    if not (recipe.is_file() and json.loads(recipe.read_text()).get("recipe") == _SEED_RECIPE):
        say(f"building the full-size seed pack in {root} (once; python -m export.seed_pack) ...")
        code = _run([sys.executable, "-m", "export.seed_pack", "--out", str(root)],
                    cache / "seed-full.log", "building the seed pack", 1800)  # fmt: skip
        if code != 0:
            raise BenchError(
                f"building the seed pack failed (exit {code}); see {cache / 'seed-full.log'}"
            )
    return BenchPack("seed-full (fp32)", root / "pack", root / "checkpoints")


def trained(cache: Path, build: bool, say: Any = print) -> BenchPack | None:
    """The phantom-trained full-size pack from the cache; built first when ``build`` is true
    (about 50 minutes on 2 cores); ``None`` when it is absent and not to be built."""
    root = cache / "full-phantom"
    recipe = root / "recipe.json"
    if not (recipe.is_file() and json.loads(recipe.read_text()).get("recipe") == _TRAINED_RECIPE):
        if not build:
            return None
        say(f"training the full-size pack in {root} (once; python -m models.make_full_pack) ...")
        code = _run([sys.executable, "-m", "models.make_full_pack", "--out", str(root),
                     "--work", str(cache / "phantom-sets")],
                    cache / "full-phantom.log", "training the full-size pack", 4 * 3600)  # fmt: skip
        if code != 0:
            raise BenchError(f"training the full-size pack failed (exit {code}); see "
                             f"{cache / 'full-phantom.log'}")  # fmt: skip
    return BenchPack("full-phantom (fp32)", root / "pack", root / "checkpoints")


def quantized(source: BenchPack, cache: Path, test: Path | None, stages: tuple[str, ...],
              say: Any = print) -> BenchPack:  # fmt: skip
    """The INT8 copy of ``source``, accepted or refused by ``edge-export quantize``'s gate.

    A refused copy (``accepted`` false) is kept aside with ``--keep-refused`` so that the
    report can say what INT8 would have bought; it never counts towards a target.
    """
    # Keyed by the source manifest and the stages: a rebuilt source pack or another choice of
    # stages gets a new quantised copy.
    manifest = (source.path / "manifest.json").read_bytes()
    key = hashlib.sha256(manifest + ",".join(stages).encode()).hexdigest()[:12]
    out = cache / f"{source.path.parent.name}-int8-{key}"
    refused = cache / f"{out.name}-refused"
    report_path = cache / f"{out.name}.gate.json"
    if not report_path.is_file():
        say(
            f"quantising {source.label} to INT8 (stages {', '.join(stages)}; edge-export quantize) ..."
        )
        cmd = [sys.executable, "-m", "export.cli", "quantize", str(source.path), "--out", str(out),
               "--precision", "int8", "--stages", ",".join(stages), "--report", str(report_path),
               "--keep-refused", str(refused)]  # fmt: skip
        if test is not None:
            cmd += ["--test", str(test)]
        code = _run(cmd, cache / "quantize.log", "quantisation", 3600)
        if not report_path.is_file():
            raise BenchError(
                f"edge-export quantize failed (exit {code}); see {cache / 'quantize.log'}"
            )
    report = json.loads(report_path.read_text())
    accepted = bool(report.get("accepted"))
    path = out if accepted else refused
    if not (path / "manifest.json").is_file():
        raise BenchError(
            f"the INT8 pack is missing from {path}; delete {report_path} to rebuild it"
        )
    what = "int8: " + ", ".join(stages) + ("" if accepted else "; REFUSED by the gate, speed only")
    return BenchPack(source.label.replace("fp32", what), path, source.checkpoints, report, accepted)
