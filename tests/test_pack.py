"""Loading a model pack: the committed demo pack verifies; any tampering is refused clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_worker.errors import PackError
from edge_worker.packs.pack import MANIFEST_SEAL, SCHEMA, default_pack_dir, load_pack, seal_manifest


@pytest.fixture
def pack_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "pack"
    shutil.copytree(default_pack_dir(), dest)
    return dest


def test_demo_pack_loads_and_is_labelled_synthetic() -> None:
    pack = load_pack()
    assert pack.name == "ankle-demo"
    assert pack.not_for_clinical_use is True
    assert pack.synthetic
    tasks = {(s.role, s.applies_to_view) for s in pack.stages}
    assert {("view", None), ("roi", "AP"), ("roi", "LAT"), ("quality", "AP"), ("quality", "LAT"), ("orientation", None)} <= tasks
    view = pack.stage("view")
    assert view is not None and set(view.labels) == {"AP", "LAT"}
    # Figures measured on unseen phantoms are part of the pack.
    assert pack.validation
    size = sum(f.stat().st_size for f in pack.root.iterdir())
    assert size <= 25 * 1024 * 1024


def test_modified_model_file_is_refused(pack_copy: Path) -> None:
    model = pack_copy / "view.onnx"
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(PackError, match=r"sha256 mismatch for view\.onnx"):
        load_pack(pack_copy)


def test_missing_file_and_bad_manifest_are_refused(pack_copy: Path) -> None:
    manifest = json.loads((pack_copy / "manifest.json").read_text())
    (pack_copy / manifest["stages"][0]["file"]).unlink()
    with pytest.raises(PackError, match="is missing"):
        load_pack(pack_copy)
    manifest["schema"] = "something-else@9"
    (pack_copy / "manifest.json").write_text(json.dumps(manifest))
    seal_manifest(pack_copy)  # the shape is checked after the seal
    with pytest.raises(PackError, match=f"this worker reads '{SCHEMA}'"):
        load_pack(pack_copy)
    (pack_copy / "manifest.json").write_text("{not json")
    seal_manifest(pack_copy)
    with pytest.raises(PackError, match="unreadable manifest"):
        load_pack(pack_copy)
    with pytest.raises(PackError, match="no manifest.json"):
        load_pack(pack_copy / "nowhere")


def test_unknown_task_is_refused(pack_copy: Path) -> None:
    manifest = json.loads((pack_copy / "manifest.json").read_text())
    manifest["stages"][0]["task"] = "fracture"
    (pack_copy / "manifest.json").write_text(json.dumps(manifest))
    seal_manifest(pack_copy)
    with pytest.raises(PackError, match="unknown task 'fracture'"):
        load_pack(pack_copy)


def test_an_edited_manifest_is_refused_like_an_edited_network(pack_copy: Path) -> None:
    manifest = json.loads((pack_copy / "manifest.json").read_text())
    view = next(s for s in manifest["stages"] if s["name"] == "view")
    view["thresholds"]["min_confidence"] = 0.1  # would turn unsure views into confident ones
    (pack_copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(PackError, match=r"sha256 mismatch for manifest\.json.*edge-export seal"):
        load_pack(pack_copy)
    (pack_copy / MANIFEST_SEAL).unlink()
    with pytest.raises(PackError, match="not sealed"):
        load_pack(pack_copy)


def test_the_pack_digest_follows_content_not_name_and_version(pack_copy: Path) -> None:
    original = load_pack()
    copy = load_pack(pack_copy)
    assert copy.digest == original.digest and len(copy.digest) == 64
    assert copy.describe()["digest"] == copy.digest
    # Same name and version, one threshold changed and sealed: another pack, another digest.
    manifest = json.loads((pack_copy / "manifest.json").read_text())
    manifest["stages"][0]["thresholds"]["min_confidence"] = 0.81
    (pack_copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    seal_manifest(pack_copy)
    edited = load_pack(pack_copy)
    assert (edited.name, edited.version) == (original.name, original.version)
    assert edited.digest != original.digest
    # Any other file of the folder counts too.
    (pack_copy / "README.md").write_text("notes")
    assert load_pack(pack_copy).digest not in (original.digest, edited.digest)
