"""The straightforward torch pipeline on a built chest pack, beside the worker's.

A short chest build (``edge-export build --recipe models/recipes/chest.toml --preset short`` on
a few patients of ``../shared/data/training``; skipped where it is absent) gives a pack and
the torch checkpoints it was exported from.  :class:`models.baseline.naive.Naive` judges a
real chest DICOM with those checkpoints (pydicom, min-max, cv2, torch eager, the upright turn,
the view's U-Net, the pack's rules) and must reach the decision and view label the worker's
pipeline reaches on ONNX Runtime with the same weights; ``edge-worker bench --pack --checkpoints``
runs both end to end.  The networks of a short build mean nothing: only agreement is checked,
never an accuracy or a speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("onnxruntime")

from edge_worker.backends import LoadOptions, select
from edge_worker.cli import main
from edge_worker.ingest import read_radiograph
from edge_worker.ingest.types import IngestPolicy
from edge_worker.packs.pack import load_pack
from edge_worker.pipeline.runner import Pipeline

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRAINING = SHARED / "data" / "training"
CHEST_DICOM = SHARED / "data" / "radiographs" / "dicom" / "nhsx_nih_cxr14_DX.dcm"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
#: A short build's wall-clock limit: far above its 1-3 minutes, below a hung run's forever.
LIMIT_S = 900

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(
        not (TRAINING / "chest-multisite" / "labels.csv").is_file()
        or not (TRAINING / "chest-views" / "labels.csv").is_file()
        or not CHEST_DICOM.is_file(),
        reason="../shared (real chest images and radiographs) is absent",
    ),
]


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=LIMIT_S, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A short-built chest pack and its checkpoints folder."""
    root = tmp_path_factory.mktemp("chest")
    labels = root / "labels.csv"
    _run("models.recipes.chest_labels", "--training", str(TRAINING), "--out", str(labels),
         "--patients-per-view", "5")  # fmt: skip
    _run("export.cli", "build", "--recipe", str(ROOT / "models" / "recipes" / "chest.toml"),
         "--data", str(TRAINING), "--labels", str(labels), "--out", str(root / "pack"),
         "--work", str(root / "work"), "--preset", "short")  # fmt: skip
    return root / "pack", root / "work" / "checkpoints"


def test_naive_judges_a_real_chest_dicom_as_the_worker_does(chest: tuple[Path, Path]) -> None:
    from models.baseline.naive import Naive

    pack_dir, checkpoints = chest
    naive = Naive(pack_dir, checkpoints)
    assert naive.chain and set(naive.nets) == {"orientation", "view", "lungs_pa", "lungs_ap",
                                               "finding", "bone_suppression"}  # fmt: skip
    ours = naive.judge(CHEST_DICOM)

    pack = load_pack(pack_dir)
    image = read_radiograph(CHEST_DICOM, IngestPolicy())
    theirs = Pipeline(pack, select(["onnxruntime-cpu"]), LoadOptions()).judge(
        image.pixels, image.header
    )
    assert ours["view"] == theirs.view.label
    assert ours["decision"] == theirs.decision, (ours, theirs.reason_codes)
    # The rules of the view's stage were measured, the same rules the worker measured.
    rules = next((r for name, r in theirs.results.items() if name.startswith("coverage")), None)
    expected = [o.code for o in rules.outcomes] if rules is not None else []
    assert [r["code"] for r in ours["rules"]] == expected
    # Paper 004's bone suppressor ran where the worker ran it (frontal images)
    from edge_worker.pipeline.tasks.derive import DerivedResult

    assert ours["derived"] == sorted(n for n, r in theirs.results.items() if isinstance(r, DerivedResult))
    assert {"read_decode", "normalise", "net:orientation", "net:view", "total"} <= set(ours["times_ms"])
    # Without a derived folder the worker leaves the derive stages out; so does this pipeline.
    skipping = Naive(pack_dir, checkpoints, derive=False).judge(CHEST_DICOM)
    assert skipping["derived"] == [] and (skipping["view"], skipping["decision"]) == (
        ours["view"], ours["decision"])
    assert not any(k.startswith("net:bone") for k in skipping["times_ms"])


def test_bench_runs_the_built_pack_beside_the_straightforward_pipeline(
    chest: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack_dir, checkpoints = chest
    argv = ["bench", "--quick", "--json", "--pack", str(pack_dir), "--checkpoints",
            str(checkpoints), "--cache", str(tmp_path / "cache")]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    (measured,) = report["packs"]
    assert measured["path"] == str(pack_dir)
    for encoding in ("uncompressed", "jpeg2000"):
        run = measured[encoding]
        naive = run["naive"]
        assert naive["stages_ms"]["total"]["n"] >= 1 and "net:view" in naive["stages_ms"]
        assert sum(naive["decisions"].values()) == naive["stages_ms"]["total"]["n"]
        assert run["ratio_naive_to_ours_e2e"] > 0 and run["ratio_naive_to_ours_in_process"] > 0


def test_bench_checkpoints_need_a_pack(tmp_path: Path) -> None:
    assert main(["bench", "--quick", "--checkpoints", str(tmp_path)]) == 2
