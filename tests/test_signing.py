"""Signed packs: ``edge-export keygen`` / ``sign`` and a worker with ``[pack] trusted_keys``.

A pack signed by a trusted key loads; an unsigned pack, one signed by another key and one
changed after signing are refused with a reason naming the pack, and ``edge-worker check``
says which key signed each pack.  Real keys, the real demo pack, the real check command.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge_worker.errors import ConfigError, PackError
from edge_worker.packs.pack import default_pack_dir, load_pack, seal_manifest
from edge_worker.packs.signing import SIGNATURE_FILE
from edge_worker.service.config import Config, PackConfig
from edge_worker.service.preflight import load_named, load_packs
from export.cli import main as export_main
from tests.stations import ROOT, render_toml


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    assert export_main(["keygen", "--out", str(tmp_path / "keys"), "--name", "ml-team"]) == 0
    return tmp_path / "keys" / "ml-team.key", tmp_path / "keys" / "ml-team.pub"


@pytest.fixture
def signed(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    pack = tmp_path / "pack"
    shutil.copytree(default_pack_dir(), pack)
    assert export_main(["sign", str(pack), "--key", str(keys[0])]) == 0
    return pack


def _config(pack: Path, *trusted: Path) -> Config:
    return Config(pack=PackConfig(path=str(pack), bundled=False,
                                  trusted_keys=tuple(str(k) for k in trusted)))


def test_keygen_writes_a_private_key_only_its_owner_reads(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in public.read_bytes()
    # A second keygen never replaces the key the team already signs with.
    assert export_main(["keygen", "--out", str(private.parent), "--name", "ml-team"]) == 1


def test_a_pack_signed_by_a_trusted_key_loads_with_its_digest_unchanged(
    signed: Path, keys: tuple[Path, Path]
) -> None:
    record = json.loads((signed / SIGNATURE_FILE).read_text())
    # The signature file is outside the digest: signing does not change the pack's identity.
    assert record["digest"] == load_pack(default_pack_dir()).digest == load_pack(signed).digest
    [(key, pack)] = load_packs(_config(signed, keys[1]))
    assert key == "pack.path" and pack.digest == record["digest"]


def test_an_unsigned_pack_is_refused_naming_it(signed: Path, keys: tuple[Path, Path]) -> None:
    (signed / SIGNATURE_FILE).unlink()
    with pytest.raises(PackError, match=rf"pack\.path {signed}.*unsigned"):
        load_packs(_config(signed, keys[1]))
    assert load_packs(_config(signed))  # no trusted keys: signatures are not required


def test_a_pack_signed_by_another_key_is_refused(
    tmp_path: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    assert export_main(["keygen", "--out", str(tmp_path / "other")]) == 0
    assert export_main(["sign", str(signed), "--key", str(tmp_path / "other/pack-signing.key")]) == 0
    with pytest.raises(PackError, match=rf"{signed}.*not among the trusted keys"):
        load_named("pack.path", signed, (str(keys[1]),))
    # Trusting both keys accepts it.
    assert load_named("pack.path", signed, (str(keys[1]), str(tmp_path / "other/pack-signing.pub")))


def test_a_pack_changed_after_signing_is_refused(signed: Path, keys: tuple[Path, Path]) -> None:
    manifest = json.loads((signed / "manifest.json").read_text())
    manifest["description"] += " (edited)"
    (signed / "manifest.json").write_text(json.dumps(manifest, indent=2))
    seal_manifest(signed)  # a valid seal: only the signature can tell
    with pytest.raises(PackError, match=rf"{signed}.*changed after signing"):
        load_named("pack.path", signed, (str(keys[1]),))


def test_a_forged_signature_record_is_refused(signed: Path, keys: tuple[Path, Path]) -> None:
    (signed / "notes.txt").write_text("added after signing\n")
    record = json.loads((signed / SIGNATURE_FILE).read_text())
    record["digest"] = load_pack(signed).digest  # claims the new digest, old signature bytes
    (signed / SIGNATURE_FILE).write_text(json.dumps(record))
    with pytest.raises(PackError, match=rf"{signed}.*does not verify"):
        load_named("pack.path", signed, (str(keys[1]),))


def test_an_unreadable_trusted_key_is_a_config_error(signed: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pack\.trusted_keys\[0\]"):
        load_named("pack.path", signed, (str(tmp_path / "missing.pub"),))


def _check(tmp_path: Path, pack: Path, pub: Path) -> tuple[int, str]:
    config = tmp_path / "edge-worker.toml"
    config.write_text(render_toml({"site": "sig", "station": "xr-01"}, {
        "watch": {"folder": str(tmp_path / "in")},
        "quarantine": {"folder": str(tmp_path / "q")},
        "state": {"folder": str(tmp_path / "state")},
        "pack": {"path": str(pack), "bundled": False, "trusted_keys": [str(pub)]},
    }))
    for name in ("in", "q", "state"):
        (tmp_path / name).mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "edge_worker", "check", "--config", str(config), "--skip-broker"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    [line] = [x for x in result.stdout.splitlines() if x.split(":")[0].endswith(" pack")]
    return result.returncode, line


def test_check_names_the_signing_key_and_refuses_a_tampered_pack(
    tmp_path: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    kid = json.loads((signed / SIGNATURE_FILE).read_text())["key_id"]
    rc, line = _check(tmp_path, signed, keys[1])
    assert rc == 0 and line.startswith("ok    pack") and f"signed by trusted key {kid}" in line
    (signed / "roi_ap.onnx").write_bytes((signed / "roi_ap.onnx").read_bytes() + b"\0")
    rc, line = _check(tmp_path, signed, keys[1])
    assert rc == 1 and line.startswith("FAIL  pack") and str(signed) in line
