"""A chest pack's verdicts in the dashboard, in a real browser: the heatmap and the lung-coverage
rules a ward and a reviewer see.

Real parts: a mosquitto broker, one ``edge-worker run`` daemon on the repository's chest pack
(``models/packs/chest``, copied into the test's tmp folder) with thumbnails, heatmap overlays
and review copies on, a real DX chest radiograph (NIH ChestX-ray14, from ../shared) and a copy
of it cut at the top so that its lung fields reach the top edge, the dashboard in-process with
its review pages (SQLite), and headless chromium driven by selenium.

The ward tile must show exactly the decision, the reasons' sentences and the first heatmap
overlay of the verdict the test heard on the broker, and the review page must draw that
verdict's own overlay (with its toggle) over the image and list its rule outcomes, whatever the
pack decides.  Of a full build (not a smoke one) the test also asks that the cut copy, and only
it, fail ``lung_cut_off_top`` with the rule's sentence among the reasons.  Screenshots: ``chest-*.png`` in the test's tmp folder (and in
``$EDGE_WORKER_SCREENSHOT_DIR`` when set).

Skipped where the chest pack, ../shared, chromium, chromedriver or selenium is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e .[dev])")
pytest.importorskip("sqlalchemy")

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.browser import NEEDS_CHROMIUM, browser, daemon_config, screenshot, stop_process  # noqa: F401
from tests.review_http import PASSWORD, Running, config_for, start_dashboard, until

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "models" / "packs" / "chest"
DX = ROOT.parent / "shared" / "data" / "radiographs" / "dicom" / "nhsx_nih_cxr14_DX.dcm"
SITE, STATION = "chest-ward", "xr-chest"
#: The share of rows cut from the top.  The apices of this radiograph lie in its top tenth, so
#: any cut of a fifth or more runs the lung fields into the top edge; the full chest pack of
#: 2026-12-04 (``chest`` 2.0.0) still left one row of its 128-row mask above them up to three
#: tenths (margin 0.0078, rule passed) and found them cut from 0.35 on.  Four tenths is clear.
CUT_TOP = 0.4

pytestmark = [
    NEEDS_CHROMIUM,
    pytest.mark.shared,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not (PACK / "manifest.json").is_file(), reason=f"no chest pack at {PACK} (edge-export build)"),
    pytest.mark.skipif(not DX.is_file(), reason=f"real radiographs not found at {DX.parent}"),
]

TILE_JS = """const t = document.querySelector('.tile[data-key="' + arguments[0] + '"]');
return t ? {data: Object.assign({}, t.dataset), decision: t.querySelector('.decision').textContent,
            reason: t.querySelector('.reason').textContent, thumb: t.querySelector('.thumb').getAttribute('src'),
            heat: t.querySelector('.heat').getAttribute('src'), heatShown: !t.querySelector('.heat').hidden,
            legend: t.querySelector('.heat-legend').textContent} : null;"""
LABELS_JS = "return Object.assign({}, document.body.dataset);"


def cut_at_top(source: Path, target: Path, share: float) -> pydicom.Dataset:
    """Write ``source`` with its top ``share`` of rows cut off, as a new image: new SOP Instance
    UID, Rows updated, uncompressed pixel data (Explicit VR Little Endian).  Returns the dataset."""
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array
    kept = pixels[round(pixels.shape[0] * share):]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = kept.shape
    ds.PixelData = kept.astype(pixels.dtype).tobytes()
    ds.save_as(target, enforce_file_format=True)
    return ds


def _drop(source: Path, watch: Path, name: str) -> None:
    """Copy ``source`` in under a hidden name, then rename it: the modality's move-in."""
    temp = watch / f".{name}.part"
    shutil.copyfile(source, temp)
    os.replace(temp, watch / name)


@pytest.fixture
def daemon(tmp_path: Path, mosquitto: Any) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """One daemon on a copy of the chest pack: ``(process, watch folder, log)``."""
    pack = tmp_path / "pack"
    shutil.copytree(PACK, pack)
    root = tmp_path / STATION
    (root / "incoming").mkdir(parents=True)
    # The NIH file names no body part (only StudyDescription "No Finding"): a chest room's
    # station sends such images to its chest pack.
    name = json.loads((pack / "manifest.json").read_text())["name"]
    config = daemon_config(root, SITE, STATION, mosquitto.url, True, review_copy=True, pack=pack,
                           default_pack=name, heatmap_overlay=True)  # fmt: skip
    log = root / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edge_worker", "run", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        yield proc, root / "incoming", log
    finally:
        stop_process(proc)


def _tile(driver: Any) -> dict[str, Any] | None:
    return driver.execute_script(TILE_JS, f"{SITE}/{STATION}")  # type: ignore[no-any-return]


def _full_build() -> bool:
    """Whether the chest pack is a full build: a smoke build (preset ``short``) decides at random."""
    manifest = json.loads((PACK / "manifest.json").read_text())
    return manifest.get("training_data", {}).get("preset") != "short"


def _heard(sub: Any, topic: str, n: int) -> bool:
    """Whether ``n`` verdicts came on ``topic``; a rejection instead fails at once, with its reason."""
    errors = sub.messages(topic.rsplit("/", 1)[0] + "/error")
    if errors:
        raise AssertionError(f"the daemon rejected a file: {errors[-1].payload.decode()[:800]}")
    return len(sub.messages(topic)) >= n


def _first_overlay(verdict: dict[str, Any]) -> tuple[str, str] | None:
    """The first ``heatmaps.<label>.overlay`` of the verdict, as the board picks it (never a
    research stage's: paper 004's finding classifier stays off the ward tile)."""
    for label, heat in (verdict.get("heatmaps") or {}).items():
        if isinstance(heat, dict) and isinstance(heat.get("overlay"), str) and not heat.get("research_only"):
            return label, heat["overlay"]
    return None


def _check_tile(driver: Any, verdict: dict[str, Any]) -> None:
    """The ward tile shows exactly this verdict: decision, every reason's sentence, the heatmap."""
    until(lambda: ((t := _tile(driver)) and t["data"].get("verdictId") == verdict["id"]), 15, f"the tile of {verdict['id']}")
    tile = _tile(driver)
    assert tile is not None
    assert tile["data"]["decision"] == verdict["decision"], tile["data"]
    assert tile["reason"] == " \u00b7 ".join(r["text"] for r in verdict["reasons"])
    assert tile["thumb"] == verdict["thumbnail"]
    assert verdict["roi"] is None or verdict["roi"].get("box") is None  # a chest pack finds no ROI box
    first = _first_overlay(verdict)
    assert first is not None, "a chest verdict with heatmap_overlay on carries an overlay"
    label, overlay = first
    assert (tile["data"]["heatmap"], tile["heat"], tile["heatShown"]) == (label, overlay, True)
    assert tile["legend"] == f"heatmap: {label} (what the view network looked at)"


def _check_review_page(driver: Any, base: str, verdict: dict[str, Any]) -> None:
    """The verdict's review page: its image with its own overlays and the toggle, its rules."""
    driver.get(f"{base}review/verdict/{verdict['id']}")
    until(lambda: driver.find_elements("id", "review-image"), 10, f"the review image of {verdict['id']}")
    layers = driver.execute_script(
        "return Array.from(document.querySelectorAll('#review-image .heatmap')).map("
        "(l) => [l.dataset.label, l.getAttribute('href'), l.getAttribute('visibility')]);"
    )
    maps = verdict["heatmaps"].items()
    expected = sorted((label, heat["overlay"]) for label, heat in maps if "overlay" in heat and not heat["research_only"])
    assert sorted((label, href) for label, href, _ in layers) == expected
    assert all(shown == "visible" for _, _, shown in layers)
    # The research classifier's map: on the page, hidden until its own toggle is ticked.
    research = driver.execute_script(
        "return Array.from(document.querySelectorAll('#review-image .heatmap-research')).map("
        "(l) => [l.dataset.label, l.getAttribute('href'), l.getAttribute('visibility')]);"
    )
    wanted = sorted((label, heat["overlay"]) for label, heat in maps if "overlay" in heat and heat["research_only"])
    assert sorted((label, href) for label, href, _ in research) == wanted
    assert all(shown == "hidden" for _, _, shown in research)
    rules = driver.execute_script(
        "return Array.from(document.querySelectorAll('#rules tbody tr')).map((r) => [r.dataset.code, r.dataset.status]);"
    )
    assert [tuple(r) for r in rules] == [(r["code"], r["status"]) for r in verdict["rules"]]
    reasons = driver.execute_script(
        "return Array.from(document.querySelectorAll('ul.reasons li')).map((li) => [li.dataset.code, li.textContent]);"
    )
    assert [code for code, _ in reasons] == [r["code"] for r in verdict["reasons"]]
    assert all(text.endswith(f": {r['text']}") for (_, text), r in zip(reasons, verdict["reasons"]))


def test_chest_verdicts_heatmap_and_lung_coverage_in_a_real_browser(
    mosquitto: Any, daemon: tuple[subprocess.Popen[bytes], Path, Path], browser: Any,  # noqa: F811
    subscriber: Any, tmp_path: Path,
) -> None:  # fmt: skip
    proc, watch, log = daemon
    driver = browser
    sub = subscriber(mosquitto, f"xray/{SITE}/{STATION}/#")
    run: Running = start_dashboard(mosquitto, config_for(tmp_path), users=(("ann", "tier1"),))
    try:
        base = run.dashboard.url
        driver.get(base + "review/signin?next=/")
        driver.find_element("id", "name").send_keys("ann")
        driver.find_element("id", "password").send_keys(PASSWORD)
        driver.find_element("id", "signin").click()
        until(lambda: driver.execute_script("return document.body.dataset.server") == "live", 15, "the board live")
        sub.wait_for(f"xray/{SITE}/{STATION}/availability", 1, timeout=90)

        # The whole chest, then the same chest cut at the top: one verdict each, in turn.
        cut = tmp_path / "cut-top.dcm"
        cut_at_top(DX, cut, CUT_TOP)
        verdicts: dict[str, dict[str, Any]] = {}
        topic = f"xray/{SITE}/{STATION}/verdict"
        for n, (name, source) in enumerate((("whole", DX), ("cut", cut)), start=1):
            _drop(source, watch, f"IMG{n:04d}.dcm")
            try:
                until(partial(_heard, sub, topic, n), 90, f"the verdict of {name}")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; daemon log:\n{log.read_text(errors='replace')[-3000:]}") from None
            verdict = json.loads(sub.messages(topic)[-1].payload)
            verdicts[name] = verdict
            _check_tile(driver, verdict)
            assert screenshot(driver, tmp_path, f"chest-board-{name}.png").stat().st_size > 10_000
        whole, cropped = verdicts["whole"], verdicts["cut"]
        assert whole["id"] != cropped["id"] and whole["sop_instance_uid"] != cropped["sop_instance_uid"]
        tile = _tile(driver)
        assert tile is not None
        history = tile["data"]["history"]
        assert history == f"{whole['decision']},{cropped['decision']}"
        # A failed lung-edge rule is a rule_failed reason naming it, with the rule's sentence.
        for verdict in verdicts.values():
            failed = {r["code"] for r in verdict["rules"] if r["status"] == "fail"}
            named = {r["rule"] for r in verdict["reasons"] if r["code"] == "rule_failed"}
            assert failed == named, (failed, named)
        # A full build (not a smoke one, whose networks are untrained) sees the cut: the whole
        # chest's top margin passes, the cut one's fails, and its verdict says so in words.
        if _full_build():
            top = {name: next(r for r in v["rules"] if r["code"] == "lung_cut_off_top") for name, v in verdicts.items()}
            assert (top["whole"]["status"], top["cut"]["status"]) == ("pass", "fail"), top
            reason = next(r for r in cropped["reasons"] if r.get("rule") == "lung_cut_off_top")
            assert reason["code"] == "rule_failed" and reason["text"].startswith("Lung field cut off at the top")

        # The review side: each verdict's page once its copy has come (through the outbox).
        copies = run.parts.copies
        assert copies is not None, "the review copy store is part of the review extra"
        for name, verdict in verdicts.items():
            until(partial(copies.get, verdict["id"]), 30, f"the review copy of {name}")
            _check_review_page(driver, base, verdict)
            assert screenshot(driver, tmp_path, f"chest-review-{name}.png").stat().st_size > 10_000
        layer = 'return document.querySelector("#review-image .heatmap").getAttribute("visibility");'
        driver.find_element("id", "heatmap-toggle").click()
        assert driver.execute_script(layer) == "hidden"
        screenshot(driver, tmp_path, "chest-review-cut-heatmap-off.png")
        driver.find_element("id", "heatmap-toggle").click()
        assert driver.execute_script(layer) == "visible"
        # The bundled pack's research classifier maps frontal chests: its toggle shows its map.
        research_maps = [h for h in cropped["heatmaps"].values() if h["research_only"]]
        if _full_build() and cropped["view"]["label"] in ("AP", "PA"):
            assert research_maps, "the full chest pack's research finding classifier maps a frontal chest"
        if research_maps:
            toggle = driver.find_element("id", "research-heatmap-toggle")
            assert "research only, not a diagnosis" in toggle.find_element("xpath", "..").text
            research = 'return document.querySelector("#review-image .heatmap-research").getAttribute("visibility");'
            toggle.click()
            assert driver.execute_script(research) == "visible"
            screenshot(driver, tmp_path, "chest-review-cut-research-heatmap.png")
        assert proc.poll() is None, "the daemon died"
    finally:
        run.stop()
    print("chest verdicts:", {n: (v["decision"], [r["code"] for r in v["rules"] if r["status"] == "fail"])
                              for n, v in verdicts.items()})  # fmt: skip
