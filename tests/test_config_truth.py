"""Config that cannot lie: what ``check`` passes, ``run`` runs, and what ``run`` refuses,
``check`` refuses first, with the same message.

* Folder layouts that overlap (one folder for two jobs, the watch folder inside the quarantine
  or the state folder, also through a symlink) are refused by both, naming both keys.
* A tampered extra pack is refused by both, naming it (before: ``check`` said ok).  A quarantine
  path that cannot be a folder fails ``check`` and starts ``run`` degraded, in the same words
  (before: ``check`` said ok and ``run`` reported nothing until a file was rejected).
* Numbers out of range are refused with the dotted key and its line.
* The quick-start layout (quarantine and state inside the watch folder) stays valid.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Mosquitto, Subscriber

from edge_worker.errors import ConfigError
from edge_worker.packs.pack import default_pack_dir
from edge_worker.service.config import Config, parse, with_overrides
from tests.stations import ROOT, Station, render_toml


def _config(tmp_path: Path, **tables: dict[str, object]) -> Path:
    base: dict[str, dict[str, object]] = {
        "watch": {"folder": str(tmp_path / "in")},
        "quarantine": {"folder": str(tmp_path / "q")},
        "state": {"folder": str(tmp_path / "state")},
        # Nothing listens there: run must be refused before it would try the broker.
        "mqtt": {"url": "mqtt://127.0.0.1:9"},
        "service": {"metrics_listen": ""},
    }
    for name, values in tables.items():
        base.setdefault(name, {}).update(values)
    path = tmp_path / "edge-worker.toml"
    path.write_text(render_toml({"site": "truth", "station": "xr-01"}, base))
    return path


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_worker", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False,
    )  # fmt: skip


def check_and_run(config: Path, step: str) -> tuple[str, str]:
    """Run ``check`` and ``run`` on ``config``; both must refuse it.  Returns check's reason
    (the FAIL line of ``step``) and run's reason (its one error line), for comparison."""
    checked = _cli("check", "--config", str(config), "--skip-broker")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    (fail,) = [x for x in checked.stdout.splitlines() if x.startswith("FAIL")]
    assert fail.startswith(f"FAIL  {step}: "), fail
    ran = _cli("run", "--config", str(config))
    assert ran.returncode == 2, ran.stderr[-3000:]
    assert "Traceback" not in ran.stderr, ran.stderr[-3000:]
    (line,) = [x for x in ran.stderr.splitlines() if x.startswith("edge-worker run: ")]
    return fail.removeprefix(f"FAIL  {step}: "), line.removeprefix("edge-worker run: ")


def _layouts(tmp_path: Path) -> dict[str, dict[str, dict[str, object]]]:
    return {
        "watch = state": {"state": {"folder": str(tmp_path / "in")}},
        "watch = quarantine": {"quarantine": {"folder": str(tmp_path / "in")}},
        "watch inside quarantine": {"watch": {"folder": str(tmp_path / "q" / "in")}},
        "watch inside state": {"watch": {"folder": str(tmp_path / "state" / "incoming")}},
        "state inside quarantine": {"state": {"folder": str(tmp_path / "q" / "state")}},
        "state is a symlink to watch": {"state": {"folder": str(tmp_path / "link")}},
    }


@pytest.mark.parametrize(
    ("layout", "keys"),
    [
        ("watch = state", ("state.folder", "watch.folder")),
        ("watch = quarantine", ("quarantine.folder", "watch.folder")),
        ("watch inside quarantine", ("watch.folder", "quarantine.folder")),
        ("watch inside state", ("watch.folder", "state.folder")),
        ("state inside quarantine", ("state.folder", "quarantine.folder")),
        ("state is a symlink to watch", ("state.folder", "watch.folder")),
    ],
)
def test_overlapping_folders_are_refused_by_check_and_run_alike(
    tmp_path: Path, layout: str, keys: tuple[str, str]
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "in")
    config = _config(tmp_path, **_layouts(tmp_path)[layout])
    checked, ran = check_and_run(config, "config")
    assert checked == ran
    assert keys[0] in ran and keys[1] in ran, ran
    assert ran.startswith(f"{config}:"), ran  # the line of the offending key
    assert "same folder" in ran or "is inside" in ran, ran


def test_quick_start_layout_inside_the_watch_folder_stays_valid(tmp_path: Path) -> None:
    watch = tmp_path / "in"
    config = with_overrides(
        Config(),
        watch={"folder": watch},
        quarantine={"folder": watch / ".quarantine"},
        state={"folder": watch / ".state"},
    )
    assert config.state.folder == watch / ".state"


def test_quarantine_that_cannot_be_a_folder_fails_check_and_degrades_run_in_the_same_words(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Callable[..., Subscriber]
) -> None:
    # A quarantine that cannot take files does not stop the daemon (verdicts still flow, the
    # rejected files wait in the watch folder): check fails on it, run reports it at once.
    station = Station(tmp_path / "st", mosquitto.url, station="xr-q")
    (tmp_path / "st" / "not-a-folder").write_text("a file where the quarantine should be")
    where = tmp_path / "st" / "not-a-folder" / "q"
    text = station.config_path.read_text().replace(str(station.quarantine), str(where))
    station.config_path.write_text(text)
    checked = _cli("check", "--config", str(station.config_path), "--skip-broker")
    assert checked.returncode == 1, checked.stdout
    (fail,) = [x for x in checked.stdout.splitlines() if x.startswith("FAIL")]
    assert fail.startswith("FAIL  config: quarantine.folder: ") and str(where) in fail, fail
    sub = subscriber(mosquitto, f"{station.base}/status")
    try:
        station.start()
        status = json.loads(sub.wait_for(f"{station.base}/status", 1, timeout=30)[-1].payload)
    finally:
        station.close()
    assert status["state"] == "degraded"
    assert status["problems"]["quarantine"] == fail.removeprefix("FAIL  config: ")


def test_tampered_extra_pack_is_named_by_check_and_run_alike(tmp_path: Path) -> None:
    pack = tmp_path / "extra-pack"
    shutil.copytree(default_pack_dir(), pack)
    view = pack / "view.onnx"
    data = bytearray(view.read_bytes())
    data[len(data) // 2] ^= 0xFF
    view.write_bytes(bytes(data))
    config = _config(tmp_path, pack={"extra": [str(pack)], "bundled": False})
    checked, ran = check_and_run(config, "pack")
    assert checked == ran
    assert ran.startswith(f"pack.extra[0] {pack}:") and "view.onnx" in ran and "sha256" in ran, ran


def test_check_creates_nothing_and_says_run_will(tmp_path: Path) -> None:
    config = _config(tmp_path)
    checked = _cli("check", "--config", str(config), "--skip-broker")
    assert checked.returncode == 0, checked.stdout
    (line,) = [x for x in checked.stdout.splitlines() if x.startswith("ok    config")]
    assert f"state {tmp_path / 'state'}" in line and "run creates it" in line and "free" in line, line
    assert not (tmp_path / "state").exists() and not (tmp_path / "q").exists()


# -- ranges ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("[ingest]\nmax_side = 0\n", "ingest.max_side", 2),
        ("[watch]\nsettle_seconds = -1.0\n", "watch.settle_seconds", 2),
        ("[watch]\nsettle_seconds = nan\n", "watch.settle_seconds", 2),
        ("[watch]\nincomplete_deadline_seconds = 1e9\n", "watch.incomplete_deadline_seconds", 2),
        ("[service]\nstatus_interval_seconds = 3e6\n", "service.status_interval_seconds", 2),
        ("[service]\nstall_seconds = inf\n", "service.stall_seconds", 2),
        ("[service]\nstop_timeout_seconds = 0.0\n", "service.stop_timeout_seconds", 2),
        ('[service]\nmetrics_listen = "127.0.0.1:70000"\n', "service.metrics_listen", 2),
        ('[mqtt]\nurl = "mqtt://broker:0"\n', "mqtt.url", 2),
        ("[mqtt]\nkeepalive = 0\n", "mqtt.keepalive", 2),
        ("[mqtt]\nkeepalive = 70000\n", "mqtt.keepalive", 2),
        ("[inference]\nthreads = 0\n", "inference.threads", 2),
        ("[inference]\nmax_batch = 100000\nbatch_files = 1\n", "inference.max_batch", 2),
        ("[state]\noutbox_max_messages = 5\n", "state.outbox_max_messages", 2),
        ("[state]\nmin_free_mb = 0\n", "state.min_free_mb", 2),
        ("[verdict]\nthumbnail_size = 8\n", "verdict.thumbnail_size", 2),
    ],
)
def test_numbers_out_of_range_are_refused_with_key_and_line(text: str, key: str, line: int) -> None:
    with pytest.raises(ConfigError) as err:
        parse('site = "a"\n' + text, "box.toml")
    assert f"box.toml:{line + 1}: {key}: " in str(err.value), str(err.value)


def test_numbers_at_the_edges_of_their_ranges_are_accepted() -> None:
    text = (
        "[ingest]\nmax_side = 64\n[mqtt]\nkeepalive = 5\n[service]\nstatus_interval_seconds = 86400.0\n"
        "[state]\nmin_free_mb = 1\n"
    )
    config = parse(text, "box.toml")
    assert config.ingest.max_side == 64 and config.mqtt.keepalive == 5 and config.state.min_free_mb == 1
