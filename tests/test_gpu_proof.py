"""The GPU proof's CPU dry run: every part of the script but the GPU, on a tiny subset.

The demo pack (parity, single files, a burst of stations, file closed -> verdict through the real
worker on a real broker) and a pack with torch checkpoints
(the reference path: narrow networks of the demo pack's stage names and input sizes, random
weights, so that the torch stations run in seconds) on two small phantoms and, where
``../shared`` is present, one real file.  The report must hold every figure the GPU run will
fill in, labelled as a CPU dry run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_worker.bench import gpu_proof
from edge_worker.packs.pack import default_pack_dir, load_pack
from tests.stations import ROOT

SHARED_DICOM = Path(__file__).resolve().parents[3] / "shared" / "data" / "radiographs" / "dicom"


def _tiny_torch_pack(root: Path) -> Path:
    """``root/pack`` (the demo pack) and ``root/checkpoints`` (narrow random networks)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("monai")
    from models.networks import build
    from models.train import checkpoint_name, default_arch

    shutil.copytree(default_pack_dir(), root / "pack")
    (root / "checkpoints").mkdir()
    for spec in load_pack(root / "pack").networks:
        i = spec.input
        assert i is not None
        arch = default_arch(spec.role, 0.1, 0.2, i.height, i.width)  # the ML side's task names
        if spec.role in ("roi", "orientation"):  # one bottleneck per ResNet stage: seconds, not minutes
            arch = type(arch)(**{**arch.as_dict(), "blocks": (1, 1, 1, 1)})
        torch.manual_seed(0)
        spec_input = {"height": i.height, "width": i.width, "channels": i.channels, "mean": i.mean, "std": i.std}
        torch.save({"task": spec.role, "view": spec.applies_to_view, "arch": arch.as_dict(), "input": spec_input,
                    "steps": 0, "n_train": 0, "metrics": {}, "state_dict": build(arch).state_dict()},
                   root / "checkpoints" / checkpoint_name(spec.role, spec.applies_to_view))  # fmt: skip
    return root


def test_dry_run_reports_every_figure_of_the_gpu_run(tmp_path: Path) -> None:
    seed = _tiny_torch_pack(tmp_path / "seed")
    argv = ["--out", str(tmp_path / "out"), "--dry-run", "--packs", "ankle-demo", "--seed-dir", str(seed),
            "--phantoms", "2", "--size", "512", "--rounds", "2", "--stations", "2", "--threads", "1"]  # fmt: skip
    if SHARED_DICOM.is_dir():
        argv += ["--real", str(SHARED_DICOM), "--max-real", "1"]
    assert gpu_proof.main(argv) == 0
    report = json.loads((tmp_path / "out" / "gpu_proof.json").read_text())
    assert report["environment"]["backend"] == "onnxruntime-cpu"
    assert report["environment"]["mode"].startswith("CPU dry run")
    assert report["gpu_memory_idle"] == {"measured": False, "why": "nvidia-smi not found (no GPU)"}
    assert set(report["packs"]) == {"ankle-demo", "seed-full"}
    files = 2 + len(report["inputs"]["real"])
    for name, entry in report["packs"].items():
        # The same build on both sides: the gate sees zero error and the same decisions.
        assert entry["parity"]["passed"], entry["parity"]
        assert len(entry["parity"]["decisions"]) == files
        gated = [s for s in entry["parity"]["stages"] if s["passed"] is not None]
        assert gated and all(o["max_abs_error"] == 0.0 for s in gated for o in s["outputs"].values())
        paths = ["worker_single", "worker_burst"] + (["torch_single", "torch_burst"] if name == "seed-full" else [])
        assert sorted(k for k in entry if k not in ("parity", "e2e_single", "e2e_burst")) == sorted(paths)
        # File closed -> verdict received through the real worker and broker, every file judged.
        single, burst = entry["e2e_single"], entry["e2e_burst"]
        assert single["e2e_ms"]["n"] == 2 and single["makespan_ms"] == {"n": 0}
        assert burst["e2e_ms"]["n"] == 4 and burst["makespan_ms"]["n"] == 2
        assert sum(burst["decisions"].values()) == 4 and "None" not in burst["decisions"]
        assert len(burst["rss_peak_mib"]) == 2 and len(burst["startup_s"]) == 2
        for key in paths:
            run = entry[key]
            stations = 2 if key.endswith("burst") else 1
            assert run["stations"] == stations and len(run["station_memory"]) == stations
            assert run["parts_ms"]["total"]["n"] == 2 * stations
            assert run["makespan_ms"]["n"] == 2
            assert run["parts_ms"]["networks"]["p50"] > 0
            assert all(m["rss_peak_mib"] > 0 for m in run["station_memory"])
        assert {"read", "decode", "normalise", "resize", "pre_post"} <= set(entry["worker_single"]["parts_ms"])
    assert "read_decode" in report["packs"]["seed-full"]["torch_single"]["parts_ms"]
    table = (tmp_path / "out" / "gpu_proof.md").read_text()
    assert table.startswith("# GPU proof: CPU dry run")
    assert "| seed-full | torch reference, burst | 2 |" in table
    assert "passed: max abs error 0" in table
    assert "| ankle-demo | 2 |" in table  # the burst row of the file closed -> verdict table


def test_proof_refuses_to_call_the_cpu_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge_worker.backends import probe_all

    if probe_all()["onnxruntime-cuda"] is None:
        pytest.skip("this machine has the CUDA provider")
    assert gpu_proof.main(["--out", str(tmp_path), "--phantoms", "1", "--size", "256"]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime-cuda is not usable" in err and "pip install '.[gpu]'" in err
    assert not (tmp_path / "gpu_proof.json").exists()


def test_the_proof_process_never_imports_torch() -> None:
    """torch runs only in the reference's station processes (spawned), never in the worker's."""
    code = ("import sys, edge_worker.bench.gpu_proof, edge_worker.bench.proof_station, "
            "edge_worker.bench.proof_e2e; assert 'torch' not in sys.modules, 'torch imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
