"""Pieces the browser tests share: headless Debian chromium through chromedriver, real daemons
on the demo pack as subprocesses, phantoms dropped the way a modality delivers them, and
screenshots kept in the test's tmp folder (and in ``$EDGE_WORKER_SCREENSHOT_DIR`` when set).

Nothing is downloaded: ``SE_OFFLINE`` keeps selenium from looking for drivers online.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_worker.phantoms.ankle import write_phantom

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
NEEDS_CHROMIUM = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None, reason="needs chromium and chromedriver (apt)"
)
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1600,1000",
)  # fmt: skip


@dataclass
class Station:
    """One ``edge-worker run`` subprocess and its folders."""

    name: str
    proc: subprocess.Popen[bytes]
    watch: Path
    log: Path
    thumbnail: bool
    dropped: int = 0


def daemon_config(root: Path, site: str, name: str, url: str, thumbnail: bool, review_copy: bool = False,
                  *, pack: Path | None = None, default_pack: str = "", heatmap_overlay: bool = False) -> Path:  # fmt: skip
    """A station's TOML config under ``root``: quick settle, no metrics, thumbnails, review
    copies and heatmap overlays on or off; ``pack``: the only pack, a folder (None: the demo
    pack and the bundled ones), and ``default_pack`` the name of the pack that judges images
    whose header names no body part (``[pack] default``)."""
    path = root / "edge-worker.toml"
    # Alone: a copy of a bundled pack beside the original would cover the same body parts twice.
    pack_table = f'[pack]\npath = "{pack}"\nbundled = false\ndefault = "{default_pack}"\n' if pack is not None else ""
    path.write_text(
        f'site = "{site}"\nstation = "{name}"\n{pack_table}'
        f'[watch]\nfolder = "{root / "incoming"}"\nsettle_seconds = 0.2\n'
        f'[quarantine]\nfolder = "{root / "quarantine"}"\n'
        f'[state]\nfolder = "{root / "state"}"\n'
        f'[mqtt]\nurl = "{url}"\n'
        '[service]\nmetrics_listen = ""\n'
        f"[verdict]\nthumbnail = {'true' if thumbnail else 'false'}\n"
        f"review_copy = {'true' if review_copy else 'false'}\n"
        f"heatmap_overlay = {'true' if heatmap_overlay else 'false'}\n"
    )
    return path


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_stations(tmp_path: Path, site: str, url: str, thumbnails: Mapping[str, bool],
                   review_copies: Collection[str] = ()) -> dict[str, Station]:  # fmt: skip
    """One daemon per station name (thumbnail on or off; review copies on for the names in
    ``review_copies``), started in parallel, not yet online."""
    made: dict[str, Station] = {}
    try:
        for name, thumbnail in thumbnails.items():
            root = tmp_path / name
            (root / "incoming").mkdir(parents=True)
            log = root / "daemon.log"
            config = daemon_config(root, site, name, url, thumbnail, name in review_copies)
            with log.open("wb") as out:
                proc = subprocess.Popen([sys.executable, "-m", "edge_worker", "run", "--config", str(config)],
                                        stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
            made[name] = Station(name, proc, root / "incoming", log, thumbnail)
    except BaseException:
        for station in made.values():
            stop_process(station.proc)
        raise
    return made


def drop(station: Station, view: str, grade: int, seed: int, keep: Path | None = None) -> Path:
    """A phantom written under a hidden name and renamed in: the modality's move-in.  With
    ``keep`` (a folder) a copy of the file stays there, named like the dropped one."""
    station.dropped += 1
    name = f"IMG{station.dropped:04d}.dcm"
    temp = station.watch / f".{name}.part"
    write_phantom(temp, seed=seed, view=view, grade=grade, size=1024)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(temp, keep / f"{station.name}-{name}")
    os.replace(temp, station.watch / name)
    return station.watch / name


def chromium(profile: Path) -> Any:
    """A headless chromium driver with its own profile folder (quit it when done); the
    fixtures set ``SE_OFFLINE`` first so that selenium never looks for drivers online."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Headless Debian chromium through Debian's chromedriver."""
    monkeypatch.setenv("SE_OFFLINE", "true")
    driver = chromium(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browsers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Any]]:
    """Factory of independent browsers (own profiles, own cookies); all quit at teardown."""
    monkeypatch.setenv("SE_OFFLINE", "true")
    made: list[Any] = []

    def make() -> Any:
        made.append(chromium(tmp_path / f"chromium-profile-{len(made)}"))
        return made[-1]

    yield make
    for driver in made:
        driver.quit()


#: Screenshots meant for the README stay under this size (docs/review/*.png).
DOC_PNG_BYTES = 300_000


def _fit(source: Path, target: Path, limit: int) -> None:
    """Copy a PNG; one over ``limit`` bytes is written with fewer levels a channel (64, 32,
    16) and the strongest compression instead: a radiograph's noise is what makes them large."""
    if source.stat().st_size <= limit:
        shutil.copyfile(source, target)
        return
    import cv2

    image = cv2.imread(str(source))
    for step in (4, 8, 16):
        cv2.imwrite(str(target), (image // step) * step, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if target.stat().st_size <= limit:
            return


def screenshot(driver: Any, tmp_path: Path, name: str, publish: bool = True) -> Path:
    """Save a screenshot in ``tmp_path``; with ``publish``, copy it to
    ``$EDGE_WORKER_SCREENSHOT_DIR`` when set (made to fit :data:`DOC_PNG_BYTES`)."""
    shot = tmp_path / name
    assert driver.save_screenshot(str(shot)), "chromium took no screenshot"
    target = os.environ.get("EDGE_WORKER_SCREENSHOT_DIR")
    if target and publish:
        Path(target).mkdir(parents=True, exist_ok=True)
        _fit(shot, Path(target) / name, DOC_PNG_BYTES)
    return shot
