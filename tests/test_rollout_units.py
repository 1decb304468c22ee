"""Commands and canary plans without a broker: parsing, the store's digest check, the ledger of
acted ids, the canary's count and the follower's decision, and the new config keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_worker.errors import ConfigError
from edge_worker.packs import canary
from edge_worker.packs.command import (
    Ledger,
    Refused,
    check_store,
    hand_over,
    message_id,
    parse_command,
)
from edge_worker.packs.pack import default_pack_dir, load_pack
from edge_worker.service.config import parse

DIGEST = "a" * 64


def command(**change: object) -> bytes:
    doc: dict[str, object] = {"schema": "xray-qc/command@1", "id": "c0ffee00-1", "action": "install",
                              "pack": "ankle-v2", "digest": DIGEST, "issued_by": "it", "issued_at": "now"}
    doc.update(change)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


@pytest.mark.parametrize(("raw", "why"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (command(schema="xray-qc/command@2"), "schema"),
    (command(id=None), "id"),
    (command(id="../../etc"), "id"),
    (command(action="format-disk"), "action"),
    (command(pack="../outside"), "pack"),
    (command(pack=".hidden"), "pack"),
    (command(pack=None), "pack"),
    (command(digest="abc"), "digest"),
    (command(extra=1), "unknown field"),
    (b"{" + b" " * 20000 + b"}", "at most"),
])  # fmt: skip
def test_a_malformed_command_is_refused_with_a_reason(raw: bytes, why: str) -> None:
    with pytest.raises(Refused, match=why):
        parse_command(raw)


def test_a_well_formed_command_and_the_id_of_a_refused_one() -> None:
    cmd = parse_command(command())
    assert (cmd.id, cmd.action, cmd.pack, cmd.digest) == ("c0ffee00-1", "install", "ankle-v2", DIGEST)
    assert parse_command(command(action="rollback", pack=None)).pack == ""
    assert message_id(command(action="nope")) == "c0ffee00-1"
    assert message_id(b"garbage") is None


def test_the_store_is_checked_by_digest_before_anything_else(tmp_path: Path) -> None:
    store, rollout = tmp_path / "store", tmp_path / "rollout"
    shutil.copytree(default_pack_dir(), store / "ankle-v2")
    digest = load_pack(store / "ankle-v2").digest
    assert check_store(store, "ankle-v2", digest) == store / "ankle-v2"
    with pytest.raises(Refused, match="a different pack"):
        check_store(store, "ankle-v2", DIGEST)
    with pytest.raises(Refused, match="no such folder"):
        check_store(store, "ankle-v3", digest)
    # Not even a pack: the digest is all that is looked at, so the refusal names it.
    (store / "junk").mkdir()
    (store / "junk" / "x").write_text("x")
    with pytest.raises(Refused, match="a different pack"):
        check_store(store, "junk", digest)
    target = hand_over(store / "ankle-v2", rollout, "c0ffee00")
    assert target == rollout / "ankle-v2-c0ffee00" and load_pack(target).digest == digest
    assert [p.name for p in rollout.iterdir()] == ["ankle-v2-c0ffee00"]  # no hidden copy left


def test_each_id_is_claimed_once_across_restarts(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "state" / "acted-ids")
    assert ledger.claim("a") and not ledger.claim("a") and ledger.claim("plan:a")
    again = Ledger(tmp_path / "state" / "acted-ids")
    assert "a" in again and "plan:a" in again and not again.claim("a")


def plan(**change: object) -> dict[str, object]:
    doc: dict[str, object] = {"schema": "xray-qc/rollout-plan@1", "id": "p1", "pack": "ankle-v2",
                              "digest": DIGEST, "canary": "xr-01", "min_verdicts": 4, "min_agreement": 0.9}
    doc.update(change)
    return doc


@pytest.mark.parametrize(("change", "why"), [
    ({"schema": "x"}, "schema"), ({"canary": "a/b"}, "canary"), ({"min_verdicts": 0}, "min_verdicts"),
    ({"min_verdicts": 1001}, "min_verdicts"), ({"min_verdicts": True}, "min_verdicts"),
    ({"min_agreement": 0}, "min_agreement"), ({"min_agreement": 1.5}, "min_agreement"),
    ({"min_agreement": float("nan")}, "min_agreement"), ({"x": 1}, "unknown"),
])  # fmt: skip
def test_a_bad_plan_is_refused(change: dict[str, object], why: str) -> None:
    with pytest.raises(Refused, match=why):
        canary.parse_plan(plan(**change), max_verdicts=1000)


def test_the_canary_settles_after_min_verdicts() -> None:
    p = canary.parse_plan(plan(min_verdicts=10), 1000)
    good = canary.Shadow(p)
    states = [good.observe("accept", "accept" if i else "reject", f"img-{i}") for i in range(10)]
    assert states == [canary.SHADOW] * 9 + [canary.ACCEPTED] and good.agreement == 0.9
    assert good.differing == ["img-0: reject -> accept"]
    assert good.observe("x", "y") == canary.ACCEPTED and good.verdicts == 10  # settled: no more counting
    bad = canary.Shadow(p)
    for i in range(10):
        state = bad.observe("accept", "accept" if i > 1 else "review")
    assert state == canary.ROLLED_BACK and bad.agreed == 8


def test_a_follower_installs_only_on_the_canarys_accepted_figures() -> None:
    p = canary.parse_plan(plan(), 1000)
    shadow = canary.Shadow(p)
    for _ in range(4):
        shadow.observe("accept", "accept")
    accepted = canary.status("xr-01", p, canary.ACCEPTED, "ok", shadow)
    assert canary.follow(p, accepted) == "install"
    assert canary.follow(p, {**accepted, "verdicts": 3}) == "wait"  # fewer than asked
    assert canary.follow(p, {**accepted, "agreed": 3}) == "hold"  # 3/4 < 0.9, whatever it says
    assert canary.follow(p, {**accepted, "plan": "p0"}) == "wait"  # another plan
    assert canary.follow(p, {**accepted, "digest": "b" * 64}) == "wait"  # another pack
    assert canary.follow(p, {**accepted, "station": "xr-02"}) == "wait"  # not the canary
    assert canary.follow(p, canary.status("xr-01", p, canary.SHADOW, "", shadow)) == "wait"
    assert canary.follow(p, canary.status("xr-01", p, canary.ROLLED_BACK, "", shadow)) == "hold"
    assert canary.follow(p, canary.status("xr-01", p, canary.REFUSED, "")) == "hold"


def test_the_command_keys_are_off_by_default_and_checked(tmp_path: Path) -> None:
    base = f'[watch]\nfolder = "{tmp_path}/in"\n[pack]\n'
    config = parse(base)
    assert (config.pack.commands, config.pack.store_folder, config.pack.canary_max_verdicts) == (False, "", 1000)
    with pytest.raises(ConfigError, match=r":4: pack.commands: needs pack.rollout_folder"):
        parse(base + "commands = true\n")
    with pytest.raises(ConfigError, match="needs pack.store_folder"):
        parse(base + f'commands = true\nrollout_folder = "{tmp_path}/r"\n')
    with pytest.raises(ConfigError, match="pack.store_folder.*overlaps pack.rollout_folder"):
        parse(base + f'commands = true\nrollout_folder = "{tmp_path}/r"\nstore_folder = "{tmp_path}/r/s"\n')
    with pytest.raises(ConfigError, match="pack.canary_max_verdicts: 0 is out of range"):
        parse(base + "canary_max_verdicts = 0\n")
    ok = parse(base + f'commands = true\nrollout_folder = "{tmp_path}/r"\nstore_folder = "{tmp_path}/s"\n')
    assert ok.pack.commands


def test_a_follower_that_hears_the_canary_before_the_plan_still_follows(tmp_path: Path) -> None:
    from edge_worker.packs.rollout import Decision
    from edge_worker.service.fleet import FleetDesk

    store = tmp_path / "store"
    shutil.copytree(default_pack_dir(), store / "ankle-v2")
    (store / "ankle-v2" / "README.md").write_text("v2\n")
    digest = load_pack(store / "ankle-v2").digest
    sent: list[tuple[str, dict[str, object], bool]] = []
    desk = FleetDesk(prefix="xray", site="s", station="xr-02", store=store, rollout=tmp_path / "packs",
                     state=tmp_path / "state", max_verdicts=100, send=lambda *m: sent.append(m),
                     running_digest=lambda: "0" * 64, restore=lambda judge, why: None)  # fmt: skip
    p = canary.parse_plan(plan(digest=digest), 100)
    shadow = canary.Shadow(p)
    for _ in range(4):
        shadow.observe("ok", "ok")
    status = canary.status("xr-01", p, canary.ACCEPTED, "ok", shadow)
    desk.handle("xray/s/xr-01/rollout/status", json.dumps(status).encode())
    assert sent == []  # no plan yet: nothing to follow
    desk.handle("xray/s/rollout", json.dumps(plan(digest=digest)).encode())
    states = [doc["state"] for topic, doc, retained in sent if topic == "xray/s/xr-02/rollout/status"]
    assert states == ["waiting", "installing"] and all(r for _, _, r in sent)
    assert [c.name for c in (tmp_path / "packs").iterdir()] == ["ankle-v2-plan-p1"]
    desk.decided(Decision("accepted", "ankle-v2-plan-p1", "2 test images as expected", digest, "0" * 64))
    assert sent[-1][1]["state"] == "accepted"
    # The retained plan again (a restart): acted on once.
    desk.handle("xray/s/rollout", json.dumps(plan(digest=digest)).encode())
    assert len(sent) == 3
    # A malformed plan is answered on command/result, never raised.
    desk.handle("xray/s/rollout", b'{"schema": "xray-qc/rollout-plan@1", "id": "p2"}')
    assert sent[-1][0] == "xray/s/xr-02/command/result" and sent[-1][1]["state"] == "refused"
