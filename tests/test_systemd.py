"""The systemd unit: `systemd-analyze verify` passes and `security` rates exposure <= 2.5."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "edge-worker.service"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this machine's edge-worker (verify checks it exists)."""
    exe = shutil.which("edge-worker") or str(Path(sys.executable).with_name("edge-worker"))
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={exe}", UNIT.read_text(), flags=re.MULTILINE)
    dest = tmp_path / "edge-worker.service"
    dest.write_text(text)
    return dest


def test_unit_declares_what_the_daemon_does() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ProtectSystem=strict",
                 "NoNewPrivileges=yes", "ReadWritePaths=/var/lib/edge-worker", "DevicePolicy=closed",
                 "DeviceAllow=/dev/nvidiactl rw", "LoadCredential=mqtt-password"):  # fmt: skip
        assert line in text, line


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _unit_here(tmp_path)
    result = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, check=False)  # type: ignore[list-item]
    problems = [l for l in (result.stdout + result.stderr).splitlines() if "edge-worker.service" in l]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_systemd_analyze_security_exposure_at_most_2_5(tmp_path: Path) -> None:
    unit = _unit_here(tmp_path)
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],  # type: ignore[list-item]
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for edge-worker\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= 2.5
