"""``edge-worker check --config FILE`` as IT runs it: one clear line per problem, non-zero exit.

A bad key (named with its line), a pack file whose sha256 does not match (named), an unreachable
broker, and a backend this machine does not have; a good config against a real mosquitto
passes.  The TLS and ACL cases run in tests/test_security.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import Mosquitto, free_port

from edge_worker.packs.pack import default_pack_dir
from tests.stations import ROOT, render_toml


def _config(tmp_path: Path, url: str, **tables: dict[str, object]) -> Path:
    base: dict[str, dict[str, object]] = {
        "watch": {"folder": str(tmp_path / "in")},
        "quarantine": {"folder": str(tmp_path / "q")},
        "state": {"folder": str(tmp_path / "state")},
        "mqtt": {"url": url},
    }
    for name, values in tables.items():
        base.setdefault(name, {}).update(values)
    path = tmp_path / "edge-worker.toml"
    path.write_text(render_toml({"site": "chk", "station": "xr-01"}, base))
    return path


def check(*args: str) -> tuple[int, list[str]]:
    result = subprocess.run(
        [sys.executable, "-m", "edge_worker", "check", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    lines = [x for x in result.stdout.splitlines() if x.strip()]
    print("\n".join(lines))
    return result.returncode, lines


def failures(lines: list[str]) -> list[str]:
    return [x for x in lines if x.startswith("FAIL")]


def test_good_config_passes_against_a_real_broker(tmp_path: Path, mosquitto: Mosquitto) -> None:
    rc, lines = check("--config", str(_config(tmp_path, mosquitto.url)))
    assert rc == 0, lines
    assert [x.split(":")[0] for x in lines] == ["ok    config", "ok    pack", "ok    backend", "ok    broker"]
    assert "xray/chk/xr-01/check" in lines[-1] and "MQTT 5" in lines[-1]


def test_bad_key_is_named_with_its_line(tmp_path: Path, mosquitto: Mosquitto) -> None:
    path = _config(tmp_path, mosquitto.url)
    text = path.read_text().replace("[mqtt]\n", "[mqtt]\nkeepalive_s = 10\n")
    path.write_text(text)
    line_no = text.splitlines().index("keepalive_s = 10") + 1
    rc, lines = check("--config", str(path))
    assert rc == 1
    (fail,) = failures(lines)
    assert fail.startswith("FAIL  config:") and "mqtt.keepalive_s" in fail and f"{path}:{line_no}" in fail


def test_pack_file_with_a_wrong_sha256_is_named(tmp_path: Path, mosquitto: Mosquitto) -> None:
    pack = tmp_path / "pack"
    shutil.copytree(default_pack_dir(), pack)
    view = pack / "view.onnx"
    data = bytearray(view.read_bytes())
    data[len(data) // 2] ^= 0xFF
    view.write_bytes(bytes(data))
    rc, lines = check("--config", str(_config(tmp_path, mosquitto.url, pack={"path": str(pack)})))
    assert rc == 1
    (fail,) = failures(lines)
    assert fail.startswith("FAIL  pack:") and "view.onnx" in fail and "sha256" in fail, fail


def test_unreachable_broker(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    rc, lines = check("--config", str(_config(tmp_path, f"mqtt://127.0.0.1:{port}")))
    assert rc == 1
    (fail,) = failures(lines)
    assert fail.startswith("FAIL  broker:") and f"127.0.0.1:{port}" in fail and "refused" in fail.lower(), fail


def test_missing_backend(tmp_path: Path, mosquitto: Mosquitto) -> None:
    path = _config(tmp_path, mosquitto.url, inference={"backends": ["tensorrt", "onnxruntime-cpu"]})
    rc, lines = check("--config", str(path))
    if rc == 0:  # a box with TensorRT and a GPU: nothing is missing
        assert any(x.startswith("ok    backend: tensorrt") for x in lines)
        return
    assert rc == 1
    (fail,) = failures(lines)
    assert fail.startswith("FAIL  backend:") and "tensorrt" in fail, fail
    rc, lines = check("--config", str(path), "--backend", "onnxruntime-cpu")
    assert rc == 0, lines


def test_a_rule_over_a_missing_segment_is_named_by_check(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A version-2 pack whose rule names a structure its segmentation does not make."""
    import json

    from edge_worker.packs.pack import seal_manifest

    pack = tmp_path / "pack"
    shutil.copytree(default_pack_dir().parent / "lumbar-demo", pack)
    manifest = json.loads((pack / "manifest.json").read_text())
    rules_lat = next(s for s in manifest["stages"] if s["name"] == "rules_lat")
    rules_lat["rules"][0]["segments"] = ["spinous"]  # made by seg_ap, not by seg_lat
    (pack / "manifest.json").write_text(json.dumps(manifest))
    seal_manifest(pack)
    rc, lines = check("--config", str(_config(tmp_path, mosquitto.url, pack={"path": str(pack)})))
    assert rc == 1
    (fail,) = failures(lines)
    assert fail.startswith("FAIL  pack:") and "rules_lat" in fail and "spinous" in fail, fail
