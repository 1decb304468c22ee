"""A canary plan with a real mosquitto and two real daemons: canary xr-01 and follower xr-02.

Plan 1 names a pack that decides like the running one: the canary installs it at once, judges
its next images with both packs, reports agreement 1.0 and ``accepted``; only then does the
follower install it (its verdicts carry the old digest until then).  Plan 2 names a pack that
passes its own self-test but decides differently on live images: the canary rolls itself back
to the pack before it, and the follower holds and never installs it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto, Subscriber

from edge_worker.packs.pack import default_pack_dir, load_pack, seal_manifest
from tests.stations import ROOT, PhantomStock, Station

pytestmark = pytest.mark.broker
jsonschema = pytest.importorskip("jsonschema")
SCHEMAS = {name: json.loads((ROOT / "edge_worker" / "schema" / f"{name}.schema.json").read_text())
           for name in ("rollout-plan", "rollout-status", "pack")}  # fmt: skip
SITE = "can"


def _pack(src: Path, dest: Path, change: Callable[[dict[str, Any]], None]) -> str:
    shutil.copytree(src, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    change(manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    seal_manifest(dest)
    return load_pack(dest).digest


def _strict_view(manifest: dict[str, Any]) -> None:
    # Almost no view is confident enough: most decisions become "review" on live images.
    next(s for s in manifest["stages"] if s["name"] == "view")["thresholds"]["min_confidence"] = 0.99999


def _publish_retained(broker: Mosquitto, topic: str, doc: dict[str, Any]) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-rollout-tool", protocol=paho.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish(topic, json.dumps(doc), qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def _wait_state(sub: Subscriber, topic: str, plan: str, state: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in sub.messages(topic):
            doc = json.loads(m.payload)
            if doc["plan"] == plan and doc["state"] == state:
                return doc
        time.sleep(0.1)
    seen = [(json.loads(m.payload)["plan"], json.loads(m.payload)["state"]) for m in sub.messages(topic)]
    pytest.fail(f"no {state!r} for plan {plan} on {topic} within {timeout} s; saw {seen}")


def test_followers_wait_for_the_canarys_agreement_and_a_disagreeing_canary_rolls_back(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Callable[..., Subscriber],
    stations: Callable[..., Station],
) -> None:  # fmt: skip
    v1, store = tmp_path / "ankle-v1", tmp_path / "store"
    shutil.copytree(default_pack_dir(), v1)
    old = load_pack(v1).digest
    good = _pack(v1, store / "ankle-v2", lambda m: m.update(description="v2: decides like v1"))
    stock = PhantomStock(tmp_path / "stock")
    # Test images of its own, with no expected decision: the self-test passes on any verdict, so
    # only the live agreement can stop this pack.
    bad_src = tmp_path / "strict-src"
    shutil.copytree(v1, bad_src)
    (bad_src / "tests").mkdir()
    shutil.copyfile(stock.path(1), bad_src / "tests" / "p1.dcm")
    (bad_src / "tests" / "expected.json").write_text(json.dumps({"p1.dcm": {}}))
    bad = _pack(bad_src, store / "ankle-strict", _strict_view)

    def station(name: str, protocol: str) -> Station:
        return stations(tmp_path / name, mosquitto.url, site=SITE, station=name, tables={
            "mqtt": {"protocol": protocol},
            "pack": {"path": str(v1), "bundled": False, "rollout_folder": str(tmp_path / name / "packs"),
                     "commands": True, "store_folder": str(store), "canary_max_verdicts": 50},
        })  # fmt: skip

    canary, follower = station("xr-01", "5"), station("xr-02", "3.1.1")  # both listeners' sessions
    c_status, f_status = f"{canary.base}/rollout/status", f"{follower.base}/rollout/status"
    c_pack, f_pack = f"{canary.base}/pack", f"{follower.base}/pack"
    c_verdicts, f_verdicts = f"{canary.base}/verdict", f"{follower.base}/verdict"
    sub = subscriber(mosquitto, f"xray/{SITE}/#")
    for s in (canary, follower):
        s.start()
    for s in (canary, follower):
        deadline = time.monotonic() + 30
        while "commands: listening on" not in s.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)

    def digest(topic: str, n: int) -> str:
        return str(json.loads(sub.wait_for(topic, n, timeout=90)[n - 1].payload)["pack"]["digest"])

    # -- plan 1: the canary agrees; the follower installs after it, not before -------------
    plan1 = {"schema": "xray-qc/rollout-plan@1", "id": "plan-1", "pack": "ankle-v2", "digest": good,
             "canary": "xr-01", "min_verdicts": 3, "min_agreement": 0.9, "issued_by": "test"}  # fmt: skip
    jsonschema.validate(plan1, SCHEMAS["rollout-plan"])
    _publish_retained(mosquitto, f"xray/{SITE}/rollout", plan1)
    _wait_state(sub, c_status, "plan-1", "shadow", timeout=180)
    _wait_state(sub, f_status, "plan-1", "waiting")
    follower_sent = 1
    follower.watch.mkdir(exist_ok=True)
    stock.drop(2, follower.watch)
    assert digest(f_verdicts, follower_sent) == old  # the follower waits
    for seed in (3, 4, 5):
        stock.drop(seed, canary.watch)
        time.sleep(0.5)  # one image per batch: the shadow count moves image by image
    accepted = _wait_state(sub, c_status, "plan-1", "accepted")
    assert (accepted["verdicts"], accepted["agreed"], accepted["agreement"]) == (3, 3, 1.0), accepted
    assert [digest(c_verdicts, n) for n in (1, 2, 3)] == [good] * 3
    _wait_state(sub, f_status, "plan-1", "accepted", timeout=180)
    decision = json.loads(sub.wait_for(f_pack, 1, timeout=30)[0].payload)
    assert (decision["state"], decision["digest"], decision["previous_digest"]) == ("accepted", good, old)
    stock.drop(6, follower.watch)
    assert digest(f_verdicts, 2) == good

    # -- plan 2: the canary's live decisions differ; it rolls back, the follower holds -----
    plan2 = {**plan1, "id": "plan-2", "pack": "ankle-strict", "digest": bad}
    _publish_retained(mosquitto, f"xray/{SITE}/rollout", plan2)
    _wait_state(sub, c_status, "plan-2", "shadow", timeout=180)
    for seed in (5, 6, 3):  # v1/v2 decide retake, ok, ok; the strict pack review, review, review
        stock.drop(seed, canary.watch, name=f"again-{seed}.dcm")
        time.sleep(0.5)
    rolled = _wait_state(sub, c_status, "plan-2", "rolled_back")
    assert rolled["verdicts"] == 3 and rolled["agreement"] < 0.9 and rolled["differing"], rolled
    held = _wait_state(sub, f_status, "plan-2", "held")
    assert "rolled_back" in held["reason"], held
    back = json.loads(sub.wait_for(c_pack, 3, timeout=30)[-1].payload)
    assert (back["state"], back["digest"], back["previous_digest"]) == ("rolled_back", good, bad), back
    stock.drop(7, canary.watch)
    stock.drop(8, follower.watch)
    assert digest(c_verdicts, 7) == good and digest(f_verdicts, 3) == good
    assert len(sub.messages(f_pack)) == 1  # the follower never installed the strict pack
    assert not list((tmp_path / "xr-02" / "packs").glob("ankle-strict*"))
    for topic in (c_status, f_status):
        for m in sub.messages(topic):
            jsonschema.validate(json.loads(m.payload), SCHEMAS["rollout-status"])
    for topic in (c_pack, f_pack):
        for m in sub.messages(topic):
            jsonschema.validate(json.loads(m.payload), SCHEMAS["pack"])
    assert canary.alive() and follower.alive()
