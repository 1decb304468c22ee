"""MR series through the real daemon (a subprocess) and a real mosquitto.

Every refusal is one typed error message per series, with every file of it quarantined under
that reason; nothing is held forever (a series that never completes times out); a radiograph
dropped while a series waits is judged at once; files left by a stopped daemon are collected
again at the next start.  The verdict path needs mri-model's volume pack (``Pipeline.
judge_volume`` and ``models/packs/mri-demo``): that test skips, saying so, until it exists.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_worker.phantoms.ankle import write_phantom
from edge_worker.phantoms.mri_dicom import SeriesSpec, write_enhanced, write_series
from tests.stations import ROOT, Station, wait_until

jsonschema = pytest.importorskip("jsonschema")

SCHEMAS = ROOT / "edge_worker" / "schema"
MRI_PACK = ROOT / "models" / "packs" / "mri-demo"


def _volume(shape: tuple[int, int, int] = (12, 40, 48), seed: int = 0) -> np.ndarray:
    from edge_worker.phantoms.mri import make_head

    return make_head(seed, shape, (1.0, 1.0, 1.0))


def _series_station(
    stations: Callable[..., Station], tmp_path: Path, url: str, **series: object
) -> Station:
    tables = {"series": {"enabled": True, "quiet_seconds": 1.0, "max_wait_seconds": 20.0,
                         "max_voxels": 64**3, **series}}  # fmt: skip
    return stations(tmp_path, url, site="mri", station="mr-01", tables=tables)


def _messages(sub: object, base: str, kind: str) -> list[dict]:
    return [json.loads(m.payload) for m in sub.messages(f"{base}/{kind}")]  # type: ignore[attr-defined]


def test_every_refusal_is_one_typed_error_and_radiographs_do_not_wait(
    stations: Callable[..., Station],
    mosquitto: object,
    subscriber: Callable[..., object],
    tmp_path: Path,
) -> None:
    station = _series_station(stations, tmp_path, mosquitto.url)  # type: ignore[attr-defined]
    sub = subscriber(mosquitto, f"{station.base}/#")
    station.start()
    w = station.watch
    cases = {
        "slice_missing": write_series(_volume(), w / "a", drop=(5,)),
        "positions_duplicated": write_series(_volume(), w / "b", duplicate=4),
        "orientation_inconsistent": write_series(_volume(), w / "c", tilt=(6, 5.0)),
        "volume_too_large": write_series(_volume((8, 256, 160)), w / "e"),
        "no_pack_for_body_part": write_series(_volume(), w / "f"),  # complete, but no [series] pack
    }
    short = write_series(_volume(), tmp_path / "short")[:5]
    (w / "d").mkdir()
    for p in short:
        p.replace(w / "d" / p.name)
    cases["series_timeout"] = [w / "d" / p.name for p in short]
    uid = SeriesSpec().series_uid
    mixed = write_series(_volume(), w / "g", SeriesSpec(series_uid=uid))
    for p in write_series(
        _volume((12, 32, 32)), tmp_path / "small", SeriesSpec(series_uid=uid), prefix="small"
    )[:3]:
        mixed.append(p.replace(w / "g" / p.name))
    cases["series_mixed"] = mixed
    # A radiograph while the series wait: its verdict comes before any series times out.
    dropped = time.monotonic()
    write_phantom(w / ".ankle.tmp", seed=3, view="AP", grade=1, size=512)
    (w / ".ankle.tmp").replace(w / "ankle.dcm")
    wait_until(
        "the radiograph's verdict", lambda: _messages(sub, station.base, "verdict"), 30, station
    )
    radiograph_s = time.monotonic() - dropped
    errors_then = _messages(sub, station.base, "error")
    assert not [e for e in errors_then if e["reason"] in ("series_timeout", "slice_missing")], (
        errors_then
    )
    wait_until(
        "one error per series",
        lambda: len(_messages(sub, station.base, "error")) >= len(cases),
        60,
        station,
    )
    time.sleep(2.0)  # a second message for any series would show up now
    errors = _messages(sub, station.base, "error")
    assert sorted(e["reason"] for e in errors) == sorted(cases), errors
    validator = jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / "error.schema.json").read_text())
    )
    for e in errors:
        validator.validate(e)
        files = cases[e["reason"]]
        assert e["series"]["files"] == len(files) and len(e["series"]["quarantined"]) == len(files)
        for name in e["series"]["quarantined"]:
            reason = json.loads((station.quarantine / f"{name}.reason.json").read_text())
            assert reason["reason"] == e["reason"]
        assert not any(p.exists() for p in files), "a refused file stayed in the watch folder"
    (verdict,) = _messages(sub, station.base, "verdict")
    assert verdict["modality"] != "MR" and "series" not in verdict
    assert radiograph_s < 20.0  # within the series' max wait: it did not queue behind them


def test_a_series_left_by_a_stopped_daemon_is_collected_again_and_enhanced_files_work(
    stations: Callable[..., Station],
    mosquitto: object,
    subscriber: Callable[..., object],
    tmp_path: Path,
) -> None:
    station = _series_station(
        stations, tmp_path, mosquitto.url, quiet_seconds=3.0, max_wait_seconds=60.0
    )  # type: ignore[attr-defined]
    sub = subscriber(mosquitto, f"{station.base}/#")
    station.start()
    paths = write_series(_volume(), tmp_path / "src")
    (station.watch / "s").mkdir()
    for p in paths[:6]:
        p.replace(station.watch / "s" / p.name)
    time.sleep(1.0)
    station.terminate()
    for p in paths[6:]:
        p.replace(station.watch / "s" / p.name)
    station.start()
    # And one enhanced multi-frame file: a series of its own, complete as it arrives.
    write_enhanced(_volume(seed=5), station.watch / "enhanced.dcm")
    wait_until(
        "both series' messages",
        lambda: len(_messages(sub, station.base, "error")) >= 2,
        40,
        station,
    )
    time.sleep(4.0)
    errors = sorted(_messages(sub, station.base, "error"), key=lambda e: e["series"]["files"])
    # Complete across the restart (no [series] pack here: the typed refusal of a whole series).
    assert [e["reason"] for e in errors] == ["no_pack_for_body_part"] * 2
    assert [(e["series"]["files"], e["series"]["expected"]) for e in errors] == [
        (1, 12),
        (len(paths), 12),
    ]


@pytest.mark.skipif(not (MRI_PACK / "manifest.json").is_file(),
                    reason="mri-model's models/packs/mri-demo (tiled_volume stage, Pipeline.judge_volume) "
                           "has not landed on this branch")  # fmt: skip
def test_a_phantom_series_dropped_file_by_file_gives_one_verdict(
    stations: Callable[..., Station],
    mosquitto: object,
    subscriber: Callable[..., object],
    tmp_path: Path,
) -> None:
    from edge_worker.phantoms import mri  # mri-model's phantom (numpy only)

    station = _series_station(
        stations, tmp_path, mosquitto.url, pack=str(MRI_PACK), max_voxels=512 * 512 * 256
    )  # type: ignore[attr-defined]
    sub = subscriber(mosquitto, f"{station.base}/#")
    station.start()
    volume = mri.make_head(7, shape=(48, 96, 96), spacing_mm=(2.0, 2.0, 2.0))
    paths = write_series(volume, tmp_path / "src", SeriesSpec(spacing_mm=(2.0, 2.0, 2.0)))
    (station.watch / "head").mkdir()
    for p in paths:  # file by file, the way a modality sends them
        p.replace(station.watch / "head" / p.name)
        time.sleep(0.02)
    wait_until("the series verdict", lambda: _messages(sub, station.base, "verdict"), 120, station)
    time.sleep(3.0)
    (verdict,) = _messages(sub, station.base, "verdict")
    jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / "verdict.schema.json").read_text())
    ).validate(verdict)
    s = verdict["series"]
    assert s["slices"] == 48 and s["shape"] == [48, 96, 96] and s["spacing_mm"] == [2.0, 2.0, 2.0]
    assert 0.0 <= s["score"] <= 10.0 and set(s["flags"]) and s["synthetic"] is True
    assert verdict["decision"] == "review"  # a synthetic-only pack never decides alone
    assert any(r["code"] == "mri_synthetic_pack" for r in verdict["reasons"])
    assert _messages(sub, station.base, "error") == []
