"""The GPU install: the extras choose one ONNX Runtime build, and the worker says which it has.

``onnxruntime`` and ``onnxruntime-gpu`` write the same module, so the extras ``cpu`` and ``gpu``
must be disjoint and the base must carry neither; ``edge-worker check --backend
onnxruntime-cuda`` names the distribution it found and refuses the CPU build (this machine has
it); without either build the worker refuses to start and names both extras.  The slow test
asks pip itself, in a fresh virtual environment, what each extra would install.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

from edge_worker.backends.ort_install import GPU_FIX, installed
from tests.stations import ROOT, render_toml

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIMES = {"onnxruntime", "onnxruntime-gpu"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _cpu_build_here() -> bool:
    return installed().distributions.keys() == {"onnxruntime"}


def test_base_has_no_runtime_and_the_extras_choose_one() -> None:
    base = _names(PYPROJECT["project"]["dependencies"])
    extras = {k: _names(v) for k, v in PYPROJECT["project"]["optional-dependencies"].items()}
    assert not base & RUNTIMES
    assert extras["cpu"] & RUNTIMES == {"onnxruntime"}
    assert extras["gpu"] & RUNTIMES == {"onnxruntime-gpu"}
    # No other extra brings a runtime: `.[cpu,ml,dev]` and `.[gpu,ml]` stay single-build.
    assert all(not names & RUNTIMES for key, names in extras.items() if key not in ("cpu", "gpu"))


def test_ci_installs_the_cpu_runtime_only() -> None:
    installs = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if "pip install" in line and not line.lstrip().startswith("#")]  # fmt: skip
    assert len(installs) == 1
    extras = re.search(r'-e "\.\[([^\]]*)\]"', installs[0])
    assert extras is not None and "cpu" in extras.group(1).split(",")
    assert "gpu" not in extras.group(1).split(",")


@pytest.mark.parametrize(
    ("dists", "gpu_ok", "problem_words"),
    [
        ({"onnxruntime": "1.32.0"}, False, "CPU build (onnxruntime 1.32.0)"),
        ({"onnxruntime-gpu": "1.22.0"}, True, None),
        ({"onnxruntime": "1.32.0", "onnxruntime_gpu": "1.22.0"}, False, "provided by both"),
        ({}, False, "pip install '.[cpu]' (CPU box) or pip install '.[gpu]' (GPU box)"),
    ],
)
def test_the_installed_build_is_named_and_judged(
    dists: dict[str, str], gpu_ok: bool, problem_words: str | None
) -> None:
    found = installed({"onnxruntime": list(dists), "numpy": ["numpy"]},
                      {k.replace("_", "-"): v for k, v in dists.items()})  # fmt: skip
    problem = found.gpu_problem()
    assert (problem is None) == gpu_ok
    if problem_words is not None:
        assert problem is not None and problem_words in problem
    if dists and not gpu_ok:
        assert problem is not None and GPU_FIX in problem
    assert found.conflict == (len(dists) > 1)


def _check(*args: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "edge_worker", "check", "--skip-broker", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    return result.returncode, result.stdout


@pytest.mark.skipif(not _cpu_build_here(), reason="needs the CPU build of onnxruntime alone")
def test_check_refuses_the_cpu_build_for_the_cuda_backend() -> None:
    import onnxruntime

    rc, out = _check("--backend", "onnxruntime-cuda")
    line = next(x for x in out.splitlines() if x.startswith(("ok    backend", "FAIL  backend")))
    assert rc == 1 and line.startswith("FAIL  backend")
    assert f"the onnxruntime module comes from the CPU build (onnxruntime {onnxruntime.__version__})" in line
    assert "onnxruntime has no CUDAExecutionProvider" in line
    assert line.endswith(GPU_FIX)


@pytest.mark.skipif(not _cpu_build_here(), reason="needs the CPU build of onnxruntime alone")
def test_check_names_the_distribution_of_the_cpu_backend() -> None:
    import onnxruntime

    rc, out = _check("--backend", "onnxruntime-cpu")
    assert rc == 0, out
    assert (f"ok    backend: onnxruntime-cpu is usable (the onnxruntime module is from onnxruntime "
            f"{onnxruntime.__version__})") in out  # fmt: skip


def test_the_worker_refuses_to_start_without_a_runtime(tmp_path: Path) -> None:
    # A package that fails to import stands in for an install with neither extra.
    shadow = tmp_path / "shadow" / "onnxruntime"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("No module named onnxruntime")\n')
    config = tmp_path / "edge-worker.toml"
    config.write_text(render_toml({"site": "gpu", "station": "xr-01"}, {
        "watch": {"folder": str(tmp_path / "in")}, "quarantine": {"folder": str(tmp_path / "q")},
        "state": {"folder": str(tmp_path / "state")}, "mqtt": {"url": "mqtt://127.0.0.1:9"},
    }))  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "edge_worker", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
        env={"PYTHONPATH": f"{shadow.parent}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "onnxruntime is not installed" in result.stderr
    assert "pip install '.[cpu]' (CPU box) or pip install '.[gpu]' (GPU box)" in result.stderr


def _pip_selects(env: Path, extra: str, report: Path) -> set[str]:
    """What pip, in the venv ``env``, would install for ``.[extra]`` (a dry run, nothing installed)."""
    subprocess.run(
        [str(env / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
         "--dry-run", "--ignore-installed", "--report", str(report), f".[{extra}]"],
        cwd=ROOT, check=True, timeout=1800,
    )  # fmt: skip
    data = json.loads(report.read_text())
    return {item["metadata"]["name"].lower().replace("_", "-") for item in data["install"]}


@pytest.mark.slow
def test_pip_in_a_fresh_venv_selects_one_build_per_extra(tmp_path: Path) -> None:
    """Needs the package registry (downloads the ONNX Runtime wheels' metadata, or the wheels)."""
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    assert _pip_selects(env, "cpu", tmp_path / "cpu.json") & RUNTIMES == {"onnxruntime"}
    assert _pip_selects(env, "gpu", tmp_path / "gpu.json") & RUNTIMES == {"onnxruntime-gpu"}
