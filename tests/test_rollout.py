"""Rollout without downtime, with a real daemon and a real mosquitto.

A station judging a stream of phantoms takes a new signed pack renamed into its rollout
folder: every file gets exactly one verdict, those judged before the swap carry the old pack
digest and those after it the new one.  A pack changed after signing, a half-copied pack and
one that fails warm-up are refused (retained ``pack`` message with the reason) with the
running pack untouched; ``edge-worker rollback`` brings the old digest back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Message, Mosquitto, Subscriber

from edge_worker.packs.pack import default_pack_dir, load_pack, seal_manifest
from export.cli import main as export_main
from tests.stations import ROOT, PhantomStock, Station, sop_uid

pytestmark = pytest.mark.broker
jsonschema = pytest.importorskip("jsonschema")
PACK_SCHEMA = json.loads((ROOT / "edge_worker" / "schema" / "pack.schema.json").read_text())


def _edit(pack: Path, key: Path | None, change: Callable[[dict[str, object]], None]) -> None:
    manifest = json.loads((pack / "manifest.json").read_text())
    change(manifest)
    (pack / "manifest.json").write_text(json.dumps(manifest, indent=2))
    seal_manifest(pack)
    if key is not None:
        assert export_main(["sign", str(pack), "--key", str(key)]) == 0


def _threshold(manifest: dict[str, object]) -> None:
    stages = manifest["stages"]
    assert isinstance(stages, list)
    view = next(s for s in stages if s["name"] == "view")
    view["thresholds"]["min_confidence"] = 0.79  # one threshold: another pack, same views


def _wrong_shape(manifest: dict[str, object]) -> None:
    stages = manifest["stages"]
    assert isinstance(stages, list)
    view = next(s for s in stages if s["name"] == "view")
    view["input"]["height"] = 100  # view.onnx takes 128x128: warm-up must fail


def _rename_in(src: Path, rollout: Path, name: str, drop: tuple[str, ...] = ()) -> None:
    """Copy ``src`` under a hidden name (leaving out ``drop``), then rename it in."""
    hidden = rollout / f".{name}.tmp"
    shutil.copytree(src, hidden, ignore=shutil.ignore_patterns(*drop) if drop else None)
    os.replace(hidden, rollout / name)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    assert export_main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    return tmp_path / "keys/pack-signing.key", tmp_path / "keys/pack-signing.pub"


@pytest.fixture
def station(tmp_path: Path, mosquitto: Mosquitto, keys: tuple[Path, Path]) -> Iterator[Station]:
    running = tmp_path / "ankle-v1"
    shutil.copytree(default_pack_dir(), running)
    assert export_main(["sign", str(running), "--key", str(keys[0])]) == 0
    s = Station(tmp_path / "st", mosquitto.url, site="roll", tables={
        "pack": {"path": str(running), "bundled": False, "trusted_keys": [str(keys[1])],
                 "rollout_folder": str(tmp_path / "packs")},
        "inference": {"batch_files": 2},
    })  # fmt: skip
    s.start()
    yield s
    s.close()


def test_a_pack_rolls_out_between_two_files_and_bad_packs_are_refused(
    tmp_path: Path, station: Station, mosquitto: Mosquitto,
    subscriber: Callable[..., Subscriber], keys: tuple[Path, Path],
) -> None:  # fmt: skip
    verdicts, pack_topic = f"{station.base}/verdict", f"{station.base}/pack"
    sub = subscriber(mosquitto, verdicts, pack_topic)
    stock, rollout = PhantomStock(tmp_path / "stock"), tmp_path / "packs"
    old = load_pack(tmp_path / "ankle-v1").digest
    new_pack = tmp_path / "ankle-v2"
    shutil.copytree(tmp_path / "ankle-v1", new_pack)
    _edit(new_pack, keys[0], _threshold)
    new = load_pack(new_pack).digest
    assert new != old
    sent: list[str] = []

    def drop(seeds: range) -> None:
        sent.extend(stock.drop(seed, station.watch) for seed in seeds)

    def digests(messages: list[Message]) -> list[str]:
        return [json.loads(m.payload)["pack"]["digest"] for m in messages]

    drop(range(4))
    assert set(digests(sub.wait_for(verdicts, 4, timeout=120))) == {old}
    # The stream goes on while the new pack is renamed in and checked.
    _rename_in(new_pack, rollout, "ankle-v2")
    drop(range(4, 10))
    [accepted] = sub.wait_for(pack_topic, 1, timeout=180)
    state = json.loads(accepted.payload)
    assert (state["state"], state["digest"], state["previous_digest"]) == ("accepted", new, old), state
    drop(range(10, 14))
    got = sub.wait_for(verdicts, 14, timeout=180)
    # Exactly one verdict per file; the switch happens once, between two batches.
    uids = [json.loads(m.payload)["sop_instance_uid"] for m in got]
    assert sorted(uids) == sorted(sop_uid(stock.path(seed)) for seed in range(14))
    seq = digests(got)
    switch = seq.index(new)
    assert seq[:switch] == [old] * switch and seq[switch:] == [new] * (14 - switch)
    assert seq[10:] == [new] * 4

    # Refused: changed after signing, half-copied, fails warm-up.  The running pack stays.
    tampered = tmp_path / "tampered"
    shutil.copytree(new_pack, tampered)
    _edit(tampered, None, lambda m: m.update(description="edited after signing"))
    bad_shape = tmp_path / "bad-shape"
    shutil.copytree(new_pack, bad_shape)
    _edit(bad_shape, keys[0], _wrong_shape)
    cases = [(tampered, (), "changed after signing"), (new_pack, ("view.onnx",), "view.onnx"),
             (bad_shape, (), "INVALID_ARGUMENT")]
    for n, (src, left_out, why) in enumerate(cases, start=2):
        _rename_in(src, rollout, f"candidate-{n}", left_out)
        state = json.loads(sub.wait_for(pack_topic, n, timeout=180)[-1].payload)
        assert state["state"] == "refused" and f"candidate-{n}" in state["reason"], state
        assert why in state["reason"], state
        assert not (rollout / f"candidate-{n}").exists()
    drop(range(14, 16))
    assert digests(sub.wait_for(verdicts, 16, timeout=120))[14:] == [new, new]
    # A restart keeps the rolled-out pack (ROLLOUT/current wins over pack.path).
    station.terminate()
    station.start()
    drop(range(16, 18))
    assert digests(sub.wait_for(verdicts, 18, timeout=120))[16:] == [new, new]

    # One command back to the pack before the rollout.
    result = subprocess.run(
        [sys.executable, "-m", "edge_worker", "rollback", "--config", str(station.config_path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    state = json.loads(sub.wait_for(pack_topic, 5, timeout=180)[-1].payload)
    assert (state["state"], state["digest"], state["previous_digest"]) == ("accepted", old, new), state
    drop(range(18, 20))
    assert digests(sub.wait_for(verdicts, 20, timeout=120))[18:] == [old, old]
    for message in sub.messages(pack_topic):
        jsonschema.validate(json.loads(message.payload), PACK_SCHEMA)
    # Retained: a dashboard subscribing now sees the last decision at once.
    [late] = subscriber(mosquitto, pack_topic).wait_for(pack_topic, 1, timeout=10)
    assert late.retain and json.loads(late.payload)["digest"] == old
    assert station.alive()


def test_the_self_test_uses_the_packs_own_test_images(tmp_path: Path) -> None:
    from edge_worker.errors import PackError
    from edge_worker.judging.routing import RoutedJudge, Router
    from edge_worker.packs.rollout import self_test
    from edge_worker.service.assembly import build_pipeline, ingest_policy
    from edge_worker.service.config import Config

    config = Config()
    pack = tmp_path / "pack"
    shutil.copytree(default_pack_dir(), pack)
    stock = PhantomStock(pack / "tests")
    files = [stock.path(seed) for seed in (1, 2)]
    pipeline = build_pipeline(config, pack)
    judge = RoutedJudge(Router([pipeline], {}, ""), "s", "x", ingest_policy(config))
    payloads = [o.payload for o in judge.judge_many([(f, None) for f in files])]
    expected = {f.name: {"decision": p["decision"], "view": p["view"]["label"]} for f, p in zip(files, payloads)}
    (pack / "tests" / "expected.json").write_text(json.dumps(expected))
    assert self_test(pack, ("ANKLE",), judge, judge) == "2 test images as expected"
    expected[files[0].name]["view"] = "OBLIQUE"
    (pack / "tests" / "expected.json").write_text(json.dumps(expected))
    with pytest.raises(PackError, match=r"1/2 test images differ"):
        self_test(pack, ("ANKLE",), judge, judge)
    (pack / "tests" / "expected.json").unlink()
    with pytest.raises(PackError, match="nothing proves it"):
        self_test(pack, ("KNEE",), judge, judge)
